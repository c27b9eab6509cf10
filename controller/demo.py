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

from .config import parse_room
from .runner import RoomServer
from .simnodes import NodeLine, SimNode
from .store import LogRecord

CYCLE_MS = 180_000  # the scripted afternoon repeats every three minutes

ROOM = {
    "room": {"id": "demo-4b-12", "name": "Ward 4B · Room 12 (demo)"},
    "beds": [{"id": "A"}],
    "gateway": {"heartbeat_ms": 10_000},
    "nodes": {
        "bedside-a": {"bed": "A", "location": "bedside", "indicator": True, "inputs": {"call": "patient_call"}},
        "bath": {"location": "bathroom", "indicator": True,
                 "inputs": {"cord": "bath_emergency", "pir": "bath_presence"}},
        "door": {"location": "door", "inputs": {"cancel": "cancel", "pir": "room_presence"}},
        "wearable-a": {"bed": "A", "location": "patient", "indicator": True, "inputs": {"pendant": "patient_call"}},
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
        "inputs": [{"name": "cancel", "kind": "button", "pin": "cancel"},
                   {"name": "pir", "kind": "presence", "pin": "pir"}],
        "i2c": [{"part": "sht3x", "bus": 0, "addr": 0x44}], "uart": [{"part": "mhz19b", "bus": 1}],
        "reading_ms": 10_000,
        "steps": [{"at_ms": 0, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}}, {"at_ms": 0, "co2_ppm": 620},
                  _every({"at_ms": 40_000, "pin": "pir", "level": 1}),
                  _every({"at_ms": 45_000, "pin": "cancel", "press_ms": 200}),
                  _every({"at_ms": 60_000, "co2_ppm": 910}),
                  _every({"at_ms": 60_000, "pin": "pir", "level": 0}),
                  _every({"at_ms": 110_000, "pin": "pir", "level": 1}),
                  _every({"at_ms": 115_000, "pin": "cancel", "press_ms": 200}),
                  _every({"at_ms": 120_000, "sht3x": {"temp_c": 24.6, "rh_pct": 52.0}}),
                  _every({"at_ms": 160_000, "pin": "cancel", "press_ms": 200}),
                  _every({"at_ms": 170_000, "pin": "pir", "level": 0}),
                  _every({"at_ms": 175_000, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}})],
    },
    "wearable-a": {
        "hw": "sim-pico-w",
        "inputs": [{"name": "pendant", "kind": "button", "pin": "pendant"}],
        "indicator": {"pin": "led"},
        "accel": {"part": "lis3dh", "bus": 0, "addr": 0x18, "rate_hz": 50},
        "steps": [_every({"at_ms": 0, "accel": "walk"}), _every({"at_ms": 140_000, "accel": "fall"})],
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


LABELS = {"patient_call": "patient call", "bath_emergency": "BATHROOM EMERGENCY", "fall": "FALL",
          "staff_assist": "staff assist", "code_call": "CODE CALL", "technical": "technical alarm"}


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
        if record.kind == "call.raised":
            bed = f" · bed {d['bed']}" if d.get("bed") else ""
            self.say("CALL", f"{LABELS.get(d['type'], d['type'])}{bed} from {d['node']}/{d['input']} "
                             f"-> see it at {self.url}/")
        elif record.kind == "call.repeated":
            self.say("REPEAT", f"call {d['call_id']} pressed again ({d['presses']}x)")
        elif record.kind == "call.acknowledged":
            call = calls.get(d["call_id"])
            self.say("ACK", f"{d['by']} acknowledged {LABELS.get(call.type, '') if call else ''} {d['call_id']}")
        elif record.kind == "call.cleared":
            self.say("CLEARED", f"call {d['call_id']} cleared by {d['by']}")
        elif record.kind == "presence.changed":
            self.say("PRESENCE", f"{d['area']} {'occupied' if d['present'] else 'empty'}")
        elif record.kind in ("node.online", "node.offline"):
            extra = f" (fw {d['fw']}, {d['hw']}, boot {d['boot']})" if record.kind == "node.online" else \
                f" ({d['reason']})"
            self.say("NODE", f"{d['node']} {record.kind.split('.')[1]}{extra}")

    def node_line(self, node: SimNode, line: NodeLine) -> None:
        if line.tag == "indicator":
            self.say("LIGHT", f"{node.node_id} reassurance light: {line.fields.get('pattern')}")
        elif line.tag in ("error", "fault"):
            self.say("NODE!", f"{node.node_id}: {line.raw}")


async def _auto_ack(server: RoomServer, after_s: float, narrator: Narrator) -> None:
    """Stands in for a nurse who answers calls nobody acknowledged on the dashboard."""
    while True:
        await asyncio.sleep(1.0)
        now = server.controller.clock()
        for call in list(server.controller.room.calls.values()):
            if call.acknowledged_at_ms is None and now - call.raised_at_ms > after_s * 1000:
                try:
                    await server.controller.acknowledge(call.id, "Nurse Demo (auto)")
                except Exception as exc:  # someone acknowledged it on the page meanwhile
                    narrator.say("ACK", f"auto-acknowledge skipped: {exc}")


async def _narrate_room(server: RoomServer, narrator: Narrator) -> None:
    with server.controller.subscribe() as sub:
        while (record := await sub.get()) is not None:
            narrator.room_event(record)


async def run_demo(port: int = 8080, speed: float = 1.0, workdir: Path | None = None, auto_ack_s: float = 15.0,
                   duration_s: float | None = None) -> None:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="smartroom-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = parse_room(ROOM, "demo room")
    keys = {node: os.urandom(32) for node in config.nodes}
    server = RoomServer(config, keys, workdir / "room.db", api_port=port, node_port=0)
    endpoints = await server.start()
    narrator = Narrator(server, endpoints.api_url)
    print(f"smartroom demo — {config.name}\n"
          f"  nurse dashboard : {endpoints.api_url}/\n"
          f"  room state      : {endpoints.api_url}/api/v1/room\n"
          f"  live events     : curl -N {endpoints.api_url}/api/v1/events/stream\n"
          f"  node gateway    : {endpoints.node_host}:{endpoints.node_port}\n"
          f"  data and logs   : {workdir}\n"
          f"Four nodes run the real firmware in MicroPython (64 KB heap). The patient presses the call\n"
          f"button at 12 s; acknowledge it on the dashboard (after {auto_ack_s:.0f} s a demo nurse does).\n"
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
