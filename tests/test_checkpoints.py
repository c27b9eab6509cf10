"""Checkpoints of the room's state: a checkpoint plus the log after it is the state a full replay
gives (hypothesis over random logs made by the room's own rules), every attribute is in it, and the
controller starts from the newest usable one."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.model import Hello, NodeEvent
from controller.room import Room, RoomError
from controller.room.hospital import Patient
from controller.room.state import _STATE_CODECS, NOT_STATE
from controller.room.supervision import DROP_GRACE_MS, LIVE_NODE_FIELDS
from controller.service import RoomController
from controller.store import LogRecord
from tests.helpers import keys_for
from tests.roomsim import T0_MS, FakeClock, RoomSim, rules_config

CONFIG = rules_config(timers={"fall_ok_window_s": 30}, supervision={"first_check_in_s": 600})
BUTTONS = [("bedside-a", "call"), ("bedside-a", "water"), ("bedside-a", "cancel"), ("bedside-b", "call"),
           ("bath", "cord"), ("door", "presence"), ("door", "cancel"), ("door", "code"), ("door", "assist"),
           ("wearable-a", "pendant"), ("wearable-a", "ok"), ("env", "nothing")]
PRESENCE = [("bath", "pir"), ("door", "pir"), ("bedside-a", "pad"), ("bedside-b", "pad")]
MEASURES = ["temp_c", "rh_pct", "co2_ppm", "batt_v", "noise_db", "pressure_pa", "lux"]
NODES = ["bedside-a", "bedside-b", "bath", "door", "wearable-a", "env", "stranger"]

values = st.floats(allow_nan=False, min_value=-300, max_value=20_000) | st.sampled_from([math.inf, -math.inf])
inputs = st.one_of(
    st.tuples(st.just("press"), st.sampled_from(BUTTONS)),
    st.tuples(st.just("presence"), st.sampled_from(PRESENCE), st.booleans()),
    st.tuples(st.just("fall"), st.sampled_from(["wearable-a", "bath"])),
    st.tuples(st.just("fault"), st.sampled_from(NODES[:6]), st.sampled_from([0, 2, 4])),
    st.tuples(st.just("ack"), st.integers(0, 9)),
    st.tuples(st.just("clear"), st.integers(0, 9)),
    st.tuples(st.just("annunciate"), st.integers(0, 9)),
    st.tuples(st.just("fall_risk"), st.sampled_from(["A", "B"]), st.booleans()),
    st.tuples(st.just("silence")),
    st.tuples(st.just("online"), st.sampled_from(NODES)),
    st.tuples(st.just("offline"), st.sampled_from(NODES)),
    st.tuples(st.just("reading"), st.sampled_from(NODES[:6]), st.sampled_from(MEASURES), values),
    st.tuples(st.just("system"), st.booleans()),
    st.tuples(st.just("delivery"), st.integers(0, 9)),
    st.tuples(st.just("patient"), st.sampled_from(["A", "B"]), st.sampled_from([None, "MRN1", "MRN2"])),
    st.tuples(st.just("time"), st.sampled_from([0.5, 5, 31, 61, 181, 601, 1201, 1801])),
    st.tuples(st.just("cannot_deliver"), st.sampled_from(NODES)),
    st.tuples(st.just("delivers"), st.sampled_from(NODES)),
    st.tuples(st.just("config_checked")),
)


def _decide(room: Room, step: tuple, now: int, seq: int) -> list:
    kind = step[0]
    calls = list(room.calls)
    if kind == "press":
        return room.decide_node_event(NodeEvent(step[1][0], 1, seq, seq, "button", step[1][1], 1, 0), now)
    if kind == "presence":
        return room.decide_node_event(NodeEvent(step[1][0], 1, seq, seq, "presence", step[1][1], int(step[2]), 0), now)
    if kind == "fall":
        return room.decide_node_event(NodeEvent(step[1], 1, seq, seq, "fall", "accel", 1, 0, {"peak_mg": 4000}), now)
    if kind == "fault":
        return room.decide_node_event(NodeEvent(step[1], 1, seq, seq, "fault", "sht3x", step[2], 0), now)
    if kind in ("ack", "clear", "annunciate"):
        if not calls:
            return []
        call_id = calls[step[1] % len(calls)]
        if kind == "annunciate":
            return room.decide_shown([call_id], "station 4B", now)
        if kind == "clear":
            return room.decide_clear(call_id, "Nurse Kim", now)
        return room.decide_ack(call_id, "Nurse Kim", now)
    if kind == "delivery":
        return room.decide_delivery(calls[step[1] % len(calls)], "delivered to pager 12", "acm", now) if calls else []
    if kind == "patient":
        patient = None if step[2] is None else Patient(step[2], "Jane Doe", "Doe", "Jane", birth_date="19500101")
        return room.decide_patient(step[1], patient, "admit" if patient else "discharge", "adt", "msg-1", now)
    if kind == "fall_risk":
        return room.decide_fall_risk(step[1], step[2], "Nurse Kim", now)
    if kind == "silence":
        return room.decide_silence("Nurse Kim", now)
    if kind == "online":
        return room.decide_online(Hello(step[1], 1, seq, "fw", "hw", ("button",), 10_000, 7), "peer", now)
    if kind == "offline":
        return room.decide_offline(step[1], "connection lost", now)
    if kind == "reading":
        return room.decide_reading(step[1], step[2], step[3], now)
    if kind == "system":
        return room.decide_system_fault("bluetooth", step[1], {"error": "adapter gone"}, now)
    if kind == "cannot_deliver":
        return room.decide_cannot_deliver(step[1], {"sessions": 3, "reason": "bad_tag"}, now)
    if kind == "delivers":
        return room.decide_delivers(step[1], "an event was stored", now)
    if kind == "config_checked":
        return room.decide_config_checked(now)
    raise AssertionError(step)


def play(steps: list[tuple]) -> tuple[Room, list[LogRecord]]:
    """The log a room writes for these inputs, decided and applied as the controller does."""
    room, log, now = Room(CONFIG), [], T0_MS
    room.started_ms = T0_MS  # supervised from the start: nodes that never check in are alarmed by the ticks
    for seq, step in enumerate(steps, start=1):
        if step[0] == "time":
            now += int(step[1] * 1000)
            batches = []
            while entries := room.decide_tick(now, 31_000):
                batches.append(entries)
                records = [LogRecord(len(log) + i + 1, now, e.kind, e.data) for i, e in enumerate(entries)]
                room.apply_all(records)
                log += records
            continue
        try:
            entries = _decide(room, step, now, seq)
        except RoomError:
            continue
        records = [LogRecord(len(log) + i + 1, now, e.kind, e.data) for i, e in enumerate(entries)]
        room.apply_all(records)
        log += records
    return room, log


def state(room: Room) -> dict:
    """Every attribute of the room but its configuration, as Python objects (tuples stay tuples, and
    a mapping's order counts: it is the order calls were raised in)."""
    return {name: list(value.items()) if isinstance(value, dict) else value
            for name, value in vars(room).items() if name not in NOT_STATE}


def fold_state(room: Room) -> dict:
    """:func:`state` without what heartbeats and readings set outside the log (node health, latest
    values): a checkpoint keeps those as they were when it was taken."""
    out = state(room)
    out["nodes"] = [(n, dataclasses.replace(s, **{f: None for f in LIVE_NODE_FIELDS})) for n, s in room.nodes.items()]
    del out["environment"]
    return out


def from_checkpoint(log: list[LogRecord], at: int) -> Room:
    head = Room(CONFIG)
    head.apply_all(log[:at])
    text = json.dumps(head.state_json())  # through JSON, as the store keeps it
    room = Room(CONFIG)
    room.load_state(json.loads(text))
    room.apply_all(log[at:])
    return room


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(inputs, max_size=60), split=st.floats(0, 1))
def test_checkpoint_plus_tail_is_the_state_of_a_full_replay(steps, split):
    live, log = play(steps)
    full = Room(CONFIG)
    full.apply_all(log)
    assert state(full) == state(live)
    at = int(split * len(log))
    assert state(from_checkpoint(log, at)) == state(full)


def test_the_random_logs_reach_the_states_worth_checking():
    """The strategy above is only as good as the states it reaches: a fixed walk shows it reaches
    active calls of several kinds, escalations, silence, presence, excursions and offline nodes."""
    steps = [("online", "bath"), ("press", ("bath", "cord")), ("press", ("bedside-a", "call")), ("time", 61),
             ("ack", 0), ("silence",), ("presence", ("bath", "pir"), True), ("fall_risk", "A", True),
             ("reading", "env", "temp_c", 26.0), ("reading", "env", "co2_ppm", 99_999.0), ("time", 601),
             ("offline", "bath"), ("system", True), ("patient", "A", "MRN1"), ("delivery", 0), ("annunciate", 1),
             ("presence", ("door", "pir"), True), ("press", ("door", "presence")), ("cannot_deliver", "door"),
             ("press", ("env", "nothing")), ("time", 1801)]
    room, log = play(steps)
    kinds = {r.kind for r in log}
    assert {"call.raised", "call.escalated", "call.acknowledged", "tone.silenced", "presence.changed",
            "bed.fall_risk", "environment.excursion", "node.offline"} <= kinds
    assert room.silence and room.area["bath"] and room.env["temp_c"].out
    assert {c.type for c in room.calls.values()} >= {"bath_emergency", "sensor_fault", "node_offline",
                                                     "system_fault", "environment", "node_cannot_deliver",
                                                     "unmapped_input", "node_never_connected"}
    assert "staff.presence" in kinds and room.patients["A"] is not None
    for at in range(len(log) + 1):
        assert state(from_checkpoint(log, at)) == state(room)


def test_every_attribute_of_a_room_is_state_or_configuration():
    room = Room(CONFIG)
    assert set(vars(room)) == set(_STATE_CODECS) | NOT_STATE
    room.added_later = {"x": 1}  # a field someone adds to a rule module without a codec
    with pytest.raises(TypeError, match="added_later"):
        room.state_json()


def test_a_checkpoint_keeps_every_field_of_every_state_dataclass():
    room, _ = play([("online", "bath"), ("press", ("bath", "cord")), ("ack", 0), ("time", 181),
                    ("reading", "env", "temp_c", 26.0)])
    status = room.nodes["bath"]
    for f in dataclasses.fields(status):  # live fields too: all of them, set to something
        if getattr(status, f.name) is None:
            setattr(status, f.name, 7)
    restored = Room(CONFIG)
    restored.load_state(json.loads(json.dumps(room.state_json())))
    assert state(restored) == state(room)
    for obj, again in [(room.nodes["bath"], restored.nodes["bath"]), (room.env["temp_c"], restored.env["temp_c"]),
                       *zip(room.calls.values(), restored.calls.values())]:
        for f in dataclasses.fields(obj):
            assert getattr(again, f.name) == getattr(obj, f.name), f.name
            assert type(getattr(again, f.name)) is type(getattr(obj, f.name)), f.name


def test_a_checkpoint_missing_a_field_is_refused_not_defaulted():
    data = Room(CONFIG).state_json()
    del data["silence"]
    with pytest.raises(ValueError, match="silence"):
        Room(CONFIG).load_state(data)
    room, _ = play([("press", ("bath", "cord"))])
    data = room.state_json()
    del data["calls"][0]["presses"]
    with pytest.raises(KeyError):
        Room(CONFIG).load_state(data)


def test_another_room_file_or_format_means_another_key():
    room = Room(CONFIG)
    assert room.state_key() == Room(rules_config(timers={"fall_ok_window_s": 30},
                                                 supervision={"first_check_in_s": 600})).state_key()
    assert room.state_key() != Room(rules_config(timers={"fall_ok_window_s": 31})).state_key()
    assert room.state_key() != Room(rules_config(beds=[{"id": "A"}, {"id": "B"}, {"id": "C"}])).state_key()


# ------------------------------------------------------------------ the controller
async def _press_many(sim: RoomSim, n: int) -> None:
    for i in range(n):
        await sim.press(*BUTTONS[i % 8])
        if i % 5 == 4:
            await sim.advance(61)


async def test_the_controller_starts_from_the_newest_checkpoint_and_replays_only_the_tail(tmp_path):
    clock = FakeClock()
    db = tmp_path / "room.db"
    c = RoomController(CONFIG, keys_for(CONFIG), db, clock=clock, timers=False, checkpoint_every=10)
    await c.start()
    sim = RoomSim(CONFIG, db, clock)
    sim.controller = c
    await _press_many(sim, 23)
    total = c.cursor
    before = state(c.room)
    stored = await c.store.checkpoints(c.room.state_key())
    assert 1 <= len(stored) <= 2 and stored[0][0] >= total - 10
    await c.stop()  # a clean stop checkpoints what is left

    again = RoomController(CONFIG, keys_for(CONFIG), db, clock=clock, timers=False, checkpoint_every=10)
    await again.start()
    assert again.replayed == 0 and again.cursor == total
    assert state(again.room) == before
    await again.stop()

    full = RoomController(rules_config(timers={"fall_ok_window_s": 29}), keys_for(CONFIG), db, clock=clock,
                          timers=False)
    await full.start()  # another room file: the checkpoints do not fit, the whole log is replayed
    assert full.replayed == total
    await full.stop()


async def test_a_connection_lost_before_a_restart_does_not_count_after_it(tmp_path):
    """A checkpoint taken while a node's dropped connection was in its grace keeps that time; the
    start clears it, as a full replay would: the node gets the supervision time to check in again."""
    clock = FakeClock()
    db = tmp_path / "room.db"
    c = RoomController(CONFIG, keys_for(CONFIG), db, clock=clock, timers=False, checkpoint_every=1)
    await c.start()
    await c.node_hello(Hello("bath", 1, 1, "fw", "hw", ("button",), 10_000, 7), "peer")
    c.node_connection_lost("bath")
    await c.node_event(NodeEvent("bedside-a", 1, 1, 1, "button", "call", 1, 0))
    assert (await c.store.checkpoints(c.room.state_key()))[0][0] == c.cursor  # it holds the lost connection
    await c.stop()
    again = RoomController(CONFIG, keys_for(CONFIG), db, clock=clock, timers=False, checkpoint_every=1)
    await again.start()
    assert again.replayed == 0 and again.room.nodes["bath"].online
    assert again.room.nodes["bath"].connection_lost_ms is None
    clock.ms += DROP_GRACE_MS + 1
    await again.tick()
    assert again.room.nodes["bath"].online  # not offline 5 s after a connection of the last run
    await again.stop()


async def test_an_unreadable_checkpoint_falls_back_to_an_older_one_or_the_whole_log(tmp_path):
    clock = FakeClock()
    db = tmp_path / "room.db"
    c = RoomController(CONFIG, keys_for(CONFIG), db, clock=clock, timers=False, checkpoint_every=5)
    await c.start()
    sim = RoomSim(CONFIG, db, clock)
    sim.controller = c
    await _press_many(sim, 12)
    before, total = fold_state(c.room), c.cursor
    await c.stop()
    import sqlite3

    con = sqlite3.connect(db)
    newest, older = [r[0] for r in con.execute("SELECT cursor FROM checkpoints ORDER BY cursor DESC")]
    con.execute("UPDATE checkpoints SET state = '{\"calls\": [' WHERE cursor = ?", (newest,))
    con.commit()
    con.close()
    again = RoomController(CONFIG, keys_for(CONFIG), db, clock=clock, timers=False)
    await again.start()
    assert again.replayed == total - older
    assert fold_state(again.room) == before
    await again.stop()
