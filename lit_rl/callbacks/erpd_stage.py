from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer


class ERPDStageSwitch(Callback):
    """Ends each stage of an :class:`~lit_rl.modules.erpd.ERPD` run (teacher -> student -> [online] -> next
    iteration's teacher) after its step count, or earlier when ``monitor`` (e.g. ``val/accuracy``) has not
    improved on the stage's best for ``patience`` validations. The module does the transition: it precomputes
    the signal (keeping ``pi_e``, ``pi_un`` as log-probs), restores ``pi_old`` and resets the optimizer.

    Switches happen at the start of the next training batch, never in the same hook as a checkpoint, so a
    checkpoint saved in any callback order resumes to the same run. Stateful: the validation criterion's best
    value, its count of validations without improvement, a pending switch and the log of switches are saved.
    Shipped by ``ERPD.configure_callbacks``; a YAML entry replaces it.
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
        self.switch_requested = False
        self.switches: list[dict[str, Any]] = []

    def _switch(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        kind, k = pl_module.stage
        self.switches.append({"step": trainer.global_step, "iteration": pl_module.iteration, "stage": kind,
                              "teacher": k, "steps": pl_module.stage_step, "early": self.switch_requested})
        pl_module.advance_stage(log=log)
        self.best, self.bad_validations, self.switch_requested = None, 0, False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.switch_requested or pl_module.stage_complete():
            self._switch(trainer, pl_module, log=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.stage_complete():                                  # evaluate the stage the run ended with
            self._switch(trainer, pl_module, log=False)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if pl_module.stage[0] == "online" or pl_module.stage_step == 0 or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_validations = value, 0
        else:
            self.bad_validations += 1
            self.switch_requested = self.bad_validations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_validations": self.bad_validations,
                "switch_requested": self.switch_requested, "switches": self.switches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.bad_validations = state_dict["best"], state_dict["bad_validations"]
        self.switch_requested, self.switches = state_dict["switch_requested"], state_dict["switches"]
