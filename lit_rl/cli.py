"""``lit-rl``: a LightningCLI whose model is any lit-rl module and whose data is any LightningDataModule."""

import logging
import re
import sys
import time
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE



class LitRLCLI(LightningCLI):
    """Each run gets its own directory ``<default_root_dir>/<algorithm>/<timestamp>`` holding its config,
    CSV and TensorBoard logs, checkpoints and the exported ``hf_model``, unless the YAML sets
    ``trainer.logger`` itself. ``fit`` validates on the held-out split before and after training and ends
    with one summary line (``--summary false`` skips both)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", {"enable_model_summary": False})
        super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--summary", type=bool, default=True,
                            help="fit: validate before and after training and print a one-line summary")

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            root = Path(config.get("default_root_dir") or "runs")
            run_dir = root / type(self.model).__name__.lower() / time.strftime("%Y%m%d-%H%M%S")
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "+")
            kwargs["logger"] = [CSVLogger(run_dir, name="", version=""),
                                TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False)]
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if _RICH_AVAILABLE and config.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def _validate(self) -> dict[str, float]:
        results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in (results[0] if results else {}).items()}

    def before_fit(self) -> None:
        self._before = self._validate() if self._get(self.config, "summary") else None
        self._start = time.perf_counter()

    def after_fit(self) -> None:
        seconds = time.perf_counter() - self._start
        if self._before is None or self.trainer.interrupted:
            return
        after = self._validate()
        name = type(self.model).__name__.lower()
        if "val/rm_accuracy" in after:                                  # a reward model's held-out pairs
            self._report(f"{name}: held-out pairwise accuracy {self._before['val/rm_accuracy']:.3f} -> "
                         f"{after['val/rm_accuracy']:.3f}, margin {after['val/rm_margin']:.3f}, "
                         f"{self.trainer.global_step} steps, {seconds:.0f} s")
            return
        if "val/reward_mean" not in after:                              # no held-out data
            return
        accuracy = (f"accuracy {self._before['val/accuracy']:.3f} -> {after['val/accuracy']:.3f}, "
                    if "val/accuracy" in after else "")                 # a reward that judges correctness
        line = (f"{name}: {accuracy}mean reward {self._before['val/reward_mean']:.3f} -> "
                f"{after['val/reward_mean']:.3f}, {self.trainer.global_step} steps, {seconds:.0f} s")
        if "val/gold_accuracy" in after:                                # RLHF: the verifier beside the proxy
            line += (f", gold accuracy {self._before['val/gold_accuracy']:.3f} -> "
                     f"{after['val/gold_accuracy']:.3f}")
        self._report(line)

    def _report(self, line: str) -> None:
        if self.trainer.is_global_zero:
            print(line, flush=True)
            if self.trainer.log_dir is not None:
                Path(self.trainer.log_dir, "summary.txt").write_text(line + "\n")


class StepProgressBar(RichProgressBar):
    """Lightning's progress bar, without the "Epoch 0/-2" it shows for a run bounded by ``max_steps``."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)


# What a new user need not read: Lightning's hosted-logging tip and accelerator lines (the progress bar and the
# metrics say what runs), and warnings about things lit-rl handles on purpose (a manual-optimization checkpoint
# holds the finished step, which is what resuming needs; a deprecation inside Lightning's own code).
QUIET_LOGS = re.compile(r"litlogger|^(GPU|TPU|HPU) available: False")
QUIET_WARNINGS = ("Using ModelCheckpoint with manual optimization", r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def quiet() -> None:
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not QUIET_LOGS.search(record.getMessage()))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()                     # "Loading weights", "Writing model shards"


def main() -> None:
    """``lit-rl generate ...`` writes an offline dataset (:func:`lit_rl.generate.generate`); every other
    subcommand (``fit``, ``validate``, ``test``) is Lightning's."""
    quiet()
    if sys.argv[1:2] == ["generate"]:
        from lit_rl.generate import main as generate

        return generate(sys.argv[2:])
    LitRLCLI()


if __name__ == "__main__":
    main()
