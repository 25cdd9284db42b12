"""ERPD: Extreme Region Policy Distillation (Chen et al. 2026, "Extreme Region Policy Distillation",
arXiv:2605.25582)."""

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lit_rl.distributed import is_deepspeed
from lit_rl.losses import ClippedSurrogate, PolicyGradient
from lit_rl.modules.base import RLModule
from lit_rl.modules.erpd_schedule import ERPDSchedule
from lit_rl.modules.erpd_teacher import TEACHER_LOSSES, Teacher
from lit_rl.modules.heads import ValueHead
from lit_rl.objectives import GroupScale, deviation_ratio, grpo_advantages, kl_penalty
from lit_rl.objectives import ppo_advantages, ppo_returns, whiten
from lit_rl.objectives.erpd import log_ratio_signal, sample_kl
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch, accuracy

torch.serialization.add_safe_globals([Teacher])
STAGE_CODES = {"online": 0, "teacher": 1, "student": 2}


def cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a module's weights: how ``pi_old``, ``pi_un`` and earlier students are kept (never
    as extra modules in the tree)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class ERPD(RLModule):
    """Changes the base's loop to ERPD's iterations: sample one fixed rollout batch from ``pi_old``; stage 1
    trains each teacher by many off-policy steps on it (sec. 3.1); stage 2 restarts from ``pi_old`` and
    distills the fixed whitened token signal ``log pi_e - log pi_den`` through the PPO clip (eq. 9); the
    result is the next ``pi_old``, optionally after ``online_steps`` of on-policy GRPO.

    One optimizer step per training step. The :class:`ERPDSchedule` says where the run is; at the start of the
    batch after a stage's last step (or after an ``ERPDStageSwitch`` criterion asked for it) the module
    evaluates the stage, precomputes the signal, restores ``pi_old`` and resets the optimizer's moments.
    Checkpoints carry the schedule (the fixed batch, ``pi_old``'s weights, the signals, the stage), so a run
    resumes mid-stage exactly. Departures from the paper:
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
                 kl_samples: int = 1, log_kl: bool = True, **kwargs: Any) -> None:
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
            scale: GRPO advantage scaling of the teachers whose loss needs no values and of the online phase.
            eval_size: held-out prompts evaluated at the end of every stage (``None``: all; 0: none).
            kl_samples: samples per prompt of the fixed batch that estimate ``KL(current || base)``.
            log_kl: log ``train/kl`` (on here: ERPD keeps the base model for ``KL(current || base)`` anyway).
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
        if kwargs.get("max_staleness"):
            raise ValueError("ERPD does not generate ahead (max_staleness must be 0): its stages sample from pi_old "
                             "once per iteration and then train on that batch for many steps, so there is no "
                             "generation per step to overlap with training")
        super().__init__(group_size=group_size, log_kl=log_kl, **kwargs)
        self.teachers, self.scale, self.student_lr = teachers, scale, student_lr
        self.student_kl_coef, self.student_entropy_coef = student_kl_coef, student_entropy_coef
        self.eval_size, self.kl_samples = eval_size, kl_samples
        self.schedule = ERPDSchedule(teachers, ensemble, student_steps, student_mini_batch_size, online_steps)
        self.policy.enable_reference()                                  # the base model of KL(current || base)
        self.online_loss, self.student_loss = PolicyGradient(), ClippedSurrogate(student_eps, student_eps)
        self.needs_hidden = any(t.loss.needs_hidden for t in teachers)  # a value head reads the hidden state
        self.needs_logits = any(t.loss.needs_logits for t in teachers)
        self.value_head = ValueHead(self.policy) if any(t.loss.needs_values for t in teachers) else None

    @classmethod
    def canonical_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        teachers = settings.get("teachers")
        if not isinstance(teachers, list):
            return settings
        return {**settings, "teachers": [TEACHER_LOSSES.canonical(t) if isinstance(t, dict) else t for t in teachers]}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if is_deepspeed(self.trainer.strategy):
            raise ValueError("ERPD does not run under DeepSpeed: it puts the policy's weights back to pi_old between "
                             "stages, and DeepSpeed's optimizer, which keeps its own float32 copy of them, would undo "
                             "that at its next step; use FSDP2 (cli_configs/strategies/fsdp.yaml) or DDP")

    # ------------------------------------------------------------------ one iteration, stage by stage
    def training_step(self, batch: dict[str, list], batch_idx: int) -> dict[str, Tensor]:
        stats: dict[str, Tensor] = {}
        schedule = self.schedule
        kind, k = schedule.stage
        if kind == "online":                                            # on-policy GRPO
            self.optimize(self.make_rollout(batch), stats)
        else:
            if schedule.rollout is None:                                # a new iteration: D from pi_old
                self.begin_iteration(batch)
            self.optimize(schedule.rollout.select(schedule.rows()), stats)
        schedule.stage_step += 1
        teacher = self.teachers[k] if kind == "teacher" else None
        if teacher and teacher.strategy == 2 and schedule.stage_step == teacher.unlearned_step:
            schedule.unlearned[k] = cpu_state(self.policy.model)       # pi_un
        if teacher and schedule.stage_step in teacher.save_steps and self.trainer.loggers:
            log_dir = self.trainer.log_dir                              # a broadcast: every rank asks
            if self.trainer.is_global_zero:
                self.policy.model.save_pretrained(Path(log_dir, "erpd", f"iteration{schedule.iteration}",
                                                       f"teacher{k}", f"step{schedule.stage_step}"))
        self.log_dict({"erpd/stage": float(STAGE_CODES[kind]), "erpd/iteration": float(schedule.iteration),
                       "erpd/teacher": float(k)}, batch_size=1)
        self.log_step(stats)
        return stats

    def begin_iteration(self, batch: dict[str, list]) -> None:
        """Sample the iteration's fixed rollout batch from ``pi_old`` (the current policy) and keep its weights."""
        schedule = self.schedule
        schedule.rollout = self.make_rollout(batch)                     # old log-probs, base log-probs, A_grpo
        schedule.old_state = cpu_state(self.policy.model)
        schedule.check_unlearned_steps()
        if schedule.iteration == 1 and not schedule.history:
            self.record("base", -1, log=True)
        self.enter_stage()

    def enter_stage(self) -> None:
        """Reset the optimizer's moments, set the stage's learning rate and the fixed batch's advantages."""
        schedule, (kind, k) = self.schedule, self.schedule.stage
        optimizer = self.optimizers().optimizer
        optimizer.state.clear()
        schedule.base_lrs = schedule.base_lrs or [group["lr"] for group in optimizer.param_groups]
        lr = self.teachers[k].lr if kind == "teacher" else self.student_lr if kind == "student" else None
        for group, base in zip(optimizer.param_groups, schedule.base_lrs):
            group["lr"] = lr if lr is not None else base
        rollout = schedule.rollout
        if kind == "teacher" and self.teachers[k].loss.needs_values:   # GAE, gamma = lambda = 1 (sec. 4.1)
            values = self._rowwise(rollout, lambda *a: self.value_head.values(self.policy, *a))
            schedule.rollout = replace(rollout, values=values, returns=ppo_returns(rollout.rewards, values, rollout.loss_mask),
                                       advantages=ppo_advantages(rollout.rewards, values, rollout.loss_mask,
                                                                 adaptive_lambda_alpha=self.teachers[k].adaptive_lambda_alpha))
        elif kind == "teacher":
            schedule.rollout = replace(rollout, advantages=grpo_advantages(rollout.rewards, rollout.group_size, self.scale))
        elif kind == "student":
            schedule.rollout = replace(rollout, advantages=schedule.student_signal())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """A stage ends at the start of the batch after its last step, never in the hook that saves a checkpoint,
        so a checkpoint resumes to the same run whatever the callbacks' order."""
        super().on_train_batch_start(batch, batch_idx)
        if self.schedule.switch_requested or self.schedule.stage_complete():
            self.end_stage(log=True)

    def on_train_end(self) -> None:
        if self.schedule.stage_complete():                              # evaluate the stage the run ended with
            self.end_stage(log=False)
        super().on_train_end()

    @torch.no_grad()
    def end_stage(self, log: bool) -> None:
        """Evaluate the stage (its record goes to the history), then enter the next one."""
        schedule, (kind, k) = self.schedule, self.schedule.stage
        if kind == "teacher":
            self.end_teacher(k, log)
        else:
            record = self.record(kind, k, log=log)
            if kind == "student":
                student = self._rowwise(schedule.rollout, lambda *a: self.policy.logps(*a)[0])
                rollout, teacher = schedule.rollout, schedule.teacher_logps[max(k, 0)]
                record["ratio"] = float(deviation_ratio(student, rollout.old_logps, teacher, rollout.loss_mask))
                if log:
                    self.log("erpd/ratio", record["ratio"], batch_size=1)
        if not schedule.advance(self.global_step):
            self.enter_stage()
            return
        if any(t.strategy == 3 and t.earlier_student == schedule.iteration - 1 for t in self.teachers):
            schedule.students[schedule.iteration - 1] = cpu_state(self.policy.model)
        self.write_history()

    def end_teacher(self, k: int, log: bool) -> None:
        """Evaluate teacher ``k``, precompute its log-probs and signal on the fixed batch (so the teacher need not
        stay loaded), then restore ``pi_old`` unless this teacher is itself the next ``pi_old`` (no distillation)."""
        schedule, teacher = self.schedule, self.teachers[k]
        rollout, logps = schedule.rollout, lambda *a: self.policy.logps(*a)[0]     # noqa: E731
        schedule.teacher_logps[k] = self._rowwise(rollout, logps)
        record = self.record("teacher", k, log=log)
        if schedule.student_steps > 0:
            strategy = teacher.strategy if teacher.strategy != 3 or teacher.earlier_student in schedule.students else 1
            if strategy == 2 and k not in schedule.unlearned:
                raise RuntimeError(f"teacher {k}'s stage ended after {schedule.stage_step} steps, before its "
                                   f"unlearned_step={teacher.unlearned_step}: there is no pi_un to divide by "
                                   f"(a validation criterion ended the stage early?)")
            if strategy == 1:
                den = rollout.old_logps
            else:
                self.policy.model.load_state_dict(schedule.unlearned.pop(k) if strategy == 2
                                                  else schedule.students[teacher.earlier_student])
                den = self._rowwise(rollout, logps)
            signal = log_ratio_signal(schedule.teacher_logps[k], den, rollout.loss_mask, teacher.outliers,
                                      rows=rollout.correct == 1)
            schedule.check_signal(k, strategy, signal)
            schedule.signals[k] = whiten(signal, rollout.loss_mask)
            record["strategy"] = strategy
        if schedule.student_steps > 0 or k < len(self.teachers) - 1:
            self.policy.model.load_state_dict(schedule.old_state)     # stage 2 (or the next teacher) restarts from pi_old

    # --------------------------------------------------------------------------------------- losses
    def needs_old_logps(self, rollout: RolloutBatch) -> bool:
        return self.schedule.stage[0] != "online"                       # the fixed batch is trained on many times

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return grpo_advantages(rollout.rewards, rollout.group_size, self.scale)

    def token_loss(self, output: PolicyOutput, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        kind, k = self.schedule.stage
        if kind == "online":
            return self.online_loss(output, batch)
        if kind == "teacher":
            teacher = self.teachers[k]
            values = self.value_head(output) if teacher.loss.needs_values else None          # [b, C]
            return teacher.token_loss(output, batch, values, self.kl_estimator)
        loss, clipped = self.student_loss(output, batch)                # eq. 9, then KL to pi_old and entropy bonus
        if self.student_kl_coef > 0:
            loss = loss + self.student_kl_coef * kl_penalty(output.logps, batch.old_logps, self.kl_estimator)
        if self.student_entropy_coef > 0:
            loss = loss - self.student_entropy_coef * output.entropy                    # with its gradient
        return loss, clipped

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.value_head is not None:
            (config["optimizer"] if isinstance(config, dict) else config).add_param_group(
                {"params": list(self.value_head.parameters())})
        return config

    # ------------------------------------------------------------------------- evaluation and state
    @torch.no_grad()
    def record(self, kind: str, k: int, log: bool) -> dict[str, Any]:
        """Held-out accuracy, and KL(current || base) and entropy on the current policy's own samples of the
        fixed batch's prompts, appended to the history. ``kl_base`` is the k3 estimate (unbiased, never
        negative); ``kl_base_k1`` is sec. 4.1's token mean of ``log pi - log pi_base`` (unbiased, but negative
        on small samples)."""
        schedule, rollout = self.schedule, self.schedule.rollout
        record: dict[str, Any] = {"iteration": schedule.iteration, "stage": kind, "teacher": k, "step": self.global_step}
        if (share := self.heldout_accuracy()) is not None:
            record["accuracy"] = share
        G = rollout.group_size
        own = self.collector.collect(self.sampler, rollout.prompts[::G], rollout.metas[::G], self.sampling,
                                     self.kl_samples)
        mask, size = own.loss_mask, self.micro_batch_size or len(own)
        fields = (own.prompt_ids, own.prompt_mask, own.completion_ids, own.completion_mask)
        parts = [self.policy.logps(*(f[s:s + size] for f in fields), self.sampling.logit_temperature, entropy=True)
                 for s in range(0, len(own), size)]                    # one forward for log-probs and entropy
        logps, entropy = (torch.cat([p[i] for p in parts]) * mask for i in (0, 1))
        base = self._rowwise(own, self.policy.reference_logps)
        record["kl_base"] = float(sample_kl(logps, base, mask, "k3"))
        record["kl_base_k1"] = float(sample_kl(logps, base, mask, "k1"))
        record["entropy"] = float(entropy.sum() / mask.sum().clamp(min=1))
        schedule.history.append(record)
        if log:
            self.log_dict({"erpd/accuracy": record.get("accuracy", float("nan")), "train/kl_base": record["kl_base"],
                           "erpd/entropy": record["entropy"]}, batch_size=1)
        self.write_history()
        return record

    def heldout_accuracy(self) -> float | None:
        datamodule = self.trainer.datamodule
        if self.eval_size == 0 or datamodule is None:
            return None
        correct: list[Tensor] = []
        for batch in datamodule.val_dataloader():
            rollout = self.collector.collect(self.sampler, batch["prompt"], batch["meta"], self.val_sampling)
            correct.append(rollout.correct)
            if self.eval_size is not None and sum(map(len, correct)) >= self.eval_size:
                break
        share = accuracy(torch.cat(correct)[:self.eval_size])
        return None if share is None else float(share)

    def write_history(self) -> None:
        log_dir = self.trainer.log_dir if self.trainer.loggers else None  # a broadcast: every rank asks, once
        if log_dir is not None and self.trainer.is_global_zero:
            self.schedule.write_history(Path(log_dir, "erpd_history.jsonl"))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["erpd"] = self.schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        old = [s.get("switches") for key, s in checkpoint.get("callbacks", {}).items() if key.startswith("ERPDStageSwitch")]
        self.schedule.load_state_dict(checkpoint["erpd"], old_switches=next((s for s in old if s), None))
