"""Where a training step's time goes: wall-clock seconds per phase, logged as ``time/<phase>``.

``with timer("generate"): ...`` adds the block's seconds to its phase (a phase entered twice in a step, e.g. the
micro-batches' ``forward_backward``, sums); :meth:`PhaseTimer.pop` returns the step's totals and starts the next
step afresh. On CUDA the timer synchronises the device at both ends of a block, so a phase holds the kernels it
launched rather than the time to enqueue them; on CPU nothing is waited for and the cost is two clock reads.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = {}

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

    def pop(self) -> dict[str, float]:
        """This step's seconds per phase; the timer is empty afterwards."""
        seconds, self.seconds = self.seconds, {}
        return seconds
