"""ERPD's stage transitions, evaluations and checkpoint state (the :class:`~lit_rl.modules.erpd.ERPD` module's
second half): what happens between two stages, called by the ``ERPDStageSwitch`` callback."""

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from lit_rl.modules.erpd_teacher import cpu_state
from lit_rl.modules.ppo import ppo_advantages
from lit_rl.objectives import combine_signals, deviation_ratio, grpo_advantages, whiten
from lit_rl.objectives.erpd import log_ratio_signal, sample_kl, signal_spread
from lit_rl.rollout import RolloutBatch, accuracy

ZERO_SIGNAL = 1e-6   # nats: a log-ratio that varies less than this over the valid tokens whitens to nothing
STATE = ("iteration", "phase", "stage_step", "old_state", "unlearned", "teacher_logps", "signals", "students",
         "history", "base_lrs")


class ERPDStages:
    """Stage transitions of ERPD: begin an iteration, enter and leave a stage, evaluate, save and restore."""

    def begin_iteration(self, batch: dict[str, list]) -> None:
        """Sample the iteration's fixed rollout batch from ``pi_old`` (the current policy) and keep its weights."""
        self.rollout = self.make_rollout(batch)                         # old log-probs, base log-probs, A_grpo
        self.old_state = cpu_state(self.policy.model)
        for k, teacher in enumerate(self.teachers):
            length = teacher.epochs * -(-len(self.rollout) // teacher.mini_batch_size)
            if teacher.strategy == 2 and self.student_steps > 0 and teacher.unlearned_step >= length:
                where = "the teacher itself" if teacher.unlearned_step == length else "past the end of its stage"
                raise ValueError(
                    f"teachers[{k}].unlearned_step={teacher.unlearned_step} makes pi_un {where}: teacher {k} runs "
                    f"{length} steps (epochs {teacher.epochs} x ceil({len(self.rollout)} rows / mini_batch_size "
                    f"{teacher.mini_batch_size})), so strategy 2's signal log pi_e - log pi_un would be zero; "
                    f"choose unlearned_step < {length}")
        if self.iteration == 1 and not self.history:
            self.record("base", -1, log=True)
        self.enter_stage()

    def enter_stage(self) -> None:
        """Reset the step count and the optimizer's moments, set the stage's learning rate and advantages."""
        kind, k = self.stage
        self.stage_step = 0
        optimizer = self.optimizers().optimizer
        optimizer.state.clear()
        self.base_lrs = self.base_lrs or [group["lr"] for group in optimizer.param_groups]
        lr = self.teachers[k].lr if kind == "teacher" else self.student_lr if kind == "student" else None
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = lr if lr is not None else base
        if kind == "teacher":
            rollout, teacher = self.rollout, self.teachers[k]
            rollout.advantages = grpo_advantages(rollout.rewards, rollout.group_size, self.scale)
            if teacher.loss == "ppo":
                rollout.values = self._rowwise(rollout, lambda *a: self.value_head.values(self.policy, *a))
                rollout.advantages, rollout.returns = ppo_advantages(
                    rollout, rollout.values, 1.0, 1.0, teacher.adaptive_lambda_alpha, 1.0, whiten_advantages=True)
        elif kind == "student":
            self.rollout.advantages = (self.signals[k] if k >= 0 else combine_signals(
                [self.signals[j] for j in range(len(self.teachers))], [t.weight for t in self.teachers],
                self.rollout.completion_mask))

    @torch.no_grad()
    def end_teacher(self, k: int, log: bool) -> None:
        """Evaluate teacher ``k``, precompute its log-probs and signal on the fixed batch (so the teacher need not
        stay loaded), then restore ``pi_old`` unless this teacher is itself the next ``pi_old`` (no distillation)."""
        teacher, rollout = self.teachers[k], self.rollout
        logps = lambda *a: self.policy.logps(*a)[0]                     # noqa: E731
        self.teacher_logps[k] = self._rowwise(rollout, logps)
        record = self.record("teacher", k, log=log)
        if self.student_steps > 0:
            strategy = teacher.strategy if teacher.strategy != 3 or teacher.earlier_student in self.students else 1
            if strategy == 2 and k not in self.unlearned:
                raise RuntimeError(f"teacher {k}'s stage ended after {self.stage_step} steps, before its "
                                   f"unlearned_step={teacher.unlearned_step}: there is no pi_un to divide by "
                                   f"(a validation criterion ended the stage early?)")
            if strategy == 1:
                den = rollout.old_logps
            else:
                self.policy.model.load_state_dict(self.unlearned.pop(k) if strategy == 2
                                                  else self.students[teacher.earlier_student])
                den = self._rowwise(rollout, logps)
            signal = log_ratio_signal(self.teacher_logps[k], den, rollout.completion_mask, teacher.outliers,
                                      rows=rollout.correct == 1)
            self.check_signal(k, strategy, signal)
            self.signals[k] = whiten(signal, rollout.completion_mask)
            record["strategy"] = strategy
        if self.student_steps > 0 or k < len(self.teachers) - 1:
            self.policy.model.load_state_dict(self.old_state)         # stage 2 (or the next teacher) restarts from pi_old

    def check_signal(self, k: int, strategy: int, signal: torch.Tensor) -> None:
        """Stop, rather than distil nothing, when teacher ``k``'s log-ratio is constant on every valid token of the
        fixed batch (its whitened signal is then zero, or rounding noise scaled up to unit variance)."""
        mask = self.rollout.completion_mask
        if (spread := float(signal_spread(signal, mask))) > ZERO_SIGNAL:
            return
        den = {1: "pi_old", 2: f"pi_un (step {self.teachers[k].unlearned_step})",
               3: f"the student of iteration {self.teachers[k].earlier_student}"}[strategy]
        moved = float(((self.teacher_logps[k] - self.rollout.old_logps) * mask).abs().max())
        raise RuntimeError(
            f"ERPD iteration {self.iteration}: teacher {k}'s distillation signal log pi_e - log {den} is zero on "
            f"every valid token (spread {spread:.2e} <= {ZERO_SIGNAL:.0e} over {int(mask.sum())} tokens), so stage 2 "
            f"would train on nothing. The teacher ran {self.stage_step} steps and moved at most {moved:.2e} from "
            f"pi_old per token; causes: the denominator is the teacher itself, a teacher that did not move "
            f"(zero advantages, e.g. every sample of each group scored the same; a zero learning rate), or "
            f"outliers={self.teachers[k].outliers!r} masking every token")

    @torch.no_grad()
    def advance_stage(self, log: bool = True) -> None:
        """Leave the current stage (its evaluation goes to ``history``) and enter the next one."""
        kind, k = self.stage
        if kind == "teacher":
            self.end_teacher(k, log)
        else:
            record = self.record(kind, k, log=log)
            if kind == "student":
                student = self._rowwise(self.rollout, lambda *a: self.policy.logps(*a)[0])
                teacher = self.teacher_logps[max(k, 0)]
                record["ratio"] = float(deviation_ratio(student, self.rollout.old_logps, teacher, self.rollout.completion_mask))
                if log:
                    self.log("erpd/ratio", record["ratio"], batch_size=1)
        self.phase += 1
        if self.phase < len(self.stages()):
            self.enter_stage()
            return
        if any(t.strategy == 3 and t.earlier_student == self.iteration for t in self.teachers):
            self.students[self.iteration] = cpu_state(self.policy.model)
        self.iteration, self.phase, self.stage_step, self.rollout = self.iteration + 1, 0, 0, None
        self.teacher_logps, self.signals, self.unlearned = {}, {}, {}
        self.write_history()

    @torch.no_grad()
    def record(self, kind: str, k: int, log: bool) -> dict[str, Any]:
        """Held-out accuracy, and KL(current || base) and entropy on the current policy's own samples of the
        fixed batch's prompts, appended to ``history``. ``kl_base`` is the k3 estimate (unbiased, never
        negative); ``kl_base_k1`` is sec. 4.1's token mean of ``log pi - log pi_base`` (unbiased, but negative
        on small samples)."""
        record: dict[str, Any] = {"iteration": self.iteration, "stage": kind, "teacher": k, "step": self.global_step}
        if (accuracy := self.heldout_accuracy()) is not None:
            record["accuracy"] = accuracy
        G = self.rollout.group_size
        own = self.sample(self.rollout.prompt_ids[::G], self.rollout.prompt_mask[::G], self.rollout.prompts[::G],
                          self.rollout.metas[::G],
                          self.sampling, self.kl_samples)
        mask = own.completion_mask
        fields, size = (own.prompt_ids, own.prompt_mask, own.completion_ids, mask), self.micro_batch_size or len(own)
        parts = [self.policy.logps(*(f[s:s + size] for f in fields), self.sampling.logit_temperature, entropy=True)
                 for s in range(0, len(own), size)]                    # one forward for log-probs and entropy
        logps, entropy = (torch.cat([p[i] for p in parts]) * mask for i in (0, 1))
        base = self._rowwise(own, self.policy.reference_logps)
        record["kl_base"] = float(sample_kl(logps, base, mask, "k3"))
        record["kl_base_k1"] = float(sample_kl(logps, base, mask, "k1"))
        record["entropy"] = float(entropy.sum() / mask.sum().clamp(min=1))
        self.history.append(record)
        if log:
            self.log_dict({"erpd/accuracy": record.get("accuracy", float("nan")), "train/kl_base": record["kl_base"],
                           "erpd/entropy": record["entropy"]}, batch_size=1)
        self.write_history()
        return record

    def heldout_accuracy(self) -> float | None:
        datamodule = self.trainer.datamodule
        if self.eval_size == 0 or datamodule is None:
            return None
        correct: list[torch.Tensor] = []
        for batch in datamodule.val_dataloader():
            rollout = self.sample(*self.encode(batch["prompt"], self.val_sampling), batch["prompt"], batch["meta"],
                                  self.val_sampling)
            correct.append(rollout.correct)
            if self.eval_size is not None and sum(map(len, correct)) >= self.eval_size:
                break
        share = accuracy(torch.cat(correct)[:self.eval_size])
        return None if share is None else float(share)

    def write_history(self) -> None:
        """``<run dir>/erpd_history.jsonl``: one line per evaluated stage (what the benchmark reads)."""
        if self.trainer.loggers and self.trainer.log_dir is not None and self.trainer.is_global_zero:
            lines = "".join(json.dumps(r) + "\n" for r in self.history)
            Path(self.trainer.log_dir, "erpd_history.jsonl").write_text(lines)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = {name: getattr(self, name) for name in STATE}
        state["rollout"] = None if self.rollout is None else {f.name: getattr(self.rollout, f.name) for f in fields(RolloutBatch)}
        checkpoint["erpd"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["erpd"]
        for name in STATE:
            setattr(self, name, state[name])
        self.rollout = None if state["rollout"] is None else RolloutBatch(**state["rollout"])
