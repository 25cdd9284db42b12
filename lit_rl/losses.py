"""Per-token losses as values: what an algorithm optimises, chosen in a config by ``class_path``.

Each loss is a small frozen dataclass whose fields are its settings and whose call is one line over a pure
function of ``lit_rl.objectives`` (torchtune's losses, cleanRL's one-screen objectives). One signature
everywhere::

    loss(output: PolicyOutput, batch: RolloutBatch, values: Tensor | None) -> (loss [b, C], clipped [b, C] | None)

``output`` is the policy's forward (``logps`` and ``entropy`` with gradient, ``hidden``, ``logits``), ``batch``
the micro-batch (``old_logps``, ``advantages``, ``loss_mask``, ``correct``, a critic's ``values`` and ``returns``),
``values`` the value head's values of this forward (``None`` unless the loss ``needs_values``). The second
return is the mask of tokens whose clipped branch was taken (``None``: the loss never clips). Positions outside
``batch.loss_mask`` are ignored by the aggregation that follows (``lit_rl.objectives.aggregate``), and no loss
here lets them change the positions inside it.

What a loss needs beyond log-probs it declares as class attributes, and its owner (a module, an ERPD teacher)
provides it: ``needs_hidden`` (the forward returns the last hidden state), ``needs_logits`` (the forward returns
the ``[B, C, V]`` logits, which it otherwise never computes), ``needs_values`` (a value head, GAE values and
returns on the batch; implies ``needs_hidden``), ``needs_correct`` (every sample judged correct or not by the
reward).

Adding a loss is one class (subclass :class:`TokenLoss`, decorate with ``@dataclass(frozen=True)``) and one
line of YAML: ``loss: {class_path: mypkg.losses.MyLoss, init_args: {...}}``.
"""

import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from lit_rl.objectives import ce_loss, clipped_policy_loss, mse_loss, policy_gradient_loss, ppo_loss, sapo_loss
from lit_rl.objectives.teacher import Reduce
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch


class TokenLoss:
    """A per-token loss ``loss(output, batch, values) -> (loss [b, C], clipped [b, C] bool or None)``; see the
    module docstring. Subclasses are frozen dataclasses; their settings are their fields."""

    needs_hidden: ClassVar[bool] = False                                # the forward returns the last hidden state
    needs_logits: ClassVar[bool] = False                                # ... and its [B, C, V] logits
    needs_values: ClassVar[bool] = False                                # a value head and GAE (batch.values, .returns)
    needs_correct: ClassVar[bool] = False                               # batch.correct judged for every sample

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        torch.serialization.add_safe_globals([cls])                     # checkpoints' settings hold the value

    def __call__(self, output: PolicyOutput, batch: RolloutBatch,
                 values: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


def _check(loss: TokenLoss, **ok: bool) -> None:
    """Refuse a setting whose check is false, named as ``Loss.setting=value``."""
    for name, fine in ok.items():
        if not fine:
            raise ValueError(f"invalid loss setting {type(loss).__name__}.{name}={getattr(loss, name)!r} in {loss}")


@dataclass(frozen=True)
class PolicyGradient(TokenLoss):
    """The on-policy REINFORCE surrogate ``-A * l_t`` (Williams 1992): its gradient is ``-A * grad l_t``
    (:func:`~lit_rl.objectives.policy_gradient_loss`). Never clips."""

    def __call__(self, output: PolicyOutput, batch: RolloutBatch, values: Tensor | None = None) -> tuple[Tensor, None]:
        return policy_gradient_loss(output.logps, batch.advantages), None                   # [b, C]


@dataclass(frozen=True)
class ClippedSurrogate(TokenLoss):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), GRPO's policy loss (Shao et al. 2024, eq. 3):
    ``rho = exp(clamp(l - l_old))``, loss ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``, with DAPO's
    clip-higher ``eps_high`` (Yu et al. 2025) and the dual clip (Ye et al. 2020), which caps the loss of
    ``A < 0`` tokens at ``-c A`` (:func:`~lit_rl.objectives.clipped_policy_loss`)."""

    eps_low: float = 0.2
    """Lower clip ``1 - eps_low``."""
    eps_high: float = 0.2
    """Upper clip ``1 + eps_high`` (DAPO's clip-higher uses 0.28)."""
    dual_clip: float | None = None
    """``c`` > 1 (e.g. 3) caps the loss of negative-advantage tokens at ``-c A``; ``None``: off."""

    def __post_init__(self) -> None:
        _check(self, eps_low=0 <= self.eps_low < 1, eps_high=self.eps_high >= 0,
               dual_clip=self.dual_clip is None or self.dual_clip > 1)

    def __call__(self, output: PolicyOutput, batch: RolloutBatch,
                 values: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return clipped_policy_loss(output.logps, batch.old_logps, batch.advantages, self.eps_low, self.eps_high,
                                   self.dual_clip)                                          # [b, C], [b, C]


@dataclass(frozen=True)
class PPOClip(TokenLoss):
    """PPO's objective without its entropy term (Schulman et al. 2017, eq. 9): the clipped surrogate plus
    ``vf_coef`` times the clipped value loss ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` of
    the value head's ``values`` against the batch's GAE returns (:func:`~lit_rl.objectives.ppo_loss`)."""

    needs_hidden = True
    needs_values = True

    eps_low: float = 0.2
    """Lower clip ``1 - eps_low``."""
    eps_high: float = 0.2
    """Upper clip ``1 + eps_high``."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    value_clip: float | None = 0.2
    """Clip range of the value update around the rollout's values (``None``: unclipped)."""

    def __post_init__(self) -> None:
        _check(self, eps_low=0 <= self.eps_low < 1, eps_high=self.eps_high >= 0, vf_coef=self.vf_coef >= 0,
               value_clip=self.value_clip is None or self.value_clip > 0)

    def __call__(self, output: PolicyOutput, batch: RolloutBatch,
                 values: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if values is None or batch.values is None or batch.returns is None:
            raise ValueError("PPOClip needs the value head's values and the batch's GAE values and returns: its "
                             "owner runs a critic when the loss declares needs_values")
        return ppo_loss(output.logps, batch.old_logps, batch.advantages, values, batch.values, batch.returns,
                        self.eps_low, self.eps_high, self.vf_coef, self.value_clip)        # [b, C], [b, C]


@dataclass(frozen=True)
class SAPO(TokenLoss):
    """SAPO (Gao et al. 2025; ERPD sec. 3.1, 4.1): the clip replaced by the soft gate
    ``f(rho) = sigmoid(tau (rho - 1)) * 4 / tau``, ``tau = tau_pos`` where ``A > 0`` else ``tau_neg``; loss
    ``-f(rho) A`` (:func:`~lit_rl.objectives.sapo_loss`). ``f'(1) = 1``; never clips."""

    tau_pos: float = 1.0
    """Gate temperature of positive-advantage tokens."""
    tau_neg: float = 1.05
    """Gate temperature of the others."""

    def __post_init__(self) -> None:
        _check(self, tau_pos=self.tau_pos > 0, tau_neg=self.tau_neg > 0)

    def __call__(self, output: PolicyOutput, batch: RolloutBatch, values: Tensor | None = None) -> tuple[Tensor, None]:
        return sapo_loss(output.logps, batch.old_logps, batch.advantages, self.tau_pos, self.tau_neg), None  # [b, C]


@dataclass(frozen=True)
class ImplicitRewardCE(TokenLoss):
    """ERPD's CE teacher (ERPD eq. 2-3; Yuan et al. 2025a, sec. 2.2): binary cross-entropy with logits of the
    implicit reward ``R = beta * sum_t m (l_t - l_old_t)`` (or ``beta`` times the token mean) against the
    sample's correctness (:func:`~lit_rl.objectives.ce_loss`). The sequence loss is spread evenly over the
    sequence's trained tokens, so ``seq_mean_token_mean`` aggregation gives exactly its mean over sequences."""

    needs_correct = True

    beta: float = 0.01
    """Scale of the implicit reward (the paper: 0.001 to 0.05)."""
    reduce: Reduce = "sum"
    """``sum`` or ``mean`` of the log-ratio over a sequence's trained tokens."""

    def __post_init__(self) -> None:
        _check(self, beta=self.beta > 0, reduce=self.reduce in ("sum", "mean"))

    def __call__(self, output: PolicyOutput, batch: RolloutBatch, values: Tensor | None = None) -> tuple[Tensor, None]:
        mask = batch.loss_mask
        per_seq = ce_loss(output.logps, batch.old_logps, mask, batch.correct, self.beta, self.reduce)     # [b]
        return per_seq[:, None] * mask / mask.sum(-1, keepdim=True).clamp(min=1), None                    # [b, C]


@dataclass(frozen=True)
class CorrectnessMSE(TokenLoss):
    """ERPD's MSE teacher (ERPD eq. 10): per token ``(pi_theta(y_t | s_t) - R)^2`` with the token
    *probability* and the sample's correctness ``R`` in {0, 1}, the tokens of incorrect samples weighted by
    ``negative_weight`` (``w`` of Table 9) (:func:`~lit_rl.objectives.mse_loss`)."""

    needs_correct = True

    negative_weight: float = 1.0
    """Weight of the tokens of incorrect samples (1: eq. 10)."""

    def __post_init__(self) -> None:
        _check(self, negative_weight=self.negative_weight >= 0)

    def __call__(self, output: PolicyOutput, batch: RolloutBatch, values: Tensor | None = None) -> tuple[Tensor, None]:
        return mse_loss(output.logps, batch.correct, self.negative_weight), None             # [b, C]


# ------------------------------------------------------------------------- the old string settings
@dataclass(frozen=True)
class LossAliases:
    """How an owner once chose its loss (deprecated): a string from ``names``, its settings flat beside it
    (``GRPO(loss="sapo", tau_pos=...)``, ``Teacher(loss="ce", beta=...)``), ``None`` standing for ``default``.
    :meth:`resolve` maps that form to the value; :meth:`canonical` rewrites a config or checkpoint written in
    it, so that a resume compares it with the same run configured by value."""

    names: dict[str, type[TokenLoss]]
    default: str
    flat: dict[str, Any]
    """The flat settings and the owner's defaults for them (an unset flat setting is ``None``)."""

    def resolve(self, loss: TokenLoss | str | None, settings: dict[str, Any], owner: str,
                warn: bool = True) -> TokenLoss:
        """The loss value: ``loss`` itself if it is one (then no flat setting may be set: a setting has one
        place), else the class ``loss`` (or ``default``) names, built from the flat settings it has (the unset
        ones at the owner's old defaults; the others are ignored, as they always were)."""
        given = {k: v for k, v in settings.items() if v is not None}
        if isinstance(loss, TokenLoss):
            if given:
                raise ValueError(f"{owner}: {', '.join(f'{k}={v!r}' for k, v in given.items())} set beside "
                                 f"loss={loss!r}; set {'them' if len(given) > 1 else 'it'} on the loss value itself")
            return loss
        if loss is not None and loss not in self.names:
            raise ValueError(f"{owner}: unknown loss {loss!r}; give a lit_rl.losses value (loss: {{class_path: "
                             f"lit_rl.losses.ClippedSurrogate, init_args: {{...}}}}) or one of the old names "
                             f"{sorted(self.names)}")
        cls = self.names[loss or self.default]
        if loss is not None and warn:
            warnings.warn(f"{owner}: loss={loss!r} with its settings beside it is deprecated; write the value, e.g. "
                          f"loss: {{class_path: lit_rl.losses.{cls.__name__}, init_args: {{...}}}}",
                          DeprecationWarning, stacklevel=3)
        own = {f.name for f in fields(cls)}
        return cls(**{k: given.get(k, default) for k, default in self.flat.items() if k in own})

    def canonical(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` (a config's or a checkpoint's, as a dict) with a loss named the old way replaced by the
        description of the value it stands for, and the flat settings gone."""
        from lit_rl.resume import describe

        loss = settings.get("loss")
        out = {k: v for k, v in settings.items() if k not in self.flat}
        if loss is None or isinstance(loss, str) and loss in self.names:
            flat = {k: settings.get(k) for k in self.flat}
            out["loss"] = describe(self.resolve(loss, flat, "", warn=False))
        return out
