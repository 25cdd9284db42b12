from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class RolloutRefresh(Callback):
    """Pushes the policy's weights to the rollout engine every ``every_n_steps`` optimizer steps.

    With ``HFEngine`` the engine samples from the training model itself and the push is a no-op; engines
    that hold their own copy of the weights (vLLM) rely on it. Shipped by ``RLModule.configure_callbacks``.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (got {every_n_steps})")
        self.every_n_steps = every_n_steps
        self.last_synced_step = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step - self.last_synced_step >= self.every_n_steps:
            pl_module.engine.sync_weights(pl_module.policy.model)
            self.last_synced_step = trainer.global_step

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.engine.sync_weights(pl_module.policy.model)          # a resumed run starts in sync
        self.last_synced_step = trainer.global_step

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self.last_synced_step:                # validate the policy, not a stale copy
            pl_module.engine.sync_weights(pl_module.policy.model)
            self.last_synced_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"last_synced_step": self.last_synced_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_synced_step = state_dict["last_synced_step"]
