"""GRPO: group-normalised advantages, a clipped surrogate and a KL penalty in the loss."""

from typing import Any, Literal

import torch
from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.objectives import GroupScale, clipped_policy_loss, grpo_advantages, sapo_loss, zero_std_groups
from lit_rl.rollout import RolloutBatch


class GRPO(RLModule):
    """Changes the base's advantage to ``(r - mean_group) / std`` and its loss to the PPO clip
    (Shao et al. 2024, eq. 3), with ``beta * k3`` to the reference in the loss.

    Options beyond the paper: clip-higher (``eps_high``, DAPO), dual clip, ``scale="none"`` (Dr. GRPO),
    ``num_iterations`` passes over ``mini_batches`` of one rollout against stored old log-probs, and
    dynamic sampling; ``loss: sapo`` replaces the clip by SAPO's soft gate (Gao et al. 2025). Departure (dynamic sampling): DAPO refills with *new* prompts; lit-rl re-samples the
    dropped groups' own prompts, so the batch keeps its prompts and the data loader stays one batch per step.
    """

    def __init__(
        self,
        *,
        group_size: int = 4,
        scale: GroupScale = "group",
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        dual_clip: float | None = None,
        kl_coef: float = 0.04,
        dynamic_sampling: bool = False,
        max_resample_rounds: int = 3,
        loss: Literal["clip", "sapo"] = "clip",
        tau_pos: float = 1.0,
        tau_neg: float = 1.05,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            scale: divide centred rewards by the ``group`` std, the ``batch`` std, or ``none``.
            eps_low: lower clip ``1 - eps_low``.
            eps_high: upper clip ``1 + eps_high`` (DAPO's clip-higher uses 0.28).
            dual_clip: cap the loss of negative-advantage tokens at ``-c A`` (``c`` > 1, e.g. 3).
            dynamic_sampling: re-sample groups whose rewards are all equal (they carry no signal).
            max_resample_rounds: give up re-sampling after this many rounds and keep what is left.
            loss: ``clip`` (PPO clip) or ``sapo`` (soft gate ``sigmoid(tau (rho - 1)) * 4 / tau``; no clipping).
            tau_pos, tau_neg: SAPO's gate temperatures for positive and negative advantages.
        """
        if group_size < 2:
            raise ValueError(f"GRPO needs group_size >= 2 samples per prompt (got group_size={group_size})")
        super().__init__(group_size=group_size, kl_coef=kl_coef, **kwargs)
        self.scale, self.eps_low, self.eps_high, self.dual_clip = scale, eps_low, eps_high, dual_clip
        self.dynamic_sampling, self.max_resample_rounds = dynamic_sampling, max_resample_rounds
        if loss not in ("clip", "sapo"):
            raise ValueError(f"GRPO loss must be 'clip' or 'sapo' (got {loss!r})")
        self.loss, self.tau_pos, self.tau_neg = loss, tau_pos, tau_neg

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return grpo_advantages(rollout.rewards, rollout.group_size, self.scale)

    def policy_loss(self, logps: Tensor, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        if self.loss == "sapo":
            return sapo_loss(logps, batch.old_logps, batch.advantages, self.tau_pos, self.tau_neg), None
        return clipped_policy_loss(logps, batch.old_logps, batch.advantages, self.eps_low, self.eps_high, self.dual_clip)

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
