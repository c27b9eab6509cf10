"""Both accelerometer parts in a whole node: a real MicroPython node process (board-sized heap)
on simulated hardware against tests/nodepeer.py, playing recorded traces from CSV files."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from tests.nodepeer import FirmwareNode, NodePeer
from tests.test_firmware_link import KEY, NODE, no_errors, node_config

TRACE_AT_MS = 0
STANDING_S, FALLING_S, LYING_S = 3.0, 0.4, 8.0


def write_fall_trace(path: Path) -> int:
    """An unmistakable fall at 50 Hz: standing (1 g on -Y, the waist mount's upright), 0.4 s
    falling (legs giving way at ~0.5 g, then ~0.2 g), three samples of an ~8 g impact, then lying
    still on the back (1 g on +Z). Returns the impact's offset in ms. The free fall proper stays
    at 200 ms: fall detector v1 takes more than 320 ms below 0.3 g for a node dropped on its own
    (no body fell that freely in SisFall), so 0.4 s at 0.2 g would not be a fall to it."""
    rng = random.Random(4)

    def noisy(x: int, y: int, z: int) -> str:
        return f"{x + rng.randint(-6, 6)},{y + rng.randint(-6, 6)},{z + rng.randint(-6, 6)}"

    rows = [noisy(0, -1000, 0) for _ in range(int(STANDING_S * 50))]
    half = int(FALLING_S * 50) // 2
    rows += [noisy(60, -470, 140) for _ in range(half)] + [noisy(40, -150, 110) for _ in range(half)]
    impact_ms = len(rows) * 20
    rows += ["2600,-4200,6300", "-1900,3100,7400", "1200,-2500,7600"]
    rows += [noisy(0, 0, 1000) for _ in range(int(LYING_S * 50))]
    path.write_text("x_mg,y_mg,z_mg\n# standing, falling, impact, lying still\n" + "\n".join(rows) + "\n")
    return impact_ms


def accel(part: str, **extra: int) -> dict[str, object]:
    return {"accel": {"part": part, "bus": 0, "rate_hz": 50, **extra}, "pinmap": "esp32s3-devkitc-1"}


@pytest.mark.parametrize("part", ["lis3dh", "adxl345"])
async def test_recorded_fall_trace_reaches_the_detector(tmp_path, part):
    impact_ms = write_fall_trace(tmp_path / "fall.csv")
    # a relative trace path is read from the scenario's folder
    steps = [{"at_ms": TRACE_AT_MS, "accel": {"trace": "fall.csv", "rate_hz": 50}}]
    end_ms = TRACE_AT_MS + int((STANDING_S + FALLING_S + LYING_S) * 1000) + 1_000
    async with NodePeer({NODE: KEY}) as peer:
        cfg = node_config(tmp_path, peer.port, steps, end_ms=end_ms, speed=10, **accel(part))
        async with FirmwareNode(cfg, tmp_path) as node:
            fall = await node.wait_line("event", kind="fall", src="accel")
            await node.wait_line("acked", e=fall.fields["e"])
            await node.wait_line("end")
    assert TRACE_AT_MS + impact_ms < fall.node_ms < end_ms, fall.raw
    assert len(node.find("event", kind="fall")) == 1, node.tail()
    _, hello = peer.frames("hello")[0]
    assert "fall" in hello["caps"]
    events = [f for _, f in peer.frames("event") if f["k"] == "fall"]
    assert len(events) == 1 and events[0]["src"] == "accel"
    assert not node.find("fault"), node.tail()
    assert peer.errors == []
    no_errors(node)


async def test_adxl345_at_its_alternate_address_faults_and_recovers(tmp_path):
    steps = [{"at_ms": 0, "adxl345": {"fault": "silent"}}, {"at_ms": 3_000, "adxl345": {"fault": "none"}}]
    async with NodePeer({NODE: KEY}) as peer:
        cfg = node_config(tmp_path, peer.port, steps, speed=10, **accel("adxl345", addr=0x1D))
        async with FirmwareNode(cfg, tmp_path) as node:
            await node.wait_line("fault", src="accel", code=1)
            await node.wait_line("fault", src="accel", code=0)  # re-probed 10 s later
            await peer.wait_frame(lambda c, f: f["t"] == "event" and f["k"] == "fault" and f["val"] == 0)
    faults = [(f["src"], f["val"]) for _, f in peer.frames("event") if f["k"] == "fault"]
    assert faults == [("accel", 1), ("accel", 0)]
    no_errors(node)


async def test_a_trace_larger_than_the_heap_streams(tmp_path):
    # 3 minutes of walking at 50 Hz: ~140 KB of text (more than the whole 64wK heap; as a list
    # of tuples it would take ~650 KB), played at speed 60 while heartbeats measure the heap.
    rng = random.Random(7)
    walk = [f"{rng.randint(-150, 150)},{rng.randint(-60, 60)},{1000 + rng.randint(-330, 330)}"
            for _ in range(180 * 50)]
    (tmp_path / "walk.csv").write_text("\n".join(walk) + "\n")
    steps = [{"at_ms": 0, "accel": {"trace": str(tmp_path / "walk.csv"), "rate_hz": 50}}]
    async with NodePeer({NODE: KEY}) as peer:
        cfg = node_config(tmp_path, peer.port, steps, end_ms=185_000, speed=60, **accel("adxl345"))
        async with FirmwareNode(cfg, tmp_path) as node:
            await node.wait_line("end", timeout_s=20)
            assert await node.wait_exit() == 0, node.tail()
    no_errors(node)
    assert not node.find("fault") and not node.find("event", kind="fall"), node.tail()
    hbs = [ln.int("heap_alloc") for ln in node.find("hb")]
    assert len(hbs) >= 15
    third = len(hbs) // 3
    assert statistics.median(hbs[-third:]) - statistics.median(hbs[:third]) <= 1024, hbs
