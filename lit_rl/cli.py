"""``lit-rl``: a LightningCLI whose model is any lit-rl module and whose data is any LightningDataModule."""

import time
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_rl.modules import PolicyModule


class LitRLCLI(LightningCLI):
    """Each run gets its own directory ``<default_root_dir>/<algorithm>/<timestamp>`` holding its config,
    CSV and TensorBoard logs and checkpoints, unless the YAML sets ``trainer.logger`` itself."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(PolicyModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         **kwargs)

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


def main() -> None:
    LitRLCLI()


if __name__ == "__main__":
    main()
