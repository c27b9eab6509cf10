"""``smartroom demo``: a whole simulated room on this machine.

The controller, the API and the nurse dashboard run in this process; four nodes (bedside,
bathroom, door/environment unit, wearable) each run the real firmware in their own MicroPython
process on simulated hardware that plays a scripted afternoon. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from ..bus import STATUS_CHANGED
from ..room.config import parse_room
from ..room import CALL_TYPES, RoomError
from ..runner import RoomServer
from .nodes import NodeLine, SimNode
from ..store import LogRecord
from ..security.tokens import ROLES

CYCLE_MS = 180_000  # the scripted afternoon repeats every three minutes

ROOM = {
    "room": {"id": "demo-4b-12", "name": "Ward 4B · Room 12 (demo)"},
    "beds": [{"id": "A"}],
    "gateway": {"heartbeat_ms": 10_000},
    # Shorter than a ward's, so the three-minute script shows escalation and an environment alarm.
    "timers": {"high": {"escalate_s": 10}, "medium": {"escalate_s": 20}},
    "environment": {"temp_c": {"min_duration_s": 20, "clear_s": 10}},
    "nodes": {
        "bedside-a": {"bed": "A", "location": "bedside", "indicator": True, "tone": True,
                      "inputs": {"call": "patient_call"}},
        "bath": {"location": "bathroom", "indicator": True,
                 "inputs": {"cord": "bath_emergency", "pir": "bath_presence"}},
        "door": {"location": "door",
                 "inputs": {"presence": "staff_presence", "cancel": "cancel", "pir": "room_presence"}},
        "wearable-a": {"bed": "A", "location": "patient", "indicator": True,
                       "inputs": {"pendant": "patient_call", "ok": "im_ok"}},
    },
}


def _every(step: dict[str, Any]) -> dict[str, Any]:
    return {**step, "every_ms": CYCLE_MS}


NODES: dict[str, dict[str, Any]] = {
    "bedside-a": {
        "hw": "sim-esp32s3-devkitc-1",
        "inputs": [{"name": "call", "kind": "button", "pin": "call"}],
        "indicator": {"pin": "led"}, "tone": {"pin": "buzzer"},
        "steps": [_every({"at_ms": 12_000, "pin": "call", "press_ms": 250, "bounce": True}),
                  _every({"at_ms": 70_000, "pin": "call", "press_ms": 250, "bounce": True})],
    },
    "bath": {
        "hw": "sim-pico-w",
        "inputs": [{"name": "cord", "kind": "button", "pin": "cord"}, {"name": "pir", "kind": "presence", "pin": "pir"}],
        "indicator": {"pin": "led"},
        "steps": [_every({"at_ms": 85_000, "pin": "pir", "level": 1}),
                  _every({"at_ms": 95_000, "pin": "cord", "press_ms": 1_000}),
                  _every({"at_ms": 118_000, "pin": "pir", "level": 0})],
    },
    "door": {
        "hw": "sim-esp32s3-devkitc-1",
        "inputs": [{"name": "presence", "kind": "button", "pin": "presence"},
                   {"name": "cancel", "kind": "button", "pin": "cancel"},
                   {"name": "pir", "kind": "presence", "pin": "pir"}],
        "i2c": [{"part": "sht3x", "bus": 0, "addr": 0x44}], "uart": [{"part": "mhz19b", "bus": 1}],
        "reading_ms": 10_000,
        "steps": [{"at_ms": 0, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}}, {"at_ms": 0, "co2_ppm": 620},
                  # A nurse walks in and registers presence: the routine call is answered and cleared.
                  _every({"at_ms": 40_000, "pin": "pir", "level": 1}),
                  _every({"at_ms": 42_000, "pin": "presence", "press_ms": 200}),
                  _every({"at_ms": 55_000, "pin": "presence", "press_ms": 200}),
                  _every({"at_ms": 60_000, "co2_ppm": 910}),
                  _every({"at_ms": 60_000, "pin": "pir", "level": 0}),
                  # Bathroom emergency: presence does not cancel it; the cancel button in the room does.
                  _every({"at_ms": 110_000, "pin": "pir", "level": 1}),
                  _every({"at_ms": 111_000, "pin": "presence", "press_ms": 200}),
                  _every({"at_ms": 118_000, "pin": "cancel", "press_ms": 200}),
                  _every({"at_ms": 122_000, "pin": "presence", "press_ms": 200}),
                  _every({"at_ms": 120_000, "sht3x": {"temp_c": 24.6, "rh_pct": 52.0}}),
                  _every({"at_ms": 160_000, "pin": "pir", "level": 1}),
                  _every({"at_ms": 165_000, "pin": "cancel", "press_ms": 200}),
                  _every({"at_ms": 170_000, "pin": "pir", "level": 0}),
                  _every({"at_ms": 175_000, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}})],
    },
    "wearable-a": {
        "hw": "sim-pico-w",
        "inputs": [{"name": "pendant", "kind": "button", "pin": "pendant"},
                   {"name": "ok", "kind": "button", "pin": "ok"}],
        "indicator": {"pin": "led"},
        "accel": {"part": "lis3dh", "bus": 0, "addr": 0x18, "rate_hz": 50},
        # A fall; the patient presses "I'm OK" inside the window: logged, not silently dropped.
        "steps": [_every({"at_ms": 0, "accel": "walk"}), _every({"at_ms": 140_000, "accel": "fall"}),
                  _every({"at_ms": 152_000, "pin": "ok", "press_ms": 300})],
    },
}


def node_config(node_id: str, key: bytes, host: str, port: int, workdir: Path, speed: float,
                end_ms: int | None = None) -> dict[str, Any]:
    spec = dict(NODES[node_id])
    steps = spec.pop("steps")
    scenario = workdir / f"{node_id}.scenario.json"
    scenario.write_text(json.dumps({"steps": steps, **({"end_ms": end_ms} if end_ms else {})}, indent=1))
    return {"node_id": node_id, "key_hex": key.hex(), "controller": {"host": host, "port": port},
            "hb_ms": 10_000, **spec,
            "sim": {"scenario": str(scenario), "speed": speed, "state_dir": str(workdir / "state" / node_id),
                    "seed": sum(node_id.encode())}}


LABELS = {name: (t.label.upper() if t.level == "high" else t.label.lower()) for name, t in CALL_TYPES.items()}


# Log record kind -> (tag, text with the record's data fields).
NARRATION = {
    "call.repeated": ("REPEAT", "call {call_id} pressed again ({presses}x)"),
    "call.cleared": ("CLEARED", "call {call_id} cleared by {by} ({how})"),
    "call.escalated": ("ESCALATE", "call {call_id} not acknowledged: now to {to} (level {level})"),
    "call.reminded": ("REMIND", "call {call_id} acknowledged but not cleared: re-signalled ({n})"),
    "call.present": ("PRESENT", "staff in the room for call {call_id}"),
    "call.clear_refused": ("REFUSED", "{by} cannot clear {call_id}: {reason}"),
    "call.noted": ("NOTE", "call {call_id}: {note}"),
}


class Narrator:
    """Says what is happening, in a nurse's words, with the time since the demo started."""

    def __init__(self, server: RoomServer, url: str) -> None:
        self.server, self.url = server, url
        self.t0 = time.monotonic()

    def say(self, what: str, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {what:<8} {text}", flush=True)

    def room_event(self, record: LogRecord) -> None:
        d = record.data
        calls = self.server.controller.room.calls
        if record.kind in NARRATION:
            tag, text = NARRATION[record.kind]
            self.say(tag, text.format(**d))
        elif record.kind == "call.raised":
            bed = f" · bed {d['bed']}" if d.get("bed") else ""
            det = d.get("detail", {})
            src = f"from {d['node']}/{d['input']}" if d["node"] else \
                f"({det['measure']} {det['value']:g})" if "measure" in det else "(room controller)"
            self.say("CALL", f"{LABELS.get(d['type'], d['type'])}{bed} {src} -> see it at {self.url}/")
        elif record.kind == "call.acknowledged":
            call = calls.get(d["call_id"])
            self.say("ACK", f"{d['by']} acknowledged {LABELS.get(call.type, '') if call else ''} {d['call_id']}")
        elif record.kind == "staff.presence":
            self.say("STAFF", "staff presence renewed" if d.get("renewed") else
                     "staff presence registered" if d["present"] else
                     "staff presence ended by itself (forgotten?)" if d.get("timed_out") else "staff left the room")
        elif record.kind == "staff.presence_reminder":
            self.say("STAFF", "staff presence ends in a moment: press presence in the room to stay")
        elif record.kind in ("environment.excursion", "environment.recovered"):
            state = f"out of range ({d['bound']} limit {d['limit']})" if record.kind.endswith("excursion") else \
                "back in range"
            self.say("ENV", f"{d['measure']} {d['value']:g} {state}")
        elif record.kind == "presence.changed":
            where = f"bed {d['bed']}" if d["area"] == "bed" else d["area"]
            self.say("PRESENCE", f"{where} {'occupied' if d['present'] else 'empty'}")
        elif record.kind in ("node.online", "node.offline"):
            extra = f" (fw {d['fw']}, {d['hw']}, boot {d['boot']})" if record.kind == "node.online" else \
                f" ({d['reason']})"
            self.say("NODE", f"{d['node']} {record.kind.split('.')[1]}{extra}")

    def node_line(self, node: SimNode, line: NodeLine) -> None:
        if line.tag == "indicator":
            self.say("LIGHT", f"{node.node_id} reassurance light: {line.fields.get('pattern')}")
        elif line.tag == "tone":
            self.say("TONE", f"{node.node_id} in-room tone: {line.fields.get('pattern')}")
        elif line.tag in ("error", "fault"):
            self.say("NODE!", f"{node.node_id}: {line.raw}")


async def _auto_ack(server: RoomServer, after_s: float, narrator: Narrator) -> None:
    """Stands in for a nurse who answers calls nobody acknowledged on the dashboard."""
    while True:
        await asyncio.sleep(1.0)
        now = server.controller.clock()
        for call in list(server.controller.room.calls.values()):
            if not call.answered and now - call.phase_since_ms > after_s * 1000:
                try:
                    await server.controller.acknowledge(call.id, "Nurse Demo (auto)")
                except RoomError as exc:  # someone acknowledged it on the page meanwhile
                    narrator.say("ACK", f"auto-acknowledge skipped: {exc}")


async def _narrate_room(server: RoomServer, narrator: Narrator) -> None:
    with server.controller.subscribe() as sub:
        while (record := await sub.get()) is not None:
            if record is STATUS_CHANGED:  # e.g. the storage failed: the alarm call shows in the snapshot
                narrator.say("ALARM", f"room status: {server.controller.storage.state}")
                continue
            narrator.room_event(record)


async def run_demo(port: int = 8080, speed: float = 1.0, workdir: Path | None = None, auto_ack_s: float = 15.0,
                   duration_s: float | None = None) -> None:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="smartroom-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = parse_room(ROOM, "demo room")
    keys = {node: os.urandom(32) for node in config.nodes}
    server = RoomServer(config, keys, workdir / "room.db", api_port=port, node_port=0)
    endpoints = await server.start()
    demo_tokens = {role: await server.create_token(role, f"demo {role}") for role in ROLES}
    narrator = Narrator(server, endpoints.api_url)
    print(f"smartroom demo — {config.name}\n"
          f"  nurse page      : {endpoints.api_url}/   (log in with the nurse token below)\n"
          f"  facilities page : {endpoints.api_url}/facilities   (the facilities token)\n"
          f"  room state      : {endpoints.api_url}/api/v1/room\n"
          f"  live events     : curl -N -H 'Authorization: Bearer <nurse token>' "
          f"{endpoints.api_url}/api/v1/events/stream\n"
          f"  node gateway    : {endpoints.node_host}:{endpoints.node_port}\n"
          f"  data and logs   : {workdir}\n"
          f"API tokens (log in to the pages with one; they are kept in {workdir / 'room.db'}, hashed):\n"
          + "".join(f"  {role:<11}     : {secret}\n" for role, secret in demo_tokens.items()) +
          f"Four nodes run the real firmware in MicroPython (64 KB heap). The patient presses the call\n"
          f"button at 12 s; acknowledge it on the nurse page (after {auto_ack_s:.0f} s a demo nurse does).\n"
          f"Then: staff presence, a bathroom emergency that only the in-room cancel clears, escalation,\n"
          f"a warm room, and a fall the patient cancels with \"I'm OK\". The script repeats every 3 min.\n"
          f"Ctrl-C stops everything.\n", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nodes = [SimNode(node_config(n, keys[n], endpoints.node_host, endpoints.node_port, workdir, speed),
                     workdir / "nodes", on_line=narrator.node_line) for n in NODES]
    tasks = [asyncio.create_task(_narrate_room(server, narrator))]
    if auto_ack_s > 0:
        tasks.append(asyncio.create_task(_auto_ack(server, auto_ack_s, narrator)))
    try:
        for node in nodes:
            await node.start()
        try:
            await asyncio.wait_for(stop.wait(), duration_s)
        except TimeoutError:
            pass
    finally:
        print("\nstopping: nodes, gateway, API …", flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)
        await server.stop()
        print(f"stopped. The room's log is kept in {workdir / 'room.db'}", flush=True)
