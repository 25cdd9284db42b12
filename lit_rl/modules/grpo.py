"""GRPO: group-normalised advantages, a clipped surrogate and a KL penalty in the loss."""

from typing import Any, Literal

import torch
from torch import Tensor

from lit_rl.losses import SAPO, ClippedSurrogate, LossAliases, TokenLoss
from lit_rl.modules.base import RLModule
from lit_rl.objectives import GroupScale, grpo_advantages, zero_std_groups
from lit_rl.policy import PolicyOutput
from lit_rl.rollout import RolloutBatch

# The clip's settings flat on the module (no loss given), and the old string form (deprecated).
GRPO_LOSSES = LossAliases(names={"clip": ClippedSurrogate, "sapo": SAPO}, default="clip",
                          flat={"eps_low": 0.2, "eps_high": 0.2, "dual_clip": None, "tau_pos": 1.0, "tau_neg": 1.05})


class GRPO(RLModule):
    """Changes the base's advantage to ``(r - mean_group) / std`` and its loss to the PPO clip
    (Shao et al. 2024, eq. 3), with ``beta * k3`` to the reference in the loss.

    Options beyond the paper: clip-higher (``eps_high``, DAPO), dual clip, ``scale="none"`` (Dr. GRPO),
    ``num_iterations`` passes over ``mini_batches`` of one rollout against stored old log-probs, dynamic
    sampling, and any other per-token loss as a value (``loss: {class_path: lit_rl.losses.SAPO}`` is SAPO's soft
    gate, Gao et al. 2025). Departure (dynamic sampling): DAPO refills with *new* prompts; lit-rl re-samples the
    dropped groups' own prompts, so the batch keeps its prompts and the data loader stays one batch per step.
    """

    def __init__(
        self,
        *,
        group_size: int = 4,
        scale: GroupScale = "group",
        loss: TokenLoss | Literal["clip", "sapo"] | None = None,
        eps_low: float | None = None,
        eps_high: float | None = None,
        dual_clip: float | None = None,
        kl_coef: float = 0.04,
        dynamic_sampling: bool = False,
        max_resample_rounds: int = 3,
        tau_pos: float | None = None,
        tau_neg: float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            scale: divide centred rewards by the ``group`` std, the ``batch`` std, or ``none``.
            loss: the per-token loss, a ``lit_rl.losses`` value (``ClippedSurrogate``, ``SAPO``, your own);
                ``None``: the paper's clip, ``ClippedSurrogate(eps_low, eps_high, dual_clip)``. The old names
                ``clip`` and ``sapo`` (SAPO from ``tau_pos``, ``tau_neg``) still work and are deprecated.
            eps_low: lower clip ``1 - eps_low`` of the default loss (unset: 0.2).
            eps_high: upper clip ``1 + eps_high`` of the default loss (unset: 0.2; DAPO's clip-higher uses 0.28).
            dual_clip: cap the default loss of negative-advantage tokens at ``-c A`` (``c`` > 1, e.g. 3).
            dynamic_sampling: re-sample groups whose rewards are all equal (they carry no signal).
            max_resample_rounds: give up re-sampling after this many rounds and keep what is left.
            tau_pos, tau_neg: deprecated, with ``loss: sapo``: SAPO's gate temperatures (unset: 1.0, 1.05).

        ``eps_low``, ``eps_high``, ``dual_clip`` and ``tau_*`` are refused beside a loss value: set them on it.
        """
        if group_size < 2:
            raise ValueError(f"GRPO needs group_size >= 2 samples per prompt (got group_size={group_size})")
        flat = {"eps_low": eps_low, "eps_high": eps_high, "dual_clip": dual_clip, "tau_pos": tau_pos,
                "tau_neg": tau_neg}
        loss = GRPO_LOSSES.resolve(loss, flat, "GRPO")
        if loss.needs_values:
            raise ValueError(f"GRPO has no critic, and loss {loss!r} needs a value head's values: use lit_rl.PPO")
        super().__init__(group_size=group_size, kl_coef=kl_coef, **kwargs)
        self.scale, self.loss = scale, loss
        self.needs_hidden, self.needs_logits = loss.needs_hidden, loss.needs_logits
        self.dynamic_sampling, self.max_resample_rounds = dynamic_sampling, max_resample_rounds

    @classmethod
    def canonical_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        return GRPO_LOSSES.canonical(settings)

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return grpo_advantages(rollout.rewards, rollout.group_size, self.scale)

    def token_loss(self, output: PolicyOutput, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        return self.loss(output, batch)

    def collect(self, prompts: list, metas: list[dict]) -> RolloutBatch:
        rollout = super().collect(prompts, metas)
        if not self.dynamic_sampling:
            return rollout
        G = self.group_size
        groups = [rollout.select(_rows(p, G)) for p in range(len(metas))]
        flat = zero_std_groups(rollout.scores, G).tolist()              # [P]
        rounds = 0
        while any(flat) and rounds < self.max_resample_rounds:
            redo = [p for p, is_flat in enumerate(flat) if is_flat]
            fresh = super().collect([prompts[p] for p in redo], [metas[p] for p in redo])
            for j, (p, still_flat) in enumerate(zip(redo, zero_std_groups(fresh.scores, G).tolist())):
                if not still_flat:
                    groups[p], flat[p] = fresh.select(_rows(j, G)), False
            rounds += 1
        self.log("rollout/resample_rounds", float(rounds), batch_size=len(rollout))
        return RolloutBatch.cat(groups)


def _rows(group: int, group_size: int) -> Tensor:
    """Row indices of one group in a prompt-major batch."""
    return torch.arange(group * group_size, (group + 1) * group_size)
