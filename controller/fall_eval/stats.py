"""Statistics for scoring a fall detector per trial: proportions with Wilson intervals, F1 with a
bootstrap interval, nearest-rank percentiles. Pure functions, standard library only.

A detector is scored on two proportions: sensitivity (falls detected / falls) and specificity
(daily activities without an alarm / daily activities). With a few hundred trials their
uncertainty is several percentage points, so every figure goes with a 95 % interval:

* :func:`wilson` for proportions: unlike the normal approximation ``p +- 1.96 sqrt(p(1-p)/n)``
  it stays inside [0, 1] and is still sensible at 45/45 or 0/10.
* :func:`bootstrap_f1` for F1, which is not a proportion of anything: the trials are resampled
  with replacement and the 2.5th and 97.5th percentiles of F1 over the resamples are taken.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

#: Two-sided 95 %: the 97.5th percentile of the standard normal distribution.
Z_95 = 1.959963984540054
#: Bootstrap resamples for F1's interval; with 1000 the interval's ends move by well under a
#: percentage point between seeds.
BOOTSTRAP_RESAMPLES = 1000
#: Fixed so that the same evaluation always prints the same interval.
BOOTSTRAP_SEED = 20170101


@dataclass(frozen=True, slots=True)
class Proportion:
    """*k* of *n*, with its 95 % Wilson score interval."""

    k: int
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, k: int, n: int) -> Proportion:
        low, high = wilson(k, n)
        return cls(k, n, low, high)

    @property
    def value(self) -> float:
        return self.k / self.n

    def to_json(self) -> dict[str, float | int]:
        return {"k": self.k, "n": self.n, "value": self.value, "ci95": [self.low, self.high]}


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value with a 95 % interval and how the interval was obtained."""

    value: float
    low: float
    high: float
    method: str

    def to_json(self) -> dict[str, object]:
        return {"value": self.value, "ci95": [self.low, self.high], "ci_method": self.method}


def wilson(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of the proportion *k*/*n* (95 % by default).

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)``.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"proportion {k}/{n}: need 0 <= k <= n and n > 0")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # at k = 0 or k = n one end is exactly 0 or 1; do not let rounding put it a hair off
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    """F1 = 2TP / (2TP + FP + FN): the harmonic mean of precision and sensitivity.

    None when it is undefined (no falls and no alarms at all).
    """
    den = 2 * tp + fp + fn
    return None if den == 0 else 2 * tp / den


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The *pct*-th percentile by the nearest-rank method: the smallest value such that at least
    *pct* % of the values are less than or equal to it (``sorted(values)[ceil(pct/100·n) - 1]``).

    Always one of the values, never interpolated; the 50th of an even count is the lower of the
    two middle values. *pct* 0 gives the minimum.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct}: must be within 0-100")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def bootstrap_f1(tp: int, fp: int, fn: int, tn: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> Estimate | None:
    """F1 with a 95 % percentile-bootstrap interval over trials.

    Each resample draws ``tp + fp + fn + tn`` trials with replacement from the evaluated ones
    (only a trial's outcome matters to F1, so drawing outcomes is the same thing) and computes
    F1; the interval is the 2.5th-97.5th nearest-rank percentiles of those F1 values. Resamples
    where F1 is undefined (no fall and no alarm drawn) are left out. None when F1 itself is
    undefined.
    """
    value = f1_score(tp, fp, fn)
    if value is None:
        return None
    n = tp + fp + fn + tn
    rng = random.Random(seed)
    outcomes = ("tp", "fp", "fn", "tn")
    cum_weights = list(accumulate((tp, fp, fn, tn)))
    samples = []
    for _ in range(resamples):
        drawn = Counter(rng.choices(outcomes, cum_weights=cum_weights, k=n))
        f1 = f1_score(drawn["tp"], drawn["fp"], drawn["fn"])
        if f1 is not None:
            samples.append(f1)
    return Estimate(value, nearest_rank(samples, 2.5), nearest_rank(samples, 97.5),
                    f"percentile bootstrap over trials, {resamples} resamples, seed {seed}")

