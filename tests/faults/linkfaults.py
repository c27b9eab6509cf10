"""Shared pieces of the node-link fault tests (tests/faults/test_link_*.py): real controllers, real
firmware nodes, and ways to wait on what they do without sleeping for it."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

from controller.room.config import parse_room
from controller.runner import RoomServer
from tests.helpers import ROOM_DOC, keys_for, node_key
from tests.roomsim import FakeClock

WAIT_S = 20.0  # every wait on a node or a controller gives up after this: a broken test fails, never hangs
POLL_S = 0.01  # how often a condition no one announces (a socket closed by the kernel) is looked at


async def until(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll an observable condition until it holds (returns its value) or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(POLL_S)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def room_doc(**sections: Any) -> dict[str, Any]:
    """tests/helpers.py's room, with top-level sections merged in (e.g. supervision={...})."""
    doc = json.loads(json.dumps(ROOM_DOC))
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return doc


def room_server(tmp: Path, clock: FakeClock | None = None, *, node_tls: Any = None, keys_path: Path | None = None,
                **sections: Any) -> RoomServer:
    """The room in-process, on a fake clock with timers run by hand when ``clock`` is given;
    ``node_tls`` (security.tls.TlsMaterial): the node link over TLS with that certificate."""
    config = parse_room(room_doc(**sections), "faults-room.toml")
    extra = {"clock": clock, "timers": False} if clock is not None else {}
    return RoomServer(config, keys_for(config), tmp / "room.db", api_port=0, node_port=0, node_tls=node_tls,
                      keys_path=keys_path, **extra)


def firmware(node: str, port: int, tmp: Path, steps: list[dict[str, Any]], *, speed: float = 1,
             **sections: Any) -> dict[str, Any]:
    """A firmware node config (docs/firmware.md) with a scenario, for controller.sim.nodes.SimNode."""
    scenario = tmp / f"{node}.scenario.json"
    scenario.write_text(json.dumps({"steps": steps}))
    return {"node_id": node, "key_hex": node_key(node).hex(), "controller": {"host": "127.0.0.1", "port": port},
            "link_plain": True,
            "hw": "sim-esp32s3", "hb_ms": 10_000, **sections,
            "sim": {"scenario": str(scenario), "speed": speed, "state_dir": str(tmp / "state" / node), "seed": 3}}


def smartroom_exe() -> str:
    return str(Path(sys.executable).with_name("smartroom"))


def stored(db: Path, kind: str) -> list[dict[str, Any]]:
    """The data of every stored log record of this kind (read from the database file itself)."""
    con = sqlite3.connect(db)
    try:
        return [json.loads(row[0]) for row in con.execute("SELECT data FROM log WHERE kind = ? ORDER BY id", (kind,))]
    finally:
        con.close()


def metric(text: str, name: str, labels: str = "") -> float | None:
    """A sample from a Prometheus exposition, or None when it is not there."""
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None
