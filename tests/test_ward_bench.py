"""bench/ward.py's smoke run: rooms through a real Mosquitto to the ward console's stream, nothing
lost or duplicated (the timings are the benchmark's business, not the test's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_ward_benchmark_smoke_run_loses_and_duplicates_nothing():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "ward.py"), "--smoke", "--json"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rooms"] == 10 and result["events"] >= 10
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert result["p99_ms"] is not None and result["ward_rss_mb"] > 0
