"""Rewards: batched scoring of completions with their prompts and dataset columns (see ``base``)."""

from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score, reward_name, score_batch
from lit_rl.rewards.combine import Rewards
from lit_rl.rewards.format import FormatReward
from lit_rl.rewards.function import FunctionReward
from lit_rl.rewards.math import MathReward
from lit_rl.rewards.remote import RemoteReward

__all__ = ["Columns", "FormatReward", "FunctionReward", "MathReward", "Prompt", "RemoteReward", "RewardFunction", "RewardModel", "Rewards", "Score", "reward_name", "score_batch"]


def __getattr__(name: str):
    # RewardModel renders prompts with lit_rl.chat, which imports this package: load it on first use.
    if name == "RewardModel":
        from lit_rl.rewards.model import RewardModel

        return RewardModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
