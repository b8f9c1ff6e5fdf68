"""Experiments on top of the trainer, one module per job: ``sweep`` (``calmrl bench``: one
dataset, missing rates x methods x seeds, EM on synthetic data, the continual run and the
ablations), the ``suite`` package (``calmrl bench --suite``: every suite dataset x setting x method x
seed; ``plan``, ``run`` and ``report``, one module each) and ``stats`` (paired comparisons
over seeds)."""

from .stats import paired_difference
from .suite import SUITE_FULL, SUITE_QUICK, run_suite, write_suite_report
from .sweep import bench, em_synthetic, result_record, run_sweep, write_report

__all__ = ["bench", "run_sweep", "em_synthetic", "write_report", "result_record", "run_suite", "write_suite_report",
           "SUITE_FULL", "SUITE_QUICK", "paired_difference"]
