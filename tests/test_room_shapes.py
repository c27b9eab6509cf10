"""What the room shows the API, field by field, checked in process on the fake clock: the snapshot's
keys (the nurse page, the facilities page and the ward read them by name), each node's status, and
what a pulled-out call cord raises and clears. The slower API tests check the same over HTTP."""

from __future__ import annotations

import pytest

from controller.room.supervision import FAULT_CORD_REMOVED
from tests.roomsim import T0_MS, RoomSim, rules_config


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


def _never_seen(node: str, state: str = "never_connected", last_seen_ms: int | None = None) -> dict:
    return {"id": node, "online": False, "since_ms": None, "last_seen_ms": last_seen_ms, "fw": None, "hw": None,
            "boot": None, "caps": [], "rssi": None, "batt_mv": None, "heap": None, "queued": None,
            "dropped": None, "state": state}


async def test_an_idle_room_snapshot_names_every_field(room):
    snap = room.c.snapshot()
    storage = snap.pop("storage")
    assert snap == {
        "room": {"id": "4b-12", "name": "Ward 4B room 12", "beds": ["A", "B"], "profile": "patient_room"},
        "cursor": 0,
        "calls": [],
        "occupancy": {"state": "empty", "room": False, "bath": False, "beds": {"A": False, "B": False},
                      "staff_present": False, "staff_since_ms": None, "presence_ends_at_ms": None},
        "fall_risk": {"A": False, "B": False},
        "voice": {},
        "outputs": {"dome": {"colour": "off", "pattern": "off", "call_id": None, "presence": False,
                             "presence_ending": False},
                    "tone": {"pattern": "off", "silenced": False},
                    "indicators": {"bath": "off", "bedside-a": "off", "bedside-b": "off", "wearable-a": "off"}},
        "environment": {},
        "nodes": [_never_seen(n) for n in ("bath", "bedside-a", "bedside-b", "door", "env", "wearable-a")],
        "patients": {"A": None, "B": None},
    }
    assert {k: v for k, v in storage.items() if k != "free_bytes"} == {
        "state": "ok", "failing_since_ms": None, "error": None, "write_failures": 0,
        "readings_paused_since_ms": None, "min_free_bytes": 64 * 1024 * 1024, "readings_not_stored": {},
        "inputs_waiting": {}}


async def test_a_busy_room_snapshot_names_every_field(room):
    await room.hello("door")
    await room.heartbeat("door", batt_mv=3700)
    await room.reading("env", temp_mdegc=25_000)
    await room.presence("bath", "pir", True)
    await room.press("bedside-a", "call")
    snap = room.c.snapshot()
    [call] = snap["calls"]
    assert call == {
        "id": call["id"], "type": "patient_call", "label": "Patient call", "priority": "medium", "rank": 3,
        "cancel_at_origin": False, "clears": "routine", "state": "annunciated",
        "source": {"node": "bedside-a", "input": "call"}, "bed": "A",
        "raised_at_ms": T0_MS, "raised_by": "bedside-a/call", "presses": 1,
        "annunciated_at_ms": T0_MS, "acknowledged_at_ms": None, "acknowledged_by": None,
        "present_at_ms": None, "present_by": None, "escalation_level": 1, "escalated_to": "primary nurse",
        "reminders": 0, "next_due_ms": T0_MS + 60_000, "held_by_presence": False, "detail": {},
        "timeline": [{"step": "raised", "at_ms": T0_MS, "by": "bedside-a/call"},
                     {"step": "annunciated", "at_ms": T0_MS, "by": "nurse station (sim)"}],
        "timeline_omitted": 0, "patient": None,
    }
    assert snap["occupancy"] == {"state": "in_bathroom", "room": False, "bath": True, "beds": {"A": False, "B": False},
                                 "staff_present": False, "staff_since_ms": None, "presence_ends_at_ms": None}
    assert snap["outputs"] == {
        "dome": {"colour": "white", "pattern": "steady", "call_id": call["id"], "presence": False,
                 "presence_ending": False},
        "tone": {"pattern": "medium", "silenced": False},
        "indicators": {"bath": "off", "bedside-a": "received", "bedside-b": "off", "wearable-a": "off"}}
    assert snap["environment"] == {"temp_c": {"value": 25.0, "node": "env", "ts_ms": T0_MS, "low": 21.0, "high": 24.0,
                                              "in_range": False, "alarm": False}}
    nodes = {n["id"]: n for n in snap["nodes"]}
    assert nodes["door"] == {"id": "door", "online": True, "since_ms": T0_MS, "last_seen_ms": T0_MS, "fw": "test",
                             "hw": "sim", "boot": 1, "caps": ["button"], "rssi": -60, "batt_mv": 3700,
                             "heap": 50_000, "queued": 0, "dropped": 0, "state": "online"}
    # A node heard from without a hello (its events came on a link the room has not seen open).
    assert nodes["bedside-a"] == _never_seen("bedside-a", "offline", T0_MS)
    assert nodes["bedside-b"] == _never_seen("bedside-b")
    assert snap["cursor"] == (await room.log())[-1].id


async def test_an_environment_alarm_shows_in_the_snapshot(room):
    await room.reading("env", temp_mdegc=25_000)
    await room.advance(600)
    assert room.c.snapshot()["environment"]["temp_c"] | {"ts_ms": 0} == {
        "value": 25.0, "node": "env", "ts_ms": 0, "low": 21.0, "high": 24.0, "in_range": False, "alarm": True}


# ---------------------------------------------------------------------- a call cord pulled out
async def test_a_pulled_cord_is_a_cord_alarm_until_plugged_in_again(room):
    await room.event("bath", "fault", "cord", FAULT_CORD_REMOVED)
    cord = room.call("cord_removed")
    assert (cord["source"], cord["detail"], cord["raised_by"], cord["priority"]) == (
        {"node": "bath", "input": "cord:cord"}, {"input": "cord"}, "bath/cord:cord", "low")
    await room.event("bath", "fault", "cord", 0)                       # plugged in: the fault code is 0
    assert room.types() == []
    [cleared] = await room.log("call.cleared")
    assert (cleared.data["call_id"], cleared.data["how"], cleared.data["by"]) == (
        cord["id"], "resolved", "bath/cord: cord plugged in again")
    assert await room.log("call.raised") and all(r.data["type"] == "cord_removed" for r in await room.log("call.raised"))


async def test_a_cord_fault_code_other_than_removed_while_pulled_stays_the_cord_alarm(room):
    await room.event("bath", "fault", "cord", FAULT_CORD_REMOVED)
    await room.event("bath", "fault", "cord", FAULT_CORD_REMOVED + 1)   # still out: no second alarm
    assert room.types() == ["cord_removed"]


async def test_a_sensor_fault_names_the_sensor_and_its_code_and_clears_itself(room):
    await room.event("env", "fault", "sht3x", 2)
    fault = room.call("sensor_fault")
    assert (fault["source"], fault["detail"]) == ({"node": "env", "input": "sensor:sht3x"}, {"sensor": "sht3x", "code": 2})
    await room.event("env", "fault", "sht3x", 0)
    assert room.types() == []
    [cleared] = await room.log("call.cleared")
    assert (cleared.data["how"], cleared.data["by"]) == ("resolved", "env/sht3x reports the sensor working")


async def test_only_a_live_connection_ending_starts_a_nodes_offline_grace(room):
    room.c.room.note_connection_lost("stranger", room.clock.ms)         # not in the room file: nothing to note
    room.c.room.note_connection_lost("bedside-b", room.clock.ms)        # never online: no grace to start
    assert room.c.room.nodes["bedside-b"].connection_lost_ms is None
    await room.hello("door")
    room.c.room.note_connection_lost("door", room.clock.ms)
    assert room.c.room.nodes["door"].connection_lost_ms == room.clock.ms


async def test_a_node_that_never_connected_clears_its_own_alarm_once_when_it_checks_in(tmp_path):
    async with RoomSim(rules_config(supervision={"first_check_in_s": 60}), tmp_path / "room.db") as room:
        await room.advance(60.001)
        assert sorted(room.types()) == ["node_never_connected"] * 6
        door = next(c for c in room.calls() if c["source"]["node"] == "door")
        await room.hello("door")
        [cleared] = await room.log("call.cleared")
        assert (cleared.data["call_id"], cleared.data["how"], cleared.data["by"], cleared.data["at_ms"]) == (
            door["id"], "resolved", "door checked in", room.clock.ms)
        assert len(room.types()) == 5


async def test_a_press_on_an_input_the_room_file_does_not_map_is_an_alarm_naming_it(room):
    await room.press("bedside-b", "water")
    alarm = room.call("unmapped_input")
    assert (alarm["source"], alarm["detail"]) == (
        {"node": "bedside-b", "input": "input:water"},
        {"input": "water", "kind": "button", "reason": "the room file has no meaning for input 'water' of node 'bedside-b'"})


async def test_a_measure_without_a_plausible_range_is_kept_and_raises_nothing(room):
    await room.reading("env", lux=300)
    assert room.types() == []
    assert room.c.snapshot()["environment"] == {"lux": {"value": 300.0, "node": "env", "ts_ms": room.clock.ms}}
