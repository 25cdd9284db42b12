"""RLOO: REINFORCE with a leave-one-out baseline."""

from typing import Any

from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.objectives import rloo_advantages
from lit_rl.rollout import RolloutBatch


class RLOO(RLModule):
    """Changes the base's advantage to ``A_i = r_i - mean_{j != i} r_j`` (Ahmadian et al. 2024;
    Off-Policy Finetuning for LLM Math Reasoning eq. 2-3). Needs ``group_size >= 2``."""

    def __init__(self, *, group_size: int = 4, **kwargs: Any) -> None:
        if group_size < 2:
            raise ValueError(f"RLOO needs group_size >= 2 samples per prompt (got group_size={group_size}): "
                             "the leave-one-out baseline of a single sample is undefined")
        super().__init__(group_size=group_size, **kwargs)

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        return rloo_advantages(rollout.rewards, rollout.group_size)
