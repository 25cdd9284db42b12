"""Rollouts generated ahead of training: ``RLModule(max_staleness=k)`` with ``k >= 1``.

While step ``s`` trains on batch ``s``, a background thread (the producer) samples and scores batch ``s + k`` on
the rollout engine, as veRL's one-step-off and prime-rl's ``async_level`` do; with ``k = 0`` none of this runs
and the loop is the synchronous one. Only sampling and scoring (the module's ``collect``) run in the producer;
everything that reads the trained policy (old and reference log-probs, advantages, the optimizer steps) stays on
the trainer's thread.

**How it fits Lightning.** Lightning hands ``training_step`` the dataloader's batch, and cannot hand it batch
``s + k`` early. The producer therefore reads the batches ahead itself, from a copy of the train dataloader taken
at the position of the batch being trained (:func:`read_ahead`; lit-rl's ``ResumableBatches`` draws its order from
its state alone), so it generates exactly the batches Lightning will hand over, in the same order. Each step takes
the oldest finished rollout and checks that it was made for the batch Lightning gave it; a dataloader whose order
is not reproducible from its state is named rather than trained on the wrong prompts.

**The schedule** is lockstep, so which weights sample which batch is fixed (not a race): counting batches from the
start of the fit, batches ``0..k`` may be generated at once, and after step ``t`` the trainer waits until batches
up to ``t + k`` are generated, then syncs the engine's weights (every ``sync_every_n_steps`` optimizer steps, as
without ``k``), then lets the producer start batch ``t + k + 1``. So batch ``s`` was sampled by the weights synced
after step ``s - k - 1``: ``rollout/staleness`` (optimizer steps behind the trained policy) is exactly ``k`` from
step ``k`` on with one optimizer step per batch and ``sync_every_n_steps: 1``; with ``sync_every_n_steps: m`` it is
at most ``k + m - 1``, and ``num_iterations`` or ``mini_batches`` above 1 multiply it by the optimizer steps per
batch. A sync never happens while the producer generates; validation waits for the producer's current batch before
it uses the engine.

**Resume.** A checkpoint records, as always, the dataloader's position (the batches trained) and the weights. The
rollouts generated ahead and not yet trained are not saved: a resumed run starts a new producer at the recorded
position, so it trains the same prompts in the same order, and regenerates those rollouts with the checkpoint's
weights (staleness 0 for the first of them), where the uninterrupted run had used older weights. The weights of a
resumed asynchronous run therefore differ from the uninterrupted run's, and two asynchronous runs differ anyway:
the engines' sampling draws from random streams that run beside the trainer's (torch's global generator for
``CopyEngine`` and a ``seeded`` ``VLLMServerEngine``'s seeds, the servers' own otherwise) in another thread.
"""

import copy
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lit_rl.rollout import RolloutBatch, RolloutEngine
from lit_rl.timing import PhaseTimer

_thread = threading.local()


def check_engine(engine: RolloutEngine, max_staleness: int) -> None:
    """Refuse a negative ``max_staleness``, and a positive one with an engine that cannot generate in a background
    thread while the policy trains (naming the engine and why)."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0 (got {max_staleness})")
    if max_staleness and (reason := getattr(engine, "not_in_background", RolloutEngine.not_in_background)):
        raise ValueError(f"max_staleness={max_staleness} generates the next batches in a background thread while the "
                         f"policy trains, and {type(engine).__name__} cannot generate there: {reason}. Engines that "
                         f"can: lit_rl.VLLMServerEngine, lit_rl.CopyEngine; max_staleness: 0 works with every engine")


def read_ahead(loader: Any, batch: Any) -> Iterator[Any]:
    """The batches Lightning will hand ``training_step`` from now on, ``batch`` (the one it handed now) first: a copy
    of the train dataloader, set to the original's state, iterated epoch after epoch as Lightning iterates it."""
    if not (callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))):
        raise ValueError(f"max_staleness > 0 reads the training batches ahead of Lightning from a copy of the train "
                         f"dataloader at its position, which needs a dataloader whose order follows from its "
                         f"state_dict (lit_rl.PromptData's and CountdownData's ResumableBatches); got "
                         f"{type(loader).__name__}")
    ahead = copy.copy(loader)
    ahead.load_state_dict(copy.deepcopy(loader.state_dict()))

    def batches() -> Iterator[Any]:
        yield batch
        while True:
            empty = True
            for following in ahead:
                empty = False
                yield following
            if empty:
                return

    return batches()


def same_batch(a: Any, b: Any) -> bool:
    """Whether two prompt batches hold the same prompts and columns, in the same order."""
    keys = ("prompt", "meta")
    return all(isinstance(x, dict) for x in (a, b)) and all(a.get(k) == b.get(k) for k in keys)


@contextmanager
def deferring_logs(into: list) -> Iterator[None]:
    """On this thread, ``RLModule.log`` calls are kept in ``into`` instead of reaching Lightning (whose logging
    belongs to the trainer's thread); they are logged when their rollout is trained."""
    _thread.logs = into
    try:
        yield
    finally:
        _thread.logs = None


def deferred_logs() -> list | None:
    """Where this thread's ``log`` calls are kept (``None``: on the trainer's thread, log them)."""
    return getattr(_thread, "logs", None)


@dataclass
class Produced:
    """A rollout generated ahead: the batch it was made for, the rollout (``version`` set), the producer's phase
    seconds and counts for it, and the ``log`` calls made while producing it."""

    batch: Any
    rollout: RolloutBatch
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    logs: list = field(default_factory=list)


class RolloutPipeline:
    """The producer thread and the lockstep schedule it keeps with the trainer (see the module's docstring).

    ``produce(batch)`` samples and scores one batch (called on the producer thread, one batch at a time);
    ``batches`` are the prompt batches in training order (:func:`read_ahead`). The trainer calls :meth:`take` in
    each step, :meth:`wait_for_schedule` before it may sync the engine, :meth:`permit` after, :meth:`idle` before
    it uses the engine itself (validation) and :meth:`close` at the end. An error in the producer is raised, as
    it was raised there, by the trainer's next call.
    """

    def __init__(self, produce: Callable[[Any], RolloutBatch], batches: Iterator[Any], max_staleness: int,
                 timer: PhaseTimer) -> None:
        self.max_staleness = max_staleness
        self.permitted = max_staleness + 1                              # batches the producer may have started
        self.produced = self.taken = 0
        self.ready: deque[Produced] = deque()
        self.error: BaseException | None = None
        self.exhausted = self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(produce, batches, timer), daemon=True,
                                       name="lit-rl rollouts ahead")
        self.thread.start()

    def _run(self, produce: Callable[[Any], RolloutBatch], batches: Iterator[Any], timer: PhaseTimer) -> None:
        try:
            for i, batch in enumerate(batches):
                with self.cond:
                    self.cond.wait_for(lambda: self.closed or i < self.permitted)
                    if self.closed:
                        return
                logs: list = []
                timer.start()
                with deferring_logs(logs):
                    rollout = produce(batch)
                seconds, counts = timer.stop()
                with self.cond:
                    self.ready.append(Produced(batch, rollout, seconds, counts, logs))
                    self.produced += 1
                    self.cond.notify_all()
        except BaseException as err:                                    # raised again on the trainer's thread
            with self.cond:
                self.error = err
                self.cond.notify_all()
        finally:
            with self.cond:
                self.exhausted = True
                self.cond.notify_all()

    def _wait(self, ready: Callable[[], bool]) -> None:
        with self.cond:
            self.cond.wait_for(lambda: ready() or self.error is not None or self.exhausted)
            if not ready() and self.error is not None:
                raise self.error

    def take(self, batch: Any) -> Produced:
        """The oldest finished rollout, which must have been made for ``batch`` (waits for it)."""
        self._wait(lambda: bool(self.ready))
        with self.cond:
            if not self.ready:
                raise RuntimeError("the train dataloader ended before the batch Lightning handed this step")
            produced = self.ready.popleft()
            self.taken += 1
        if not same_batch(produced.batch, batch):
            raise RuntimeError("max_staleness > 0: the rollout generated ahead was made for other prompts than the "
                               "batch Lightning handed this step: the train dataloader's order does not follow from "
                               "its state_dict, so it cannot be read ahead (use lit_rl.PromptData)")
        return produced

    def wait_for_schedule(self) -> None:
        """After a step: wait until every batch due before the next sync is generated (up to ``taken + k - 1``)."""
        self._wait(lambda: self.produced >= self.taken + self.max_staleness)

    def permit(self) -> None:
        """After a step and its sync: let the producer start the next batch."""
        with self.cond:
            self.permitted = self.taken + self.max_staleness + 1
            self.cond.notify_all()

    def idle(self) -> None:
        """Wait until the producer has generated every batch it may (it does not use the engine then)."""
        self._wait(lambda: self.produced >= self.permitted)

    def close(self) -> None:
        """Stop the producer after the batch it is generating, if any; what was generated ahead is dropped."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join()
