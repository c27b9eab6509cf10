"""Evaluate the node's fall detector on recorded trials, running the firmware's own code.

The detector is not re-implemented here: every trial is played through ``srnode/fall.py`` inside
one MicroPython unix-port process (``mp_runner.py``) with a board-sized heap, exactly the code a
node runs. CPython reads and resamples the trials (:mod:`.sisfall`) on a second thread while
MicroPython works, then scores the answers::

    trials = list(iter_trials("/data/SisFall_dataset", subjects={"SA01", "SA02"}))
    result = evaluate(trials, rate_hz=50)
    print(result.report())
    result.scores["all"].sensitivity.value      # 0.95...
    json.dumps(result.to_json())

Scoring is per trial, as SisFall labels whole trials and gives no fall-onset time:

* a fall trial (``F..``) is **detected** when the detector fires at least once in it;
* a daily-activity trial (``D..``) is a **false alarm** when it fires at least once.

Sensitivity = detected / falls, specificity = daily activities without an alarm / daily
activities, F1 = 2TP / (2TP + FP + FN), all with 95 % intervals (:mod:`.stats`).

**Time to alarm.** The impact peak of a trial is its sample with the largest ``|a|`` (the first
one on a tie), taken on the resampled trace the detector saw. A detected fall's time to alarm
is from that sample to the first alarm at or after it. An alarm before the peak still counts
as a detection (a trial is labelled as a whole), but it does not give a time to alarm: such
falls are counted apart in the report.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..sim.firmware import DEFAULT_HEAP, FirmwareNotFound, firmware_dir, micropython_exe
from .sisfall import Trial, read_counts, resample
from .stats import Estimate, Proportion, bootstrap_f1, nearest_rank

#: The MicroPython script that runs the detector.
RUNNER = Path(__file__).with_name("mp_runner.py")
#: The detector module, relative to the firmware folder.
DETECTOR_MODULE = "srnode/fall.py"
#: update() calls per timing run and for the allocation count.
COST_UPDATES = 10_000
#: Timing runs; the report gives their median (the first runs can be slower: caches, heap).
COST_RUNS = 7
#: The cost trace is one trial, at most this long (18 KB in the runner's 128 KB heap), looped.
COST_MAX_SAMPLES = 3000

Progress = Callable[[int, int, float], None]
"""``progress(done, total, elapsed_s)``, called after each trial."""


class RunnerError(RuntimeError):
    """The MicroPython runner failed: the detector raised, or the process died."""


# ------------------------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class TrialResult:
    """What the detector did on one trial."""

    trial: Trial
    samples: int
    peak_index: int                       # sample with the largest |a| (first on a tie)
    peak_mg: int
    fires: tuple[tuple[int, dict[str, Any]], ...]   # (sample index, features()) per alarm
    rate_hz: int

    @property
    def fired(self) -> bool:
        return bool(self.fires)

    @property
    def outcome(self) -> str:
        """``tp`` detected fall, ``fn`` missed fall, ``fp`` false alarm, ``tn`` quiet activity."""
        if self.trial.is_fall:
            return "tp" if self.fired else "fn"
        return "fp" if self.fired else "tn"

    @property
    def latency_s(self) -> float | None:
        """Seconds from the impact peak to the first alarm at or after it; None without one."""
        for index, _features in self.fires:
            if index >= self.peak_index:
                return (index - self.peak_index) / self.rate_hz
        return None

    def to_json(self) -> dict[str, Any]:
        t = self.trial
        return {"name": t.name, "dataset": t.dataset, "subject": t.subject, "code": t.code,
                "activity": t.activity, "take": t.take, "group": t.group,
                "is_fall": t.is_fall, "path": str(t.path), "samples": self.samples,
                "peak_index": self.peak_index, "peak_mg": self.peak_mg, "outcome": self.outcome,
                "fires": [[i, f] for i, f in self.fires], "latency_s": self.latency_s}


@dataclass(frozen=True, slots=True)
class DetectorCost:
    """The detector's time and memory in MicroPython, measured by the runner on one trial."""

    update_us: float            # per update(), median over runs, the harness loop subtracted
    loop_us: float              # the harness loop alone, per sample (median)
    runs_us: tuple[float, ...]  # per update() in each run
    updates: int                # update() calls per run
    detector_bytes: int         # heap held by one detector object
    alloc_bytes: int            # heap allocated by `updates` update() calls (0: none)
    heap_bytes: int
    micropython: str
    trace: str                  # the trial the trace came from

    @classmethod
    def from_runner(cls, answer: Mapping[str, Any], trace: str) -> DetectorCost:
        n = answer["updates"]
        runs = tuple((w - b) / n for w, b in zip(answer["with_us"], answer["bare_us"]))
        return cls(update_us=statistics.median(runs), loop_us=statistics.median(answer["bare_us"]) / n,
                   runs_us=runs, updates=n, detector_bytes=answer["detector_bytes"],
                   alloc_bytes=answer["alloc_bytes"], heap_bytes=answer["heap_bytes"],
                   micropython=answer["micropython"], trace=trace)

    def to_json(self) -> dict[str, Any]:
        return {"update_us": self.update_us, "loop_us": self.loop_us, "runs_us": list(self.runs_us),
                "updates": self.updates, "detector_bytes": self.detector_bytes,
                "alloc_bytes": self.alloc_bytes, "heap_bytes": self.heap_bytes,
                "micropython": self.micropython, "trace": self.trace}


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-trial counts of one group of trials and the figures made from them."""

    tp: int
    fn: int
    fp: int
    tn: int
    sensitivity: Proportion | None    # None: no falls in the group
    specificity: Proportion | None    # None: no daily activities in the group
    f1: Estimate | None               # None: no falls in the group

    @classmethod
    def of(cls, results: Iterable[TrialResult]) -> Scores:
        counts = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
        for r in results:
            counts[r.outcome] += 1
        tp, fn, fp, tn = counts["tp"], counts["fn"], counts["fp"], counts["tn"]
        return cls(tp, fn, fp, tn,
                   sensitivity=Proportion.of(tp, tp + fn) if tp + fn else None,
                   specificity=Proportion.of(tn, tn + fp) if tn + fp else None,
                   # with no falls F1 is 0 at the first false alarm whatever the detector: not a figure
                   f1=bootstrap_f1(tp, fp, fn, tn) if tp + fn else None)

    @property
    def falls(self) -> int:
        return self.tp + self.fn

    @property
    def activities(self) -> int:
        return self.fp + self.tn

    def to_json(self) -> dict[str, Any]:
        return {"trials": self.falls + self.activities, "falls": self.falls, "activities": self.activities,
                "tp": self.tp, "fn": self.fn, "fp": self.fp, "tn": self.tn,
                "sensitivity": self.sensitivity and self.sensitivity.to_json(),
                "specificity": self.specificity and self.specificity.to_json(),
                "f1": self.f1 and self.f1.to_json()}


@dataclass(frozen=True, slots=True)
class CodeSummary:
    """One activity code of one dataset: its trials and which of them went wrong (missed or alarmed)."""

    dataset: str
    code: str
    activity: str               # the code's name in its dataset ("" when the dataset does not name it)
    is_fall: bool
    trials: int
    wrong: tuple[str, ...]      # "SA01/R02" of the missed falls / the false alarms

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "code": self.code, "activity": self.activity, "is_fall": self.is_fall,
                "trials": self.trials, ("missed" if self.is_fall else "false_alarms"): list(self.wrong)}


@dataclass(frozen=True, slots=True)
class Latency:
    """Impact peak to alarm over the detected falls that have an alarm at or after the peak."""

    values_s: tuple[float, ...]
    before_peak_only: int       # detected falls whose alarms all came before the peak

    @property
    def median_s(self) -> float | None:
        return nearest_rank(self.values_s, 50) if self.values_s else None

    @property
    def p95_s(self) -> float | None:
        return nearest_rank(self.values_s, 95) if self.values_s else None

    def to_json(self) -> dict[str, Any]:
        return {"n": len(self.values_s), "median_s": self.median_s, "p95_s": self.p95_s,
                "percentile": "nearest rank", "before_peak_only": self.before_peak_only}


@dataclass(frozen=True, slots=True)
class EvalResult:
    """A whole evaluation: per-trial results, scores by group, the detector's cost."""

    rate_hz: int
    params: dict[str, Any] | None
    firmware: Path
    trials: tuple[TrialResult, ...]
    scores: Mapping[str, Scores]         # "all", each dataset's name when there are several, and
                                         # "young" / "elderly" when present
    cost: DetectorCost | None
    wall_s: float
    source: str | None = None            # the dataset, for the report
    skipped: tuple[str, ...] = ()        # files the reader skipped
    range_g: int = 16                    # the emulated accelerometer's range

    def codes(self) -> list[CodeSummary]:
        """Per dataset and activity code, in the order the datasets came, codes sorted."""
        by_code: dict[tuple[str, str], list[TrialResult]] = {}
        for r in self.trials:
            by_code.setdefault((r.trial.dataset, r.trial.code), []).append(r)
        order = {d: i for i, d in enumerate(dict.fromkeys(r.trial.dataset for r in self.trials))}
        out = []
        for key in sorted(by_code, key=lambda k: (order[k[0]], k[1])):
            rs = by_code[key]
            wrong = tuple(f"{r.trial.subject}/{r.trial.take}" for r in rs if r.outcome in ("fn", "fp"))
            out.append(CodeSummary(key[0], key[1], rs[0].trial.activity, rs[0].trial.is_fall, len(rs), wrong))
        return out

    def latency(self) -> Latency:
        detected = [r for r in self.trials if r.outcome == "tp"]
        values = [r.latency_s for r in detected]
        return Latency(tuple(v for v in values if v is not None), sum(v is None for v in values))

    def to_json(self) -> dict[str, Any]:
        """Everything in the report and every trial's result, as JSON-ready values."""
        return {"source": self.source, "rate_hz": self.rate_hz, "range_g": self.range_g, "params": self.params,
                "firmware": str(self.firmware), "detector": DETECTOR_MODULE,
                "skipped_files": list(self.skipped),
                "scores": {group: s.to_json() for group, s in self.scores.items()},
                "activities": [c.to_json() for c in self.codes()],
                "latency": self.latency().to_json(),
                "cost": self.cost and self.cost.to_json(),
                "wall_s": self.wall_s,
                "trials": [r.to_json() for r in self.trials]}

    def report(self) -> str:
        return format_report(self)


# ------------------------------------------------------------------------------ the runner
class DetectorRunner:
    """One MicroPython process running ``mp_runner.py`` against a firmware folder.

    Requests are written with :meth:`send_trial` / :meth:`send_bench` (from one thread) and
    answered in order, one JSON line each, read with :meth:`read_reply` (from another thread,
    or the same one after each request).
    """

    def __init__(self, rate_hz: int, params: Mapping[str, Any] | None = None, *,
                 firmware: Path | None = None, heap: str = DEFAULT_HEAP) -> None:
        self.firmware = (Path(firmware) if firmware is not None else firmware_dir()).resolve()
        if not (self.firmware / DETECTOR_MODULE).is_file():
            raise FirmwareNotFound(f"no detector at {self.firmware / DETECTOR_MODULE}")
        self._stderr = tempfile.TemporaryFile()
        env = {**os.environ, "MICROPYPATH": f"{self.firmware}:.frozen"}
        self._proc = subprocess.Popen([micropython_exe(), "-X", f"heapsize={heap}", str(RUNNER)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      cwd=self.firmware, env=env)
        self._write(json.dumps({"rate_hz": rate_hz, "params": params}).encode() + b"\n")

    def __enter__(self) -> DetectorRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                pipe.close()
            except OSError:          # stdin with unflushed data after the kill
                pass
        self._stderr.close()

    def send_trial(self, trace: Trace) -> None:
        self._write(b"T %d\n" % trace.samples + trace.data)

    def send_bench(self, trace: Trace, updates: int, runs: int) -> None:
        n = min(trace.samples, COST_MAX_SAMPLES)
        self._write(b"B %d %d %d\n" % (n, updates, runs) + trace.data[:6 * n])

    def finish(self) -> None:
        """No more requests: the runner exits after answering those sent."""
        self._proc.stdin.close()

    def read_reply(self) -> dict[str, Any]:
        line = self._proc.stdout.readline()
        if not line:
            raise RunnerError(self._failure())
        return json.loads(line)

    def _write(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise RunnerError(self._failure()) from None

    def _failure(self) -> str:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        return (f"the detector's MicroPython runner stopped (exit {code}) with firmware "
                f"{self.firmware}:\n{err or '(nothing on stderr)'}")


@dataclass(frozen=True, slots=True)
class Trace:
    """A trial as the node would sample it, packed for the runner: x, y, z mg as int16 LE."""

    samples: int
    peak_index: int             # sample with the largest |a| (the first one on a tie)
    peak_mg: int
    data: bytes

    @classmethod
    def of(cls, samples: Sequence[tuple[int, int, int]]) -> Trace:
        data = array("h", chain.from_iterable(samples))
        if sys.byteorder == "big":
            data.byteswap()
        peak_index, peak_mg = impact_peak(samples)
        return cls(len(samples), peak_index, peak_mg, data.tobytes())


def load_trace(trial: Trial, rate_hz: int, range_g: int = 16) -> Trace:
    """Read, resample (and clip to +-range_g) and pack one trial."""
    return Trace.of(resample(read_counts(trial.path), rate_hz, range_g))


def impact_peak(samples: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """(index, |a| in mg) of the sample with the largest magnitude; the first one on a tie."""
    if not samples:
        return 0, 0
    squares = [x * x + y * y + z * z for x, y, z in samples]
    peak = max(squares)
    return squares.index(peak), round(peak ** 0.5)


# ---------------------------------------------------------------------------------- evaluate
TraceCache = dict[tuple[Path, int, int], Trace]
"""Traces by (trial file, rate, range): pass one to repeated :func:`evaluate` calls to read each trial once."""


def evaluate(trials: Iterable[Trial], rate_hz: int = 50, params: Mapping[str, Any] | None = None,
             progress: Progress | None = None, *, firmware: Path | None = None, measure_cost: bool = True,
             cache: TraceCache | None = None, source: str | None = None,
             skipped: Sequence[Path | str] = (), range_g: int = 16) -> EvalResult:
    """Run the firmware's detector on every trial and score it (see the module's docstring).

    *params* (a dict of the detector's tunable constants) is passed to ``FallDetector(rate_hz,
    params)``; without it the detector is built as ``FallDetector(rate_hz)``. *firmware* is the
    firmware folder (default: the repo's, or $SMARTROOM_FIRMWARE). *measure_cost* adds the
    detector's time and heap use in MicroPython (about a second); a tuning loop can skip it.
    *cache* (a dict, empty at first) keeps every trial's resampled trace (6 bytes a sample, 6 MB
    for SisFall at 50 Hz): later calls with the same dict skip reading the files, the larger
    part of an evaluation's time.
    *range_g* emulates an accelerometer of that range (8: clipped at +-8 g, :func:`.sisfall.resample`).
    *source* and *skipped* only go into the report. Raises :class:`RunnerError` when the
    detector fails in MicroPython, :class:`~controller.sim.nodes.FirmwareNotFound` without a
    detector or a ``micropython`` command, and :class:`~.sisfall.DatasetError` on a bad trial file.
    """
    trials = list(trials)
    if not trials:
        raise ValueError("no trials to evaluate")
    start = time.monotonic()
    # The cost is measured on the first fall (free fall, impact and lying: every state of the
    # detector), or the first trial when there is no fall.
    bench_trial = next((t for t in trials if t.is_fall), trials[0])
    sent: queue.Queue[tuple[Trial, Trace] | bool | BaseException] = queue.Queue()

    with DetectorRunner(rate_hz, params, firmware=firmware) as runner:
        def feed() -> None:
            # Reading and resampling (CPython) overlaps the detector's work (MicroPython); the
            # pipe's buffer keeps this thread at most a trial or two ahead.
            try:
                bench_trace = None
                for trial in trials:
                    key = (trial.path, rate_hz, range_g)
                    trace = cache.get(key) if cache is not None else None
                    if trace is None:
                        trace = load_trace(trial, rate_hz, range_g)
                        if cache is not None:
                            cache[key] = trace
                    if trial is bench_trial:
                        bench_trace = trace
                    sent.put((trial, trace))
                    runner.send_trial(trace)
                bench = measure_cost and bench_trace is not None and bench_trace.samples > 0
                if bench:
                    runner.send_bench(bench_trace, COST_UPDATES, COST_RUNS)
                runner.finish()
                sent.put(bench)
            except BaseException as exc:  # handed to the main thread, which raises it
                sent.put(exc)

        feeder = threading.Thread(target=feed, name="falls-feed", daemon=True)
        feeder.start()
        results = []
        for done in range(1, len(trials) + 1):
            item = sent.get()
            if isinstance(item, BaseException):
                raise item
            trial, trace = item
            reply = runner.read_reply()
            if reply.get("n") != trace.samples:
                raise RunnerError(f"{trial.name}: the runner answered {reply!r} for {trace.samples} samples")
            fires = tuple((int(i), dict(f)) for i, f in reply["fires"])
            results.append(TrialResult(trial, trace.samples, trace.peak_index, trace.peak_mg, fires, rate_hz))
            if progress is not None:
                progress(done, len(trials), time.monotonic() - start)
        bench = sent.get()                # True when the cost request was sent, or the feeder's error
        if isinstance(bench, BaseException):
            raise bench
        cost = DetectorCost.from_runner(runner.read_reply()["bench"], bench_trial.name) if bench else None
        feeder.join()
        fw = runner.firmware

    groups = {"all": results}
    datasets = list(dict.fromkeys(r.trial.dataset for r in results))
    if len(datasets) > 1:
        for name in datasets:
            groups[name] = [r for r in results if r.trial.dataset == name]
    for group in ("young", "elderly"):
        members = [r for r in results if r.trial.group == group]
        if members:
            groups[group] = members
    return EvalResult(rate_hz=rate_hz, params=dict(params) if params is not None else None, firmware=fw,
                      trials=tuple(results), scores={g: Scores.of(rs) for g, rs in groups.items()},
                      cost=cost, wall_s=time.monotonic() - start, source=source,
                      skipped=tuple(str(p) for p in skipped), range_g=range_g)


# ------------------------------------------------------------------------------------ report
def _pct(p: Proportion | None, what: str) -> str:
    if p is None:
        return f"{'no ' + what:>8}"
    return f"{100 * p.value:6.1f} %  ({100 * p.low:.1f}-{100 * p.high:.1f} %)  {p.k}/{p.n}"


def _f1(f1: Estimate | None) -> str:
    return f"{'no falls':>8}" if f1 is None else f"{f1.value:8.3f}  ({f1.low:.3f}-{f1.high:.3f})"


def format_report(result: EvalResult) -> str:
    """The evaluation as text, for a terminal."""
    all_ = result.scores["all"]
    lines = [
        f"Fall detector evaluation: {len(result.trials)} trials ({all_.falls} falls, "
        f"{all_.activities} daily activities)" + (f" from {result.source}" if result.source else ""),
        f"Detector: {DETECTOR_MODULE} in {result.firmware}, "
        f"params: {json.dumps(result.params) if result.params is not None else 'its defaults'}",
        f"Node rate {result.rate_hz} Hz: the ADXL345 columns (+-16 g)"
        + (f" clipped at +-{result.range_g} g" if result.range_g < 16 else "")
        + f" in blocks of {200 // result.rate_hz} samples at 200 Hz, averaged",
    ]
    if result.skipped:
        names = [Path(p).name for p in result.skipped]
        lines.append(f"Skipped {len(names)} file(s) with names that are not trials: "
                     + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    lines += ["", "Per trial: a fall is detected if the detector fires at least once in its trial; "
              "a daily activity is a false alarm if it fires at least once.",
              "95 % intervals: Wilson for sensitivity and specificity, "
              + (all_.f1.method if all_.f1 else "bootstrap") + " for F1.", ""]
    titles = {"all": "All subjects", "young": "Young (SA)", "elderly": "Elderly (SE)"}
    for group, s in result.scores.items():
        lines += [f"{titles.get(group, group)}: {s.falls + s.activities} trials",
                  f"  sensitivity  {_pct(s.sensitivity, 'falls')}",
                  f"  specificity  {_pct(s.specificity, 'activities')}",
                  f"  F1           {_f1(s.f1)}"]
    codes = result.codes()
    several = len({c.dataset for c in codes}) > 1

    def label(c: CodeSummary) -> str:
        return (f"{c.dataset} " if several else "") + c.code + (f" ({c.activity})" if c.activity else "")

    missed = [c for c in codes if c.is_fall and c.wrong]
    alarmed = [c for c in codes if not c.is_fall and c.wrong]
    lines += ["", "Falls missed, by fall type:" if missed else "Falls missed: none"]
    lines += [f"  {label(c)}  {len(c.wrong)}/{c.trials} missed: {', '.join(c.wrong)}" for c in missed]
    lines += ["", "False alarms, by daily activity:" if alarmed else "False alarms: none"]
    lines += [f"  {label(c)}  {len(c.wrong)}/{c.trials} alarmed: {', '.join(c.wrong)}" for c in alarmed]
    lat = result.latency()
    lines += ["", "Time from the impact peak (largest |a| of the trial) to the first alarm at or after it:"]
    if lat.values_s:
        lines.append(f"  median {lat.median_s:.2f} s, p95 {lat.p95_s:.2f} s (nearest rank) "
                     f"over {len(lat.values_s)} detected falls")
    else:
        lines.append("  no detected fall with an alarm at or after its impact peak")
    if lat.before_peak_only:
        lines.append(f"  {lat.before_peak_only} detected fall(s) alarmed only before their impact peak: "
                     "counted as detected, left out of these times")
    if result.cost is not None:
        c = result.cost
        lines += ["", f"Detector cost in MicroPython {c.micropython} (unix port, this machine, "
                      f"heap {c.heap_bytes} bytes):",
                  f"  {c.update_us:.2f} µs per sample: median of {len(c.runs_us)} runs of {c.updates:,} update() "
                  f"calls on {c.trace} (harness loop, {c.loop_us:.2f} µs, subtracted)",
                  f"  {c.detector_bytes} bytes for a detector object; {c.alloc_bytes} bytes allocated "
                  f"by {c.updates:,} update() calls"]
    lines += ["", f"Wall time {result.wall_s:.1f} s"]
    return "\n".join(lines)
