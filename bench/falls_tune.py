"""Tune the node's fall detector (firmware/srnode/fall.py) and cross-validate it within and across datasets.

    nice .venv/bin/python bench/falls_tune.py [--data DIR ...] [--rates 50,100,200] [--range-g 16]
                                              [--json out.json] [--write]
    .venv/bin/python bench/falls_tune.py --smoke      # the whole pipeline on tiny generated data (the suite)

--data takes dataset folders in SisFall's layout, or folders holding them (default
/work/shared/data: SisFall_dataset/ and FallAllD_dev/). What it does:

1. Reads every trial with the project's reader (controller/fall_eval/sisfall.py: each dataset's
   own activity names, FallAllD's from its activity_codes.csv) at 50 Hz, the detector's own rate
   (a node at 100 or 200 Hz is averaged down to it inside fall.py), and plays it through the
   firmware's own ``fall.py`` in CPython (``micropython.const`` is stubbed; the same file, not a
   copy) with the decision switched off, recording every candidate the detector judges: its
   features and its kind (fall.py's ``_gate()``), exactly as the node computes them.
2. Fits the score's weights (only the score of kind 1, a hard impact, is fitted; slumps and falls
   out of bed are fixed rules in fall.py) on some subjects and scores other subjects:
   * **within** each dataset: subject-wise folds of consecutive young subjects, at most five
     (SisFall: five of three, the elderly dealt round-robin over them; FallAllD's seven: four);
   * **across**: fitted on all of one dataset, scored on all of the other;
   * **both**: fold k of every dataset held out together, fitted on the rest of both.
   The fit: logistic regression over kind-1 candidates (the one at a fall's impact peak is a fall,
   every one in a daily activity is not), weights x1000 rounded to ints, then the bias set so
   that at least 99.5 % of the training daily activities stay quiet.
3. Scores every held-out subject by running the firmware in MicroPython
   (controller.fall_eval.evaluate, the unix port with a board-sized heap) with its fold's weights,
   at every rate of --rates. Prints per scheme and dataset: sensitivity for falls not from a bed,
   falls from a bed, specificity, false alarms on lying down, impact-to-alarm latency (all with
   95 % Wilson intervals), then per activity at the first rate.
4. Fits on every subject of every dataset: the defaults. --write puts them into fall.py's
   ``WEIGHTS = (...)`` line. Then the detector's cost (us per update(), heap, allocations) is
   measured in MicroPython at each rate, on one fall trial looped 10,000 times.

Activities are grouped by their names, the same in any dataset: "falls from a bed" are falls
whose name has the word bed (FallAllD F27, F28); "lying down" are daily activities named lying
down, slowly or quickly (FallAllD D16; SisFall D12, D13). Bounded: two worker processes at most;
run it with ``nice`` on a shared machine (15 minutes for both datasets at three rates on two
cores shared by six engineers; --rates 50 takes about a third of that).
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import re
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FALL_PY = ROOT / "firmware" / "srnode" / "fall.py"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware"))
if "micropython" not in sys.modules:
    _stub = types.ModuleType("micropython")
    _stub.const = lambda value: value
    sys.modules["micropython"] = _stub

from controller.fall_eval.evaluate import TrialResult, evaluate  # noqa: E402
from controller.fall_eval.sisfall import Dataset, Trial, find_datasets, iter_trials, read_counts, resample  # noqa: E402
from controller.fall_eval.stats import Proportion, nearest_rank  # noqa: E402
from srnode import fall  # noqa: E402

DEFAULT_DATA = os.environ.get("FALL_DATA", "/work/shared/data")
DETECTOR = "firmware/srnode/fall.py"
#: The detector's own rate: the fit runs at it, whatever the node's rate.
FIT_RATE_HZ = 50
#: Training daily activities that must stay quiet when the bias is set.
TRAIN_SPECIFICITY = 0.995
#: Integer weights = logistic-regression weights x this.
WEIGHT_SCALE = 1000
#: Ridge penalty of the logistic regression, on standardised features.
RIDGE = 1.0
#: A fall trial's candidate is "the fall" when its peak is this close to the trial's largest |a|.
PEAK_MATCH_S = 1.0
#: Inputs of fall.py's score (the WEIGHTS tuple, bias last).
N_INPUTS = 5
#: Features fall.py records per candidate (its _f without the kind).
N_FEATURES = 12
#: At most this many worker processes (reading, MicroPython runs): the machine is shared.
WORKERS = 2
#: Young-subject folds of a dataset with more young subjects than this (SisFall: 15 in 5 folds).
MAX_FOLDS = 5
BED = re.compile(r"\bbed\b", re.IGNORECASE)
LYING_DOWN = re.compile(r"\blying (down|slowly|quickly)\b", re.IGNORECASE)


def is_bed_fall(trial: Trial) -> bool:
    return trial.is_fall and bool(BED.search(trial.activity))


def is_lying_down(trial: Trial) -> bool:
    return not trial.is_fall and bool(LYING_DOWN.search(trial.activity))


def subject_key(trial: Trial) -> tuple[str, str]:
    """Subjects are per dataset: SA01 of SisFall is not SA01 of FallAllD."""
    return trial.dataset, trial.subject


# ---------------------------------------------------------------------------------- the data
def folds_of(subjects: list[str]) -> list[list[str]]:
    """Young subjects (SA..) in up to MAX_FOLDS folds of consecutive subjects, the elderly (SE..)
    dealt round-robin over them; one fold per young subject when there are MAX_FOLDS or fewer."""
    young = sorted(s for s in subjects if s.startswith("SA"))
    elderly = sorted(s for s in subjects if not s.startswith("SA"))
    k = min(MAX_FOLDS, len(young)) or 1
    size = math.ceil(len(young) / k) if young else 0
    out = [young[i * size:(i + 1) * size] for i in range(k)]
    out = [f for f in out if f] or [[]]
    for i, s in enumerate(elderly):
        out[i % len(out)].append(s)
    return out


def _load_one(rate_hz: int, range_g: int, trial: Trial):
    return trial, resample(read_counts(trial.path), rate_hz, range_g)


def load(trials: list[Trial], rate_hz: int, range_g: int) -> list[tuple]:
    """[(Trial, samples)] of every trial, read and resampled by the project's reader."""
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(partial(_load_one, rate_hz, range_g), trials, chunksize=16))


class _Recorder(fall.FallDetector):
    """The firmware's detector with the decision switched off: every candidate is recorded."""

    def _decide(self):
        self.recorded.append((self.index, list(self._f[:N_FEATURES]), self._gate()))
        return False


def record(data, rate_hz: int) -> list[dict]:
    """Per trial: the trial, the sample with the largest |a|, the candidates (index, features, kind)."""
    out = []
    for trial, samples in data:
        det = _Recorder(rate_hz)
        det.recorded = []
        for i, (x, y, z) in enumerate(samples):
            det.index = i
            det.update(x, y, z)
        squares = [x * x + y * y + z * z for x, y, z in samples]
        out.append({"trial": trial, "peak_index": squares.index(max(squares)) if squares else 0,
                     "cands": det.recorded})
    return out


# ---------------------------------------------------------------------------- the score's fit
_UNIT_DETECTORS = [fall.FallDetector(FIT_RATE_HZ, {"weights": [int(i == k) for i in range(N_INPUTS + 1)]})
                   for k in range(N_INPUTS)]


def score_inputs(f: list[int]) -> list[int]:
    """The integer inputs of fall.py's score for a candidate's features, computed by fall.py's own
    _decide() with one weight at 1 and the others at 0 (so this can never drift from the firmware)."""
    out = []
    for det in _UNIT_DETECTORS:
        det._f[:N_FEATURES] = f
        det._decide()
        out.append(det._f[8])
    return out


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for i in range(n):
        p = max(range(i, n), key=lambda r: abs(m[r][i]))
        m[i], m[p] = m[p], m[i]
        for r in range(n):
            if r != i:
                k = m[r][i] / m[i][i]
                for c in range(i, n + 1):
                    m[r][c] -= k * m[i][c]
    return [m[i][n] / m[i][i] for i in range(n)]


def logistic(x: list[list[int]], y: list[int]) -> list[float]:
    """Ridge logistic regression by Newton's method; weights on the raw inputs, bias last."""
    d = len(x[0])
    mu = [sum(col) / len(col) for col in zip(*x)]
    sd = [max(1e-9, math.sqrt(sum((v - m) ** 2 for v in col) / len(col))) for col, m in zip(zip(*x), mu)]
    xs = [[(v - m) / s for v, m, s in zip(row, mu, sd)] + [1.0] for row in x]
    w = [0.0] * (d + 1)
    for _ in range(30):
        h = [[0.0] * (d + 1) for _ in range(d + 1)]
        g = [0.0] * (d + 1)
        for row, t in zip(xs, y):
            z = max(-30.0, min(30.0, sum(a * b for a, b in zip(w, row))))
            p = 1 / (1 + math.exp(-z))
            r = p - t
            s = p * (1 - p) + 1e-12
            for i in range(d + 1):
                g[i] += r * row[i]
                hi = h[i]
                for j in range(i, d + 1):
                    hi[j] += s * row[i] * row[j]
        for i in range(d + 1):
            for j in range(i):
                h[i][j] = h[j][i]
            if i < d:
                h[i][i] += RIDGE
                g[i] += RIDGE * w[i]
        step = _solve(h, g)
        w = [a - b for a, b in zip(w, step)]
    raw = [w[i] / sd[i] for i in range(d)]
    return raw + [w[d] - sum(w[i] * mu[i] / sd[i] for i in range(d))]


def trial_score(rec: dict, weights: list[int]) -> int | None:
    """The highest score among the trial's kind-1 candidates (None: none is kind 1)."""
    best = None
    for _, f, kind in rec["cands"]:
        if kind == 1:
            s = sum(w * v for w, v in zip(weights, score_inputs(f)))
            best = s if best is None or s > best else best
    return best


def fit(recs: list[dict]) -> dict[str, list[int]]:
    """fall.py params ({"weights": [...5 weights, bias]}) fitted on these trials."""
    x, y = [], []
    match = int(PEAK_MATCH_S * FIT_RATE_HZ)
    decide_n = fall._DECIDE_MS * FIT_RATE_HZ // 1000
    for rec in recs:
        for t, f, kind in rec["cands"]:
            if kind != 1:
                continue
            if not rec["trial"].is_fall:
                x.append(score_inputs(f))
                y.append(0)
            elif abs(t - decide_n - rec["peak_index"]) <= match:
                x.append(score_inputs(f))
                y.append(1)
    if not x or len(set(y)) < 2:
        raise SystemExit(f"cannot fit the score: {y.count(1)} falls and {y.count(0)} activities with a hard impact")
    raw = logistic(x, y)
    weights = [round(WEIGHT_SCALE * w) for w in raw[:-1]] + [0]
    activities = [r for r in recs if not r["trial"].is_fall]
    # activities that alarm by a fixed rule (a slump, out of bed) alarm whatever the bias
    free = [r for r in activities if not any(kind in (2, 3) for _, _, kind in r["cands"])]
    neg = sorted((s for s in (trial_score(r, weights) for r in free) if s is not None), reverse=True)
    allowed = max(0, int((1 - TRAIN_SPECIFICITY) * len(activities)) - (len(activities) - len(free)))
    threshold = neg[allowed] + 1 if allowed < len(neg) else (neg[-1] if neg else 0)
    weights[-1] = -threshold
    return {"weights": weights}


def fires_in_cpython(rec: dict, params: dict[str, list[int]]) -> bool:
    det = fall.FallDetector(FIT_RATE_HZ, params)
    for _, f, _ in rec["cands"]:
        det._f[:N_FEATURES] = f
        if det._decide():
            return True
    return False


# --------------------------------------------------------------------------------- reporting
def pct(p: Proportion | None) -> str:
    if p is None:
        return "-"
    return f"{100 * p.value:5.1f} % ({p.k}/{p.n}, {100 * p.low:.1f}-{100 * p.high:.1f})"


def summary(results: list[TrialResult]) -> dict:
    """The figures the issue's targets are about, for one dataset's held-out trials."""
    def prop(rs, want_fired):
        n = len(rs)
        return Proportion.of(sum(r.fired == want_fired for r in rs), n) if n else None

    falls = [r for r in results if r.trial.is_fall and not is_bed_fall(r.trial)]
    bed = [r for r in results if is_bed_fall(r.trial)]
    acts = [r for r in results if not r.trial.is_fall]
    lying = [r for r in acts if is_lying_down(r.trial)]
    lat = [r.latency_s for r in results if r.outcome == "tp" and r.latency_s is not None]
    return {"falls": prop(falls, True), "bed": prop(bed, True), "all_falls": prop(falls + bed, True),
            "specificity": prop(acts, False), "lying_down_alarms": prop(lying, True),
            "latency": (nearest_rank(lat, 50), nearest_rank(lat, 95), max(lat), len(lat)) if lat else None}


def summary_json(s: dict) -> dict:
    out = {k: (v.to_json() if isinstance(v, Proportion) else v) for k, v in s.items() if k != "latency"}
    lat = s["latency"]
    out["latency_s"] = None if lat is None else {"p50": lat[0], "p95": lat[1], "max": lat[2], "n": lat[3]}
    return out


def print_summary(label: str, s: dict) -> None:
    lat = s["latency"]
    print(f"  {label}\n"
          f"      falls (not from a bed) {pct(s['falls'])}   falls from a bed {pct(s['bed'])}\n"
          f"      specificity {pct(s['specificity'])}   lying down alarmed {pct(s['lying_down_alarms'])}\n"
          f"      impact -> alarm " + ("-" if lat is None else
                                         f"p50 {lat[0]:.2f} s, p95 {lat[1]:.2f} s, max {lat[2]:.2f} s (n={lat[3]})"))


def per_activity(results: list[TrialResult]) -> list[dict]:
    by: dict[str, list[TrialResult]] = {}
    for r in results:
        by.setdefault(r.trial.code, []).append(r)
    rows = []
    for code in sorted(by, key=lambda c: (c[0] != "F", c)):
        rs = by[code]
        wrong = [f"{r.trial.subject}/{r.trial.take}" for r in rs if r.outcome in ("fn", "fp")]
        good = len(rs) - len(wrong)
        lat = [r.latency_s for r in rs if r.outcome == "tp" and r.latency_s is not None]
        rows.append({"code": code, "activity": rs[0].trial.activity, "is_fall": rs[0].trial.is_fall,
                     "trials": len(rs), "right": Proportion.of(good, len(rs)).to_json(), "wrong": wrong,
                     "latency_s": {"p50": nearest_rank(lat, 50), "p95": nearest_rank(lat, 95), "max": max(lat),
                                   "n": len(lat)} if lat else None})
    return rows


def print_per_activity(rows: list[dict]) -> None:
    for row in rows:
        p = row["right"]
        what = "detected" if row["is_fall"] else "quiet"
        wrong = f"  wrong: {' '.join(row['wrong'])}" if row["wrong"] else ""
        lat = row["latency_s"]
        late = f"  alarm p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s" if lat else ""
        print(f"    {row['code']} {row['activity'][:38]:<38} {what:>8} {p['k']:>3}/{p['n']:<3} "
              f"{100 * p['value']:5.1f} % ({100 * p['ci95'][0]:.0f}-{100 * p['ci95'][1]:.0f}){late}{wrong}")


def write_defaults(params: dict[str, list[int]]) -> None:
    """Puts the fitted weights into fall.py's `WEIGHTS = (...)` line."""
    text = FALL_PY.read_text()
    line = "WEIGHTS = (" + ", ".join(str(w) for w in params["weights"]) + ")"
    text, n = re.subn(r"^WEIGHTS = \([-\d, ]*\)$", line, text, flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"{FALL_PY}: no single `WEIGHTS = (...)` line to write")
    FALL_PY.write_text(text)


# ---------------------------------------------------------------------------------- the run
def run(datasets: list[Dataset], rates: list[int], range_g: int, write: bool, json_path: Path | None) -> dict:
    t0 = time.monotonic()
    trials = [t for ds in datasets for t in iter_trials(ds)]
    names = [ds.name for ds in datasets]
    data = load(trials, FIT_RATE_HZ, range_g)
    recs = record(data, FIT_RATE_HZ)
    del data
    print(f"{len(recs)} trials from {', '.join(names)}, {sum(len(r['cands']) for r in recs)} candidates judged "
          f"at {FIT_RATE_HZ} Hz{f', clipped at +-{range_g} g' if range_g < 16 else ''} "
          f"({time.monotonic() - t0:.0f} s)")
    by_subject: dict[tuple[str, str], list[dict]] = {}
    for rec in recs:
        by_subject.setdefault(subject_key(rec["trial"]), []).append(rec)
    folds = {ds.name: folds_of(sorted({s for d, s in by_subject if d == ds.name})) for ds in datasets}

    # (scheme, params, held-out subject keys)
    plans: list[tuple[str, dict, set]] = []
    for name in names:
        for k, fold in enumerate(folds[name]):
            held = {(name, s) for s in fold}
            plans.append((f"within {name}", fit([r for key, rs in by_subject.items() if key[0] == name
                                                 and key not in held for r in rs]), held))
            print(f"  within {name} fold {k + 1} ({','.join(fold)}): {plans[-1][1]}")
    if len(names) > 1:
        for a in names:
            params = fit([r for key, rs in by_subject.items() if key[0] == a for r in rs])
            held = {key for key in by_subject if key[0] != a}
            plans.append((f"{a} -> others" if len(names) > 2 else f"{a} -> {[n for n in names if n != a][0]}",
                          params, held))
            print(f"  fitted on {a}: {params}")
        for k in range(max(len(f) for f in folds.values())):
            held = {(name, s) for name in names if k < len(folds[name]) for s in folds[name][k]}
            plans.append(("both", fit([r for key, rs in by_subject.items() if key not in held for r in rs]), held))
            print(f"  both fold {k + 1}: {plans[-1][1]}")
    # the fit's own check: the recorded features through fall.py's _decide() in CPython
    agree = {}
    for scheme, params, held in plans:
        held_recs = [r for key in held for r in by_subject.get(key, [])]
        agree[(scheme, frozenset(held))] = {r["trial"].path: fires_in_cpython(r, params) for r in held_recs}

    trials_by_subject: dict[tuple[str, str], list[Trial]] = {}
    for t in trials:
        trials_by_subject.setdefault(subject_key(t), []).append(t)
    out: dict = {"datasets": names, "range_g": range_g, "schemes": {}, "cost": {}}
    cache: dict = {}
    for rate in rates:
        def run_plan(plan):
            scheme, params, held = plan
            held_trials = [t for key in sorted(held) for t in trials_by_subject.get(key, [])]
            return evaluate(held_trials, rate, params, measure_cost=False, cache=cache, range_g=range_g)

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(run_plan, plans))
        mismatch = 0
        pooled: dict[str, list[TrialResult]] = {}
        for (scheme, _, held), res in zip(plans, results):
            pooled.setdefault(scheme, []).extend(res.trials)
            if rate == FIT_RATE_HZ:
                expected = agree[(scheme, frozenset(held))]
                mismatch += sum(expected[r.trial.path] != r.fired for r in res.trials)
        print(f"\n== held out, the firmware in MicroPython ({DETECTOR}), {rate} Hz"
              f"{f', +-{range_g} g' if range_g < 16 else ''} ==")
        if rate == FIT_RATE_HZ:
            print(f"  (MicroPython and fall.py in CPython disagree on {mismatch} held-out trials)")
        for scheme, rs in pooled.items():
            print(f"{scheme}:")
            for name in names:
                mine = [r for r in rs if r.trial.dataset == name]
                if not mine:
                    continue
                s = summary(mine)
                print_summary(name, s)
                entry = out["schemes"].setdefault(scheme, {}).setdefault(name, {})
                entry[str(rate)] = summary_json(s)
                if rate == rates[0]:
                    entry["per_activity"] = per_activity(mine)
        if rate == rates[0]:
            for scheme, rs in pooled.items():
                for name in names:
                    mine = [r for r in rs if r.trial.dataset == name]
                    if mine:
                        print(f"\nper activity, {scheme}, scored on {name} ({rate} Hz; 95 % Wilson intervals):")
                        print_per_activity(out["schemes"][scheme][name]["per_activity"])

    final = fit(recs)
    out["defaults"] = final
    print(f"\nfitted on all subjects of {', '.join(names)} (the defaults): {final}")
    if write:
        write_defaults(final)
        print(f"written to {FALL_PY.relative_to(ROOT)}")
    one = next(t for t in trials if t.is_fall)
    for rate in rates:
        cost = evaluate([one], rate, None if write else final, measure_cost=True, range_g=range_g).cost
        out["cost"][str(rate)] = cost.to_json()
        print(f"cost in MicroPython at {rate} Hz ({cost.trace}, {cost.updates} updates x {len(cost.runs_us)} runs): "
              f"{cost.update_us:.2f} us per update() (runs {min(cost.runs_us):.2f}-{max(cost.runs_us):.2f}), "
              f"detector {cost.detector_bytes} bytes of heap, {cost.alloc_bytes} bytes allocated by update()")
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {json_path}")
    print(f"wall time {time.monotonic() - t0:.0f} s")
    return out


# ------------------------------------------------------------------------ the smoke dataset
def _still(seconds: float, v: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    return [v] * round(seconds * 200)


def _walk(seconds: float, phase: float = 0.0) -> list[tuple[int, int, int]]:
    return [(round(26 * math.sin(math.pi * 1.8 * k / 200 + phase)),
             round(-256 + 77 * math.sin(2 * math.pi * 1.8 * k / 200 + phase)), 0)
            for k in range(round(seconds * 200))]


def _turn(a, b, seconds: float, low: float = 1.0, start: float = 0.0):
    n = round(seconds * 200)
    out = []
    for k in range(n):
        t = start + (1 - start) * (k + 1) / n
        v = [a[i] + (b[i] - a[i]) * t for i in range(3)]
        norm = math.sqrt(sum(c * c for c in v)) or 1.0
        mag = 256 * (1 - (1 - low) * math.sin(math.pi * (k + 1) / n))
        out.append(tuple(round(c / norm * mag) for c in v))
    return out


def _impact(v, peak_g: float, ms: int) -> list[tuple[int, int, int]]:
    n = max(1, ms // 5)
    return [tuple(round(c * (1 + (peak_g - 1) * (1 - abs(2 * (k + 0.5) / n - 1)))) for c in v) for k in range(n)]


UPRIGHT, BACK, SIDE, RECLINED = (0, -256, 0), (0, 0, 256), (256, 0, 0), (0, -181, 181)


def smoke_trials(seed: int) -> dict[str, list[tuple[int, int, int]]]:
    """Short 200 Hz ADXL345-count traces: falls (hard, slumped, out of bed) and daily activities."""
    ph = seed * 0.7
    return {
        "hard_fall": _walk(6, ph) + _turn(UPRIGHT, BACK, 0.6, low=0.3) + _impact(BACK, 5 + seed % 3, 80)
        + _still(6, BACK),
        "bed_fall": _still(6, BACK) + _turn(BACK, SIDE, 0.4, low=0.2) + _impact(SIDE, 5, 120) + _still(6, SIDE),
        "lie_down": _walk(5, ph) + _still(1, UPRIGHT) + _impact(UPRIGHT, 1.9, 100)
        + _turn(UPRIGHT, BACK, 2.0) + _still(6, BACK),
        "walk": _walk(12, ph),
        # sitting back hard onto a sofa: a hard impact, reclined 45 degrees after
        "sit": _walk(5, ph) + _turn(UPRIGHT, RECLINED, 0.5, low=0.6) + _impact(RECLINED, 2.5 + 0.3 * seed, 150)
        + _still(6, RECLINED),
    }


def write_smoke_data(root: Path) -> list[Path]:
    """Two tiny datasets: "sis" (SisFall's codes) and "fad" (named by an activity_codes.csv)."""
    def write(folder: Path, name: str, rows) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{x},{y},{z},0,0,0,0,0,0;\r\n" for x, y, z in rows)
        (folder / f"{name}.txt.xz").write_bytes(lzma.compress(text.encode()))

    sis, fad = root / "sis", root / "fad"
    (fad).mkdir(parents=True)
    (fad / "activity_codes.csv").write_text(
        "code,src_activity_id,src_activity,is_fall,n_trials\n"
        "D16,A016,Lying down,0,3\nD20,A020,Walking slowly,0,3\nD13,A013,Sitting down,0,3\n"
        "F07,A107,\"Fall B, walking, slip\",1,3\nF27,A127,\"Fall L, bed\",1,3\n")
    for s in range(1, 4):
        tr = smoke_trials(s)
        subj = f"SA{s:02d}"
        for code, what in (("F02", "hard_fall"), ("D13", "lie_down"), ("D01", "walk"), ("D08", "sit")):
            write(sis / subj, f"{code}_{subj}_R01", tr[what])
        for code, what in (("F07", "hard_fall"), ("F27", "bed_fall"), ("D16", "lie_down"), ("D20", "walk"),
                           ("D13", "sit")):
            write(fad / subj, f"{code}_{subj}_R01", tr[what])
    write(sis / "SE01", "D01_SE01_R01", smoke_trials(4)["walk"])
    return [sis, fad]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", default=[Path(DEFAULT_DATA)],
                    help="dataset folders, or folders holding them (default: %(default)s)")
    ap.add_argument("--rates", default="50,100,200", help="node rates to score (default: %(default)s)")
    ap.add_argument("--range-g", type=int, choices=(8, 16), default=16,
                    help="emulate a +-8 g accelerometer (clipped) for fitting and scoring (default 16)")
    ap.add_argument("--json", type=Path, help="write every figure, per activity too, to this JSON file")
    ap.add_argument("--write", action="store_true", help="write the defaults fitted on all subjects into fall.py")
    ap.add_argument("--smoke", action="store_true", help="run on tiny generated datasets (the test suite)")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    if args.smoke:
        if args.write:
            raise SystemExit("--smoke never writes fall.py")
        with tempfile.TemporaryDirectory(prefix="falls-smoke-") as tmp:
            datasets = [ds for p in write_smoke_data(Path(tmp)) for ds in find_datasets(p)]
            run(datasets, rates, args.range_g, False, args.json)
        return
    datasets = [ds for p in args.data for ds in find_datasets(p)]
    run(datasets, rates, args.range_g, args.write, args.json)


if __name__ == "__main__":
    main()
