"""bench/node_tls.py's smoke run: the real firmware comes up over TLS and over plain TCP against one
gateway, in a board-sized heap, and the numbers it prints are the ones docs/firmware.md explains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_S = 180


def test_the_node_tls_benchmark_smoke_run():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "node_tls.py"), "--smoke", "--json"],
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["transport"]["plain"] == 2 and out["transport"]["tls"] >= 2, "both kinds met the same gateway"
    assert out["tls"]["setup_p50_ms"] > 0 and out["plain"]["setup_p50_ms"] > 0
    assert 0 < out["tls_keeps_bytes"] < out["plain"]["heap_free"], "a TLS session costs heap, and fits"
    assert out["smallest_tls_heap_wK"] is not None and out["smallest_tls_heap_wK"] <= 48
