"""Tune the node's fall detector (firmware/srnode/fall.py) on SisFall, subject-wise cross-validated.

    .venv/bin/python bench/falls_tune.py [--data /work/shared/data/SisFall_dataset] [--rates 50,100] [--write]
    .venv/bin/python bench/falls_tune.py --smoke      # a few synthetic trials in SisFall's layout

What it does:

1. Plays every trial through the firmware's own ``fall.py`` in CPython (``micropython.const`` is
   stubbed; the same file, not a copy) with the decision switched off, and records every
   candidate the detector judges: its features, exactly as the node computes them.
2. Five folds: the young subjects SA01-SA15 in groups of three (SA01-SA03, SA04-SA06, ...), the
   elderly SE01-SE10 (daily activities only) dealt round-robin over the folds. For each fold the
   score's weights are fitted on the other four folds only: logistic regression over candidates
   (the one at a fall's impact peak is a fall, every one in a daily activity is not; only those
   that pass fall.py's limits), weights scaled by 1000 and rounded to ints, then the bias set so
   that at least 99.5 % of the training daily activities stay quiet.
3. Scores each held-out fold by running the firmware in MicroPython (controller.fall_eval.evaluate,
   the unix port with a board-sized heap) with that fold's weights as params, at every rate of
   --rates (weights are fitted at the first). Prints per fold and pooled: sensitivity,
   specificity with 95 % Wilson intervals, the misses and false alarms, impact-to-alarm latency.
4. Fits on all subjects: the defaults. --write puts them into fall.py's ``WEIGHTS = (...)``
   line; then the detector's cost (us per update(), heap, allocations) is measured in
   MicroPython, on one fall trial looped 10,000 times.

The stages, windows and limits (pre_max_deg, post_min_deg, ...) are fixed in fall.py with their
reasons; only the score's weights and bias are fitted here. Reading the dataset uses the
project's reader (controller/fall_eval/sisfall.py); about a minute in all on two cores.
"""

from __future__ import annotations

import argparse
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

from controller.fall_eval.evaluate import evaluate  # noqa: E402
from controller.fall_eval.sisfall import iter_trials, read_counts, resample  # noqa: E402
from controller.fall_eval.stats import Proportion, nearest_rank  # noqa: E402
from srnode import fall  # noqa: E402

DEFAULT_DATA = os.environ.get("SISFALL", "/work/shared/data/SisFall_dataset")
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
ELDERLY = ("SE01", "SE02", "SE03", "SE04", "SE05", "SE07", "SE08", "SE09", "SE10")


def folds() -> list[list[str]]:
    young = [f"SA{i:02d}" for i in range(1, 16)]
    out = [young[3 * k:3 * k + 3] for k in range(5)]
    for i, s in enumerate(ELDERLY):
        out[i % 5].append(s)
    return out


# ---------------------------------------------------------------------------------- the data
def synthetic_dataset(root: Path) -> Path:
    """A tiny dataset in SisFall's layout and file format (CRLF, padded columns, trailing ';'), one
    subject per fold: a fall (standing, 0.4 s falling, a 6 g impact, lying), a hard sit-down and
    walking. Only for --smoke: it checks that this script runs, its figures mean nothing."""
    g = 256  # ADXL345 counts per g

    def still(seconds: float, axis: int = 1, sign: int = -1) -> list[tuple[int, int, int]]:
        row = [0, 0, 0]
        row[axis] = sign * g
        return [tuple(row)] * round(seconds * 200)

    def walking(seconds: float) -> list[tuple[int, int, int]]:
        return [(round(0.1 * g * math.sin(2 * math.pi * 0.9 * k / 200)),
                 round(-g + 0.3 * g * math.sin(2 * math.pi * 1.8 * k / 200)), 0) for k in range(round(seconds * 200))]

    trials = {"F01": still(6) + [(0, -102, 0)] * 80 + [(0, 6 * g, 0)] * 4 + still(8, axis=2, sign=1),
              "D07": still(6) + [(0, -180, 0)] * 60 + [(0, -int(2.6 * g), 0)] * 6 + still(8),
              "D01": walking(14)}
    base = root / "SisFall_dataset"
    for subject in ("SA01", "SA04", "SA07", "SA10", "SA13"):
        (base / subject).mkdir(parents=True)
        for code, rows in trials.items():
            lines = ["%4d,%4d,%4d,%5d,%5d,%6d,%4d,%4d,%4d;" % (x, y, z, 0, 0, 0, 4 * x, 4 * y, 4 * z)
                     for x, y, z in rows]
            (base / subject / f"{code}_{subject}_R01.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return base

def _load_one(rate_hz: int, trial):
    return trial, resample(read_counts(trial.path), rate_hz)


def load(root: str, rate_hz: int) -> list[tuple]:
    """[(Trial, samples)] of every trial, read and resampled by the project's SisFall reader."""
    trials = list(iter_trials(root))
    with ProcessPoolExecutor() as pool:
        return list(pool.map(partial(_load_one, rate_hz), trials, chunksize=16))


class _Recorder(fall.FallDetector):
    """The firmware's detector with the decision switched off: every candidate is recorded."""

    def _decide(self):
        self.recorded.append((self.index, list(self._f[:8])))
        return False


def record(data, rate_hz: int) -> list[dict]:
    """Per trial: subject, code, fall?, the sample with the largest |a|, the candidates."""
    out = []
    for trial, samples in data:
        det = _Recorder(rate_hz)
        det.recorded = []
        for i, (x, y, z) in enumerate(samples):
            det.index = i
            det.update(x, y, z)
        squares = [x * x + y * y + z * z for x, y, z in samples]
        out.append({"trial": trial, "peak_index": squares.index(max(squares)), "cands": det.recorded})
    return out


# ---------------------------------------------------------------------------- the score's fit
_UNIT_DETECTORS = [fall.FallDetector(50, {"weights": [int(i == k) for i in range(N_INPUTS + 1)]})
                   for k in range(N_INPUTS)]


def score_inputs(f: list[int]) -> list[int]:
    """The integer inputs of fall.py's score for a candidate's features, computed by fall.py's own
    _decide() with one weight at 1 and the others at 0 (so this can never drift from the firmware)."""
    out = []
    for det in _UNIT_DETECTORS:
        det._f[:8] = f
        det._decide()
        out.append(det._f[8])
    return out


def gated(f: list[int]) -> bool:
    """True when the candidate passes stage 3's limits and stage 4 (its score then decides)."""
    return f[2] < fall._DROP_MS and f[5] <= fall._PRE_MAX_DEG and f[6] >= fall._POST_MIN_DEG


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
    """The highest score among the trial's candidates that pass the limits (None: none does)."""
    best = None
    for _, f in rec["cands"]:
        if gated(f):
            s = sum(w * v for w, v in zip(weights, score_inputs(f)))
            best = s if best is None or s > best else best
    return best


def fit(recs: list[dict], rate_hz: int) -> dict[str, list[int]]:
    """fall.py params ({"weights": [...5 weights, bias]}) fitted on these trials."""
    x, y = [], []
    match = int(PEAK_MATCH_S * rate_hz)
    decide_n = fall._DECIDE_MS // (1000 // rate_hz)
    for rec in recs:
        for t, f in rec["cands"]:
            if not gated(f):
                continue
            if not rec["trial"].is_fall:
                x.append(score_inputs(f))
                y.append(0)
            elif abs(t - decide_n - rec["peak_index"]) <= match:
                x.append(score_inputs(f))
                y.append(1)
    raw = logistic(x, y)
    weights = [round(WEIGHT_SCALE * w) for w in raw[:-1]] + [0]
    neg = sorted((s for s in (trial_score(r, weights) for r in recs if not r["trial"].is_fall)
                  if s is not None), reverse=True)
    activities = sum(1 for r in recs if not r["trial"].is_fall)
    allowed = int((1 - TRAIN_SPECIFICITY) * activities)     # training false alarms allowed
    threshold = neg[allowed] + 1 if allowed < len(neg) else (neg[-1] if neg else 0)
    weights[-1] = -threshold
    return {"weights": weights}


def check_in_cpython(recs: list[dict], params: dict[str, list[int]], rate_hz: int) -> tuple[int, int, int, int]:
    """(tp, fn, fp, tn) from the recorded candidates through fall.py's own _decide()."""
    det = fall.FallDetector(rate_hz, params)
    counts = [0, 0, 0, 0]
    for rec in recs:
        fired = False
        for _, f in rec["cands"]:
            det._f[:8] = f
            if det._decide():
                fired = True
                break
        counts[(0 if fired else 1) if rec["trial"].is_fall else (2 if fired else 3)] += 1
    return tuple(counts)


# ------------------------------------------------------------------------- reporting helpers
def pct(p: Proportion) -> str:
    return f"{100 * p.value:5.1f} % ({p.k}/{p.n}, 95 % CI {100 * p.low:.1f}-{100 * p.high:.1f})"


def wrong_list(results) -> str:
    missed = [r.trial.name for r in results if r.outcome == "fn"]
    alarms = [r.trial.name for r in results if r.outcome == "fp"]
    return f"missed: {' '.join(missed) or '-'}; false alarms: {' '.join(alarms) or '-'}"


def write_defaults(params: dict[str, list[int]]) -> None:
    """Puts the fitted weights into fall.py's `WEIGHTS = (...)` line."""
    text = FALL_PY.read_text()
    line = "WEIGHTS = (" + ", ".join(str(w) for w in params["weights"]) + ")"
    text, n = re.subn(r"^WEIGHTS = \([-\d, ]*\)$", line, text, flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"{FALL_PY}: no single `WEIGHTS = (...)` line to write")
    FALL_PY.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="SisFall_dataset folder (default: %(default)s)")
    ap.add_argument("--rates", default="50,100", help="node rates to score; fitted at the first (default: %(default)s)")
    ap.add_argument("--write", action="store_true", help="write the defaults fitted on all subjects into fall.py")
    ap.add_argument("--smoke", action="store_true", help="a few synthetic trials in a temporary folder, 50 Hz only")
    args = ap.parse_args(argv)
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="smartroom-falls-")
        args.data, args.rates, args.write = str(synthetic_dataset(Path(tmp.name))), "50", False
    rates = [int(r) for r in args.rates.split(",")]
    fit_rate = rates[0]

    t0 = time.monotonic()
    data = load(args.data, fit_rate)
    recs = record(data, fit_rate)
    print(f"{len(recs)} trials at {fit_rate} Hz, {sum(len(r['cands']) for r in recs)} candidates judged "
          f"(read {time.monotonic() - t0:.0f} s)")

    by_subject = {}
    for rec in recs:
        by_subject.setdefault(rec["trial"].subject, []).append(rec)
    fold_params = []
    for k, fold_subjects in enumerate(folds()):
        train = [r for s, rs in by_subject.items() if s not in fold_subjects for r in rs]
        params = fit(train, fit_rate)
        fold_params.append(params)
        held = [r for s in fold_subjects for r in by_subject.get(s, [])]
        tp, fn, fp, tn = check_in_cpython(held, params, fit_rate)
        print(f"fold {k + 1} {','.join(fold_subjects)}: params {params}  (CPython: falls {tp}/{tp + fn}, "
              f"quiet activities {tn}/{tn + fp})")

    trials_by_subject = {}
    for trial, _ in data:
        trials_by_subject.setdefault(trial.subject, []).append(trial)
    del data
    for rate in rates:
        print(f"\n== held-out, MicroPython ({fall.__file__.split('/firmware/')[-1]}), {rate} Hz ==")

        def run(k):
            held = [t for s in folds()[k] for t in trials_by_subject.get(s, [])]
            return evaluate(held, rate, fold_params[k], measure_cost=False)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            results = list(pool.map(run, range(5)))
        pooled = []
        for k, res in enumerate(results):
            s = res.scores["all"]
            print(f"fold {k + 1} ({','.join(folds()[k])}): sensitivity {pct(s.sensitivity)}, "
                  f"specificity {pct(s.specificity)}\n    {wrong_list(res.trials)}")
            pooled.extend(res.trials)
        tp = sum(r.outcome == "tp" for r in pooled)
        fn = sum(r.outcome == "fn" for r in pooled)
        fp = sum(r.outcome == "fp" for r in pooled)
        tn = sum(r.outcome == "tn" for r in pooled)
        lat = [r.latency_s for r in pooled if r.outcome == "tp" and r.latency_s is not None]
        before = sum(1 for r in pooled if r.outcome == "tp" and r.latency_s is None)
        print(f"POOLED {rate} Hz: sensitivity {pct(Proportion.of(tp, tp + fn))}, "
              f"specificity {pct(Proportion.of(tn, tn + fp))}")
        for group in ("young", "elderly"):
            g = [r for r in pooled if r.trial.group == group]
            gq = sum(r.outcome == "tn" for r in g)
            ga = sum(not r.trial.is_fall for r in g)
            print(f"  {group}: quiet activities {gq}/{ga}")
        if lat:
            print(f"  impact peak -> alarm: p50 {nearest_rank(lat, 50):.2f} s, p95 {nearest_rank(lat, 95):.2f} s, "
                  f"max {max(lat):.2f} s over {len(lat)} falls ({before} alarmed only before the peak)")
        codes = {}
        for r in pooled:
            if r.outcome in ("fn", "fp"):
                codes[r.trial.code] = codes.get(r.trial.code, 0) + 1
        print("  wrong by code: " + (", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "-"))

    final = fit(recs, fit_rate)
    print(f"\nfitted on all subjects (the defaults): {final}")
    if args.write:
        write_defaults(final)
        print(f"written to {FALL_PY.relative_to(ROOT)}")
    one = next(t for rs in trials_by_subject.values() for t in rs if t.is_fall)
    cost = evaluate([one], fit_rate, None if args.write else final, measure_cost=True).cost
    print(f"cost in MicroPython at {fit_rate} Hz ({cost.trace}, {cost.updates} updates x {len(cost.runs_us)} runs): "
          f"{cost.update_us:.1f} us per update(), detector {cost.detector_bytes} bytes of heap, "
          f"{cost.alloc_bytes} bytes allocated by update()")
    return 0


if __name__ == "__main__":
    sys.exit(main())
