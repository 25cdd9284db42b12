"""``lit-rl``: a LightningCLI whose model is any lit-rl module and whose data is any LightningDataModule."""

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from lit_rl.checkpointing import read_checkpoint
from lit_rl.cli_errors import LitRLParser, report
from lit_rl.console import StepProgressBar, quiet
from lit_rl.csv_logger import RunCSVLogger, kept_rows, pending_row
from lit_rl.errors import ResumeMismatch, RunDirectoryError
from lit_rl.resume import RECORD, ResumePlan, plan_resume


class RunRecord(Callback):
    """Writes the run's record into every checkpoint: the full config (what a resume is checked against), the
    validation before training (so a resumed run's summary starts where the run started) and the metrics row
    of the batch being saved (:func:`lit_rl.csv_logger.pending_row`).

    On a resume it also re-logs that row's values at the first batch: within an epoch Lightning repeats in
    every row the last value of each metric logged earlier (ERPD's ``erpd/accuracy``, its ``rollout/*`` of
    the iteration's first step), and a fresh process would otherwise start without them. Values the batch
    logs itself replace them (this callback runs first, and a metric's own hook logs later)."""

    def __init__(self, config: dict[str, Any], resume: ResumePlan | None = None) -> None:
        self.config, self.summary_before = config, None
        self.carried = None if resume is None else resume.carried

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        carried, self.carried = self.carried, None
        if carried is not None and carried.get("epoch") == trainer.current_epoch:
            for key, value in carried.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    pl_module.log(key, float(value), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        row, values = pending_row(trainer)
        checkpoint[RECORD] = {"config": self.config, "summary_before": self.summary_before, "pending_row": row,
                              "carried": values}


# Every rank variable a launcher may set: Lightning's own launcher and the general-purpose cluster environment
# (LOCAL_RANK, NODE_RANK), torchrun (RANK, LOCAL_RANK, GROUP_RANK), SLURM (SLURM_PROCID), LSF (JSM_NAMESPACE_RANK).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_as_global_zero() -> bool:
    """Whether this process will be global rank 0, known before Lightning sets up the strategy (only then does
    ``rank_zero_only.rank`` become the global rank). Lightning's guess at import reads ``RANK``, then ``LOCAL_RANK``,
    then ``SLURM_PROCID``; a launcher that sets only ``NODE_RANK`` and ``LOCAL_RANK`` (the general-purpose cluster
    environment, whose global rank is ``NODE_RANK x devices + LOCAL_RANK``) makes the first process of every node
    guess 0. Rank 0 is the process for which every rank variable set says 0."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_VARIABLES)


def make_run_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` and check that it can be written, before anything runs. Returns the directories this
    created, deepest first (what to remove if the run fails before its first step)."""
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunDirectoryError(f"cannot create or write the run directory {run_dir} ({err.strerror or err}); "
                                f"set trainer.default_root_dir to a writable directory") from None
    return created


class LitRLCLI(LightningCLI):
    """Each run gets its own directory ``<default_root_dir>/<algorithm>/<timestamp>`` holding its config,
    CSV and TensorBoard logs, checkpoints and the exported ``hf_model``, unless the YAML sets
    ``trainer.logger`` itself. ``fit`` validates on the held-out split before and after training and ends
    with one summary line (``--summary false`` skips both).

    ``--ckpt_path`` resumes the run that wrote the checkpoint, in its own directory, or refuses
    (:mod:`lit_rl.resume`). A run directory that cannot be written is reported before anything runs, and a run
    that fails before its first step removes the directory it made."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", LitRLParser)
        kwargs.setdefault("trainer_defaults", {"enable_model_summary": False})
        self._resume: ResumePlan | None = None
        self._created: list[Path] = []
        self._record: RunRecord | None = None
        try:
            super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                             **kwargs)
        except BaseException:
            self._discard_unstarted_run()
            raise

    def add_arguments_to_parser(self, parser: LitRLParser) -> None:
        parser.add_argument("--summary", type=bool, default=True,
                            help="fit: validate before and after training and print a one-line summary")

    def _config_dump(self) -> dict[str, Any]:
        dump = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False))
        return dump[self.config.subcommand]

    def _parse_ckpt_path(self) -> None:
        """Lightning's version loads the checkpoint's hyperparameters (the module class included) over the YAML
        and the command line, silently training another run; lit-rl checks the checkpoint's run against this
        command instead, and refuses a mismatch (:func:`lit_rl.resume.plan_resume`)."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        if subcommand != "fit":
            if launched_as_global_zero():
                print(f"lit-rl {subcommand}: the weights of {path} with this command's settings", file=sys.stderr)
            return
        if not Path(path).is_file() and ("://" in str(path) or path in ("last", "best", "hpc", "registry")):
            raise ResumeMismatch(f"--ckpt_path {path}: give the checkpoint file itself; lit-rl checks it against "
                                 f"this command before resuming")
        self._resume = plan_resume(path, read_checkpoint(path, mmap=True), self._config_dump())
        if launched_as_global_zero():
            print(self._resume.announcement(subcommand), file=sys.stderr, flush=True)

    def _run_loggers(self, config: dict[str, Any]) -> list:
        """CSV and TensorBoard loggers of the run directory: a new one, or the resumed run's own, whose
        metrics.csv keeps the rows up to the checkpoint."""
        root = Path(config.get("default_root_dir") or "runs")
        resume, rows = self._resume, None
        if resume is not None and resume.run_dir is not None:
            metrics = resume.run_dir / "metrics.csv"
            rows = kept_rows(metrics.read_text() if metrics.is_file() else "", resume.log_step, resume.pending_row)
        if resume is not None and resume.run_dir is not None and root.resolve() == resume.run_dir.parent.parent:
            run_dir = resume.run_dir
        else:                                                           # a new run, or a resume moved to a new root
            run_dir = root / type(self.model).__name__.lower() / time.strftime("%Y%m%d-%H%M%S")
            while run_dir.exists():
                run_dir = run_dir.with_name(run_dir.name + "+")
        if launched_as_global_zero():                                   # one directory, however many nodes
            created = make_run_dir(run_dir)
            self._created = created if created and created[0] == run_dir else []
        purge = {"purge_step": resume.log_step + 1} if resume is not None else {}
        return [RunCSVLogger(str(run_dir), kept_rows=rows),
                TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False, **purge)]

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        logger = config.get("logger")
        if logger is not False:                                         # W&B, MLflow, ...: beside the run's own
            others = [] if logger in (None, True) else logger if isinstance(logger, list) else [logger]
            kwargs["logger"] = [*self._run_loggers(config), *others]
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if _RICH_AVAILABLE and config.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":                                    # first: see RunRecord.on_train_batch_start
            self._record = RunRecord(self._config_dump(), self._resume)
            trainer.callbacks.insert(0, self._record)
        return trainer

    def _discard_unstarted_run(self) -> None:
        """Remove the run directory this command made if the run failed before its first step."""
        trainer = getattr(self, "trainer", None)
        if not self._created or (trainer is not None and trainer.global_step > 0):
            return
        if any(self._created[0].glob("checkpoints/*.ckpt")):
            return
        shutil.rmtree(self._created[0], ignore_errors=True)
        for parent in self._created[1:]:                                # e.g. runs/<algorithm>, if it is empty now
            try:
                parent.rmdir()
            except OSError:
                break

    def _validate(self) -> dict[str, float]:
        results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in (results[0] if results else {}).items()}

    def before_fit(self) -> None:
        # A resumed run's summary starts where the run started: its checkpoint carries that validation.
        if not self._get(self.config, "summary"):
            self._before = None
        elif self._resume is not None:
            self._before = self._resume.summary_before
        else:
            self._before = self._validate()
        if self._record is not None:
            self._record.summary_before = self._before
        self._start = time.perf_counter()

    def after_fit(self) -> None:
        seconds = time.perf_counter() - self._start
        if self._before is None or self.trainer.interrupted:
            return
        after, before = self._validate(), self._before
        name = type(self.model).__name__.lower()
        if "val/rm_accuracy" in after and "val/rm_accuracy" in before:  # a reward model's held-out pairs
            self._report(f"{name}: held-out pairwise accuracy {before['val/rm_accuracy']:.3f} -> "
                         f"{after['val/rm_accuracy']:.3f}, margin {after['val/rm_margin']:.3f}, "
                         f"{self.trainer.global_step} steps, {seconds:.0f} s")
            return
        if "val/reward_mean" not in after or "val/reward_mean" not in before:   # no held-out data
            return
        accuracy = (f"accuracy {before['val/accuracy']:.3f} -> {after['val/accuracy']:.3f}, "
                    if "val/accuracy" in after and "val/accuracy" in before else "")   # a reward that judges
        line = (f"{name}: {accuracy}mean reward {before['val/reward_mean']:.3f} -> "
                f"{after['val/reward_mean']:.3f}, {self.trainer.global_step} steps, {seconds:.0f} s")
        if "val/gold_accuracy" in after and "val/gold_accuracy" in before:   # RLHF: the verifier beside the proxy
            line += f", gold accuracy {before['val/gold_accuracy']:.3f} -> {after['val/gold_accuracy']:.3f}"
        self._report(line)

    def _report(self, line: str) -> None:
        log_dir = self.trainer.log_dir                                  # a broadcast: every rank must ask
        if self.trainer.is_global_zero:
            print(line, flush=True)
            if log_dir is not None:
                Path(log_dir, "summary.txt").write_text(line + "\n")


def main() -> None:
    """``lit-rl generate ...`` writes an offline dataset (:func:`lit_rl.generate.generate`); ``lit-rl serve ...``
    starts a vLLM server for ``VLLMServerEngine`` (:mod:`lit_rl.serve`); every other subcommand (``fit``,
    ``validate``, ``test``) is Lightning's. Bad input ends with one paragraph and exit
    status 1 (configuration errors: 2); ``LIT_RL_TRACEBACK=1`` shows tracebacks (:mod:`lit_rl.cli_errors`)."""
    quiet()
    try:
        if sys.argv[1:2] == ["generate"]:
            from lit_rl.generate import main as generate

            return generate(sys.argv[2:])
        if sys.argv[1:2] == ["serve"]:
            from lit_rl.serve import main as serve

            return serve(sys.argv[2:])
        LitRLCLI()
    except Exception as err:
        sys.exit(report(err))


if __name__ == "__main__":
    main()
