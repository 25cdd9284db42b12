from typing import Literal

from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.objectives import GroupNormalized, GroupScale, LeaveOneOut


class GroupAdvantage(Callback):
    """Sets an ``RLModule``'s ``advantage_estimator`` from the trainer's callbacks, as YAMLs written before that
    setting did: ``estimator: rloo`` is ``LeaveOneOut(clip)``, ``grpo`` is ``GroupNormalized(scale, clip)``.
    Deprecated: set ``model.init_args.advantage_estimator`` instead (the module then trains the same without
    this callback)."""

    def __init__(self, estimator: Literal["rloo", "grpo"] = "grpo", scale: GroupScale = "group",
                 clip: float | None = None) -> None:
        if estimator not in ("rloo", "grpo"):
            raise ValueError(f"GroupAdvantage estimator must be 'rloo' or 'grpo' (got {estimator!r})")
        self.estimator = LeaveOneOut(clip) if estimator == "rloo" else GroupNormalized(scale, clip)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.advantage_estimator = self.estimator
