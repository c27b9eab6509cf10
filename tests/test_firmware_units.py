"""Firmware unit tests, run in MicroPython (the unix port) on the real firmware modules.

Each script in tests/mp/ prints ``FAIL ...`` for a failed check and ends with
``N passed, N failed``; here each becomes one pytest test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodepeer import FIRMWARE, MICROPYTHON, ROOT

MP_TESTS = ROOT / "tests" / "mp"
MPY_CROSS = MICROPYTHON.with_name("mpy-cross")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)
SCRIPT_TIMEOUT_S = 60


def run_mp(script: Path, *args: str, heap: str = "1M") -> str:
    env = {**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"}
    result = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heap}", str(script), *args], env=env,
                            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    output = result.stdout + result.stderr
    found = SUMMARY.findall(output)
    assert found, f"{script.name} printed no summary (exit {result.returncode}):\n{output}"
    passed, failed = map(int, found[-1])
    assert failed == 0 and passed > 0, output
    return output


@pytest.mark.parametrize("name", ["debounce", "drivers", "adxl345", "equeue", "backoff", "improv", "improv_ble"])
def test_mp_script(name: str) -> None:
    run_mp(MP_TESTS / f"test_{name}.py")


def test_mp_tls_pin(tmp_path) -> None:
    from controller.security.tls import load_or_create, node_pin

    mine = node_pin(load_or_create(tmp_path / "a.pem", tmp_path / "a-key.pem"))
    other = node_pin(load_or_create(tmp_path / "b.pem", tmp_path / "b-key.pem"))
    doc = tmp_path / "pins.json"
    doc.write_text(json.dumps({**mine, "other_cert": other["ctl_cert"]}))
    run_mp(MP_TESTS / "test_tlspin.py", str(doc))


def test_factory_reset_and_flash_config(tmp_path: Path) -> None:
    run_mp(MP_TESTS / "test_reset.py", str(tmp_path))


def test_recorded_accel_traces_stream_in_a_board_sized_heap(tmp_path: Path) -> None:
    run_mp(MP_TESTS / "test_accel_trace.py", str(tmp_path), heap="64wK")


def test_flash_journal_on_a_directory_as_the_flash(tmp_path: Path) -> None:
    run_mp(MP_TESTS / "test_journal.py", str(tmp_path))


def test_node_light_and_journal_with_the_link_down(tmp_path: Path) -> None:
    run_mp(MP_TESTS / "test_node_journal.py", str(tmp_path))


def test_protocol_vectors_pass_under_micropython() -> None:
    run_mp(MP_TESTS / "run_vectors.py", str(ROOT / "tests" / "vectors" / "protocol_v2.json"))


def test_every_firmware_module_compiles_with_mpy_cross(tmp_path: Path) -> None:
    sources = sorted(FIRMWARE.rglob("*.py"))
    assert len(sources) >= 20
    failures = []
    for src in sources:
        rel = src.relative_to(FIRMWARE)
        out = tmp_path / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([str(MPY_CROSS), "-o", str(out), "-s", str(rel), str(rel)], cwd=FIRMWARE,
                                capture_output=True, text=True)
        if result.returncode != 0 or not out.exists():
            failures.append(f"{rel}: {result.stderr.strip()}")
    assert not failures, "\n".join(failures)


def test_mp_harness_reports_failures(tmp_path: Path) -> None:
    # The runner above must be able to fail: a script with a failing check does.
    script = tmp_path / "failing.py"
    script.write_text("import sys\nsys.path.append(%r)\nfrom mpcheck import check, done\n"
                      "check('one', True)\ncheck('two', False, 'expected')\ndone()\n" % str(MP_TESTS))
    with pytest.raises(AssertionError, match="FAIL two expected"):
        run_mp(script)


def test_journal_wear_bench_smoke(tmp_path: Path) -> None:
    """bench/journal_wear.py --smoke: the journal on littlefs keeps exactly the unacked events in
    every workload, and the firmware's reset size is what keeps a delivered event's wear low."""
    out = tmp_path / "wear.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "journal_wear.py"), "--smoke", "--json", str(out)],
                            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {(r["workload"], r["limit"], r["reset"]): r for r in json.loads(out.read_text())}
    assert len(rows) == 9 and all(r["held_ok"] and r["codes"] == 0 for r in rows.values())
    for r in rows.values():  # an event is one record and its ack another: two writes, never more
        assert r["writes"] <= 2 * r["events"]
    firmware = rows[("delivered", 4096, 64)]["per_event"]["erases"]
    assert firmware < 0.2, "a delivered event should mostly cost a metadata commit, not a block erase"
    assert firmware * 5 < rows[("delivered", 4096, 512)]["per_event"]["erases"]


def test_identify_on_a_provisioned_node_with_the_reassurance_light(tmp_path: Path) -> None:
    run_mp(MP_TESTS / "test_adopt_identify.py", str(tmp_path))
