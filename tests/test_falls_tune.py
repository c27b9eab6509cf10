"""bench/falls_tune.py --smoke: the whole tuning pipeline (read, record with fall.py in CPython, fit,
score held-out subjects with the firmware in MicroPython within and across datasets, cost) on two
tiny generated datasets, one named by SisFall's codes and one by an activity_codes.csv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.nodepeer import ROOT

SCHEMES = {"within sis", "within fad", "sis -> fad", "fad -> sis", "both"}


def test_the_smoke_run_fits_and_scores_within_and_across_datasets(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "falls_tune.py"), "--smoke", "--rates", "50,200",
                             "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(MicroPython and fall.py in CPython disagree on 0 held-out trials)" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["datasets"] == ["sis", "fad"]
    assert set(doc["schemes"]) == SCHEMES
    # every scheme scores the datasets it held out, at both rates; the 200 Hz node decides as the 50 Hz one
    assert set(doc["schemes"]["sis -> fad"]) == {"fad"} and set(doc["schemes"]["both"]) == {"sis", "fad"}
    for scheme, per in doc["schemes"].items():
        for name, entry in per.items():
            assert {k: v for k, v in entry["50"].items() if k != "latency_s"} == \
                   {k: v for k, v in entry["200"].items() if k != "latency_s"}, (scheme, name)
            s = entry["50"]
            # the generated falls (hard, out of bed) alarm; lying down onto a bed does not
            assert s["falls"]["k"] == s["falls"]["n"] == 3, (scheme, name, s)
            assert s["lying_down_alarms"]["k"] == 0 and s["lying_down_alarms"]["n"] == 3
            assert s["latency_s"]["p95"] <= 3.0
            if name == "fad":
                assert s["bed"]["k"] == s["bed"]["n"] == 3
            else:
                assert s["bed"] is None
            rows = {r["code"]: r for r in entry["per_activity"]}
            assert rows["D16" if name == "fad" else "D13"]["activity"].startswith(
                "Lying down" if name == "fad" else "Sitting a moment, lying quickly")
            assert rows["D16" if name == "fad" else "D13"]["wrong"] == []
    fitted = doc["defaults"]["weights"]
    assert len(fitted) == 6 and all(type(w) is int for w in fitted)
    for rate in ("50", "200"):
        assert doc["cost"][rate]["alloc_bytes"] == 0 and doc["cost"][rate]["update_us"] > 0
