"""The run directory's ``metrics.csv``: Lightning's CSV logger, with every rewrite atomic and a resumed run's
earlier rows kept.

Lightning's writer appends rows, and rewrites the whole file when a new metric appears; a crash during that
rewrite would lose the file. It also deletes an existing ``metrics.csv`` when the directory is reused, which a
resumed run must not do: it keeps the rows up to its checkpoint (:func:`lit_rl.resume.kept_rows`).
"""

import csv
import io
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lit_rl.checkpointing import atomic_write
from lit_rl.resume import read_rows


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
            _, rows = read_rows(f.read())
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
