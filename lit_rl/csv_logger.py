"""The run directory's ``metrics.csv``: Lightning's CSV logger, with every rewrite atomic and a resumed run's
earlier rows kept.

Lightning's writer appends rows, and rewrites the whole file when a new metric appears; a crash during that
rewrite would lose the file. It also deletes an existing ``metrics.csv`` when the directory is reused, which a
resumed run must not do: it keeps the rows up to its checkpoint (:func:`kept_rows`).
"""

import csv
import io
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lit_rl.checkpointing import atomic_write


def pending_row(trainer: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(row, values)`` of the batch a checkpoint is being saved in (``ModelCheckpoint`` saves in
    ``on_train_batch_end``, and Lightning writes the batch's row only after that hook). ``values`` are what
    Lightning holds for the row, including the last value of every metric logged earlier in the epoch;
    ``row`` is the same when this step writes a row (``log_every_n_steps``). Stored in the checkpoint, they let
    a resumed run keep that row if the process died between the save and the write, and repeat the values
    Lightning would have repeated. Both ``None`` outside ``on_train_batch_end``. Reads Lightning's logger
    connector (private, lightning<2.7 is pinned): the values it logs next."""
    loop = trainer.fit_loop.epoch_loop
    progress = loop.batch_progress.total
    connector = trainer._logger_connector
    if progress.completed != progress.processed - 1 or connector._first_loop_iter is None:
        return None, None                                                # not inside on_train_batch_end
    from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

    metrics = convert_tensors_to_scalars(connector.metrics["log"])
    if not metrics:
        return None, None
    values = {**metrics, "epoch": metrics.get("epoch", trainer.current_epoch), "step": loop._batches_that_stepped}
    return (values if connector.should_update_logs else None), values


def csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a metrics.csv; a last line torn by a crash (no newline) is dropped."""
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def kept_rows(text: str, log_step: int, pending: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows a run resumed from a checkpoint keeps: every row up to the checkpoint's logging step (the
    resumed run writes the later ones again), with the checkpoint's own row taken from the checkpoint when the
    crash came before it reached the file. Empty cells are dropped: a row holds only what was logged in it."""
    _, rows = csv_rows(text)
    rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in rows if r.get("step") not in (None, "")]
    before = [r for r in rows if int(r["step"]) < log_step]
    at_step = [r for r in rows if int(r["step"]) == log_step]
    if pending is None:
        return before + at_step
    as_text = {k: str(v) for k, v in pending.items()}
    return before + [pending] + [r for r in at_step if r != as_text]


def _write_csv(path: str, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


class _Writer(ExperimentWriter):
    def __init__(self, log_dir: str, kept_rows: list[dict[str, Any]] | None) -> None:
        self._kept_rows = kept_rows
        super().__init__(log_dir)
        if kept_rows is not None:
            self.metrics_keys = sorted(set().union(*kept_rows)) if kept_rows else []
            _write_csv(self.metrics_file_path, self.metrics_keys, kept_rows)

    def _check_log_dir_exists(self) -> None:
        if self._kept_rows is None:                                      # a fresh run: Lightning's behaviour
            super()._check_log_dir_exists()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            _, rows = csv_rows(f.read())
        _write_csv(self.metrics_file_path, fieldnames, rows)


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<run dir>/metrics.csv`` atomically; ``kept_rows`` (a resumed run) replaces the
    file's rows with those before starting to append."""

    def __init__(self, save_dir: str, kept_rows: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, name="", version="", **kwargs)
        self._kept_rows = kept_rows

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _Writer(self.log_dir, self._kept_rows)
        return self._experiment
