from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class RolloutRefresh(Callback):
    """Sets the module's ``sync_every_n_steps`` from the trainer's callbacks, as YAMLs written before that
    setting did. Deprecated: the module pushes its weights to the engine itself (``sync_every_n_steps``,
    default every step), with or without this callback."""

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (got {every_n_steps})")
        self.every_n_steps = every_n_steps

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.sync_every_n_steps = self.every_n_steps

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Checkpoints of the time this callback kept the last synced step: the module reads it from them."""
