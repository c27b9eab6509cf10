"""Every number in docs/call-model.md, docs/configuration.md and docs/protocol.md, at its edge.

Each row is one documented limit, written from the docs (never imported from the code): what the
room or the link does just short of the edge, exactly at it and just past it. Room rows run on a
fake clock (tests/roomsim.py); link rows run the real gateway on loopback, with frames built here.
One millisecond, one millivolt, one thousandth of a degree is "just": the resolution of the clock
and of the wire's integer units.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pytest

from controller.link import protocol as p
from controller.link.gateway import NodeGateway
from controller.link.nodeclient import NodeClient
from controller.service import RoomController
from tests.helpers import keys_for, node_key, room_config
from tests.roomsim import RoomSim, rules_config

MS = 0.001  # the clock's resolution, in seconds

# ---------------------------------------------------------------------------------------- the docs
# docs/call-model.md "If nobody answers" and docs/configuration.md [timers.*]: seconds per tier.
ESCALATE_S = {"high": 30, "medium": 60, "low": 120, "info": 600}
REMINDER_S = {"high": 180, "medium": 180, "low": 180, "info": 1800}
# docs/configuration.md "Profiles": low / high / hysteresis / min_duration_s / clear_s; the wire
# measure and its unit (docs/protocol.md: integers with the unit in the name).
ENVIRONMENT = {
    "temp_c": (21.0, 24.0, 0.5, 600, 60, "temp_mdegc", 1000),
    "rh_pct": (None, 60.0, 3.0, 600, 60, "rh_mpct", 1000),
    "co2_ppm": (None, 1100.0, 100.0, 1800, 60, "co2_ppm", 1),
    "noise_db": (None, 45.0, 3.0, 600, 60, "noise_cdb", 100),
    "pressure_pa": (None, -2.5, 0.5, 60, 30, "dp_mpa", 1000),  # isolation rooms only
}
FALL_OK_WINDOW_S = 30
BATH_DWELL_S = 20 * 60
SILENCE_S = 120
HEARTBEAT_S, MISSED_HEARTBEATS, OFFLINE_GRACE_S = 10, 3, 1
LOW_BATTERY_MV, BATTERY_REPLACED_MV = 3450, 3900
# docs/call-model.md "The life of a call" and docs/configuration.md [timers]: staff presence ends by
# itself 30 min after it was registered, its reminder 1 min before; "Nobody watching": 15 s.
PRESENCE_S, PRESENCE_REMINDER_S, NOT_DISPLAYED_S = 1800, 60, 15
# docs/protocol.md (v2). V1_WINDOW is the event window v1 had and v2 dropped (§8): nothing may
# depend on it any more.
PROTOCOL_VERSION, MAX_FRAME_BYTES, TAG_BYTES, V1_WINDOW = 2, 1024, 32, 1024
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limit:
    """A documented limit: ``observe(room, value)`` drives the room to ``value`` and reports."""

    behaviour: str
    doc: str
    edge: float
    step: float          # edge - step is just short of the limit, edge + step just past it
    observe: Callable[[Any, float], Awaitable[Any]]
    short: Any
    at: Any
    past: Any
    profile: str = "patient_room"
    screen: bool = True  # a simulated nurse screen confirms every call (tests/roomsim.py)

    def value(self, side: str) -> float:
        return {"short": self.edge - self.step, "at": self.edge, "past": self.edge + self.step}[side]


SIDES = ("short", "at", "past")


def _ids(limits: list[Limit]) -> list[str]:
    return [f"{i:02d} " + re.sub(r"[^A-Za-z0-9_.^+-]+", " ", limit.behaviour).strip() for i, limit in enumerate(limits)]


# ---------------------------------------------------------------------------------------- room rows
TIER_CALL = {"high": (("bath", "cord"), "bath_emergency"), "medium": (("bedside-a", "call"), "patient_call"),
             "low": (("bedside-a", "water"), "request")}


async def raise_call(room: RoomSim, tier: str) -> dict:
    """One call of the tier, raised the way it happens in a room; an information call is an
    environment alarm (24.6 °C for its 10 minutes)."""
    if tier == "info":
        await room.reading("env", temp_mdegc=24_600)
        await room.advance(ENVIRONMENT["temp_c"][3])
        return room.call("environment")
    button, ctype = TIER_CALL[tier]
    await room.press(*button)
    return room.call(ctype)


def escalation_after(tier: str):
    async def observe(room: RoomSim, after_s: float) -> int:
        call = await raise_call(room, tier)
        await room.advance(after_s)
        return room.call(call["type"])["escalation_level"]
    return observe


def reminder_after_ack(tier: str):
    async def observe(room: RoomSim, after_s: float) -> tuple[int, str]:
        call = await raise_call(room, tier)
        await room.c.acknowledge(call["id"], "Nurse Kim")
        await room.advance(after_s)
        now = room.call(call["type"])
        return now["reminders"], now["state"]
    return observe


async def reminded_call_escalates_again(room: RoomSim, after_s: float) -> int:
    call = await raise_call(room, "medium")
    await room.c.acknowledge(call["id"], "Nurse Kim")
    await room.advance(REMINDER_S["medium"])
    assert room.call("patient_call")["reminders"] == 1
    await room.advance(after_s)
    return room.call("patient_call")["escalation_level"]


async def reminder_after_a_staff_visit(room: RoomSim, after_s: float) -> tuple[int, str, str]:
    """A bathroom emergency, a nurse comes in (presence) and leaves without resetting the cord."""
    await raise_call(room, "high")
    await room.press("door", "presence")
    await room.advance(600)
    await room.press("door", "presence")
    await room.advance(REMINDER_S["high"])
    assert room.call("bath_emergency")["reminders"] == 1
    await room.advance(after_s)
    call = room.call("bath_emergency")
    return call["escalation_level"], call["state"], room.c.outputs().tone


async def reminder_after_staff_leave(room: RoomSim, after_s: float) -> int:
    call = await raise_call(room, "high")
    await room.c.acknowledge(call["id"], "Nurse Kim")
    await room.press("door", "presence")
    # 28 min in the room, just before presence's own reminder (docs: 30 min, reminder 1 min before):
    # neither clock runs; the second press ends presence.
    await room.advance(PRESENCE_S - PRESENCE_REMINDER_S - 120)
    assert room.call("bath_emergency")["reminders"] == 0
    await room.press("door", "presence")
    assert not room.c.snapshot()["occupancy"]["staff_present"]
    await room.advance(after_s)
    return room.call("bath_emergency")["reminders"]


async def presence_after(room: RoomSim, after_s: float) -> tuple[bool, bool]:
    """Staff registered presence and forgot it: (still present, the presence reminder on)."""
    await room.press("door", "presence")
    await room.advance(after_s)
    out = room.c.outputs()
    return out.presence, out.presence_ending


LATE_S = 60


async def reminder_after_presence_ends_by_itself(room: RoomSim, after_s: float) -> int:
    """An acknowledged emergency held by presence nobody ended: its clock restarts when presence ends."""
    call = await raise_call(room, "high")
    await room.c.acknowledge(call["id"], "Nurse Kim")
    await room.press("door", "presence")
    # The timers run late by a minute: the clock restarts from when presence was due to end.
    await room.advance(PRESENCE_S + LATE_S)
    assert not room.c.snapshot()["occupancy"]["staff_present"]
    assert room.call("bath_emergency")["reminders"] == 0, "no clock ran while presence held the call"
    await room.advance(after_s)
    return room.call("bath_emergency")["reminders"]


async def escalation_of_a_call_raised_while_staff_are_in(room: RoomSim, after_s: float) -> tuple[int, str]:
    """Presence answers only the calls on when it was registered: a pull-cord after it escalates."""
    await room.press("door", "presence")
    await room.advance(5)
    call = await raise_call(room, "high")
    await room.advance(after_s)
    now = room.call(call["type"])
    return now["escalation_level"], room.c.outputs().tone


async def not_displayed_after(room: RoomSim, after_s: float) -> bool:
    """No nurse screen confirms the call (RoomSim(screen=False))."""
    await raise_call(room, "medium")
    await room.advance(after_s)
    return "not_displayed" in room.types()


async def escalation_across_a_restart(room: RoomSim, after_s: float) -> int:
    """Raised 25 s before the controller stops; down for the rest (docs: 'After a power cut')."""
    call = await raise_call(room, "high")
    await room.advance(25)
    await room.restart(down_s=after_s - 25)
    await room.advance(0)
    return room.call(call["type"])["escalation_level"]


async def im_ok_after(room: RoomSim, after_s: float) -> str:
    await room.event("wearable-a", "fall", "accel", peak_mg=4100)
    await room.advance(after_s)
    await room.press("wearable-a", "ok")
    if "fall" not in room.types():
        [cleared] = await room.log("call.cleared")
        return f"cleared {cleared.data['how']}"
    return room.call("fall")["timeline"][-1]["step"]


async def tone_after_silence(room: RoomSim, after_s: float) -> str:
    await raise_call(room, "medium")
    await room.c.silence_tone("Nurse Kim")
    await room.advance(after_s)
    return room.c.outputs().tone


async def information_call_lights_without_a_tone(room: RoomSim, after_s: float) -> tuple[str, str, str]:
    await room.reading("env", temp_mdegc=24_600)
    await room.advance(after_s)
    out = room.c.outputs()
    return out.dome_colour, out.dome_pattern, out.tone


async def bath_dwell_after(room: RoomSim, after_s: float) -> bool:
    await room.presence("bath", "pir", True)
    await room.advance(after_s)
    return "bath_dwell" in room.types()


async def offline_after_silence(room: RoomSim, after_s: float) -> bool:
    await room.hello("bath")
    await room.advance(after_s)
    return "node_offline" in room.types()


async def low_battery_at(room: RoomSim, mv: float) -> bool:
    await room.heartbeat("wearable-a", batt_mv=int(mv))
    return "low_battery" in room.types()


async def battery_replaced_at(room: RoomSim, mv: float) -> bool:
    await room.heartbeat("wearable-a", batt_mv=3300)
    assert room.types() == ["low_battery"]
    await room.heartbeat("wearable-a", batt_mv=int(mv))
    return "low_battery" not in room.types()


def _wire(measure: str, value: float) -> dict[str, int]:
    *_, wire, scale = ENVIRONMENT[measure]
    return {wire: round(value * scale)}


def excursion_at(measure: str):
    async def observe(room: RoomSim, value: float) -> bool:
        await room.reading("env", **_wire(measure, value))
        await room.advance(ENVIRONMENT[measure][3])
        return "environment" in room.types()
    return observe


def _out_of_range(measure: str) -> float:
    low, high, *_ = ENVIRONMENT[measure]
    return high + 1 if high is not None else low - 1


def alarm_after(measure: str):
    async def observe(room: RoomSim, after_s: float) -> bool:
        await room.reading("env", **_wire(measure, _out_of_range(measure)))
        await room.advance(after_s)
        return "environment" in room.types()
    return observe


async def _alarm(room: RoomSim, measure: str, value: float) -> None:
    await room.reading("env", **_wire(measure, value))
    await room.advance(ENVIRONMENT[measure][3])
    assert room.types() == ["environment"]


def recovery_at(measure: str, bound: str):
    """An active alarm, then one reading at ``value`` for longer than the clear time."""
    async def observe(room: RoomSim, value: float) -> bool:
        low, high, *_ = ENVIRONMENT[measure]
        await _alarm(room, measure, high + 1 if bound == "high" else low - 1)
        await room.reading("env", **_wire(measure, value))
        await room.advance(3600)
        return "environment" not in room.types()
    return observe


def cleared_after(measure: str):
    async def observe(room: RoomSim, after_s: float) -> bool:
        low, high, hysteresis, *_ = ENVIRONMENT[measure]
        await _alarm(room, measure, _out_of_range(measure))
        back = high - 2 * hysteresis if high is not None else low + 2 * hysteresis
        await room.reading("env", **_wire(measure, back))
        await room.advance(after_s)
        return "environment" not in room.types()
    return observe


def _env_rows() -> list[Limit]:
    rows: list[Limit] = []
    for measure, (low, high, hysteresis, min_s, clear_s, wire, scale) in ENVIRONMENT.items():
        profile = "airborne_isolation" if measure == "pressure_pa" else "patient_room"
        unit = 1 / scale
        doc = "configuration.md Profiles; call-model.md Fall prevention and the room"
        if high is not None:
            rows.append(Limit(f"{measure} above {high:g} is out of range", doc, high, unit,
                              excursion_at(measure), False, False, True, profile))
            rows.append(Limit(f"{measure} alarm clears back at {high:g} - {hysteresis:g} hysteresis", doc,
                              high - hysteresis, -unit, recovery_at(measure, "high"), False, True, True, profile))
        if low is not None:
            rows.append(Limit(f"{measure} below {low:g} is out of range", doc, low, -unit,
                              excursion_at(measure), False, False, True, profile))
            rows.append(Limit(f"{measure} alarm clears back at {low:g} + {hysteresis:g} hysteresis", doc,
                              low + hysteresis, unit, recovery_at(measure, "low"), False, True, True, profile))
        rows.append(Limit(f"{measure} alarm after {min_s} s out of range", doc, min_s, MS,
                          alarm_after(measure), False, True, True, profile))
        rows.append(Limit(f"{measure} alarm clears after {clear_s} s back in range", doc, clear_s, MS,
                          cleared_after(measure), False, True, True, profile))
    return rows


ROOM_LIMITS: list[Limit] = [
    *[Limit(f"unacknowledged {tier} call escalates after {s} s", "call-model.md If nobody answers", s, MS,
            escalation_after(tier), 1, 2, 2) for tier, s in ESCALATE_S.items()],
    *[Limit(f"{tier} call reaches all staff one period after the charge nurse", "call-model.md If nobody answers",
            2 * s, MS, escalation_after(tier), 2, 3, 3) for tier, s in ESCALATE_S.items()],
    # Re-signalled "as if new": no longer acknowledged; the nurse screen showed the call when it was
    # raised, so it is back to "annunciated" (call-model.md The life of a call).
    *[Limit(f"acknowledged {tier} call re-signals after {s} s", "call-model.md If nobody answers", s, MS,
            reminder_after_ack(tier), (0, "acknowledged"), (1, "annunciated"), (1, "annunciated"))
      for tier, s in REMINDER_S.items()],
    Limit("a reminded call escalates again one period after the reminder", "call-model.md If nobody answers",
          ESCALATE_S["medium"], MS, reminded_call_escalates_again, 1, 2, 2),
    Limit("a reminder after a staff visit re-signals and escalates again", "call-model.md If nobody answers",
          ESCALATE_S["high"], MS, reminder_after_a_staff_visit, (1, "annunciated", "high"),
          (2, "annunciated", "high"), (2, "annunciated", "high")),
    Limit("timers restart when staff leave", "call-model.md If nobody answers", REMINDER_S["high"], MS,
          reminder_after_staff_leave, 0, 1, 1),
    Limit("staff presence ends by itself after 30 min", "call-model.md The life of a call (presence_s)",
          PRESENCE_S, MS, presence_after, (True, True), (False, False), (False, False)),
    Limit("the presence reminder comes 1 min before presence ends",
          "call-model.md The life of a call (presence_reminder_s)", PRESENCE_S - PRESENCE_REMINDER_S, MS,
          presence_after, (True, False), (True, True), (True, True)),
    Limit("a held call's clock restarts when presence ends by itself", "call-model.md If nobody answers",
          REMINDER_S["high"] - LATE_S, MS, reminder_after_presence_ends_by_itself, 0, 1, 1),
    Limit("a call raised while staff are in the room escalates on its own clock",
          "call-model.md The life of a call (Staff presence)", ESCALATE_S["high"], MS,
          escalation_of_a_call_raised_while_staff_are_in, (1, "high"), (2, "high"), (2, "high")),
    Limit("a call no nurse screen shows for 15 s raises not_displayed", "call-model.md Nobody watching",
          NOT_DISPLAYED_S, MS, not_displayed_after, False, True, True, screen=False),
    Limit("a deadline is kept across a restart (raised 25 s before it)", "call-model.md After a power cut",
          ESCALATE_S["high"], MS, escalation_across_a_restart, 1, 2, 2),
    Limit('"I\'m OK" within 30 s turns a fall into a logged event', "call-model.md The life of a call",
          FALL_OK_WINDOW_S, MS, im_ok_after, "cleared patient_ok", "cleared patient_ok", "noted"),
    Limit("a tone silence lasts 2 min", "call-model.md Lights and sounds", SILENCE_S, MS, tone_after_silence,
          "off", "medium", "medium"),
    Limit("an information call shows its light and sounds no tone", "call-model.md Lights and sounds",
          ENVIRONMENT["temp_c"][3], MS, information_call_lights_without_a_tone, ("off", "off", "off"),
          ("yellow", "slow", "off"), ("yellow", "slow", "off")),
    Limit("bathroom dwell alarm after 20 min", "call-model.md Fall prevention and the room", BATH_DWELL_S, MS,
          bath_dwell_after, False, True, True),
    Limit("node offline after three missed heartbeats", "protocol.md 3. Connection lifecycle",
          MISSED_HEARTBEATS * HEARTBEAT_S + OFFLINE_GRACE_S, MS, offline_after_silence, False, False, True),
    Limit("low battery below 3.45 V", "configuration.md [supervision]", LOW_BATTERY_MV, -1, low_battery_at,
          False, False, True),
    Limit("low battery clears at a fresh 3.90 V battery", "call-model.md Supervision", BATTERY_REPLACED_MV, 1,
          battery_replaced_at, False, True, True),
    *_env_rows(),
]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("limit", ROOM_LIMITS, ids=_ids(ROOM_LIMITS))
async def test_room_limit(tmp_path, limit: Limit, side: str):
    config = rules_config(room={"id": "4b-12", "profile": limit.profile})
    async with RoomSim(config, tmp_path / "room.db", screen=limit.screen) as room:
        value = limit.value(side)
        got = await limit.observe(room, value)
    assert got == getattr(limit, side), f"{limit.behaviour} ({limit.doc}): {side} the edge ({value:g}) gave {got!r}"


async def test_all_staff_is_the_last_escalation_level(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        call = await raise_call(room, "high")
        await room.advance(2 * ESCALATE_S["high"])
        # A day later other alarms may be up (the rule room's nodes never connected): none about this call.
        later = await room.advance(24 * 3600)
        assert [r.kind for r in later if r.data.get("call_id") == call["id"]] == []
        assert room.call(call["type"])["escalated_to"] == "all staff"
        assert room.call(call["type"])["escalation_level"] == 3


async def test_an_impossible_reading_is_a_sensor_fault_not_an_environment_alarm(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        await room.reading("env", temp_mdegc=150_000)     # the call model's example: 150 °C
        await room.advance(3600)
        assert room.types() == ["sensor_fault"]


async def test_the_event_log_is_durable_when_a_commit_returns(tmp_path):
    """architecture.md: the store is SQLite in WAL mode with every commit synced (an ack follows it)."""
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        journal, synchronous = await room.c.store._run(
            lambda db: (db.execute("PRAGMA journal_mode").fetchone()[0], db.execute("PRAGMA synchronous").fetchone()[0]))
    assert (journal, synchronous) == ("wal", 2), "synchronous must be FULL (2): NORMAL or OFF can lose an acked call"


# ---------------------------------------------------------------------------------------- link rows
class Link:
    """A controller and node gateways on loopback, no API; each test opens its gateway with the
    timers it needs."""

    def __init__(self, controller: RoomController) -> None:
        self.controller = controller
        self.gateways: list[NodeGateway] = []

    async def open(self, **timers: float) -> tuple[NodeGateway, int]:
        gateway = NodeGateway(self.controller, **timers)
        self.gateways.append(gateway)
        return gateway, await gateway.start("127.0.0.1", 0)


@pytest.fixture
async def link(tmp_path):
    config = room_config()
    controller = RoomController(config, keys_for(config), tmp_path / "room.db", timers=False)
    await controller.start()
    opened = Link(controller)
    yield opened
    for gateway in opened.gateways:
        await gateway.stop()
    await controller.stop()


def raw_frame(key: bytes, obj: dict[str, Any] | bytes) -> bytes:
    """A frame of any body, bypassing the encoder's own checks (the gateway must do them)."""
    body = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack(">H", len(body) + TAG_BYTES) + body + p.compute_tag(key, body)


async def answer(gateway: NodeGateway, client: NodeClient, seq: int | None = None) -> str:
    """What the controller does with the last frame: "welcome", "acked", or the rejection reason."""
    try:
        while True:
            msg = await asyncio.wait_for(client.recv(), 10)
            if msg["t"] == "welcome" or (msg["t"] == "ack" and msg["a"] == seq):
                return "acked" if msg["t"] == "ack" else "welcome"
    except (asyncio.IncompleteReadError, ConnectionError):
        [reason] = gateway.stats.rejected
        return reason


HIGHEST = 5000  # the highest sequence number the controller has accepted from the node


async def _node_at_highest(gateway: NodeGateway, port: int, boot: int = 3) -> NodeClient:
    client = NodeClient("bedside-a", node_key("bedside-a"), boot=boot)
    await client.connect("127.0.0.1", port)
    client.seq = HIGHEST - 1
    hb = client.hb_msg()
    await client.send(hb)
    assert await answer(gateway, client, hb["s"]) == "acked"
    return client


def event_at_seq():
    async def observe(link: Link, seq: float) -> str:
        gateway, port = await link.open()
        client = await _node_at_highest(gateway, port)
        await client.send(client.event_msg("button", "call", seq=int(seq)))
        return await answer(gateway, client, int(seq))
    return observe


def event_resent_after_a_jump():
    """v2 (protocol.md §8): the node's frames jump ahead while the link is down (gaps are allowed) and
    its oldest event, number 1, is resent in a frame ``jump`` above the highest: accepted once, and
    the same event again in the next frame is a duplicate, acked again and not stored again."""
    async def observe(link: Link, jump: float) -> tuple[str, str, int, int]:
        gateway, port = await link.open()
        client = await _node_at_highest(gateway, port)
        client.seq = HIGHEST + int(jump) - 1
        event = client.event_msg("button", "call", e=1)
        await client.send(event)
        first = await answer(gateway, client, event["s"])
        again = client.resend(event)
        await client.send(again)
        second = await answer(gateway, client, again["s"])
        return first, second, gateway.stats.accepted["event"], gateway.stats.duplicates
    return observe


def event_field_e():
    async def observe(link: Link, e: float) -> str:
        gateway, port = await link.open()
        client = await _node_at_highest(gateway, port)
        event = client.event_msg("button", "call", e=int(e))
        await client.send_raw(raw_frame(client.key, event))   # past the edge the encoder itself refuses
        return await answer(gateway, client, event["s"])
    return observe


def hello_at_seq():
    async def observe(link: Link, seq: float) -> str:
        gateway, port = await link.open()
        first = await _node_at_highest(gateway, port)
        await first.close()
        again = NodeClient("bedside-a", node_key("bedside-a"), boot=3)
        again.seq = int(seq) - 1
        await again.connect("127.0.0.1", port, expect_welcome=False)
        return await answer(gateway, again)
    return observe


def heartbeat_at_seq():
    async def observe(link: Link, seq: float) -> str:
        gateway, port = await link.open()
        client = await _node_at_highest(gateway, port)
        await client.send(client.hb_msg() | {"s": int(seq)})
        return await answer(gateway, client, int(seq))
    return observe


def hello_at_boot():
    async def observe(link: Link, boot: float) -> str:
        gateway, port = await link.open()
        first = await _node_at_highest(gateway, port, boot=3)
        await first.close()
        again = NodeClient("bedside-a", node_key("bedside-a"), boot=int(boot))
        again.seq = HIGHEST  # a higher seq than any accepted: only the boot decides
        await again.connect("127.0.0.1", port, expect_welcome=False)
        return await answer(gateway, again)
    return observe


def _hello_of_length(length: int) -> dict[str, Any]:
    """A hello whose frame length (body + tag) is exactly ``length``."""
    hello = {"v": PROTOCOL_VERSION, "t": "hello", "n": "bedside-a", "b": 1, "s": 1, "fw": "", "hw": "x",
             "caps": [], "hb_ms": 10_000, "nonce": 7}
    pad = length - TAG_BYTES - len(json.dumps(hello, sort_keys=True, separators=(",", ":")))
    return hello | {"fw": "f" * pad}


def frame_of_length():
    async def observe(link: Link, length: float) -> str:
        gateway, port = await link.open()
        client = NodeClient("bedside-a", node_key("bedside-a"))
        client.nonce = 7
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", port)
        frame = raw_frame(client.key, _hello_of_length(int(length)))
        assert struct.unpack(">H", frame[:2])[0] == int(length)
        await client.send_raw(frame)
        return await answer(gateway, client)
    return observe


def body_of_length():
    async def observe(link: Link, length: float) -> str:
        gateway, port = await link.open()
        client = NodeClient("bedside-a", node_key("bedside-a"))
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"{" + b" " * (int(length) - TAG_BYTES - 2) + b"}" if length >= TAG_BYTES + 2 else b"{"
        await client.send_raw(raw_frame(client.key, body))
        return await answer(gateway, client)
    return observe


def hello_field(field: str):
    async def observe(link: Link, value: float) -> str:
        gateway, port = await link.open()
        client = NodeClient("bedside-a", node_key("bedside-a"))
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", port)
        if field == "nonce":
            client.nonce = int(value)  # the welcome names the session by it
        await client.send_raw(raw_frame(client.key, client.hello_msg() | {field: int(value)}))
        return await answer(gateway, client)
    return observe


LINK_LIMITS: list[Limit] = [
    # v2 replaced v1's event window (1024 below the highest) with one replay rule for every frame,
    # events included, and duplicates by (node, boot, e) (protocol.md §4, §8).
    Limit("an event's frame must be above the highest accepted s", "protocol.md 4. Acceptance rules",
          HIGHEST, -1, event_at_seq(), "acked", "replayed_seq", "replayed_seq"),
    Limit("no window: an event resent 1024 frames ahead is accepted once", "protocol.md 8. Versions",
          V1_WINDOW, 1, event_resent_after_a_jump(), ("acked", "acked", 1, 1), ("acked", "acked", 1, 1),
          ("acked", "acked", 1, 1)),
    Limit("event numbers start at 1", "protocol.md 2. Messages", 1, -1, event_field_e(),
          "acked", "acked", "bad_message"),
    Limit("event numbers stop at 2^31 - 1", "protocol.md 2. Messages", INT_MAX, 1, event_field_e(),
          "acked", "acked", "bad_message"),
    Limit("the protocol version is 2", "protocol.md 2. Messages (v = 2; v1 is refused)", PROTOCOL_VERSION, 1,
          hello_field("v"), "bad_message", "welcome", "bad_message"),
    Limit("a hello must be above the highest accepted seq", "protocol.md 4. Acceptance rules",
          HIGHEST, -1, hello_at_seq(), "welcome", "replayed_seq", "replayed_seq"),
    Limit("a heartbeat must be above the highest accepted seq", "protocol.md 4. Acceptance rules",
          HIGHEST, -1, heartbeat_at_seq(), "acked", "replayed_seq", "replayed_seq"),
    Limit("a boot below the newest seen is stale", "protocol.md 4. Acceptance rules",
          3, -1, hello_at_boot(), "welcome", "welcome", "stale_boot"),
    Limit("a frame longer than 1024 bytes is oversized", "protocol.md 1. Framing",
          MAX_FRAME_BYTES, 1, frame_of_length(), "welcome", "welcome", "oversized_frame"),
    Limit("a frame shorter than tag plus {} is malformed", "protocol.md 1. Framing",
          TAG_BYTES + 2, -1, body_of_length(), "bad_message", "bad_message", "malformed_frame"),
    Limit("integers stop at 2^31 - 1", "protocol.md Canonical JSON",
          INT_MAX, 1, hello_field("nonce"), "welcome", "welcome", "bad_message"),
    Limit("sequence numbers start at 1", "protocol.md 2. Messages", 1, -1, hello_field("s"),
          "welcome", "welcome", "bad_message"),
    Limit("boot counters start at 1", "protocol.md 2. Messages", 1, -1, hello_field("b"),
          "welcome", "welcome", "bad_message"),
]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("limit", LINK_LIMITS, ids=_ids(LINK_LIMITS))
async def test_link_limit(link, limit: Limit, side: str):
    value = limit.value(side)
    got = await limit.observe(link, value)
    assert got == getattr(limit, side), f"{limit.behaviour} ({limit.doc}): {side} the edge ({value:g}) gave {got!r}"


@pytest.mark.parametrize("length, ok", [(1, True), (32, True), (33, False)])
def test_node_ids_are_1_to_32_characters(length, ok):
    msg = {"v": PROTOCOL_VERSION, "t": "hb", "n": "a" * length, "b": 1, "s": 1, "up_ms": 0, "q": 0, "heap": 0, "drop": 0}
    if ok:
        assert p.parse_node_message(msg).node == "a" * length
    else:
        with pytest.raises(p.ProtocolError) as info:
            p.parse_node_message(msg)
        assert info.value.reason == "bad_message"


# ---------------------------------------------------------------------------------------- link timers
async def closed_within(client: NodeClient, deadline_s: float) -> float:
    """Seconds until the controller closed the connection; fails if it is still open at the deadline."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline_s):
            while await client.reader.read(1024):
                pass
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {deadline_s} s") from None
    except ConnectionError:
        pass
    return time.monotonic() - started


async def test_a_connection_that_sends_no_hello_is_closed_after_the_hello_timeout(link):
    """protocol.md §3: HELLO_TIMEOUT_S (5 s), here shortened to 0.2 s."""
    gateway, port = await link.open(hello_timeout_s=0.2)
    silent = NodeClient("bedside-a", node_key("bedside-a"))
    silent.reader, silent.writer = await asyncio.open_connection("127.0.0.1", port)
    waited = await closed_within(silent, 5.0)   # without a hello timeout it would stay open
    assert waited >= 0.2 - 0.02, "closed before the hello timeout"
    assert gateway.stats.accepted == {}


async def test_a_connection_that_begins_a_hello_and_stops_is_closed_after_the_hello_timeout(link):
    """protocol.md §3: the hello timeout covers the whole hello, not only its first byte (that is how
    the gateway tells TLS from plain TCP: it has come, the hello has not)."""
    gateway, port = await link.open(hello_timeout_s=0.2)
    slow = NodeClient("bedside-a", node_key("bedside-a"))
    slow.reader, slow.writer = await asyncio.open_connection("127.0.0.1", port)
    hello = p.encode_frame(slow.key, slow.hello_msg())
    slow.writer.write(hello[:3])                 # the length and one byte of the body, then nothing
    waited = await closed_within(slow, 5.0)      # without a hello timeout it would stay open
    assert waited >= 0.2 - 0.02, "closed before the hello timeout"
    assert gateway.stats.accepted == {} and gateway.stats.rejected == {"malformed_frame": 1}


async def test_a_silent_link_is_closed_after_three_missed_heartbeats_and_a_beating_one_is_not(link):
    """protocol.md §3: no frame for 3 × hb_ms + 1 s closes the link; here hb_ms = 400 ms, no grace."""
    link.controller.config = dataclasses.replace(link.controller.config, heartbeat_ms=400)
    gateway, port = await link.open(idle_grace_s=0)
    client = NodeClient("bedside-a", node_key("bedside-a"))
    await client.connect("127.0.0.1", port)
    for beat in range(8):                   # 8 heartbeats 0.1 s apart: well inside 1.2 s, the link stays
        if beat:
            await asyncio.sleep(0.1)        # the node's heartbeat period, not a wait for anything
        hb = client.hb_msg()
        await client.send(hb)
        assert await answer(gateway, client, hb["s"]) == "acked"
    waited = await closed_within(client, 6.0)   # 30 missed heartbeats would be 12 s
    assert waited >= 1.2 - 0.02, "closed before three heartbeat periods of silence"
    assert gateway.stats.rejected == {}


async def test_an_older_information_call_is_listed_and_lit_below_a_technical_alarm(tmp_path):
    """call-model.md: the list is highest priority first, then oldest; information is the lowest tier,
    so an environment alarm never hides a technical one on the list or the dome light."""
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        await raise_call(room, "info")
        await room.advance(1)
        await room.event("env", "fault", "sht3x", 2)
        assert [c["type"] for c in room.calls()] == ["sensor_fault", "environment"]
        out = room.c.outputs()
        assert (out.dome_colour, out.dome_pattern) == ("yellow", "steady")
