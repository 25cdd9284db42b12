"""Pure objective functions: tensors in, tensors out; no Lightning, no state."""

from lit_rl.objectives.advantages import (
    GroupNormalized,
    GroupScale,
    LeaveOneOut,
    grpo_advantages,
    reinforce_advantages,
    remax_advantages,
    rloo_advantages,
    zero_std_groups,
)
from lit_rl.objectives.aggregation import Aggregation, aggregate
from lit_rl.objectives.erpd import (
    Outliers,
    combine_signals,
    deviation_ratio,
    distillation_signal,
    mask_outliers,
    sample_kl,
    whiten,
)
from lit_rl.objectives.ppo import (
    clipped_value_loss,
    gae,
    length_adaptive_lambda,
    outcome_token_rewards,
    ppo_advantages,
    ppo_loss,
    ppo_returns,
)
from lit_rl.objectives.evaluation import mean_at_k, pass_at_k
from lit_rl.objectives.teacher import ce_loss, implicit_reward, mse_loss, sapo_loss
from lit_rl.objectives.importance import (
    ImportanceSampling,
    importance_weight_stats,
    logp_diff,
    masked_importance_weights,
    sequence_rejected_importance_weights,
    truncated_importance_weights,
)
from lit_rl.objectives.kl import KLEstimator, kl_penalty
from lit_rl.objectives.losses import clipped_policy_loss, policy_gradient_loss, sft_loss
from lit_rl.objectives.offpolicy import topr_loss
from lit_rl.objectives.reward_model import PairMode, bradley_terry_loss, pairwise_accuracy, preference_pairs
from lit_rl.objectives.preference import (
    best_worst,
    dpo_loss,
    ipo_loss,
    multi_completion_loss,
    pair_margins,
    rebel_loss,
    sequence_logps,
)

__all__ = [
    "GroupNormalized", "LeaveOneOut",
    "Aggregation", "GroupScale", "KLEstimator", "aggregate", "clipped_policy_loss", "grpo_advantages",
    "kl_penalty", "policy_gradient_loss", "reinforce_advantages", "remax_advantages", "rloo_advantages",
    "sft_loss", "zero_std_groups", "topr_loss", "best_worst", "dpo_loss", "ipo_loss", "multi_completion_loss",
    "pair_margins", "rebel_loss", "sequence_logps",
]
__all__ += [  # ERPD and PPO
    "Outliers", "ce_loss", "clipped_value_loss", "combine_signals", "deviation_ratio", "distillation_signal", "gae",
    "implicit_reward", "length_adaptive_lambda", "mask_outliers", "mse_loss", "outcome_token_rewards", "sample_kl",
    "sapo_loss", "whiten", "logp_diff", "truncated_importance_weights", "ppo_advantages", "ppo_loss",
    "ppo_returns",
]
__all__ += ["PairMode", "bradley_terry_loss", "pairwise_accuracy", "preference_pairs"]  # reward models
__all__ += ["mean_at_k", "pass_at_k"]  # evaluation
__all__ += ["ImportanceSampling", "importance_weight_stats", "masked_importance_weights",  # off-policy correction
            "sequence_rejected_importance_weights"]
