"""Fall detection measured on recorded falls: ``smartroom falls eval`` (docs/falls.md).

:mod:`.sisfall` reads datasets in SisFall's layout (SisFall, FallAllD converted to it) and emulates a
node's accelerometer from them,
:mod:`.evaluate` plays every trial through the firmware's own detector in MicroPython and scores
it, :mod:`.stats` holds the statistics. ``mp_runner.py`` is the MicroPython side, not a module.
"""

from .evaluate import EvalResult, RunnerError, TrialResult, evaluate
from .sisfall import (Activity, Dataset, DatasetError, Trial, find_datasets, iter_trials, open_dataset,
                      parse_subjects, read_counts, resample)

__all__ = ["Activity", "Dataset", "DatasetError", "EvalResult", "RunnerError", "Trial", "TrialResult", "evaluate",
           "find_datasets", "iter_trials", "open_dataset", "parse_subjects", "read_counts", "resample"]
