from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer


class ERPDStageSwitch(Callback):
    """An optional criterion for ending an :class:`~lit_rl.modules.erpd.ERPD` stage early: when ``monitor``
    (e.g. ``val/accuracy``) has not improved on the stage's best for ``patience`` validations, the stage ends at
    the start of the next training batch. Without it (or with ``monitor: null``) each stage runs its step count;
    the module's schedule does the switching either way.

    Stateful: the stage the criterion is watching, its best value and its count of validations without
    improvement are saved.
    """

    def __init__(self, monitor: str | None = None, patience: int = 2, mode: Literal["max", "min"] = "max",
                 min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"ERPDStageSwitch patience must be >= 1 (got {patience})")
        if mode not in ("max", "min"):
            raise ValueError(f"ERPDStageSwitch mode must be 'max' or 'min' (got {mode!r})")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best: float | None = None
        self.bad_validations = 0
        self.stage: list[int] | None = None                             # [iteration, phase] the best belongs to

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        schedule = pl_module.schedule
        stage = [schedule.iteration, schedule.phase]
        if stage != self.stage:                                         # a new stage: a new best
            if self.stage is not None:
                self.best, self.bad_validations = None, 0
            self.stage = stage
        if schedule.stage[0] == "online" or schedule.stage_step == 0 or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_validations = value, 0
        else:
            self.bad_validations += 1
            schedule.switch_requested = self.bad_validations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_validations": self.bad_validations, "stage": self.stage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also reads a checkpoint written when this callback switched the stages (its switches are then the
        schedule's, see ``ERPDSchedule.load_state_dict``)."""
        self.best, self.bad_validations = state_dict["best"], state_dict["bad_validations"]
        self.stage = state_dict.get("stage")
