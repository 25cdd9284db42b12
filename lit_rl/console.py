"""What a ``lit-rl`` command shows in the terminal: Lightning's progress bar and metrics, the summary line, and
warnings only when they concern the user."""

import logging
import re
import warnings

from lightning.pytorch.callbacks import RichProgressBar

# What a new user need not read: Lightning's hosted-logging tip and accelerator lines (the progress bar and the
# metrics say what runs), and warnings about things lit-rl handles on purpose (a manual-optimization checkpoint
# holds the finished step, which is what resuming needs; a deprecation inside Lightning's own code).
QUIET_LOGS = re.compile(r"litlogger|^(GPU|TPU|HPU) available: False")
QUIET_WARNINGS = ("Using ModelCheckpoint with manual optimization", r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def quiet() -> None:
    """Filter the lines above for this process (the CLI calls it; importing lit-rl filters nothing)."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not QUIET_LOGS.search(record.getMessage()))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()                     # "Loading weights", "Writing model shards"


class StepProgressBar(RichProgressBar):
    """Lightning's progress bar, without the "Epoch 0/-2" it shows for a run bounded by ``max_steps``."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)
