from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import MeanMetric

KEYS = {"kl": "train/kl", "entropy": "train/entropy", "clipped": "train/clip_frac"}


class KLEntropyTracker(Callback):
    """Logs token-weighted KL to the reference, policy entropy and clip fraction of each training step,
    and their running means over the epoch (``*_epoch``) through TorchMetrics (synchronised across ranks).

    Reads the token sums an ``RLModule`` training step returns; shipped by ``RLModule.configure_callbacks``.
    """

    def __init__(self) -> None:
        self.metrics = {key: MeanMetric() for key in KEYS}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not outputs or "tokens" not in outputs:
            return
        tokens = outputs["tokens"].clamp(min=1)
        for key, name in KEYS.items():
            if key in outputs:
                value = outputs[key] / tokens
                self.metrics[key].to(value.device).update(value, weight=tokens)
                pl_module.log(name, value, batch_size=int(tokens))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for key, metric in self.metrics.items():
            if metric.update_called:
                pl_module.log(f"{KEYS[key]}_epoch", metric.compute())
            metric.reset()
