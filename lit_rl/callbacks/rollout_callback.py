from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.rollout import RolloutBatch


class RolloutCallback(Callback):
    """A callback that also sees each rollout batch once it is complete: sampled (or replayed), scored, with
    old and reference log-probs and the module's advantages, before any optimizer step on it.

    ``RLModule.on_rollout_end`` calls :meth:`on_rollout_end` of every ``RolloutCallback`` of the trainer, in the
    trainer's order, inside the training step (so ``pl_module.log`` works as it does there). A callback may
    change the batch in place (``GroupAdvantage`` replaces its advantages) or only read it (``CompletionLog``).
    """

    def on_rollout_end(self, trainer: Trainer, pl_module: LightningModule, rollout: RolloutBatch) -> None:
        """Called with each complete rollout batch of a training step."""
