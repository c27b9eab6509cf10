"""Fall detection measured on recorded falls: ``smartroom falls eval`` (docs/falls.md).

:mod:`.sisfall` reads the SisFall dataset and emulates a node's accelerometer from it,
:mod:`.evaluate` plays every trial through the firmware's own detector in MicroPython and scores
it, :mod:`.stats` holds the statistics. ``mp_runner.py`` is the MicroPython side, not a module.
"""

from .evaluate import EvalResult, RunnerError, TrialResult, evaluate
from .sisfall import DatasetError, Trial, iter_trials, parse_subjects, read_counts, resample

__all__ = ["DatasetError", "EvalResult", "RunnerError", "Trial", "TrialResult", "evaluate", "iter_trials",
           "parse_subjects", "read_counts", "resample"]
