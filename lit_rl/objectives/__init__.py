"""Pure objective functions: tensors in, tensors out; no Lightning, no state."""

from lit_rl.objectives.advantages import (
    GroupScale,
    grpo_advantages,
    reinforce_advantages,
    remax_advantages,
    rloo_advantages,
    zero_std_groups,
)
from lit_rl.objectives.aggregation import Aggregation, aggregate
from lit_rl.objectives.importance import logp_diff, truncated_importance_weights
from lit_rl.objectives.kl import KLEstimator, kl_penalty
from lit_rl.objectives.losses import clipped_policy_loss, policy_gradient_loss, sft_loss

__all__ = [
    "Aggregation", "GroupScale", "KLEstimator", "aggregate", "clipped_policy_loss", "grpo_advantages",
    "kl_penalty", "policy_gradient_loss", "reinforce_advantages", "remax_advantages", "rloo_advantages",
    "sft_loss", "zero_std_groups", "logp_diff", "truncated_importance_weights",
]
