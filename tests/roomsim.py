"""A room controller on a fake clock, driven input by input: the harness of the room-rule tests.

Timers never run by themselves here: :meth:`RoomSim.advance` moves the clock and runs what fell
due, exactly as the controller's timer task would at that moment. No test sleeps.

A nurse screen watches the room (``screen=True``, the default): after every input and every
advance it confirms the calls it has not shown yet, at that moment, as the nurse page does; so the
"not shown on any nurse screen" alarm stays out of rules that are not about it. ``screen=False``
is a room nobody watches.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from controller.room.config import parse_room
from controller.link.protocol import Heartbeat, Hello, NodeEvent, Reading
from controller.service import RoomController
from controller.store import LogRecord
from tests.helpers import keys_for

T0_MS = 1_790_000_000_000  # 2026-09-21, any fixed epoch time will do
CHECKPOINT_EVERY = 7

RULES_DOC: dict[str, Any] = {
    "room": {"id": "4b-12", "name": "Ward 4B room 12"},
    "beds": [{"id": "A"}, {"id": "B"}],
    "gateway": {"heartbeat_ms": 10_000},
    # The rule tests feed inputs without connecting every node; a day before "never connected"
    # keeps that alarm out of them (tests/faults/test_link_supervision.py tests it).
    "supervision": {"first_check_in_s": 86_400},
    "nodes": {
        "bedside-a": {"bed": "A", "location": "bedside", "indicator": True,
                      "inputs": {"call": "patient_call", "water": "request_water", "pain": "request_pain",
                                 "cancel": "cancel", "pad": "bed_occupancy"}},
        "bedside-b": {"bed": "B", "location": "bedside", "indicator": True,
                      "inputs": {"call": "patient_call", "pad": "bed_occupancy"}},
        "bath": {"location": "bathroom", "indicator": True,
                 "inputs": {"cord": "bath_emergency", "pir": "bath_presence"}},
        "door": {"location": "door", "tone": True,
                 "inputs": {"presence": "staff_presence", "cancel": "cancel", "pir": "room_presence",
                            "code": "code_call", "assist": "staff_assist", "emergency": "staff_emergency"}},
        "wearable-a": {"bed": "A", "location": "patient", "indicator": True,
                       "inputs": {"pendant": "patient_call", "ok": "im_ok"}},
        "env": {"location": "wall", "inputs": {}},
    },
}


def rules_config(**sections: Any):
    """The rule-test room, with top-level sections replaced or merged (e.g. timers={...})."""
    doc = copy.deepcopy(RULES_DOC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    return parse_room(doc, "rules-room.toml")


class FakeClock:
    def __init__(self, start_ms: int = T0_MS) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms


SIM_SCREEN = "nurse station (sim)"


class RoomSim:
    def __init__(self, config, db_path: Path, clock: FakeClock | None = None, *, screen: bool = True) -> None:
        self.config = config
        self.db_path = db_path
        self.clock = clock or FakeClock()
        self.screen = screen
        self.controller: RoomController | None = None
        self._seq: dict[str, int] = {}
        self.boot = 1

    @property
    def c(self) -> RoomController:
        assert self.controller is not None
        return self.controller

    async def start(self) -> "RoomSim":
        # checkpoints every few records, so restarts in the rule tests start from one and a short tail
        self.controller = RoomController(self.config, keys_for(self.config), self.db_path, clock=self.clock,
                                         timers=False, checkpoint_every=CHECKPOINT_EVERY)
        await self.controller.start()
        return self

    async def stop(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
            self.controller = None

    async def restart(self, down_s: float = 0) -> None:
        """Stop the controller, let ``down_s`` pass with nothing running, start it on the same store."""
        await self.stop()
        self.clock.ms += round(down_s * 1000)
        await self.start()

    async def __aenter__(self) -> "RoomSim":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the nurse screen
    async def show(self) -> None:
        """The simulated nurse screen confirms every active call it has not shown yet."""
        if self.screen and (waiting := [c.id for c in self.c.room.calls.values() if c.annunciated_at_ms is None]):
            await self.c.shown(waiting, SIM_SCREEN)

    async def _shown(self, records: list[LogRecord]) -> list[LogRecord]:
        await self.show()
        return records

    # ------------------------------------------------------------------ time
    async def advance(self, seconds: float) -> list[LogRecord]:
        return await self.advance_to(self.clock.ms + int(round(seconds * 1000)))

    async def advance_to(self, ms: int) -> list[LogRecord]:
        """Move the clock to ``ms`` and store what fell due (not the screen's receipts: they follow)."""
        assert ms >= self.clock.ms
        await self.show()  # calls raised by the test directly were on the screen before time moved on
        self.clock.ms = ms
        return await self._shown(await self.c.tick())

    # ------------------------------------------------------------------ node inputs
    def _next(self, node: str) -> int:
        self._seq[node] = self._seq.get(node, 1) + 1
        return self._seq[node]

    async def event(self, node: str, kind: str, src: str, val: int = 1, **features: int) -> list[LogRecord]:
        seq = self._next(node)
        ev = NodeEvent(node, self.boot, seq, seq, kind, src, val, 0, features)
        return await self._shown(await self.c.node_event(ev))

    async def press(self, node: str, src: str) -> list[LogRecord]:
        return await self.event(node, "button", src)

    async def presence(self, node: str, src: str, present: bool) -> list[LogRecord]:
        return await self.event(node, "presence", src, int(present))

    async def hello(self, node: str) -> None:
        await self.c.node_hello(Hello(node, self.boot, self._next(node), "test", "sim", ("button",), 10_000, 1),
                                "127.0.0.1:1")
        await self.show()

    async def heartbeat(self, node: str, batt_mv: int | None = None) -> None:
        await self.c.node_heartbeat(Heartbeat(node, self.boot, self._next(node), 0, 0, 50_000, 0, -60, batt_mv))
        await self.c.settle()
        await self.show()

    async def reading(self, node: str, **measures: int) -> None:
        self.c.node_reading(Reading(node, self.boot, self._next(node), 0, measures))
        await self.c.settle()
        await self.show()

    # ------------------------------------------------------------------ looking
    def calls(self) -> list[dict[str, Any]]:
        return self.c.snapshot()["calls"]

    def call(self, ctype: str) -> dict[str, Any]:
        found = [c for c in self.calls() if c["type"] == ctype]
        assert len(found) == 1, f"expected one active {ctype} call, have {[c['type'] for c in self.calls()]}"
        return found[0]

    def types(self) -> list[str]:
        return [c["type"] for c in self.calls()]

    async def log(self, kind: str | None = None) -> list[LogRecord]:
        records, after = [], 0
        while batch := await self.c.events_after(after, 1000):
            records += batch
            after = batch[-1].id
        return [r for r in records if kind is None or r.kind == kind]
