"""``lit-rl``: a LightningCLI whose model is any lit-rl module and whose data is any LightningDataModule."""

import sys
import time
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_rl.modules import PolicyModule


class LitRLCLI(LightningCLI):
    """Each run gets its own directory ``<default_root_dir>/<algorithm>/<timestamp>`` holding its config,
    CSV and TensorBoard logs, checkpoints and the exported ``hf_model``, unless the YAML sets
    ``trainer.logger`` itself. ``fit`` validates on the held-out split before and after training and ends
    with one summary line (``--summary false`` skips both)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(PolicyModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
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
        if "val/accuracy" not in after:
            return
        name = type(self.model).__name__.lower()
        line = (f"{name}: accuracy {self._before['val/accuracy']:.3f} -> {after['val/accuracy']:.3f}, "
                f"mean reward {self._before['val/reward_mean']:.3f} -> {after['val/reward_mean']:.3f}, "
                f"{self.trainer.global_step} steps, {seconds:.0f} s")
        if self.trainer.is_global_zero:
            print(line, flush=True)
            if self.trainer.log_dir is not None:
                Path(self.trainer.log_dir, "summary.txt").write_text(line + "\n")


def main() -> None:
    """``lit-rl generate ...`` writes an offline dataset (:func:`lit_rl.generate.generate`); every other
    subcommand (``fit``, ``validate``, ``test``) is Lightning's."""
    if sys.argv[1:2] == ["generate"]:
        from lit_rl.generate import main as generate

        return generate(sys.argv[2:])
    LitRLCLI()


if __name__ == "__main__":
    main()
