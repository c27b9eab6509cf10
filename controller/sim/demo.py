"""``smartroom demo``: a simulated ward on this machine.

The main room's controller, API and nurse dashboard run in this process; its four nodes (bedside,
bathroom, door/environment unit, wearable) each run the real firmware in their own MicroPython
process on simulated hardware that plays a scripted afternoon. With Mosquitto installed, the demo
also starts a local ward broker, two lighter rooms (protocol-level simulated nodes, so two cores
cope) and the ward console with its ward station and staff view (docs/ward.md). Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from ..bus import STATUS_CHANGED
from ..link.nodeclient import NodeClient
from ..room.config import parse_room
from ..room import CALL_TYPES, RoomError
from ..runner import RoomServer
from .nodes import NodeLine, SimNode
from ..store import LogRecord
from ..security.tls import load_or_create, node_pin
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
                end_ms: int | None = None, pin: dict[str, str] | None = None) -> dict[str, Any]:
    """``pin``: the controller certificate's ``ctl_fp`` / ``ctl_cert`` (security.tls.node_pin), as
    provisioning writes them; None for a plain-TCP node (``link_plain``)."""
    spec = dict(NODES[node_id])
    steps = spec.pop("steps")
    scenario = workdir / f"{node_id}.scenario.json"
    scenario.write_text(json.dumps({"steps": steps, **({"end_ms": end_ms} if end_ms else {})}, indent=1))
    return {"node_id": node_id, "key_hex": key.hex(), "ctl_host": host, "ctl_port": port,
            **(pin if pin is not None else {"link_plain": True}), "hb_ms": 10_000, **spec,
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


SITE, UNIT = "demo", "4b"
# The lighter rooms of the ward: protocol-level nodes pressing on a script (offset per room).
LIGHT_ROOMS = {"demo-4b-14": 25_000, "demo-4b-16": 75_000}
LIGHT_ROOM = {
    "beds": [{"id": "A"}], "gateway": {"heartbeat_ms": 60_000},
    "timers": {"high": {"escalate_s": 15}, "medium": {"escalate_s": 30}},
    "nodes": {"bedside-a": {"bed": "A", "indicator": True, "tone": True,
                            "inputs": {"call": "patient_call", "cancel": "cancel"}},
              "bath": {"location": "bathroom", "inputs": {"cord": "bath_emergency"}}},
}


class DemoWard:
    """Mosquitto, the lighter rooms and the ward console; absent when Mosquitto is not installed."""

    def __init__(self, workdir: Path, ward_port: int) -> None:
        self.workdir, self.ward_port = workdir, ward_port
        self.broker = None
        self.rooms: dict[str, RoomServer] = {}
        self.console = None
        self.tokens: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @staticmethod
    def available() -> bool:
        from ward.broker import BrokerError, mosquitto_binary  # the ward is a service above the room

        try:
            mosquitto_binary()
        except BrokerError:
            return False
        return True

    async def start_broker(self, room_ids: list[str]) -> None:
        from controller.uplink.wire import Topics
        from ward.broker import Mosquitto, RoomUser, WardUser

        users = [RoomUser(r, f"demo-{r}", Topics(SITE, UNIT, r)) for r in room_ids]
        users.append(WardUser("ward", "demo-ward", SITE, UNIT))
        self.broker = Mosquitto(self.workdir / "broker", _free_port(), users=users)
        await self.broker.start()

    def ward_section(self, room_id: str) -> dict[str, Any]:
        secret = self.workdir / f"{room_id}.broker-password"
        secret.write_text(f"demo-{room_id}\n")
        return {"host": self.broker.host, "port": self.broker.port, "site": SITE, "unit": UNIT,
                "password_file": str(secret)}

    async def start_rooms(self) -> None:
        for room_id in LIGHT_ROOMS:
            doc = {**json.loads(json.dumps(LIGHT_ROOM)), "room": {"id": room_id, "name": f"Ward 4B · Room {room_id[-2:]}"},
                   "ward": self.ward_section(room_id)}
            config = parse_room(doc, f"{room_id} (demo)")
            keys = {node: os.urandom(32) for node in config.nodes}
            tls = load_or_create(self.workdir / f"{room_id}-cert.pem", self.workdir / f"{room_id}-key.pem",
                                 node_link=True)
            server = RoomServer(config, keys, self.workdir / f"{room_id}.db", api_port=0, node_port=0, node_tls=tls)
            await server.start()
            server.demo_keys = keys
            self.rooms[room_id] = server

    async def start_console(self, all_rooms: dict[str, RoomServer]) -> str:
        from ward.config import parse_ward
        from ward.server import WardServer

        (self.workdir / "ward-broker.password").write_text("demo-ward\n")
        tokens = {r: await s.create_token("integration", "demo ward") for r, s in all_rooms.items()}
        config = parse_ward({"ward": {"name": "Ward 4B (demo)", "site": SITE, "unit": UNIT, "rooms": sorted(all_rooms)},
                             "broker": {"host": self.broker.host, "port": self.broker.port, "username": "ward",
                                        "password_file": "ward-broker.password"},
                             "http": {"host": "127.0.0.1", "port": self.ward_port}},
                            "demo ward", base=self.workdir)
        config = dataclasses.replace(config, room_tokens=tokens)
        self.console = WardServer(config, self.workdir / "ward.db")
        url = await self.console.start()
        for role, name in (("charge", "Nurse Lee"), ("nurse", "Nurse Kim"), ("nurse", "Nurse Ada"),
                           ("admin", "demo admin")):
            self.tokens[name] = await self.console.create_token(role, name)
        main = next(r for r in all_rooms if r not in LIGHT_ROOMS)
        await self.console.console.set_shift("demo shift", "Nurse Lee", ["Nurse Kim", "Nurse Ada"],
                                             {main: {"A": "Nurse Kim"}, **{r: {"*": "Nurse Ada"} for r in LIGHT_ROOMS}},
                                             "demo")
        self._tasks = [asyncio.create_task(self._script(room_id, offset)) for room_id, offset in LIGHT_ROOMS.items()]
        return url

    async def _script(self, room_id: str, offset_ms: int) -> None:
        """A patient call, then (in one room) a bathroom emergency, cancelled at the bedside later."""
        server = self.rooms[room_id]
        boot = 1
        steps = [(offset_ms, "bedside-a", "call"), (offset_ms + 40_000, "bedside-a", "cancel"),
                 (offset_ms + 70_000, "bath", "cord"), (offset_ms + 120_000, "bedside-a", "cancel")]
        t0 = time.monotonic()
        cycle = 0
        while True:
            for at_ms, node, src in steps:
                due = t0 + (cycle * CYCLE_MS + at_ms) / 1000
                await asyncio.sleep(max(0.0, due - time.monotonic()))  # the script's clock
                boot += 1
                client = NodeClient(node, server.demo_keys[node], boot=boot,
                                    pin=server.endpoints.node_tls_fingerprint)
                try:
                    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
                    ev = client.event_msg("button", src)
                    await client.send(ev)
                    await client.recv_ack(ev["s"])
                finally:
                    await client.close()
            cycle += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.console is not None:
            await self.console.stop()
        for server in self.rooms.values():
            await server.stop()
        if self.broker is not None:
            await self.broker.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_demo(port: int = 8080, speed: float = 1.0, workdir: Path | None = None, auto_ack_s: float = 15.0,
                   duration_s: float | None = None, ward: bool = True) -> None:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="smartroom-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    demo_ward = DemoWard(workdir, port + 10 if port else 0) if ward and DemoWard.available() else None
    room_doc = ROOM
    if demo_ward is not None:
        await demo_ward.start_broker([ROOM["room"]["id"], *LIGHT_ROOMS])
        room_doc = {**ROOM, "ward": demo_ward.ward_section(ROOM["room"]["id"])}
    config = parse_room(room_doc, "demo room")
    keys = {node: os.urandom(32) for node in config.nodes}
    tls = load_or_create(workdir / "node-link-cert.pem", workdir / "node-link-key.pem", node_link=True)
    server = RoomServer(config, keys, workdir / "room.db", api_port=port, node_port=0, node_tls=tls)
    endpoints = await server.start()
    ward_text = ("Mosquitto is not installed ('apt-get install mosquitto'): no ward this time.\n"
                 if ward and demo_ward is None else "")
    if demo_ward is not None:
        await demo_ward.start_rooms()
        ward_url = await demo_ward.start_console({config.room_id: server, **demo_ward.rooms})
        ward_text = (f"The ward (Mosquitto on 127.0.0.1:{demo_ward.broker.port}, rooms {config.room_id}, "
                     f"{', '.join(LIGHT_ROOMS)}):\n"
                     f"  ward station    : {ward_url}/   (log in with the charge nurse's token and your name)\n"
                     f"  staff view      : {ward_url}/staff   (a nurse's own token: her calls, Accept / Decline)\n"
                     + "".join(f"  {name:<15} : {secret}\n" for name, secret in demo_ward.tokens.items()) +
                     "  Nurse Kim has bed A of the main room, Nurse Ada the others, Nurse Lee is in charge.\n")
    demo_tokens = {role: await server.create_token(role, f"demo {role}") for role in ROLES}
    narrator = Narrator(server, endpoints.api_url)
    print(f"smartroom demo — {config.name}\n"
          f"  nurse page      : {endpoints.api_url}/   (log in with the nurse token below)\n"
          f"  facilities page : {endpoints.api_url}/facilities   (the facilities token)\n"
          f"  room state      : {endpoints.api_url}/api/v1/room\n"
          f"  live events     : curl -N -H 'Authorization: Bearer <nurse token>' "
          f"{endpoints.api_url}/api/v1/events/stream\n"
          f"  node gateway    : {endpoints.node_host}:{endpoints.node_port} (TLS, certificate "
          f"{tls.fingerprint_sha256[:23]}…)\n"
          f"  data and logs   : {workdir}\n"
          f"API tokens (log in to the pages with one; they are kept in {workdir / 'room.db'}, hashed):\n"
          + "".join(f"  {role:<11}     : {secret}\n" for role, secret in demo_tokens.items()) +
          f"Four nodes run the real firmware in MicroPython (64 KB heap). The patient presses the call\n"
          f"button at 12 s; acknowledge it on the nurse page (after {auto_ack_s:.0f} s a demo nurse does).\n"
          f"Then: staff presence, a bathroom emergency that only the in-room cancel clears, escalation,\n"
          f"a warm room, and a fall the patient cancels with \"I'm OK\". The script repeats every 3 min.\n"
          f"{ward_text}"
          f"Ctrl-C stops everything.\n", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pin = node_pin(tls)
    nodes = [SimNode(node_config(n, keys[n], endpoints.node_host, endpoints.node_port, workdir, speed, pin=pin),
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
        if demo_ward is not None:
            await demo_ward.stop()
        print(f"stopped. The room's log is kept in {workdir / 'room.db'}", flush=True)
