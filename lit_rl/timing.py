"""Where a training step's time goes: wall-clock seconds per phase, logged as ``time/<phase>``.

:meth:`PhaseTimer.start` begins a step (dropping whatever was timed since the last one, e.g. a validation's
generation); ``with timer("generate"): ...`` adds the block's seconds to its phase (a phase entered twice in a
step, e.g. the micro-batches' ``forward_backward``, sums); :meth:`PhaseTimer.count` adds to a counter (generated
tokens); :meth:`PhaseTimer.stop` returns the step's seconds per phase, with ``step`` the whole, and its counts.
On CUDA the timer synchronises the device at both ends of a block, so a phase holds the kernels it
launched rather than the time to enqueue them; on CPU nothing is waited for and the cost is two clock reads.

Each thread has a timer of its own (``threading.local``): the thread that generates rollouts ahead of training
(``max_staleness > 0``, :mod:`lit_rl.async_rollouts`) times its batches without touching the training step's
phases, and hands them over with :meth:`PhaseTimer.merge`.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer(threading.local):
    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.started = time.perf_counter()

    def __reduce__(self) -> tuple:                                      # copies and pickles (ddp_spawn) start empty
        return PhaseTimer, (self.device,)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def count(self, name: str, value: float) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + value

    def merge(self, seconds: dict[str, float], counts: dict[str, float]) -> None:
        """Add another timer's phases (without its ``step``) and counts to this one's."""
        for phase, value in seconds.items():
            if phase != "step":
                self.seconds[phase] = self.seconds.get(phase, 0.0) + value
        for name, value in counts.items():
            self.count(name, value)

    def start(self) -> None:
        self._sync()
        self.seconds, self.counts, self.started = {}, {}, time.perf_counter()

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        """This step's seconds per phase (and ``step``, from :meth:`start`) and counts; the timer is empty after."""
        self._sync()
        seconds, counts = {**self.seconds, "step": time.perf_counter() - self.started}, self.counts
        self.seconds, self.counts = {}, {}
        return seconds, counts


def is_wall_clock(metric: str) -> bool:
    """Metrics that measure time (``time/*``, ``rollout/tokens_per_s``): they differ between two otherwise
    identical runs, so exact comparisons of runs (resume, the generic and built-in paths) leave them out."""
    return metric.startswith("time/") or metric == "rollout/tokens_per_s"
