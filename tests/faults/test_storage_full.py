"""The room database's disk fills up, then is freed: the real controller (`smartroom run`) with its
database on a small tmpfs, real firmware nodes (MicroPython) pressing calls and sending readings.

The tmpfs is mounted inside a private mount namespace (``unshare --mount``) that only the
controller lives in, so nothing leaks onto the host, whatever happens to the test; the test fills
and frees the controller's disk through ``/proc/<pid>/root``, and runs SQLite clients in the
namespace with ``nsenter`` (SQLite resolves the /proc link to the host's path). Needs root
(CAP_SYS_ADMIN) for the mount: the test is skipped, saying why, where mounting is impossible.

What must hold: readings stop at the free-space floor (counted, alarmed) while events are still
stored; a full disk is a technical alarm and a degraded health at once, while the dome light and
tone keep signalling the active call; when space is freed every event the nodes kept is stored
exactly once, and the storage alarm is stored with its end.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest

from controller.sim.nodes import SimNode
from tests.helpers import node_key, write_room_files

DISK_BYTES = 4 * 2**20           # the controller's whole disk
FLOOR_MIB = 1                    # readings stop below 1 MiB free (the default is far larger)
SPEED = 2                        # node time runs twice as fast: backoffs and presses come sooner
PRESS_EVERY_MS = 2000            # bedside-a presses its call button this often (node time) ...
PRESSES_UNTIL_MS = 40_000        # ... until then
WAIT_S = 30.0                    # the longest any one step may take before the test fails


def _can_mount_tmpfs(where: Path) -> str | None:
    """None if a private mount namespace with a tmpfs can be made here, else why not."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "no unshare(1) or nsenter(1) on this machine"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                            'mount -t tmpfs -o size=64k tmpfs "$0"', str(where)], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip() or probe.returncode}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_config(node: str, port: int, tmp: Path, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    scenario = tmp / f"{node}.scenario.json"
    scenario.write_text(json.dumps({"steps": steps}))
    return {"node_id": node, "key_hex": node_key(node).hex(), "controller": {"host": "127.0.0.1", "port": port},
            "link_plain": True,
            "hw": "sim-esp32s3", "hb_ms": 10000,
            "sim": {"scenario": str(scenario), "speed": SPEED, "state_dir": str(tmp / "state" / node), "seed": 3},
            **extra}


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _fill(path: Path, leave_bytes: int = 0) -> None:
    """Write ``path`` until only ``leave_bytes`` are free on its file system (0: until it is full)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 65536
        while (room := _free_bytes(path.parent) - leave_bytes) > 0:
            try:
                os.write(fd, chunk[:min(len(chunk), room)] if leave_bytes else chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[:len(chunk) // 16 or 1]  # the last pages: smaller writes
        os.fsync(fd)
    finally:
        os.close(fd)


def _in_namespace(pid: int, *argv: str) -> str:
    """Run a command in the controller's mount namespace; its standard output."""
    return subprocess.run(["nsenter", "--target", str(pid), "--mount", "--", *argv],
                          check=True, capture_output=True, text=True).stdout


CHECKPOINT = """import sqlite3, sys
busy, _, _ = sqlite3.connect(sys.argv[1], timeout=10).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
sys.exit(busy)"""


def _checkpoint(pid: int, db: Path) -> None:
    """Move the WAL into the database and truncate it: the next write then needs new disk space
    (a WAL that was reset keeps its size, and SQLite writes into it without asking for more)."""
    _in_namespace(pid, sys.executable, "-c", CHECKPOINT, str(db))


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` (an API read) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.1)  # a poll interval: the condition is observed through the API


async def test_a_full_disk_is_an_alarm_and_nothing_is_lost_when_space_comes_back(tmp_path):
    disk = tmp_path / "disk"  # the mount point; a tmpfs over it exists only in the controller's namespace
    disk.mkdir()
    if (why := _can_mount_tmpfs(disk)) is not None:
        pytest.skip(why)
    api_port, node_port = _free_port(), _free_port()
    room, keys = write_room_files(tmp_path, "disk-full", "plain_tcp = true  # the nodes here are plain TCP\n")
    exe = Path(sys.executable).with_name("smartroom")
    mount = f'mount -t tmpfs -o size={DISK_BYTES},mode=0700 tmpfs "$0" && exec "$@"'
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount, str(disk),
        str(exe), "run", "--config", str(room), "--keys", str(keys), "--db", str(disk / "room.db"),
        "--api-port", str(api_port), "--node-port", str(node_port), "--no-tls", "--no-advertise",
        "--readings-min-free-mb", str(FLOOR_MIB), stdout=asyncio.subprocess.PIPE)
    nodes: list[SimNode] = []
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).startswith(b"room disk-full:")
        inside = Path(f"/proc/{proc.pid}/root") / disk.relative_to("/")  # the controller's view of its disk
        db = disk / "room.db"  # as the controller (and nsenter) see it
        token = _in_namespace(proc.pid, str(exe), "token", "create", "--db", str(db), "--role", "admin",
                              "--name", "t").strip().splitlines()[-1]
        api = f"http://127.0.0.1:{api_port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

            async def get(path: str) -> Any:
                async with http.get(api + path) as resp:
                    assert resp.status == 200, (path, resp.status, await resp.text())
                    return await resp.json() if path != "/metrics" else await resp.text()

            bedside = SimNode(_node_config(
                "bedside-a", node_port, tmp_path,
                [{"at_ms": 500, "pin": "call", "press_ms": 80, "every_ms": PRESS_EVERY_MS,
                  "until_ms": PRESSES_UNTIL_MS}],
                inputs=[{"name": "call", "kind": "button", "pin": "call"}], indicator={"pin": "led"}),
                tmp_path / "nodes")
            env = SimNode(_node_config(
                "env", node_port, tmp_path, [{"at_ms": 0, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}}],
                i2c=[{"part": "sht3x", "bus": 0, "addr": 0x44}], reading_ms=500), tmp_path / "nodes")
            nodes += [bedside, env]
            for node in nodes:
                await node.start()

            # 1. Normal operation: the patient's call is up, readings are stored.
            room_now = await _until(lambda: _room_with(get, "patient_call"), "the patient call is raised")
            await _until(lambda: _gateway_value(get, "readings_stored"), "readings are stored")
            health = await get("/api/v1/health")
            assert (health["status"], health["reasons"]) == ("ok", [])
            outputs = room_now["outputs"]
            assert (outputs["dome"]["colour"], outputs["tone"]["pattern"]) == ("white", "medium")

            # 2. Free space below the floor: readings stop (counted, alarmed); events are still stored.
            _checkpoint(proc.pid, db)
            _fill(inside / "filler-1", leave_bytes=FLOOR_MIB * 2**20 // 2)
            await _until(lambda: _gateway_value(get, "readings_not_stored", "disk_floor"), "readings are held back")
            events_then = len(await _node_events(get))
            await _until(lambda: _more_events(get, events_then + 2), "events are stored below the floor")
            health = await get("/api/v1/health")
            assert health["status"] == "degraded" and [r["reason"] for r in health["reasons"]] == ["disk_low"]
            room_now = await _until(lambda: _room_with(get, "system_fault", "system:disk_space"),
                                    "a disk space alarm is raised")
            assert room_now["storage"]["state"] == "readings_paused"
            metrics = await get("/metrics")
            assert _metric(metrics, "smartroom_readings_not_stored_total", 'reason="disk_floor"') > 0
            assert _metric(metrics, "smartroom_readings_paused") == 1

            # 3. The disk is full: a technical alarm (held in memory) and a degraded health.
            _checkpoint(proc.pid, db)
            _fill(inside / "filler-2")
            health = await _until(lambda: _health_with(get, "storage_failed"), "health reports the storage failure")
            assert health["status"] == "degraded"
            bath = SimNode(_node_config("bath", node_port, tmp_path, [{"at_ms": 300, "pin": "cord", "press_ms": 500}],
                                        inputs=[{"name": "cord", "kind": "button", "pin": "cord"}]),
                           tmp_path / "nodes")
            nodes.append(bath)
            await bath.start()  # a bathroom emergency while nothing can be stored
            room_now = await _until(lambda: _room_waiting(get, "bath/cord"), "the alarm names the waiting input")
            storage_alarm = [c for c in room_now["calls"] if c["source"]["input"] == "system:storage"]
            assert [(c["type"], c["priority"], c["clears"]) for c in storage_alarm] == \
                [("system_fault", "low", "condition")]
            assert "bath/cord" in storage_alarm[0]["detail"]["inputs_waiting"]
            assert "bath_emergency" not in [c["type"] for c in room_now["calls"]], "not stored, so not a call yet"
            outputs = room_now["outputs"]  # the patient call still leads the dome light and the tone
            assert (outputs["dome"]["colour"], outputs["dome"]["pattern"], outputs["tone"]["pattern"]) == \
                ("white", "steady", "medium")
            assert room_now["storage"]["state"] == "failed" and "full" in room_now["storage"]["error"]
            gateway = await get("/api/v1/gateway")
            assert gateway["rejected"].get("storage_unavailable", 0) >= 1
            assert _metric(await get("/metrics"), "smartroom_storage_up") == 0
            failed_at = room_now["storage"]["failing_since_ms"]

            # 4. Space comes back: the alarm and its end are stored, every kept event exactly once.
            (inside / "filler-1").unlink()
            (inside / "filler-2").unlink()
            await _until(lambda: _room_with(get, "bath_emergency"), "the bathroom emergency is delivered")
            await _until(lambda: _health_ok(get), "health is ok again")
            await _until(lambda: _all_acked(bedside, PRESSES_UNTIL_MS), "bedside-a has every kept event acked",
                         timeout_s=PRESSES_UNTIL_MS / SPEED / 1000 + WAIT_S)
            await bath.wait_for("acked")
            log = await _all_events(get)
    finally:
        for node in nodes:
            await node.stop()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()

    for node in (bedside, bath):
        generated = {int(l.fields["e"]) for l in node.lines if l.tag == "event"}
        dropped = {int(l.fields["e"]) for l in node.lines if l.tag == "dropped"}
        stored = [e["data"]["e"] for e in log if e["kind"] == "node.event" and e["data"]["node"] == node.node_id]
        assert len(stored) == len(set(stored)), f"{node.node_id}: an event was stored twice"
        assert generated - dropped <= set(stored) <= generated, f"{node.node_id}: an event was lost or invented"
    raised = [e for e in log if e["kind"] == "call.raised"]
    assert [e["data"]["type"] for e in raised].count("bath_emergency") == 1
    by_input = {e["data"]["input"]: e for e in raised if e["data"]["type"] == "system_fault"}
    assert set(by_input) == {"system:disk_space", "system:storage"}
    storage = by_input["system:storage"]["data"]
    assert storage["at_ms"] == failed_at or abs(storage["at_ms"] - failed_at) < 5000, "raised when it failed"
    assert "bath/cord" in storage["detail"]["inputs_waiting"]
    cleared = {e["data"]["call_id"]: e for e in log if e["kind"] == "call.cleared"}
    for alarm in by_input.values():
        assert alarm["data"]["call_id"] in cleared, f"{alarm['data']['input']} alarm was never cleared"
        assert cleared[alarm["data"]["call_id"]]["id"] > alarm["id"]


async def _room_with(get, ctype: str, source_input: str | None = None) -> dict[str, Any] | None:
    room = await get("/api/v1/room")
    found = [c for c in room["calls"] if c["type"] == ctype and source_input in (None, c["source"]["input"])]
    return room if found else None


async def _room_waiting(get, what: str) -> dict[str, Any] | None:
    room = await get("/api/v1/room")
    return room if what in room["storage"]["inputs_waiting"] and any(
        c["source"]["input"] == "system:storage" and what in c["detail"].get("inputs_waiting", ())
        for c in room["calls"]) else None


async def _gateway_value(get, key: str, sub: str | None = None) -> int:
    value = (await get("/api/v1/gateway"))[key]
    return value.get(sub, 0) if sub is not None else value


async def _health_with(get, reason: str) -> dict[str, Any] | None:
    health = await get("/api/v1/health")
    return health if reason in [r["reason"] for r in health["reasons"]] else None


async def _health_ok(get) -> bool:
    health = await get("/api/v1/health")
    return health["status"] == "ok" and health["reasons"] == []


async def _all_events(get) -> list[dict[str, Any]]:
    events, after = [], 0
    while True:
        page = await get(f"/api/v1/events?after={after}&limit=1000")
        events += page["events"]
        after = page["next"]
        if not page["more"]:
            return events


async def _node_events(get) -> list[dict[str, Any]]:
    return [e for e in await _all_events(get) if e["kind"] == "node.event"]


async def _more_events(get, count: int) -> bool:
    return len(await _node_events(get)) >= count


async def _all_acked(node: SimNode, until_ms: int) -> bool:
    """The node's presses are over and every event it kept has been acked."""
    events = {int(l.fields["e"]) for l in node.lines if l.tag == "event"}
    done = {int(l.fields["e"]) for l in node.lines if l.tag in ("acked", "dropped")}
    return bool(node.lines) and node.lines[-1].node_ms > until_ms and events <= done


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not in /metrics")
