from typing import Literal

from lightning.pytorch import LightningModule, Trainer

from lit_rl.objectives import GroupScale, grpo_advantages, rloo_advantages
from lit_rl.callbacks.rollout_callback import RolloutCallback
from lit_rl.rollout import RolloutBatch


class GroupAdvantage(RolloutCallback):
    """Replaces the advantage estimator of any ``RLModule`` for each fresh rollout batch, from YAML.

    ``estimator``: ``rloo`` (leave-one-out) or ``grpo`` (group-centred, scaled by ``scale``); then, optionally,
    ``clip`` bounds ``|A|``. Lets one try another estimator with an algorithm's loss without subclassing.
    Logs ``rollout/advantage_mean`` and ``rollout/advantage_std`` of the estimates it sets.
    """

    def __init__(self, estimator: Literal["rloo", "grpo"] = "grpo", scale: GroupScale = "group",
                 clip: float | None = None) -> None:
        self.estimator, self.scale, self.clip = estimator, scale, clip

    def on_rollout_end(self, trainer: Trainer, pl_module: LightningModule, rollout: RolloutBatch) -> None:
        if self.estimator == "rloo":
            advantages = rloo_advantages(rollout.rewards, rollout.group_size)
        else:
            advantages = grpo_advantages(rollout.rewards, rollout.group_size, self.scale)
        if self.clip is not None:
            advantages = advantages.clamp(-self.clip, self.clip)
        rollout.advantages = advantages
        pl_module.log_dict({"rollout/advantage_mean": advantages.mean(), "rollout/advantage_std": advantages.std()},
                           batch_size=len(rollout))
