"""ERPD's schedule (Chen et al. 2026, "Extreme Region Policy Distillation", arXiv:2605.25582): where a run is
(iteration, stage, step), how long each stage runs and which rows of the fixed batch each step sees, and what
the iteration has built so far (``pi_old``'s weights, ``pi_un``, the teachers' log-probs and signals). It is
advanced by the :class:`~lit_rl.modules.erpd.ERPD` module in its own hooks and saved in its checkpoints."""

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_rl.modules.erpd_teacher import Teacher
from lit_rl.objectives import combine_signals
from lit_rl.objectives.erpd import signal_spread
from lit_rl.rollout import RolloutBatch

STATE = ("iteration", "phase", "stage_step", "old_state", "unlearned", "teacher_logps", "signals", "students",
         "history", "base_lrs", "switches", "switch_requested")
ZERO_SIGNAL = 1e-6   # nats: a log-ratio that varies less than this over the valid tokens whitens to nothing


class ERPDSchedule:
    """Each iteration runs the stages ``teacher k`` (stage 1, one per teacher), ``student`` (stage 2: one per
    teacher in a sequential ensemble, one for a simultaneous one; none when ``student_steps = 0``) and
    ``online`` (only when ``online_steps > 0``), then starts the next iteration from a new fixed batch."""

    def __init__(self, teachers: list[Teacher], ensemble: str, student_steps: int,
                 student_mini_batch_size: int | None, online_steps: int) -> None:
        self.teachers, self.ensemble, self.student_steps = teachers, ensemble, student_steps
        self.student_mini_batch_size, self.online_steps = student_mini_batch_size, online_steps
        self.iteration, self.phase, self.stage_step = 1, 0, 0
        self.rollout: RolloutBatch | None = None                        # the iteration's fixed batch, from pi_old
        self.old_state: dict[str, Tensor] | None = None                 # pi_old's weights
        self.unlearned: dict[int, dict] = {}                            # teacher -> pi_un's weights (strategy 2)
        self.teacher_logps: dict[int, Tensor] = {}                      # teacher -> log pi_e on the fixed batch
        self.signals: dict[int, Tensor] = {}                            # teacher -> whitened log-ratio signal
        self.students: dict[int, dict] = {}                             # iteration -> its student's weights
        self.history: list[dict[str, Any]] = []                         # one evaluation per stage
        self.base_lrs: list[float] | None = None                        # the optimizer's own learning rates
        self.switches: list[dict[str, Any]] = []                        # every stage's end
        self.switch_requested = False                                   # end the stage early (a criterion)

    def stages(self) -> list[tuple[str, int]]:
        plan = [("teacher", k) for k in range(len(self.teachers))]
        if self.student_steps > 0:
            plan += ([("student", k) for k in range(len(self.teachers))] if self.ensemble == "sequential"
                     else [("student", -1)])
        return plan + ([("online", 0)] if self.online_steps > 0 else [])

    @property
    def stage(self) -> tuple[str, int]:
        return self.stages()[self.phase]

    def rows_per_step(self) -> int:
        kind, k = self.stage
        return self.teachers[k].mini_batch_size if kind == "teacher" else self.student_mini_batch_size or len(self.rollout)

    def stage_length(self) -> int | None:
        """Optimizer steps of the current stage (``None`` before the iteration's rollout exists)."""
        kind, k = self.stage
        if kind == "online":
            return self.online_steps
        if self.rollout is None:
            return None
        if kind == "student":
            return self.student_steps
        return self.teachers[k].epochs * math.ceil(len(self.rollout) / self.rows_per_step())

    def stage_complete(self) -> bool:
        length = self.stage_length()
        return length is not None and self.stage_step >= length

    def rows(self) -> Tensor:
        """This step's rows of the fixed batch: epoch-wise shuffles drawn from (iteration, phase, epoch) alone."""
        size = self.rows_per_step()
        epoch, j = divmod(self.stage_step, math.ceil(len(self.rollout) / size))
        g = torch.Generator().manual_seed(1_000_003 * self.iteration + 1_009 * self.phase + epoch)
        return torch.randperm(len(self.rollout), generator=g).split(size)[j]

    def student_signal(self) -> Tensor:
        """The fixed token advantage of the current student stage: one teacher's signal, or the ensemble's."""
        k = self.stage[1]
        if k >= 0:
            return self.signals[k]
        return combine_signals([self.signals[j] for j in range(len(self.teachers))],
                               [t.weight for t in self.teachers], self.rollout.loss_mask)

    def check_unlearned_steps(self) -> None:
        """Refuse a strategy-2 ``unlearned_step`` at or past its teacher's last step: ``pi_un`` would be the
        teacher itself (or never exist), and the signal ``log pi_e - log pi_un`` zero."""
        for k, teacher in enumerate(self.teachers):
            length = teacher.epochs * math.ceil(len(self.rollout) / teacher.mini_batch_size)
            if teacher.strategy == 2 and self.student_steps > 0 and teacher.unlearned_step >= length:
                where = "the teacher itself" if teacher.unlearned_step == length else "past the end of its stage"
                raise ValueError(
                    f"teachers[{k}].unlearned_step={teacher.unlearned_step} makes pi_un {where}: teacher {k} runs "
                    f"{length} steps (epochs {teacher.epochs} x ceil({len(self.rollout)} rows / mini_batch_size "
                    f"{teacher.mini_batch_size})), so strategy 2's signal log pi_e - log pi_un would be zero; "
                    f"choose unlearned_step < {length}")

    def check_signal(self, k: int, strategy: int, signal: Tensor) -> None:
        """Stop, rather than distil nothing, when teacher ``k``'s log-ratio is constant on every valid token of the
        fixed batch (its whitened signal is then zero, or rounding noise scaled up to unit variance)."""
        mask, teacher = self.rollout.loss_mask, self.teachers[k]
        if (spread := float(signal_spread(signal, mask))) > ZERO_SIGNAL:
            return
        den = {1: "pi_old", 2: f"pi_un (step {teacher.unlearned_step})",
               3: f"the student of iteration {teacher.earlier_student}"}[strategy]
        moved = float(((self.teacher_logps[k] - self.rollout.old_logps) * mask).abs().max())
        raise RuntimeError(
            f"ERPD iteration {self.iteration}: teacher {k}'s distillation signal log pi_e - log {den} is zero on "
            f"every valid token (spread {spread:.2e} <= {ZERO_SIGNAL:.0e} over {int(mask.sum())} tokens), so stage 2 "
            f"would train on nothing. The teacher ran {self.stage_step} steps and moved at most {moved:.2e} from "
            f"pi_old per token; causes: the denominator is the teacher itself, a teacher that did not move "
            f"(zero advantages, e.g. every sample of each group scored the same; a zero learning rate), or "
            f"outliers={teacher.outliers!r} masking every token")

    def advance(self, global_step: int) -> bool:
        """Record the stage's end and move to the next stage; ``True`` when that ends the iteration (the
        iteration's own state is then cleared: the next one samples a new fixed batch)."""
        kind, k = self.stage
        self.switches.append({"step": global_step, "iteration": self.iteration, "stage": kind, "teacher": k,
                              "steps": self.stage_step, "early": self.switch_requested})
        self.phase, self.stage_step, self.switch_requested = self.phase + 1, 0, False
        if self.phase < len(self.stages()):
            return False
        self.iteration, self.phase, self.rollout = self.iteration + 1, 0, None
        self.teacher_logps, self.signals, self.unlearned = {}, {}, {}
        return True

    def write_history(self, path: Path) -> None:
        """One JSON line per evaluated stage (what ``benchmarks/erpd.py`` reads)."""
        path.write_text("".join(json.dumps(record) + "\n" for record in self.history))

    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in STATE}
        state["rollout"] = None if self.rollout is None else {f.name: getattr(self.rollout, f.name)
                                                              for f in fields(RolloutBatch)}
        return state

    def load_state_dict(self, state: dict[str, Any], old_switches: list | None = None) -> None:
        """``old_switches``: a checkpoint written before the switches were the schedule's kept them in the
        ``ERPDStageSwitch`` callback's state (and had no pending request there, with ``monitor: null``)."""
        state = {"switches": old_switches or [], "switch_requested": False, **state}
        for name in STATE:
            setattr(self, name, state[name])
        self.rollout = None if state["rollout"] is None else RolloutBatch(**saved_rollout(state["rollout"]))


def saved_rollout(fields: dict[str, Any]) -> dict[str, Any]:
    """A saved batch's fields as today's :class:`RolloutBatch` takes them: checkpoints written before the
    collector said ``from_dataset: bool`` where it now says ``source``."""
    fields = dict(fields)
    if "from_dataset" in fields:
        fields["source"] = "dataset" if fields.pop("from_dataset") else "policy"
    return fields
