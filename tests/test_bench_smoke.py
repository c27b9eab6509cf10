"""Every benchmark under bench/ still runs: each one's --smoke mode (a few seconds on tiny generated
input, never /work/shared), checked only for finishing and printing its figures. Timings are the
benchmarks' business, not the suite's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_S = 180  # a smoke run takes seconds; this is a hang guard on a busy machine

# script -> what its figures look like in the output (one pattern per figure that must be printed)
FIGURES = {
    "bench/broker.py": [r"events/s, 5 publishers, window 1 +[\d,]+ +[\d,]+ +[\d.]+",
                        r"events/s, 10 publishers, window 4 +[\d,]+ +[\d,]+",
                        r"server CPU us per event +[\d.]+ +[\d.]+",
                        r"publish -> subscriber p99 ms, 5 x 10 Hz +[\d.]+ +[\d.]+",
                        r"controller RSS at 10 nodes, MB +[\d.]+"],
    "bench/latency.py": [r"button edge -> nurse stream.*\n  p50 +[\d.]+ ms .* p99 +[\d.]+ ms",
                         r"controller's share .*\n  p50 +[\d.]+ ms .* p99 +[\d.]+ ms",
                         r"readings under load: [\d,]+ values/s stored .*the controller at \d+% of a core \([\d,]+ us per reading frame received\)",
                         r"controller RSS with 7 nodes connected: [\d.]+ MB",
                         r"readings flood: [\d,]+ values/s stored durably"],
    "bench/readings.py": [r"readings stored durably: [\d,]+ values/s \(6,003 in [\d.]+ s\)",
                          r"values per CPU second: [\d,]+"],
    "bench/startup.py": [r"start-up to the first API answer with [\d,]+ stored events",
                         r"\n +[\d.]+ s  no checkpoint yet", r"\n +[\d.]+ s  from the newest checkpoint",
                         r"\n +[\d.]+ s  checkpoint \+ 300 records after it"],
    "bench/history_disk.py": [r"raw readings: +[\d,]+ rows", r"rollups: +[\d,]+ rows",
                              r"batches of 60 s: +[\d,]+ transactions"],
}
NEEDS = {"bench/broker.py": ["mosquitto"]}
ELSEWHERE = {  # smoke runs with a test file of their own
    "bench/ward.py": "tests/test_ward_bench.py",
    "bench/flood.py": "tests/faults/test_link_flood.py",
    "bench/falls_tune.py": "tests/test_falls_tune.py",
    "bench/voice/run.py": "tests/test_voice_whisper.py",
    "bench/journal_wear.py": "tests/test_firmware_units.py",
    "bench/node_tls.py": "tests/test_bench_node_tls.py",
    "bench/ota.py": "tests/test_firmware_bundle.py",
}


def test_every_bench_script_has_a_smoke_run_here():
    scripts = {str(p.relative_to(ROOT)) for p in (ROOT / "bench").rglob("*.py")
               if p.name != "__init__.py" and 'if __name__ == "__main__"' in p.read_text()}
    assert scripts == set(FIGURES) | set(ELSEWHERE)
    for script, test in ELSEWHERE.items():  # the test file named runs that script's smoke mode
        text = (ROOT / test).read_text()
        assert "--smoke" in text and Path(script).stem in text, f"{test} runs no {script} --smoke"


@pytest.mark.parametrize("script", sorted(FIGURES))
def test_bench_smoke(script, tmp_path):
    missing = [exe for exe in NEEDS.get(script, [])
               if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists()]
    if missing:
        pytest.skip(f"{script} needs {', '.join(missing)} (make setup installs it)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"), SISFALL=str(tmp_path / "none"))
    result = subprocess.run([sys.executable, str(ROOT / script), "--smoke"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for figure in FIGURES[script]:
        assert re.search(figure, result.stdout), f"{script} printed no {figure!r}:\n{result.stdout[-3000:]}"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.wav")), \
        "a smoke run must not fill the benchmark cache"
