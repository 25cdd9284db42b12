"""ERPD: Extreme Region Policy Distillation (Chen et al. 2026, erpd-extreme-region-policy-distillation.txt)."""

import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.modules.erpd_stages import ERPDStages
from lit_rl.modules.erpd_teacher import Teacher, cpu_state, teacher_loss
from lit_rl.modules.heads import ValueHead, capture_output, entropy_with_grad
from lit_rl.objectives import GroupScale, clipped_policy_loss, grpo_advantages, kl_penalty, policy_gradient_loss
from lit_rl.rollout import RolloutBatch

torch.serialization.add_safe_globals([Teacher])
STAGE_CODES = {"online": 0, "teacher": 1, "student": 2}


class ERPD(ERPDStages, RLModule):
    """Changes the base's loop to ERPD's iterations: sample one fixed rollout batch from ``pi_old``; stage 1
    trains each teacher by many off-policy steps on it (sec. 3.1); stage 2 restarts from ``pi_old`` and
    distills the fixed whitened token signal ``log pi_e - log pi_den`` through the PPO clip (eq. 9); the
    result is the next ``pi_old``, optionally after ``online_steps`` of on-policy GRPO.

    One optimizer step per training step; the shipped :class:`ERPDStageSwitch` callback ends each stage (after
    its step count, or on a validation criterion) and the module then precomputes the signal, restores
    ``pi_old`` and resets the optimizer's moments. Checkpoints carry the fixed batch, ``pi_old``'s weights, the
    signals and the stage, so a run resumes mid-stage exactly. Departures from the paper:
    1. The prompts of an iteration are the one data batch of its first step; later steps' batches are unused.
    2. Online phases use one on-policy step per rollout (GRPO with ``num_iterations = 1``, i.e. the policy
       gradient with group-normalised advantages).
    3. Strategy 3 falls back to strategy 1 (logged in the history) while the earlier student does not exist;
       "the student of iteration i" is the policy iteration i ends with.
    4. A simultaneous ensemble sums the weighted whitened signals and whitens the sum again.
    5. ``train/kl_base`` (KL(current || base) at each stage's end) is the k3 estimate on the policy's own
       samples, not sec. 4.1's k1 mean of ``log pi - log pi_base``: both are unbiased, but k1 reads negative on
       small samples. The history keeps k1 as ``kl_base_k1``.

    A strategy-2 ``unlearned_step`` at or past the teacher's last step is refused (``pi_un`` would be the teacher
    itself), and a teacher whose log-ratio signal is constant on every valid token stops the run at the end of
    its stage, rather than distilling nothing.
    """

    def __init__(self, *, group_size: int = 8, teachers: list[Teacher] | None = None,
                 ensemble: Literal["sequential", "simultaneous"] = "sequential", student_steps: int = 10,
                 student_mini_batch_size: int | None = None, student_lr: float | None = None,
                 student_eps: float = 0.2, student_kl_coef: float = 0.0, student_entropy_coef: float = 0.0,
                 online_steps: int = 0, scale: GroupScale = "group", eval_size: int | None = 200,
                 kl_samples: int = 1, **kwargs: Any) -> None:
        """
        Args:
            teachers: one stage-1 teacher, or several for an ensemble (see :class:`Teacher`).
            ensemble: ``sequential`` (``student_steps`` with each teacher's signal in turn) or ``simultaneous``.
            student_steps: stage-2 optimizer steps per signal (0: no distillation; the teacher is the next ``pi_old``).
            student_mini_batch_size: rows per stage-2 step (``None``: the whole fixed batch).
            student_lr: stage-2 learning rate (``None``: the optimizer's).
            student_eps: the clip range of eq. 9. student_kl_coef: KL loss to ``pi_old``.
            student_entropy_coef: entropy bonus weight (Table 6 uses 0.5).
            online_steps: on-policy GRPO steps after each iteration's distillation (0: none).
            scale: GRPO advantage scaling of the ``grpo``/``sapo`` teachers and the online phase.
            eval_size: held-out prompts evaluated at the end of every stage (``None``: all; 0: none).
            kl_samples: samples per prompt of the fixed batch that estimate ``KL(current || base)``.
        """
        teachers = list(teachers) if teachers else [Teacher()]
        for name, value, low in (("student_steps", student_steps, 0), ("online_steps", online_steps, 0),
                                 ("kl_samples", kl_samples, 1), ("group_size", group_size, 2)):
            if value < low:
                raise ValueError(f"ERPD {name} must be >= {low} (got {value})")
        if ensemble not in ("sequential", "simultaneous"):
            raise ValueError(f"ERPD ensemble must be 'sequential' or 'simultaneous' (got {ensemble!r})")
        if student_mini_batch_size is not None and student_mini_batch_size < 1:
            raise ValueError(f"student_mini_batch_size must be >= 1 or null (got {student_mini_batch_size})")
        super().__init__(group_size=group_size, **kwargs)
        self.teachers, self.ensemble, self.scale = teachers, ensemble, scale
        self.student_steps, self.student_mini_batch_size, self.student_lr = student_steps, student_mini_batch_size, student_lr
        self.student_eps, self.student_kl_coef, self.student_entropy_coef = student_eps, student_kl_coef, student_entropy_coef
        self.online_steps, self.eval_size, self.kl_samples = online_steps, eval_size, kl_samples
        self.policy.enable_reference()                                  # the base model of KL(current || base)
        self.value_head = ValueHead(self.policy) if any(t.loss == "ppo" for t in teachers) else None
        self.iteration, self.phase, self.stage_step = 1, 0, 0
        self.rollout: RolloutBatch | None = None
        self.old_state: dict | None = None
        self.unlearned, self.teacher_logps, self.signals, self.students = {}, {}, {}, {}
        self.history: list[dict[str, Any]] = []
        self.base_lrs: list[float] | None = None
        self._outputs: list = []
        self._hidden: list = []

    # ------------------------------------------------------------------------------------ the schedule
    def stages(self) -> list[tuple[str, int]]:
        plan = [("teacher", k) for k in range(len(self.teachers))]
        if self.student_steps > 0:
            plan += [("student", k) for k in range(len(self.teachers))] if self.ensemble == "sequential" else [("student", -1)]
        return plan + ([("online", 0)] if self.online_steps > 0 else [])

    @property
    def stage(self) -> tuple[str, int]:
        return self.stages()[self.phase]

    def _rows_per_step(self) -> int:
        kind, k = self.stage
        return self.teachers[k].mini_batch_size if kind == "teacher" else self.student_mini_batch_size or len(self.rollout)

    def stage_length(self) -> int | None:
        """Optimizer steps of the current stage (``None`` before the iteration's rollout exists)."""
        kind, k = self.stage
        if kind == "online":
            return self.online_steps
        if self.rollout is None:
            return None
        return self.student_steps if kind == "student" else self.teachers[k].epochs * math.ceil(len(self.rollout) / self._rows_per_step())

    def stage_complete(self) -> bool:
        length = self.stage_length()
        return length is not None and self.stage_step >= length

    def rows(self) -> Tensor:
        """This step's rows of the fixed batch: epoch-wise shuffles drawn from (iteration, phase, epoch) alone."""
        size = self._rows_per_step()
        epoch, j = divmod(self.stage_step, math.ceil(len(self.rollout) / size))
        g = torch.Generator().manual_seed(1_000_003 * self.iteration + 1_009 * self.phase + epoch)
        return torch.randperm(len(self.rollout), generator=g).split(size)[j]

    # -------------------------------------------------------------------------------------- training
    def needs_old_logps(self, rollout: RolloutBatch) -> bool:
        return self.stage[0] != "online"

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return grpo_advantages(rollout.rewards, rollout.group_size, self.scale)

    def training_step(self, batch: dict[str, list], batch_idx: int) -> dict[str, Tensor]:
        stats: dict[str, Tensor] = {}
        kind, k = self.stage
        if kind == "online":
            self.optimize(self.make_rollout(batch), stats)
        else:
            if self.rollout is None:
                self.begin_iteration(batch)
            self.optimize(self.rollout.select(self.rows()), stats)
        self.stage_step += 1
        if kind == "teacher" and self.teachers[k].strategy == 2 and self.stage_step == self.teachers[k].unlearned_step:
            self.unlearned[k] = cpu_state(self.policy.model)          # pi_un
        if kind == "teacher" and self.stage_step in self.teachers[k].save_steps and self.trainer.loggers:
            out = Path(self.trainer.log_dir, "erpd", f"iteration{self.iteration}", f"teacher{k}", f"step{self.stage_step}")
            if self.trainer.is_global_zero:
                self.policy.model.save_pretrained(out)
        self.log_dict({"erpd/stage": float(STAGE_CODES[kind]), "erpd/iteration": float(self.iteration),
                       "erpd/teacher": float(k)}, batch_size=1)
        return stats

    def micro_loss(self, micro: RolloutBatch, normalisers: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        with capture_output(self.policy.model) as self._outputs, capture_output(ValueHead.decoder(self.policy)) as self._hidden:
            return super().micro_loss(micro, normalisers)               # the forward's logits and hidden states

    def policy_loss(self, logps: Tensor, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        kind, k = self.stage
        if kind == "online":
            return policy_gradient_loss(logps, batch.advantages), None
        if kind == "teacher":
            values = None
            if self.value_head is not None:
                values = self.value_head(self._hidden[-1].last_hidden_state, logps.shape[1])   # [b, C]
            return teacher_loss(self.teachers[k], logps, batch, values, self.kl_estimator)
        loss, clipped = clipped_policy_loss(logps, batch.old_logps, batch.advantages, self.student_eps, self.student_eps)
        if self.student_kl_coef > 0:
            loss = loss + self.student_kl_coef * kl_penalty(logps, batch.old_logps, self.kl_estimator)
        if self.student_entropy_coef > 0:                               # logits [b, C+1, V]: position t-1 predicts t
            entropy = entropy_with_grad(self._outputs[-1].logits[:, :-1], self.sampling.logit_temperature)
            loss = loss - self.student_entropy_coef * entropy
        return loss, clipped

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.value_head is not None:
            (config["optimizer"] if isinstance(config, dict) else config).add_param_group(
                {"params": list(self.value_head.parameters())})
        return config

    def configure_callbacks(self) -> list:
        from lit_rl.callbacks.erpd_stage import ERPDStageSwitch

        callbacks = super().configure_callbacks()
        present = {type(c) for c in self.trainer.callbacks}
        return callbacks + ([] if ERPDStageSwitch in present else [ERPDStageSwitch()])
