"""The CSV logger that keeps the rows of the epochs a resumed checkpoint holds."""

from __future__ import annotations

import os
from pathlib import Path


__all__ = ['keeping_csv_logger']


def keeping_csv_logger(run_dir: Path, keep_before_epoch: int | None):
    """Lightning's CSV logger deletes ``metrics.csv`` when it starts. This one does so only on a
    fresh run; on a resumed one it keeps the rows of the epochs the checkpoint holds and drops
    the later ones (logged after that checkpoint, before the interruption)."""
    import csv

    from lightning.fabric.loggers.csv_logs import _ExperimentWriter
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class _Writer(ExperimentWriter):
        def _check_log_dir_exists(self):
            f = Path(self.metrics_file_path)
            if not f.is_file():
                return
            if keep_before_epoch is None:
                f.unlink()
                return
            with open(f, newline="") as fh:
                rows = list(csv.DictReader(fh))
                header = list(rows[0].keys()) if rows else []
            kept = [r for r in rows if r.get("epoch", "") != "" and float(r["epoch"]) < keep_before_epoch]
            tmp = f.with_name(f.name + ".tmp")
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=header)
                w.writeheader()
                w.writerows(kept)
            os.replace(tmp, f)
            self.metrics_keys = sorted(header)

    assert issubclass(_Writer, _ExperimentWriter)

    class _Logger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _Writer(log_dir=self.log_dir)
            return self._experiment

    return _Logger(run_dir, name="logs", version="")
