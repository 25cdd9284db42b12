"""Rewards: batched scoring of completions with their prompts and dataset columns (see ``base``)."""

from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score, reward_name, score_batch
from lit_rl.rewards.combine import Rewards
from lit_rl.rewards.format import FormatReward
from lit_rl.rewards.function import FunctionReward
from lit_rl.rewards.math import MathReward

__all__ = ["Columns", "FormatReward", "FunctionReward", "MathReward", "Prompt", "RewardFunction", "Rewards", "Score", "reward_name", "score_batch"]
