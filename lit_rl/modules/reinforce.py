"""REINFORCE and ReMax: on-policy policy gradient with a baseline that does not depend on the sample."""

from typing import Any, Literal

import torch
from torch import Tensor

from lit_rl.modules.base import RLModule
from lit_rl.objectives import reinforce_advantages, remax_advantages
from lit_rl.rollout import RolloutBatch, accuracy


class REINFORCE(RLModule):
    """Changes the base's advantage to ``A = r - b`` (Williams 1992).

    ``baseline``: ``none`` (b = 0), ``batch_mean`` (b = mean reward of the batch, which includes the sample
    itself: a small bias for small batches) or ``moving_average`` (b = EMA of past batch means, updated after
    use so it never depends on the current samples; saved in checkpoints).
    """

    def __init__(self, *, baseline: Literal["none", "batch_mean", "moving_average"] = "moving_average",
                 baseline_decay: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1) (got {baseline_decay})")
        self.baseline, self.baseline_decay = baseline, baseline_decay
        self.register_buffer("reward_ema", torch.zeros(()))
        self.register_buffer("reward_ema_steps", torch.zeros((), dtype=torch.long))

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        rewards = rollout.rewards
        if self.baseline == "none":
            return reinforce_advantages(rewards)
        if self.baseline == "batch_mean":
            return reinforce_advantages(rewards, rewards.mean())
        advantages = reinforce_advantages(rewards, self.reward_ema if self.reward_ema_steps > 0 else rewards.mean())
        decay = self.baseline_decay if self.reward_ema_steps > 0 else 0.0
        self.reward_ema.mul_(decay).add_((1 - decay) * rewards.mean())
        self.reward_ema_steps += 1
        self.log("rollout/baseline", self.reward_ema, batch_size=len(rollout))
        return advantages


class ReMax(RLModule):
    """Changes the base's advantage to ``A = r(x, y) - r(x, y_greedy)`` (Li et al. 2023, eq. 5).

    One extra greedy decode and reward call per prompt; no critic. Departures from the paper:
    1. ``group_size`` may exceed 1 (the paper samples one ``y`` per prompt); the greedy baseline is shared by
       the prompt's samples, so it still never depends on them.
    2. With ``kl_in_reward`` the KL enters the sampled reward only, summed over tokens:
       ``A = r - beta * sum_j k1_j - r(x, y_greedy)``, one advantage for every token, which ``advantage_clip``
       then bounds together with the task reward. The official code instead adds ``-beta * k1_i`` to each token's
       return, so token ``i``'s weight differs from lit-rl's by ``beta * sum_{j != i} k1_j`` (not the same
       gradient), and its clip covers the task reward alone. lit-rl keeps one sequence-level advantage, as the
       paper's eq. 5 is written and as every other sequence-level estimator here works.
    """

    def __init__(self, *, group_size: int = 1, advantage_clip: float | None = None, **kwargs: Any) -> None:
        """
        Args:
            advantage_clip: clip ``|r - b|`` (the official code uses 5); ``None`` keeps it raw.
        """
        super().__init__(group_size=group_size, **kwargs)
        self.advantage_clip = advantage_clip

    def advantages(self, rollout: RolloutBatch) -> Tensor:
        G = rollout.group_size
        greedy = self.collector.collect(self.sampler, rollout.prompts[::G], rollout.metas[::G], self.sampling.greedy)
        self.log("rollout/greedy_reward_mean", greedy.scores.mean(), batch_size=len(greedy))
        if (share := accuracy(greedy.correct)) is not None:
            self.log("rollout/greedy_accuracy", share, batch_size=len(greedy))
        return remax_advantages(rollout.rewards, greedy.scores, self.advantage_clip)
