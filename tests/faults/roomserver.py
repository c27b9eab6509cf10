"""Helpers of the room fault-injection tests: a real room (controller, node gateway, API) on a
fake clock, the room's stored records as they happen, and a scrape of its metrics.

The controller's timers do not run by themselves here: a test moves ``clock`` and calls
``server.controller.tick()``, exactly what the timer task does at that moment. Nodes are real
firmware processes (controller/sim/nodes.py) or protocol-level clients, talking TCP to the gateway.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import aiohttp

from controller.bus import Subscription
from controller.room.config import parse_room
from controller.runner import RoomServer
from controller.security.tokens import ROLES
from controller.store import LogRecord
from tests.helpers import ROOM_DOC, keys_for
from tests.roomsim import FakeClock

RECORD_TIMEOUT_S = 20.0  # a MicroPython node starts, connects and presses within a few seconds

# The tests' room plus a door unit with the staff presence button. Supervision is slowed down (a
# node is offline after 30 min of silence) so that jumps of the fake clock never make a node offline.
FAULTS_DOC: dict[str, Any] = copy.deepcopy(ROOM_DOC)
FAULTS_DOC["gateway"]["heartbeat_ms"] = 600_000
FAULTS_DOC["nodes"]["door"] = {"location": "door", "inputs": {"presence": "staff_presence", "cancel": "cancel"}}


def faults_config(**timers: float):
    doc = copy.deepcopy(FAULTS_DOC)
    if timers:
        doc["timers"] = dict(timers)
    return parse_room(doc, "faults-room.toml")


class FaultRoom:
    """``async with FaultRoom(config, tmp_path) as room:`` a running room; ``room.tokens`` per role."""

    def __init__(self, config, tmp: Path) -> None:
        self.clock = FakeClock()
        self.server = RoomServer(config, keys_for(config), tmp / "room.db", api_port=0, node_port=0,
                                 clock=self.clock, timers=False)
        self.tokens: dict[str, str] = {}
        self.records: Subscription | None = None

    async def __aenter__(self) -> "FaultRoom":
        await self.server.start()
        self.records = self.server.controller.subscribe()
        self.tokens = {role: await self.server.create_token(role, f"test {role}") for role in ROLES}
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.records is not None:
            self.records.close()
        await self.server.stop()

    @property
    def controller(self):
        return self.server.controller

    @property
    def url(self) -> str:
        return self.server.endpoints.api_url

    @property
    def node_port(self) -> int:
        return self.server.endpoints.node_port

    async def next_record(self, kind: str, timeout_s: float = RECORD_TIMEOUT_S, **match: Any) -> LogRecord:
        """The next stored record of ``kind`` whose data has the given fields."""
        assert self.records is not None

        async def find() -> LogRecord:
            while (record := await self.records.get()) is not None:
                if record.kind == kind and all(record.data.get(k) == v for k, v in match.items()):
                    return record
            raise AssertionError(f"the room's bus ended before a {kind} record")

        try:
            return await asyncio.wait_for(find(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no {kind} {match} stored within {timeout_s} s") from None

    async def advance_to(self, ms: int) -> list[LogRecord]:
        """Move the room's clock to ``ms`` and store what fell due by then."""
        self.clock.ms = ms
        return await self.controller.tick()

    def http(self, role: str = "nurse") -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.tokens[role]}"})

    async def get(self, path: str, role: str | None = "nurse") -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        async with aiohttp.ClientSession(headers=headers) as http, http.get(self.url + path) as resp:
            assert resp.status == 200, await resp.text()
            return await (resp.text() if path == "/metrics" else resp.json())

    async def post(self, path: str, body: dict[str, Any], role: str = "nurse") -> Any:
        async with self.http(role) as http, http.post(self.url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def metric(self, name: str, labels: str = "") -> float:
        text = await self.get("/metrics", role="facilities")
        wanted = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(wanted):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name}{{{labels}}} not in /metrics")


def node_steps(tmp: Path, node: str, port: int, steps: list[dict], **extra: Any) -> dict[str, Any]:
    """A firmware node's configuration playing ``steps`` on its own clock (tests/test_system.py)."""
    from tests.test_system import firmware_config

    return firmware_config(node, port, tmp, steps, **extra)


def button(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "button", "pin": name}


def press_at(pin: str, at_ms: int = 300) -> dict[str, Any]:
    return {"at_ms": at_ms, "pin": pin, "press_ms": 200}
