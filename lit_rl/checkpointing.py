"""Checkpoints that are never torn and never poisoned.

- Every file is written to a temporary file in its own directory, flushed and fsynced, then renamed over the
  target (:func:`atomic_write`): a crash leaves the previous version or the new one, never a prefix. (Lightning's
  own save writes to the system temporary directory and moves the file; across filesystems the move is a copy,
  and a kill during it leaves a torn checkpoint.)
- A checkpoint whose weights or optimizer state hold NaN/inf is refused, not written (:class:`AtomicCheckpointIO`).
- A checkpoint that cannot be read back is named as such (:class:`~lit_rl.errors.UnreadableCheckpoint`).

:class:`SafeCheckpoints` installs all of this on a trainer; every lit-rl module ships it.
"""

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lit_rl.errors import UnreadableCheckpoint


def _tmp_is_stale(tmp: Path) -> bool:
    """``.NAME.PID.RANDOM.tmp`` left by a process that no longer runs (a kill -9 during a save)."""
    try:
        pid = int(tmp.name.rsplit(".", 3)[-3])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:                                             # alive, owned by someone else
        return False
    return False


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(file)`` so that readers (and a crash) see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if _tmp_is_stale(stale):
            stale.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)     # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:                                                                # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _tensors(obj: Any, name: str) -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{name}[{i}]")


def nonfinite(tensors: list[tuple[str, Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf, with one device sync for all of them."""
    floats = [(name, t.detach()) for name, t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return []
    local = [t.to_local() if hasattr(t, "to_local") else t for _, t in floats]     # FSDP2: this rank's shard
    finite = torch.stack([torch.isfinite(t).all().to(local[0].device) for t in local])
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(floats, finite.tolist()) if not ok]


def checkpoint_nonfinite(checkpoint: dict[str, Any]) -> list[str]:
    """The weights and optimizer moments of a Lightning checkpoint that are not finite."""
    return nonfinite(list(_tensors({"state_dict": checkpoint.get("state_dict", {}),
                                    "optimizer_states": checkpoint.get("optimizer_states", [])}, "")))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint IO, written atomically in the target's directory, refusing
    non-finite checkpoints, and naming a checkpoint that cannot be read."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        bad = checkpoint_nonfinite(checkpoint)
        if bad:
            raise FloatingPointError(
                f"not writing {path}: {len(bad)} tensors are not finite (e.g. {', '.join(bad[:3])}) at global step "
                f"{checkpoint.get('global_step')}; the checkpoints on disk hold the last good state")
        if "://" in str(path) or storage_options is not None:               # remote storage: Lightning's way
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        safe = True if weights_only is None else weights_only          # torch's safe unpickler, whatever its default
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, safe)
        return read_checkpoint(path, map_location=map_location, weights_only=safe)


def read_checkpoint(path: str | Path, map_location: Any = "cpu", weights_only: bool | None = True,
                    mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` a checkpoint; a missing file is a ``FileNotFoundError``, an unreadable one names itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such checkpoint file", str(path))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except Exception as err:
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint ({path.stat().st_size} bytes; torn by a crash, truncated or not "
            f"a checkpoint: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); resume from "
            f"another one" + (f" of {path.parent}: {', '.join(others)}" if others else "")) from err
    if not isinstance(checkpoint, dict):
        raise UnreadableCheckpoint(f"{path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    return checkpoint


class SafeCheckpoints(Callback):
    """Puts :class:`AtomicCheckpointIO` in place of the strategy's plain ``torch.save`` IO, so every checkpoint
    of the run (``ModelCheckpoint``'s files, ``last.ckpt``, ``trainer.save_checkpoint``) is written atomically
    and only when finite, and a resume from an unreadable file names it. Strategies with their own checkpoint
    format (DeepSpeed, distributed checkpoints) are left as they are. Shipped by every lit-rl module."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
