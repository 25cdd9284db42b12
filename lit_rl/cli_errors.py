"""How the ``lit-rl`` command reports bad input: one paragraph, not a traceback.

A configuration error (unknown key, wrong type) is the parser's message without its 60 lines of usage; an
error raised by lit-rl's own code (``group_size: 1``, a missing dataset file, a mismatched checkpoint) is its
message and where it was raised. Anything else (a bug, an error inside torch) keeps its full traceback, and
``LIT_RL_TRACEBACK=1`` shows the traceback for everything.
"""

import os
import sys
import traceback
from pathlib import Path

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

TRACEBACK_ENV = "LIT_RL_TRACEBACK"
PACKAGE = Path(__file__).resolve().parent
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
          "Given value:", "Expected a <class 'NoneType'>")


def condense(message: str) -> str:
    """jsonargparse's nested Union report as one line: what was wrong, where, without the alternatives tried."""
    lines = [line.strip().lstrip("-").strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(_NOISE))


def _raised_in_lit_rl(err: BaseException) -> tuple[str, int] | None:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return None
    last = Path(frames[-1].filename).resolve()
    return (str(last.relative_to(PACKAGE.parent)), frames[-1].lineno or 0) if PACKAGE in last.parents else None


def user_error(err: BaseException) -> str | None:
    """The message of the deepest error in ``err``'s chain that lit-rl raised for the user (or an OS error that
    names its file), with where it was raised; ``None`` when the error is not one of those (keep the traceback)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    for e in reversed(chain):
        where = _raised_in_lit_rl(e)
        if where is not None and not isinstance(e, (AssertionError, AttributeError, NameError, KeyError, IndexError)):
            return f"{e}\n  ({type(e).__name__} at {where[0]}:{where[1]}; {TRACEBACK_ENV}=1 shows the traceback)"
        if isinstance(e, OSError) and e.filename is not None:
            return f"{e}\n  ({TRACEBACK_ENV}=1 shows the traceback)"
    return None


def report(err: BaseException) -> int:
    """Print ``err`` as a paragraph when it is bad input and return the exit status; re-raise anything else."""
    message = None if os.environ.get(TRACEBACK_ENV) else user_error(err)
    if message is None:
        raise err
    sys.stderr.write(f"lit-rl: error: {message}\n")
    return 1


class OneParagraphErrors:
    """Parser errors as one paragraph (exit status 2), without the usage of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get(TRACEBACK_ENV):
            return super().error(message, ex)
        sys.stderr.write(f"lit-rl: invalid configuration: {condense(message)}\n  (`{self.prog} --help` lists every "
                         f"option; {TRACEBACK_ENV}=1 shows the parser's full report)\n")
        self.exit(2)


class LitRLParser(OneParagraphErrors, LightningArgumentParser):
    """``lit-rl fit/validate/test``'s parser."""


class GenerateParser(OneParagraphErrors, ArgumentParser):
    """``lit-rl generate``'s parser."""
