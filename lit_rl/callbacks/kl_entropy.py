from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import MeanMetric

KEYS = {"kl": "train/kl", "entropy": "train/entropy", "clipped": "train/clip_frac"}


class KLEntropyTracker(Callback):
    """Logs the running means over the epoch (``train/kl_epoch``, ``train/entropy_epoch``,
    ``train/clip_frac_epoch``) of the KL, entropy and clip fraction the module logs each step, token-weighted
    through TorchMetrics (synchronised across ranks).

    Reads the token sums an ``RLModule`` training step returns (Lightning hands them to ``on_train_batch_end``);
    the per-step values are the module's own. Shipped by ``RLModule.configure_callbacks``.
    Stateful: the running means go into checkpoints, so a resumed run's ``*_epoch`` values cover the whole
    epoch, not only the steps after the resume.
    """

    def __init__(self) -> None:
        self.metrics = {key: MeanMetric() for key in KEYS}
        self.epoch: int | None = None                                   # the epoch the running means belong to

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.epoch is not None and self.epoch != trainer.current_epoch:   # resumed after its epoch's end
            for metric in self.metrics.values():
                metric.reset()
        self.epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not outputs or "tokens" not in outputs:
            return
        tokens = outputs["tokens"].clamp(min=1)
        for key in KEYS:
            if key in outputs:
                value = outputs[key] / tokens
                self.metrics[key].to(value.device).update(value, weight=tokens)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for key, metric in self.metrics.items():
            if metric.update_called:
                pl_module.log(f"{KEYS[key]}_epoch", metric.compute())
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        """The running sums over all ranks (every rank calls this; rank 0's copy is saved)."""
        metrics = {}
        for key, metric in self.metrics.items():
            with metric.sync_context():
                state = {name: value.detach().cpu().clone() for name, value in metric.metric_state.items()}
            metrics[key] = {"state": state, "updates": metric._update_count}
        return {"epoch": self.epoch, "metrics": metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Each rank takes an equal share of the global sums, so the synchronised mean is the saved one."""
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.epoch = state_dict["epoch"]
        for key, saved in state_dict["metrics"].items():
            metric = self.metrics[key]
            for name, value in saved["state"].items():
                setattr(metric, name, value.to(getattr(metric, name).device) / world)
            metric._update_count, metric._computed = saved["updates"], None
