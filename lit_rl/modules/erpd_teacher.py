"""ERPD's settings for one stage-1 teacher, and its per-token loss: the standalone modules' own loss functions
(GRPO's clip, PPO's clip and value loss, SAPO's gate), and the CE and MSE losses only ERPD has."""

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from lit_rl.objectives import KLEstimator, Outliers, ce_loss, clipped_policy_loss, kl_penalty, mse_loss, ppo_loss
from lit_rl.objectives import sapo_loss
from lit_rl.objectives.teacher import Reduce
from lit_rl.rollout import RolloutBatch

TeacherLoss = Literal["grpo", "ppo", "sapo", "ce", "mse"]


@dataclass(frozen=True)
class Teacher:
    """One stage-1 teacher (ERPD sec. 3.1, 3.4, 4.1) and how its stage-2 signal is built (sec. 3.3-3.4).

    Args:
        loss: ``grpo`` (PPO clip on group-normalised advantages), ``ppo`` (value head, GAE, clipped value loss),
            ``sapo`` (soft gate), ``ce`` (BCE on the implicit reward ``beta * log pi/pi_old``), ``mse`` (eq. 10).
        epochs: passes over the fixed rollout batch; ``mini_batch_size``: rows per optimizer step.
        lr: learning rate of this stage (``None``: the optimizer's).
        kl_coef: weak KL penalty to ``pi_old`` (the rollout's policy) in this stage.
        beta, reduce: CE's ``beta`` and whether the log-ratio is summed or averaged over a sequence's tokens.
        tau_pos, tau_neg: SAPO's gate temperatures. eps_low, eps_high: GRPO/PPO clip range.
        vf_coef, value_clip, adaptive_lambda_alpha: PPO's value-loss weight, value clip, VAPO lambda (``None``: 1).
        negative_weight: MSE weight of the tokens of incorrect trajectories (``w`` of Table 9).
        strategy: the signal's denominator: 1 ``pi_old``, 2 the unlearned ``pi_un`` (this teacher after
            ``unlearned_step`` steps), 3 the student of iteration ``earlier_student``.
        outliers: ``keep``, or keep only ``min(0, .)`` / ``max(0, .)`` of the log-ratio on correct samples (Table 12).
        weight: this signal's weight in a simultaneous ensemble.
        save_steps: stage-1 steps after which the teacher is also written with ``save_pretrained`` to
            ``<run dir>/erpd/iteration<i>/teacher<k>/step<s>`` (e.g. candidate ``pi_un`` checkpoints to inspect).
    """

    loss: TeacherLoss = "ce"
    epochs: int = 4
    mini_batch_size: int = 16
    lr: float | None = None
    kl_coef: float = 0.0
    beta: float = 0.01
    reduce: Reduce = "sum"
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    eps_low: float = 0.2
    eps_high: float = 0.28
    vf_coef: float = 0.5
    value_clip: float | None = 0.2
    adaptive_lambda_alpha: float | None = None
    negative_weight: float = 1.0
    strategy: int = 1
    unlearned_step: int = 10
    earlier_student: int = 1
    outliers: Outliers = "keep"
    weight: float = 1.0
    save_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = {"loss": self.loss in TeacherLoss.__args__, "epochs": self.epochs >= 1,
                  "mini_batch_size": self.mini_batch_size >= 1, "kl_coef": self.kl_coef >= 0,
                  "beta": self.beta > 0, "strategy": self.strategy in (1, 2, 3), "unlearned_step": self.unlearned_step >= 1,
                  "earlier_student": self.earlier_student >= 1, "outliers": self.outliers in ("keep", "min", "max"),
                  "tau_pos": self.tau_pos > 0, "tau_neg": self.tau_neg > 0, "negative_weight": self.negative_weight >= 0,
                  "lr": self.lr is None or self.lr > 0, "reduce": self.reduce in ("sum", "mean"),
                  "save_steps": all(step >= 1 for step in self.save_steps)}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid teacher setting {name}={getattr(self, name)!r} in {self}")

    def token_loss(self, logps: Tensor, batch: RolloutBatch, values: Tensor | None,
                   kl_estimator: KLEstimator) -> tuple[Tensor, Tensor | None]:
        """Per-token stage-1 loss ``[b, C]`` of one micro-batch of the fixed rollout (its ``old_logps`` are
        ``pi_old``'s; ``values`` the value head's, for ``ppo``), and the clipped-token mask of clipped losses.
        CE's sequence loss is spread evenly over the sequence's valid tokens, so ``seq_mean_token_mean``
        aggregation gives exactly its mean over sequences."""
        old, mask, advantages = batch.old_logps, batch.loss_mask, batch.advantages
        if self.loss in ("ce", "mse") and batch.correct.isnan().any():
            raise ValueError(f"ERPD's {self.loss} teacher learns from correctness, but the reward judged none for "
                             f"some samples (Score.correct is None): use a reward that reports correctness")
        clipped = None
        if self.loss == "grpo":                                         # the GRPO module's loss
            loss, clipped = clipped_policy_loss(logps, old, advantages, self.eps_low, self.eps_high)
        elif self.loss == "ppo":                                        # the PPO module's loss
            loss, clipped = ppo_loss(logps, old, advantages, values, batch.values, batch.returns, self.eps_low,
                                     self.eps_high, self.vf_coef, self.value_clip)
        elif self.loss == "sapo":                                       # GRPO's loss: sapo
            loss = sapo_loss(logps, old, advantages, self.tau_pos, self.tau_neg)
        elif self.loss == "ce":
            per_seq = ce_loss(logps, old, mask, batch.correct, self.beta, self.reduce)      # [b]
            loss = per_seq[:, None] * mask / mask.sum(-1, keepdim=True).clamp(min=1)        # [b, C]
        else:
            loss = mse_loss(logps, batch.correct, self.negative_weight)                     # [b, C]
        if self.kl_coef > 0:
            loss = loss + self.kl_coef * kl_penalty(logps, old, kl_estimator)
        return loss, clipped
