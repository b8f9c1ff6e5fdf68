"""Learning curves of auto's candidates, and the schedules that read them.

In the manner of the tabular benchmarks LCBench (Zimmer et al. 2021) and HPOBench
(Eggensperger et al. 2021): every candidate of the default space is trained to the full
budget once, its validation and test R@1 and its seconds recorded at every epoch
(:mod:`.table`); any search schedule is then replayed over those curves in seconds, with no
training (:mod:`.replay`), and the default schedule is chosen by leave-one-dataset-out
(:mod:`.choose`), never on the dataset it is scored on.
"""

from .replay import SCHEDULES, replay, replay_all
from .table import CurveRecorder, run_curves

__all__ = ["CurveRecorder", "run_curves", "SCHEDULES", "replay", "replay_all"]
