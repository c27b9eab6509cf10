"""``smartroom falls eval``: the readers (SisFall, FallAllD converted to SisFall's layout with its
own activity codes), resampling and clipping, statistics, and the evaluation run through the
firmware's detector in MicroPython.

Every dataset here is written into tmp_path in SisFall's exact format (CRLF, padded columns,
trailing ``;``, plain / gzip / xz): the tests never read the shared datasets.
"""

from __future__ import annotations

import gzip
import json
import lzma
import math
import re
from pathlib import Path

import pytest

from controller.cli import main
from controller.fall_eval.evaluate import RunnerError, evaluate, impact_peak
from controller.fall_eval.sisfall import (SISFALL_ACTIVITIES, DatasetError, counts_to_mg, dataset_root, find_datasets,
                                          iter_trials, open_dataset, parse_subjects, read_activity_codes, read_counts,
                                          resample)
from controller.fall_eval.stats import bootstrap_f1, f1_score, nearest_rank, wilson
from controller.sim.firmware import FirmwareNotFound

G = 256                     # ADXL345 counts per g


# ------------------------------------------------------------------------------ SisFall files
def sisfall_text(rows: list[tuple[int, int, int]]) -> bytes:
    """Rows of ADXL345 counts as a SisFall file: the other six columns filled in, as recorded."""
    lines = []
    for k, (x, y, z) in enumerate(rows):
        gyro = (k % 7 - 3, 2 * (k % 5), -40 + k % 3)
        mma = (4 * x, 4 * y, 4 * z)
        lines.append("%4d,%4d,%4d,%5d,%5d,%6d,%4d,%4d,%4d;" % (x, y, z, *gyro, *mma))
    return ("\r\n".join(lines) + "\r\n").encode()


def write_trial(root: Path, folder: str, name: str, rows: list[tuple[int, int, int]], comp: str = ".xz") -> Path:
    data = sisfall_text(rows)
    path = root / folder / f"{name}.txt{comp}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(data) if comp == ".xz" else gzip.compress(data) if comp == ".gz" else data)
    return path


def still(seconds: float, axis: int = 1, sign: int = -1) -> list[tuple[int, int, int]]:
    """1 g on one axis: upright is -Y (axis 1), lying on the back +Z (axis 2). 200 Hz rows."""
    row = [0, 0, 0]
    row[axis] = sign * G
    return [tuple(row)] * round(seconds * 200)


def clean_fall(lying_s: float = 8.0) -> list[tuple[int, int, int]]:
    """Standing 6 s, falling 0.4 s at 0.4 g, a 20 ms 6 g impact, then lying still on the back.

    The impact is the 4 rows 1280-1283: one 50 Hz block, sample 320. Why these numbers: a
    detector may need a few seconds of history before it judges an impact (v1 keeps 4 s), and
    a node falling freely (below 0.3 g) for longer than a body does is a dropped node, not a
    fall (v1), while v0 wants |a| below 0.5 g before the impact.
    """
    return still(6) + [(0, -102, 0)] * 80 + [(0, 6 * G, 0)] * 4 + still(lying_s, axis=2, sign=1)


def walking(seconds: float) -> list[tuple[int, int, int]]:
    """Upright, 0.3 g vertical bounce and a little sway, 1.8 steps a second."""
    rows = []
    for k in range(round(seconds * 200)):
        phase = 2 * math.pi * 1.8 * k / 200
        rows.append((round(0.1 * G * math.sin(phase / 2)), round(-G + 0.3 * G * math.sin(phase)),
                     round(0.05 * G * math.cos(phase))))
    return rows


# ---------------------------------------------------------------------------------- reader
def test_the_three_compressions_read_the_same_counts(tmp_path: Path) -> None:
    rows = [(17, -179, -26), (-3, -263, -23), (0, 0, 0), (4095, -4096, 1)]
    paths = [write_trial(tmp_path, "SA01", f"F0{i}_SA01_R01", rows, comp)
             for i, comp in enumerate(("", ".gz", ".xz"), 1)]
    assert paths[0].read_bytes().startswith(b"  17,-179, -26,")
    assert paths[0].read_bytes().endswith(b";\r\n")
    for path in paths:
        assert read_counts(path) == rows


def test_padding_and_a_missing_last_newline_or_blank_last_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "D01_SA01_R01.txt"
    path.write_bytes(b"  17,-179, -26,  -40, 1206,  -254, 68,-712,-116;\r\n -1,2,3,4,5,6,7,8,9;")
    assert read_counts(path) == [(17, -179, -26), (-1, 2, 3)]
    path.write_bytes(b"1,2,3,4,5,6,7,8,9;\r\n\r\n\r\n")
    assert read_counts(path) == [(1, 2, 3)]


@pytest.mark.parametrize("bad", [b"1,2,3,4,5,6,7,8;", b"1,2,3,4,5,6,7,8,9", b"1,2,x,4,5,6,7,8,9;",
                                 b"1,2,3,4,5,6,7,8,9;1", b"", b"1,2,3,4,5,6,7,8,9,10;", b"1,2,3,4,5,#,7,8,9;"])
def test_a_bad_line_names_the_file_and_line(tmp_path: Path, bad: bytes) -> None:
    good = b"  17,-179, -26,  -40, 1206,  -254, 68,-712,-116;\r\n"
    path = tmp_path / "SA01" / "F01_SA01_R01.txt.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(good * 2 + bad + b"\r\n" + good))
    with pytest.raises(DatasetError, match=r"F01_SA01_R01\.txt\.gz:3: expected 9 comma-separated integers") as err:
        read_counts(path)
    assert isinstance(err.value, ValueError)


def test_a_corrupt_compressed_file_is_a_dataset_error(tmp_path: Path) -> None:
    path = write_trial(tmp_path, "SA01", "F01_SA01_R01", still(1))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"F01_SA01_R01\.txt\.xz: cannot decompress"):
        read_counts(path)


def test_trials_take_the_subject_from_the_folder_and_come_sorted(tmp_path: Path) -> None:
    root = tmp_path / "SisFall_dataset"
    rows = still(0.1)
    for folder, name in [("SA15", "D17_SE15_R01"), ("SA15", "F02_SA15_R02"), ("SA15", "F02_SA15_R01"),
                         ("SA02", "D01_SA02_R01"), ("SE01", "D03_SE01_R01")]:
        write_trial(root, folder, name, rows)
    (root / "Readme.txt").write_text("SisFall\r\n")
    trials = list(iter_trials(root))
    assert [t.name for t in trials] == ["D01_SA02_R01", "D17_SA15_R01", "F02_SA15_R01", "F02_SA15_R02",
                                        "D03_SE01_R01"]
    quirk = trials[1]
    assert (quirk.subject, quirk.code, quirk.take, quirk.group, quirk.is_fall) == ("SA15", "D17", "R01", "young", False)
    assert quirk.path.name == "D17_SE15_R01.txt.xz"
    assert [(t.group, t.is_fall) for t in trials[2:]] == [("young", True), ("young", True), ("elderly", False)]
    # the parent of SisFall_dataset/ works too
    assert [t.name for t in iter_trials(tmp_path)] == [t.name for t in trials]


def test_iter_trials_filters_subjects_and_skips_unknown_names_with_a_count(tmp_path: Path, caplog) -> None:
    rows = still(0.1)
    for folder, name in [("SA01", "F01_SA01_R01"), ("SA02", "F01_SA02_R01"), ("SA03", "F01_SA03_R01")]:
        write_trial(tmp_path, folder, name, rows)
    write_trial(tmp_path, "SA01", "F01_SA01_R01", rows, "")              # a second copy of a trial
    write_trial(tmp_path, "SA01", "F1_SA01_R01", rows, ".gz")            # a name that does not parse
    (tmp_path / "SA01" / "notes.md").write_text("not a trial")            # not a trial file: ignored
    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "X01_SA01_R01.txt").write_text("not a subject folder")
    skipped: list[Path] = []
    trials = list(iter_trials(tmp_path, {"SA01", "SA03"}, skipped=skipped))
    assert [t.name for t in trials] == ["F01_SA01_R01", "F01_SA03_R01"]
    assert sorted(p.name for p in skipped) == ["F01_SA01_R01.txt.xz", "F1_SA01_R01.txt.gz"]
    assert "F1_SA01_R01.txt.gz" in caplog.text


def test_a_folder_that_is_not_sisfall_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such directory"):
        dataset_root(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a SisFall dataset"):
        dataset_root(tmp_path)


FALLALLD_CODES = ('code,src_activity_id,src_activity,is_fall,n_trials\n'
                  'D13,A013,Sitting down,0,140\n'
                  'D16,A016,Lying down,0,73\n'
                  'F27,A127,"Fall L, bed",1,21\n')


def test_a_converted_dataset_names_its_codes_from_its_activity_codes_csv(tmp_path: Path) -> None:
    root = tmp_path / "FallAllD_dev"
    for name in ("D13_SA01_R01", "D16_SA01_R02", "F27_SA01_R01", "D99_SA01_R01"):
        write_trial(root, "SA01", name, still(0.1))
    (root / "activity_codes.csv").write_text(FALLALLD_CODES)
    trials = list(iter_trials(root))
    assert [(t.code, t.activity, t.is_fall, t.dataset) for t in trials] == [
        ("D13", "Sitting down", False, "FallAllD_dev"),          # not SisFall's D13 (lying quickly)
        ("D16", "Lying down", False, "FallAllD_dev"),
        ("D99", "", False, "FallAllD_dev"),                      # unknown to the table: unnamed
        ("F27", "Fall L, bed", True, "FallAllD_dev")]
    # without the file, SisFall's own table names the codes
    (root / "activity_codes.csv").unlink()
    d13 = next(iter_trials(root))
    assert d13.activity == SISFALL_ACTIVITIES["D13"].name == "Sitting a moment, lying quickly, wait a moment, and sit again"
    assert open_dataset(root).codes_from == "SisFall"


@pytest.mark.parametrize("text, error", [
    ("code,name\nD13,x\n", r"activity_codes\.csv:1: expected the columns code, src_activity, is_fall; missing"),
    (FALLALLD_CODES + "X1,A1,Odd,0,1\n", r"activity_codes\.csv:5: expected a code like F01 or D13"),
    (FALLALLD_CODES + "D17,A017,Turning,2,1\n", r"activity_codes\.csv:5: expected a code"),
    (FALLALLD_CODES + "D17,A017,,0,1\n", r"activity_codes\.csv:5: expected a code"),
    (FALLALLD_CODES + "D16,A016,Lying down again,0,1\n", r"activity_codes\.csv:5: code D16 given twice"),
])
def test_a_bad_activity_codes_file_names_the_file_and_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "activity_codes.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=error):
        read_activity_codes(path)


def test_find_datasets_takes_a_dataset_or_a_folder_of_them(tmp_path: Path) -> None:
    write_trial(tmp_path / "SisFall_dataset", "SA01", "F01_SA01_R01", still(0.1))
    write_trial(tmp_path / "FallAllD_dev", "SA01", "F27_SA01_R01", still(0.1))
    (tmp_path / "FallAllD_dev" / "activity_codes.csv").write_text(FALLALLD_CODES)
    (tmp_path / "notes").mkdir()                                          # not a dataset: ignored
    both = find_datasets(tmp_path)
    assert [(d.name, d.codes_from.endswith("activity_codes.csv")) for d in both] == [
        ("FallAllD_dev", True), ("SisFall_dataset", False)]
    assert [d.name for d in find_datasets(tmp_path / "SisFall_dataset")] == ["SisFall_dataset"]
    with pytest.raises(DatasetError, match="no such directory"):
        find_datasets(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a SisFall dataset"):
        find_datasets(tmp_path / "notes")


def test_parse_subjects() -> None:
    assert parse_subjects("SA01,sa03") == {"SA01", "SA03"}
    assert parse_subjects("SA01-SA04,SE02") == {"SA01", "SA02", "SA03", "SA04", "SE02"}
    for bad in ("", "SA1", "SA03-SA01", "SA01-SE03", "XX01"):
        with pytest.raises(ValueError):
            parse_subjects(bad)


# -------------------------------------------------------------------------------- resample
def test_resample_averages_blocks_of_four_into_milli_g() -> None:
    counts = [(256, 0, -256), (256, 1, -256), (256, 2, -256), (256, 3, -257),     # x 1 g, y 6/4 counts
              (0, -1, 16), (0, -1, 16), (0, -1, 16), (0, -2, 16),                 # y -5/4 counts, z 16
              (99, 99, 99)]                                                       # incomplete: dropped
    # y: 6 counts / 4 = 1.5 counts = 5.859 mg -> 6; -5 / 4 counts = -4.883 mg -> -5
    # z: (-256 * 3 - 257) / 4 = -256.25 counts = -1000.98 mg -> -1001; 16 counts = 62.5 mg -> 63
    assert resample(counts, 50) == [(1000, 6, -1001), (0, -5, 63)]
    # 100 Hz: pairs
    assert resample(counts[:4], 100) == [(1000, 2, -1000), (1000, 10, -1002)]
    assert resample(counts[:2], 200) == [(1000, 0, -1000), (1000, 4, -1000)]
    assert resample(counts[:3], 50) == []
    with pytest.raises(ValueError, match="supported node rates"):
        resample(counts, 60)


def test_resample_emulates_a_smaller_range_by_clipping_each_axis_before_averaging() -> None:
    lim = 8 * G                                                  # +-8 g: 2048 counts
    counts = [(4000, -4096, 100), (2048, -2049, 100), (0, 0, 100), (0, 0, 100)]
    # x: (2048 + 2048 + 0 + 0) / 4 = 1024 counts = 4000 mg (unclipped: 1512 counts = 5906 mg)
    assert resample(counts, 50, 8) == [(4000, -4000, 391)]
    assert resample(counts, 50) == [(5906, -6001, 391)]      # y: -6145 / 4 counts = -6000.98 mg
    assert resample(counts[:2], 200, 8) == [(8000, -8000, 391), (8000, -8000, 391)]
    assert resample([(lim - 1, -lim + 1, 0)] * 4, 50, 8) == [(7996, -7996, 0)]     # just under: untouched
    with pytest.raises(ValueError, match="supported ranges"):
        resample(counts, 50, 6)


def test_counts_to_milli_g_rounds_half_up() -> None:
    assert counts_to_mg(256) == 1000
    assert counts_to_mg(1) == 4              # 3.906 mg
    assert counts_to_mg(16) == 63            # 62.5 mg exactly
    assert counts_to_mg(-16) == -62          # -62.5 mg: half up
    assert counts_to_mg(-4096) == -16000


def test_impact_peak_is_the_first_largest_magnitude() -> None:
    assert impact_peak([(0, -1000, 0), (0, 0, 3000), (3000, 0, 0), (0, -1000, 0)]) == (1, 3000)
    assert impact_peak(resample(clean_fall(), 50)) == (320, 6000)


# ----------------------------------------------------------------------------------- stats
def test_wilson_interval_against_hand_computed_values() -> None:
    # 45/50: p = 0.9, z^2 = 3.8415; centre = (0.9 + 0.038415) / 1.076829 = 0.871460
    # half = 1.959964 * sqrt(0.0018 + 0.000384146) / 1.076829 = 0.085064
    low, high = wilson(45, 50)
    assert low == pytest.approx(0.786397, abs=1e-6) and high == pytest.approx(0.956524, abs=1e-6)
    assert wilson(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert wilson(10, 10) == (pytest.approx(0.722467, abs=1e-6), 1.0)
    with pytest.raises(ValueError):
        wilson(1, 0)


def test_nearest_rank_percentiles() -> None:
    values = [50, 15, 40, 20, 35]            # sorted 15 20 35 40 50
    assert [nearest_rank(values, p) for p in (0, 5, 30, 40, 50, 95, 100)] == [15, 15, 20, 20, 35, 50, 50]
    assert nearest_rank([1, 2, 3, 4], 50) == 2           # never interpolated
    assert nearest_rank([7.5], 95) == 7.5
    with pytest.raises(ValueError):
        nearest_rank([], 50)


def test_f1_and_its_bootstrap_interval() -> None:
    assert f1_score(8, 2, 2) == 0.8
    assert f1_score(0, 3, 0) == 0.0
    assert f1_score(0, 0, 0) is None
    est = bootstrap_f1(40, 5, 10, 45)
    assert est.value == pytest.approx(80 / 95)
    assert 0.7 < est.low < est.value < est.high < 0.95
    assert bootstrap_f1(40, 5, 10, 45) == est                            # fixed seed
    perfect = bootstrap_f1(10, 0, 0, 10)
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    assert bootstrap_f1(0, 0, 0, 10) is None


# ----------------------------------------------------------------- end to end, in MicroPython
@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Five trials with known answers for any working fall detector."""
    root = tmp_path / "SisFall_dataset"
    write_trial(root, "SA01", "F01_SA01_R01", clean_fall())                       # detected
    write_trial(root, "SA01", "F02_SA01_R01", still(10), ".gz")                   # missed: nothing happens
    # detected, then an 8 g knock long after: the alarm comes before the trial's largest peak
    write_trial(root, "SA01", "F03_SA01_R01", clean_fall(lying_s=12) + [(0, 0, 8 * G)] * 4 + still(1, 2, 1), "")
    write_trial(root, "SA01", "D01_SA01_R01", walking(12))                        # quiet
    write_trial(root, "SA01", "D19_SA01_R01", clean_fall())                       # labelled daily: false alarm
    write_trial(root, "SE01", "D01_SE01_R01", walking(12))                        # elderly, quiet
    return root


def test_cli_evaluates_the_firmware_detector_in_micropython(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "result.json"
    assert main(["falls", "eval", str(dataset.parent), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(out.read_text())
    outcomes = {t["name"]: t["outcome"] for t in doc["trials"]}
    assert outcomes == {"F01_SA01_R01": "tp", "F02_SA01_R01": "fn", "F03_SA01_R01": "tp",
                        "D01_SA01_R01": "tn", "D19_SA01_R01": "fp", "D01_SE01_R01": "tn"}

    fall = next(t for t in doc["trials"] if t["name"] == "F01_SA01_R01")
    assert (fall["peak_index"], fall["peak_mg"]) == (320, 6000)
    first = fall["fires"][0][0]
    assert fall["latency_s"] == (first - 320) / 50
    assert 1.0 <= fall["latency_s"] <= 6.0           # the detector waits to see the wearer lying
    assert all(type(v) is int for v in fall["fires"][0][1].values())
    knock = next(t for t in doc["trials"] if t["name"] == "F03_SA01_R01")
    assert knock["peak_mg"] == 8000 and knock["fires"][0][0] < knock["peak_index"] and knock["latency_s"] is None

    scores = doc["scores"]
    assert (scores["all"]["tp"], scores["all"]["fn"], scores["all"]["fp"], scores["all"]["tn"]) == (2, 1, 1, 2)
    assert scores["all"]["sensitivity"]["value"] == 2 / 3
    assert scores["all"]["specificity"]["ci95"] == list(wilson(2, 3))
    assert scores["all"]["f1"]["value"] == f1_score(2, 1, 1)
    assert scores["elderly"]["sensitivity"] is None and scores["elderly"]["f1"] is None
    assert scores["elderly"]["specificity"]["k"] == 1
    acts = {a["code"]: a for a in doc["activities"]}
    assert acts["F02"] == {"dataset": "SisFall_dataset", "code": "F02",
                           "activity": "Fall backward while walking caused by a slip", "is_fall": True,
                           "trials": 1, "missed": ["SA01/R01"]}
    assert acts["D19"]["false_alarms"] == ["SA01/R01"] and acts["D01"]["false_alarms"] == []
    assert doc["latency"] == {"n": 1, "median_s": fall["latency_s"], "p95_s": fall["latency_s"],
                              "percentile": "nearest rank", "before_peak_only": 1}
    cost = doc["cost"]
    assert cost["trace"] == "F01_SA01_R01" and cost["updates"] == 10_000
    assert cost["update_us"] > 0 and cost["detector_bytes"] > 0 and cost["alloc_bytes"] >= 0

    report = captured.out
    assert re.search(r"All subjects: 6 trials\n  sensitivity +66\.7 %  \(\d+\.\d-\d+\.\d %\)  2/3\n", report)
    assert "Elderly (SE): 1 trials" in report and "sensitivity  no falls" in report
    assert "F02 (Fall backward while walking caused by a slip)  1/1 missed: SA01/R01" in report
    assert "D19 (Gently jump without falling (trying to reach a high object))  1/1 alarmed: SA01/R01" in report
    assert "1 detected fall(s) alarmed only before their impact peak" in report
    assert "6/6 trials" in captured.err


def test_the_firmware_detector_allocates_nothing_per_sample(dataset: Path) -> None:
    # docs/firmware.md: update() runs for every sample on a 64 KB heap and must not allocate;
    # measured by the runner over 10,000 calls on a fall (impact, judging, lying, re-arming)
    result = evaluate([t for t in iter_trials(dataset) if t.code == "F01"], 50)
    assert result.cost.alloc_bytes == 0


def test_cli_selects_subjects_and_rate(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "se.json"
    assert main(["falls", "eval", str(dataset), "--subjects", "SE01-SE03", "--rate-hz", "100",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rate_hz"] == 100
    assert [t["name"] for t in doc["trials"]] == ["D01_SE01_R01"]
    assert doc["trials"][0]["samples"] == 1200 and doc["cost"]["trace"] == "D01_SE01_R01"


def test_cli_scores_two_datasets_apart_and_names_their_codes(dataset: Path, tmp_path: Path, capsys) -> None:
    fad = dataset.parent / "FallAllD_dev"
    hard = still(6) + [(0, -102, 0)] * 80 + [(0, 10 * G, 0)] * 4 + still(8, axis=2, sign=1)
    write_trial(fad, "SA01", "F27_SA01_R01", hard)                         # detected; a 10 g impact
    write_trial(fad, "SA01", "D16_SA01_R01", clean_fall())                 # labelled daily: false alarm
    write_trial(fad, "SA02", "D13_SA02_R01", walking(12))                  # quiet
    (fad / "activity_codes.csv").write_text(FALLALLD_CODES)
    out = tmp_path / "both.json"
    assert main(["falls", "eval", str(dataset.parent), "--rate-hz", "200", "--range-g", "8",
                 "--json", str(out)]) == 0
    report = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["rate_hz"] == 200 and doc["range_g"] == 8
    assert {g: (s["tp"], s["fn"], s["fp"], s["tn"]) for g, s in doc["scores"].items()} == {
        "all": (3, 1, 2, 3), "FallAllD_dev": (1, 0, 1, 1), "SisFall_dataset": (2, 1, 1, 2),
        "young": (3, 1, 2, 2), "elderly": (0, 0, 0, 1)}
    d13 = [(a["dataset"], a["activity"]) for a in doc["activities"] if a["code"] == "D13"]
    assert d13 == [("FallAllD_dev", "Sitting down")]
    assert "FallAllD_dev D16 (Lying down)  1/1 alarmed: SA01/R01" in report
    assert "FallAllD_dev: 3 trials" in report and "SisFall_dataset: 6 trials" in report
    assert "clipped at +-8 g" in report
    # the clip reached the detector: the 10 g impact reads 8 g
    f27 = next(t for t in doc["trials"] if t["name"] == "F27_SA01_R01")
    assert f27["dataset"] == "FallAllD_dev" and f27["activity"] == "Fall L, bed" and f27["peak_mg"] == 8000
    assert f27["fires"][0][1]["peak_mg"] <= 8000


def test_cli_errors_exit_2(tmp_path: Path, dataset: Path, capsys) -> None:
    assert main(["falls", "eval", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such directory" in capsys.readouterr().err
    assert main(["falls", "eval", str(dataset), "--subjects", "SA09"]) == 2
    assert "no trials for subjects SA09" in capsys.readouterr().err
    assert main(["falls", "eval", str(dataset), "--firmware", str(tmp_path)]) == 2
    assert "no detector at" in capsys.readouterr().err
    (dataset / "activity_codes.csv").write_text(FALLALLD_CODES + "D16,A016,Lying down,0,73\n")
    assert main(["falls", "eval", str(dataset)]) == 2
    assert "activity_codes.csv:5: code D16 given twice" in capsys.readouterr().err


FAKE_DETECTOR = '''
class FallDetector:
    """Fires at params["at"] and allocates on every sample: checks the runner, not a detector."""
    def __init__(self, rate_hz, params=None):
        self.at = params["at"] if params else -1
        self.n = 0
        self.kept = []
    def update(self, x, y, z):
        self.kept.append((x, y, z))
        if len(self.kept) > 50:
            self.kept = []
        self.n += 1
        if params_check(x) and self.n - 1 == self.at:
            return True
        return False
    def features(self):
        return {"n": self.n, "big": 1 << 40}

def params_check(x):
    if x > 10000:
        raise ValueError("x above 10 g")
    return True
'''


def fake_firmware(tmp_path: Path) -> Path:
    fw = tmp_path / "fakefw"
    (fw / "srnode").mkdir(parents=True)
    (fw / "srnode" / "__init__.py").write_text("")
    (fw / "srnode" / "fall.py").write_text(FAKE_DETECTOR)
    return fw


def test_params_reach_the_detector_and_allocation_is_measured(tmp_path: Path, dataset: Path) -> None:
    fw = fake_firmware(tmp_path)
    trials = [t for t in iter_trials(dataset) if t.code in ("F01", "D01")]
    result = evaluate(trials, 50, {"at": 7}, firmware=fw)
    assert [(r.trial.name, r.fires) for r in result.trials] == [
        ("D01_SA01_R01", ((7, {"n": 8, "big": 1 << 40}),)), ("F01_SA01_R01", ((7, {"n": 8, "big": 1 << 40}),)),
        ("D01_SE01_R01", ((7, {"n": 8, "big": 1 << 40}),))]
    assert result.cost.alloc_bytes >= 10_000 * 16     # a tuple per sample at least
    assert result.to_json()["params"] == {"at": 7}
    # without params the detector is built with the rate alone
    quiet = evaluate(trials[:1], 50, firmware=fw, measure_cost=False)
    assert quiet.trials[0].fires == () and quiet.cost is None


def test_a_failing_detector_is_a_runner_error_with_its_traceback(tmp_path: Path) -> None:
    fw = fake_firmware(tmp_path)
    write_trial(tmp_path / "ds", "SA01", "F01_SA01_R01", [(0, 0, G)] * 40 + [(11 * G, 0, 0)] * 8, "")
    with pytest.raises(RunnerError, match="ValueError: x above 10 g"):
        evaluate(iter_trials(tmp_path / "ds"), 50, firmware=fw)


def test_a_cache_reads_each_trial_once(tmp_path: Path, dataset: Path) -> None:
    fw = fake_firmware(tmp_path)
    trials = list(iter_trials(dataset))
    cache: dict = {}
    first = evaluate(trials, 50, {"at": 3}, firmware=fw, measure_cost=False, cache=cache)
    assert len(cache) == len(trials)
    for t in trials:
        t.path.unlink()
    again = evaluate(trials, 50, {"at": 3}, firmware=fw, measure_cost=False, cache=cache)
    assert [r.to_json() for r in again.trials] == [r.to_json() for r in first.trials]


def test_a_missing_micropython_detector_is_firmware_not_found(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(FirmwareNotFound):
        evaluate(iter_trials(dataset), 50, firmware=tmp_path)
