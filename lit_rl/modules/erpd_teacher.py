"""ERPD's settings for one stage-1 teacher: its per-token loss (a ``lit_rl.losses`` value: the standalone modules'
clip, PPO's clip and value loss, SAPO's gate, or the CE and MSE losses only ERPD has), its schedule and how its
stage-2 signal is built."""

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from lit_rl.losses import SAPO, ClippedSurrogate, CorrectnessMSE, ImplicitRewardCE, LossAliases, PPOClip, TokenLoss
from lit_rl.objectives import KLEstimator, Outliers, kl_penalty
from lit_rl.objectives.teacher import Reduce
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch

TeacherLoss = Literal["grpo", "ppo", "sapo", "ce", "mse"]
# The old form (deprecated): the loss by name, its settings flat on the teacher, with these defaults.
TEACHER_LOSSES = LossAliases(
    names={"grpo": ClippedSurrogate, "ppo": PPOClip, "sapo": SAPO, "ce": ImplicitRewardCE, "mse": CorrectnessMSE},
    default="ce",
    flat={"beta": 0.01, "reduce": "sum", "tau_pos": 1.0, "tau_neg": 1.05, "eps_low": 0.2, "eps_high": 0.28,
          "vf_coef": 0.5, "value_clip": 0.2, "negative_weight": 1.0})


@dataclass(frozen=True)
class Teacher:
    """One stage-1 teacher (ERPD sec. 3.1, 3.4, 4.1) and how its stage-2 signal is built (sec. 3.3-3.4).

    Args:
        loss: the per-token loss of stage 1, a ``lit_rl.losses`` value: ``ClippedSurrogate`` (GRPO's clip on
            group-normalised advantages), ``PPOClip`` (a value head, GAE, clipped value loss), ``SAPO`` (soft
            gate), ``ImplicitRewardCE`` (BCE on the implicit reward ``beta * log pi/pi_old``), ``CorrectnessMSE``
            (eq. 10), or any other :class:`~lit_rl.losses.TokenLoss`. ``None``: ``ImplicitRewardCE()``. A loss
            that ``needs_values`` gets a value head and GAE advantages; the others GRPO's advantages.
        epochs: passes over the fixed rollout batch; ``mini_batch_size``: rows per optimizer step.
        lr: learning rate of this stage (``None``: the optimizer's).
        kl_coef: weak KL penalty to ``pi_old`` (the rollout's policy) in this stage.
        adaptive_lambda_alpha: VAPO's length-adaptive GAE lambda of a loss that needs values (``None``: 1).
        strategy: the signal's denominator: 1 ``pi_old``, 2 the unlearned ``pi_un`` (this teacher after
            ``unlearned_step`` steps), 3 the student of iteration ``earlier_student``.
        outliers: ``keep``, or keep only ``min(0, .)`` / ``max(0, .)`` of the log-ratio on correct samples (Table 12).
        weight: this signal's weight in a simultaneous ensemble.
        save_steps: stage-1 steps after which the teacher is also written with ``save_pretrained`` to
            ``<run dir>/erpd/iteration<i>/teacher<k>/step<s>`` (e.g. candidate ``pi_un`` checkpoints to inspect).
        beta, reduce, tau_pos, tau_neg, eps_low, eps_high, vf_coef, value_clip, negative_weight: deprecated, the old
            form: ``loss`` named by a string (``grpo``, ``ppo``, ``sapo``, ``ce``, ``mse``) with its settings
            here, still read (unset: the old defaults, e.g. ``eps_high`` 0.28) and mapped to the value, which
            replaces them (``Teacher(loss="ce", beta=0.05)`` holds ``loss=ImplicitRewardCE(beta=0.05)``). An unset
            ``value_clip`` is PPOClip's 0.2: an unclipped value loss needs the value form. Refused beside a value.
    """

    loss: TokenLoss | TeacherLoss | None = None
    epochs: int = 4
    mini_batch_size: int = 16
    lr: float | None = None
    kl_coef: float = 0.0
    beta: float | None = None
    reduce: Reduce | None = None
    tau_pos: float | None = None
    tau_neg: float | None = None
    eps_low: float | None = None
    eps_high: float | None = None
    vf_coef: float | None = None
    value_clip: float | None = None
    adaptive_lambda_alpha: float | None = None
    negative_weight: float | None = None
    strategy: int = 1
    unlearned_step: int = 10
    earlier_student: int = 1
    outliers: Outliers = "keep"
    weight: float = 1.0
    save_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        flat = {name: getattr(self, name) for name in TEACHER_LOSSES.flat}
        object.__setattr__(self, "loss", TEACHER_LOSSES.resolve(self.loss, flat, "ERPD teacher"))
        for name in flat:                                               # the value holds them now
            object.__setattr__(self, name, None)
        checks = {"epochs": self.epochs >= 1, "mini_batch_size": self.mini_batch_size >= 1,
                  "kl_coef": self.kl_coef >= 0, "strategy": self.strategy in (1, 2, 3),
                  "unlearned_step": self.unlearned_step >= 1, "earlier_student": self.earlier_student >= 1,
                  "outliers": self.outliers in ("keep", "min", "max"),
                  "lr": self.lr is None or self.lr > 0, "save_steps": all(step >= 1 for step in self.save_steps)}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid teacher setting {name}={getattr(self, name)!r} in {self}")

    def token_loss(self, output: PolicyOutput, batch: RolloutBatch, values: Tensor | None,
                   kl_estimator: KLEstimator) -> tuple[Tensor, Tensor | None]:
        """Per-token stage-1 loss ``[b, C]`` of one micro-batch of the fixed rollout (its ``old_logps`` are
        ``pi_old``'s; ``values`` the value head's, for a loss that needs them) plus the weak KL to ``pi_old``, and
        the clipped-token mask of clipped losses."""
        if self.loss.needs_correct and batch.correct.isnan().any():
            raise ValueError(f"ERPD's {type(self.loss).__name__} teacher learns from correctness, but the reward "
                             f"judged none for some samples (Score.correct is None): use a reward that reports "
                             f"correctness")
        loss, clipped = self.loss(output, batch, values)
        if self.kl_coef > 0:
            loss = loss + self.kl_coef * kl_penalty(output.logps, batch.old_logps, kl_estimator)
        return loss, clipped
