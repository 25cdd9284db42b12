"""TOPR: tapered off-policy REINFORCE on a stored dataset of scored completions."""

from typing import Any

from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.objectives import Aggregation, topr_loss
from lit_rl.rollout import RolloutBatch


class TOPR(RLModule):
    """Changes the base's loss to ``-sg(alpha) (R - c) L(y)`` with the truncated importance weight
    ``alpha = clamp(pi(y) / mu(y), 0, 1)`` on samples below ``threshold`` and 1 on the others
    (Le Roux et al. 2025; Off-Policy Finetuning for LLM Math Reasoning eq. 4). Trains from ``OfflineData``; no KL, no
    reference.

    Departures and options:
    1. ``threshold`` defaults to 1, the Countdown study's choice for its non-negative rewards (only a correct
       answer counts as positive); the TOPR paper's rewards are in {-1, +1} with threshold 0.
    2. ``baseline`` ``c`` subtracts a constant from R (the paper's optional baseline); 0 by default.
    3. ``per_token`` tapers each token by its own ratio instead of the paper's sequence ratio.
    4. Fed prompts instead of stored completions it samples them itself, so ``mu`` is the current
       policy and ``alpha = 1``: plain REINFORCE.
    """

    def __init__(
        self,
        *,
        threshold: float = 1.0,
        baseline: float = 0.0,
        per_token: bool = False,
        aggregation: Aggregation = "seq_mean_token_sum",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            threshold: rewards at or above it are positive (not tapered).
            baseline: constant ``c`` subtracted from the reward.
            per_token: per-token truncated ratios instead of the sequence ratio.
            aggregation: ``seq_mean_token_sum`` makes the loss the mean sequence loss of eq. 4.
        """
        super().__init__(aggregation=aggregation, **kwargs)
        self.threshold, self.baseline, self.per_token = threshold, baseline, per_token

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return rollout.rewards - self.baseline                          # [B]

    def policy_loss(self, logps: Tensor, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        behaviour = batch.behaviour_logps
        if behaviour is None:
            if batch.from_dataset:
                raise ValueError("the dataset carries no behaviour log-probs: set data.init_args.behaviour_model to "
                                 "the model that generated it (they are then computed once and cached)")
            behaviour = logps.detach()                                  # sampled here: mu is the policy
        return topr_loss(logps, behaviour, batch.rewards, batch.loss_mask, self.threshold, self.baseline,
                         self.per_token)
