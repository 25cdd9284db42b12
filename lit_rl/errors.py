"""lit-rl's own errors: each names what is wrong and what to do. The CLI prints them as one paragraph
(``LIT_RL_TRACEBACK=1`` shows the traceback); their bases keep ``except ValueError``/``OSError`` working."""


class ResumeMismatch(ValueError):
    """A checkpoint given to ``--ckpt_path`` (or ``Trainer.fit(ckpt_path=...)``) was written by another run."""


class UnreadableCheckpoint(OSError):
    """A checkpoint file exists but cannot be read back (torn by a crash, truncated, or not a checkpoint)."""


class ModelNotFound(FileNotFoundError):
    """``model:`` is neither a directory nor a model the hub can provide."""


class RunDirectoryError(OSError):
    """The run directory cannot be created or written."""


class ServerUnavailable(RuntimeError):
    """A server (a remote reward, a vLLM server) gave no usable answer: unreachable, too slow, or an HTTP error
    (``status``: the last HTTP status it answered, None if it answered none)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BadServerAnswer(ValueError):
    """A server answered, but not what was asked for: not JSON, or JSON of the wrong shape or count."""
