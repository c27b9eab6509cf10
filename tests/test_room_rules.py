"""The nurse-call rules, one table or scenario per rule, on a fake clock (docs/call-model.md)."""

from __future__ import annotations

import pytest

from controller.room import CALL_TYPES, CancelAtOrigin, ClearsItself, UnknownBed
from tests.roomsim import RoomSim, rules_config


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


@pytest.fixture
async def unwatched(tmp_path):
    """The room with no simulated nurse screen: calls are shown only when a test says so."""
    async with RoomSim(rules_config(), tmp_path / "room.db", screen=False) as sim:
        yield sim


async def _raise(room: RoomSim, ctype: str) -> dict:
    """Raise one call of each type the way it happens in a room."""
    how = {
        "code_call": lambda: room.press("door", "code"),
        "staff_emergency": lambda: room.press("door", "emergency"),
        "bath_emergency": lambda: room.press("bath", "cord"),
        "fall": lambda: room.event("wearable-a", "fall", "accel", peak_mg=4100),
        "staff_assist": lambda: room.press("door", "assist"),
        "patient_call": lambda: room.press("bedside-a", "call"),
        "request": lambda: room.press("bedside-a", "water"),
        "sensor_fault": lambda: room.event("env", "fault", "sht3x", 2),
        "low_battery": lambda: room.heartbeat("wearable-a", batt_mv=3300),
    }
    await how[ctype]()
    return room.call(ctype)


# ---------------------------------------------------------------------- 1. types and tiers
def test_every_call_type_has_its_iec_tier():
    expected = {
        "code_call": "high", "staff_emergency": "high", "bath_emergency": "high", "fall": "high",
        "patient_emergency": "high", "cord_removed": "low", "system_fault": "low",
        "bed_exit": "medium", "bath_dwell": "medium", "staff_assist": "medium", "patient_call": "medium",
        "request": "low", "node_offline": "low", "low_battery": "low", "sensor_fault": "low",
        "environment": "info", "not_displayed": "medium",
    }
    assert {t: c.level for t, c in CALL_TYPES.items()} == expected
    # The rank order is the field's order: code > bath/fall > assist > patient > request > technical.
    ranks = [CALL_TYPES[t].rank for t in ("code_call", "bath_emergency", "staff_assist", "patient_call",
                                          "request", "node_offline")]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


async def test_active_calls_are_highest_priority_first_then_oldest_first(room):
    for ctype in ("request", "sensor_fault", "patient_call", "bath_emergency"):
        await _raise(room, ctype)
        await room.advance(1)
    await room.press("bedside-b", "call")  # a second patient call, newer than the first
    await room.advance(1)
    await _raise(room, "code_call")
    calls = room.calls()
    assert [(c["type"], c["source"]["node"]) for c in calls] == [
        ("code_call", "door"), ("bath_emergency", "bath"), ("patient_call", "bedside-a"),
        ("patient_call", "bedside-b"), ("request", "bedside-a"), ("sensor_fault", "env")]
    assert [c["priority"] for c in calls] == ["high", "high", "medium", "medium", "low", "low"]


async def test_repeated_press_is_counted_on_the_active_call_not_raised_again(room):
    for _ in range(3):
        await room.press("bedside-a", "call")
    await room.press("bedside-a", "water")  # another input of the same node is another call
    assert [(c["type"], c["presses"]) for c in room.calls()] == [("patient_call", 3), ("request", 1)]
    assert room.call("request")["detail"] == {"need": "water"}
    assert len(await room.log("call.raised")) == 2


# ---------------------------------------------------------------------- 2. lifecycle
async def test_lifecycle_records_time_and_actor_of_every_step(unwatched):
    room = unwatched
    raised = (await room.press("bedside-a", "call"))[-1].data
    await room.advance(2)
    await room.c.annunciated(raised["call_id"], "station 4B")
    await room.advance(5)
    await room.c.acknowledge(raised["call_id"], "Nurse Kim")
    await room.advance(40)
    await room.press("door", "presence")   # staff presence: a routine call is answered and cleared
    assert room.calls() == []
    steps = [(r.kind, r.data.get("by"), r.data["at_ms"] - raised["at_ms"])
             for r in await room.log() if r.data.get("call_id") == raised["call_id"]]
    assert steps == [("call.raised", "bedside-a/call", 0), ("call.annunciated", "station 4B", 2000),
                     ("call.acknowledged", "Nurse Kim", 7000),
                     ("call.present", "staff presence (door/presence)", 47000),
                     ("call.cleared", "staff presence (door/presence)", 47000)]


async def test_annunciation_is_recorded_once_at_first_delivery(unwatched):
    room = unwatched
    call = await _raise(room, "patient_call")
    assert call["state"] == "raised"
    await room.c.annunciated(call["id"], "station 4B")
    await room.advance(1)
    await room.c.annunciated(call["id"], "phone 12")
    assert (room.call("patient_call")["state"], room.call("patient_call")["annunciated_at_ms"]) == \
        ("annunciated", call["raised_at_ms"])
    assert [r.data["by"] for r in await room.log("call.annunciated")] == ["station 4B"]


# ---------------------------------------------------------------------- 3. cancel at origin
IN_ROOM_ONLY = ["code_call", "staff_emergency", "bath_emergency", "fall"]
ROUTINE = ["staff_assist", "patient_call", "request"]
SELF_CLEARING = ["sensor_fault", "low_battery"]


@pytest.mark.parametrize("ctype", IN_ROOM_ONLY)
async def test_cancel_at_origin_calls_refuse_remote_clear_and_presence_but_not_the_room_cancel(room, ctype):
    call = await _raise(room, ctype)
    with pytest.raises(CancelAtOrigin, match="point of origin"):
        await room.c.clear(call["id"], "Nurse Kim")
    await room.c.acknowledge(call["id"], "Nurse Kim")
    await room.press("door", "presence")
    still = room.call(ctype)
    assert still["state"] == "present", "presence is recorded, but it does not cancel an emergency"
    refused = await room.log("call.clear_refused")
    assert [(r.data["call_id"], r.data["by"]) for r in refused] == [(call["id"], "Nurse Kim")]
    await room.press("door", "cancel")
    assert room.types() == []
    cleared = (await room.log("call.cleared"))[0].data
    assert (cleared["how"], cleared["by"]) == ("in_room_cancel", "in-room cancel (door/cancel)")


@pytest.mark.parametrize("ctype", ROUTINE)
async def test_routine_calls_clear_by_presence(room, ctype):
    await _raise(room, ctype)
    await room.press("door", "presence")
    assert room.types() == []
    assert [r.data["how"] for r in await room.log("call.cleared")] == ["presence"]


@pytest.mark.parametrize("ctype", ROUTINE)
async def test_routine_calls_may_be_cleared_remotely(room, ctype):
    call = await _raise(room, ctype)
    await room.c.clear(call["id"], "Nurse Kim")
    assert room.types() == []
    assert [(r.data["how"], r.data["by"]) for r in await room.log("call.cleared")] == [("api", "Nurse Kim")]


@pytest.mark.parametrize("ctype", SELF_CLEARING)
async def test_technical_alarms_refuse_remote_clear_and_room_cancel(room, ctype):
    call = await _raise(room, ctype)
    with pytest.raises(ClearsItself, match="clears itself when"):
        await room.c.clear(call["id"], "Tech Ana")
    await room.press("door", "cancel")
    await room.press("door", "presence")
    assert room.types() == [ctype]


@pytest.mark.parametrize("ctype", IN_ROOM_ONLY + ROUTINE + SELF_CLEARING)
async def test_acknowledging_never_clears(room, ctype):
    call = await _raise(room, ctype)
    acked = await room.c.acknowledge(call["id"], "Nurse Kim")
    assert acked["state"] == "acknowledged"
    assert room.types() == [ctype]


# ---------------------------------------------------------------------- 4. escalation and reminders
@pytest.mark.parametrize("ctype, escalate_s", [("bath_emergency", 30), ("patient_call", 60), ("request", 120)])
async def test_unacknowledged_call_escalates_through_three_levels_on_its_tier_timer(room, ctype, escalate_s):
    call = await _raise(room, ctype)
    t0 = call["raised_at_ms"]
    assert await room.advance(escalate_s - 0.001) == []
    first = await room.advance(0.001)
    assert [(r.kind, r.data["level"], r.data["to"], r.data["due_ms"] - t0) for r in first] == \
        [("call.escalated", 2, "charge nurse", escalate_s * 1000)]
    await room.advance(escalate_s)
    assert (room.call(ctype)["escalation_level"], room.call(ctype)["escalated_to"]) == (3, "all staff")
    assert await room.advance(10 * escalate_s) == [], "all staff is the last level"


async def test_acknowledgement_stops_escalation_and_reminder_re_signals_as_if_new(room):
    call = await _raise(room, "patient_call")
    await room.advance(10)
    await room.c.acknowledge(call["id"], "Nurse Kim")
    acked_at = room.clock.ms
    assert await room.advance(179.999) == []
    [reminder] = await room.advance(0.001)
    assert (reminder.kind, reminder.data["n"], reminder.data["due_ms"]) == ("call.reminded", 1, acked_at + 180_000)
    again = room.call("patient_call")
    assert (again["state"], again["acknowledged_by"], again["escalation_level"], again["reminders"]) == \
        ("annunciated", None, 1, 1)
    # It needs acknowledging again, and escalates again from the reminder.
    [escalated] = await room.advance(60)
    assert (escalated.kind, escalated.data["due_ms"]) == ("call.escalated", acked_at + 240_000)
    await room.c.acknowledge(call["id"], "Nurse Lee")
    assert room.call("patient_call")["acknowledged_by"] == "Nurse Lee"


async def test_every_timer_is_configurable_per_room(tmp_path):
    config = rules_config(timers={"high": {"escalate_s": 5, "reminder_s": 20}, "bath_dwell_s": 60},
                          escalation={"levels": ["primary", "team", "charge", "everyone"]})
    async with RoomSim(config, tmp_path / "room.db") as room:
        call = await _raise(room, "bath_emergency")
        escalations = []
        for _ in range(5):
            escalations += [r.data["to"] for r in await room.advance(5)]
        assert escalations == ["team", "charge", "everyone"]
        await room.c.acknowledge(call["id"], "Nurse Kim")
        assert [r.kind for r in await room.advance(20)] == ["call.reminded"]
        await room.presence("bath", "pir", True)
        assert [r.data["type"] for r in await room.advance(60) if r.kind == "call.raised"] == ["bath_dwell"]


async def test_staff_presence_holds_timers_and_they_restart_when_staff_leave(room):
    await _raise(room, "bath_emergency")
    await room.press("door", "presence")      # in the room: no escalation, no reminder
    assert await room.advance(1700) == []     # (presence's own reminder is due at 29 min)
    await room.press("door", "presence")      # left without resetting the pull-cord
    left_at = room.clock.ms
    [reminder] = await room.advance(180)
    assert (reminder.kind, reminder.data["due_ms"]) == ("call.reminded", left_at + 180_000)


# ---------------------------------------------------------------------- 4b. staff presence
async def test_a_call_raised_while_staff_are_present_sounds_and_escalates(room):
    await _raise(room, "patient_call")
    await room.press("door", "presence")              # answers (and clears) the routine call that was on
    assert room.types() == [] and room.c.outputs().tone == "off"
    bath = await _raise(room, "bath_emergency")       # a new emergency while staff are in the room
    assert (bath["held_by_presence"], bath["state"]) == (False, "annunciated")
    out = room.c.outputs()
    assert (out.tone, out.presence, out.dome_colour, out.dome_pattern) == ("high", True, "red", "fast")
    assert await room.advance(29.999) == []
    [escalated] = await room.advance(0.001)
    assert (escalated.kind, escalated.data["call_id"], escalated.data["to"]) == \
        ("call.escalated", bath["id"], "charge nurse")
    await room.c.acknowledge(bath["id"], "Nurse Kim")
    assert room.c.outputs().tone == "off"


async def test_presence_holds_the_calls_that_were_on_and_not_the_ones_raised_after(room):
    held = await _raise(room, "bath_emergency")
    await room.press("door", "presence")
    await room.advance(10)
    new = await _raise(room, "staff_assist")          # routine, but raised after staff registered
    assert room.c.outputs().tone == "medium", "the new call sounds; the emergency staff attend does not"
    assert await room.advance(59.999) == []
    records = await room.advance(0.001)
    assert [(r.kind, r.data["call_id"]) for r in records] == [("call.escalated", new["id"])]
    assert (room.call("bath_emergency")["escalation_level"], room.call("bath_emergency")["held_by_presence"]) == \
        (1, True)
    assert held["id"] not in {r.data.get("call_id") for r in await room.log("call.escalated")}
    await room.advance(30)
    await room.press("door", "presence")              # staff leave: only the held call's clock restarts
    left_at = room.clock.ms
    records = await room.advance(30)
    assert [(r.data["call_id"], r.data["level"], r.data["due_ms"]) for r in records] == \
        [(new["id"], 3, new["raised_at_ms"] + 120_000)], "the new call's escalation keeps its own clock"
    [reminder] = await room.advance(150)
    assert (reminder.kind, reminder.data["call_id"], reminder.data["due_ms"]) == \
        ("call.reminded", held["id"], left_at + 180_000)


async def test_presence_ends_by_itself_after_its_reminder_and_held_calls_run_again(room):
    await _raise(room, "bath_emergency")
    await room.press("door", "presence")
    since = room.clock.ms
    assert await room.advance(1739.999) == []         # 30 min presence, reminder 1 min before the end
    [reminder] = await room.advance(0.001)
    assert (reminder.kind, reminder.data["due_ms"], reminder.data["ends_at_ms"]) == \
        ("staff.presence_reminder", since + 1_740_000, since + 1_800_000)
    out = room.c.outputs()
    assert (out.presence, out.presence_ending, out.tone) == (True, True, "low"), "the reminder pulse"
    assert room.c.snapshot()["occupancy"]["presence_ends_at_ms"] == since + 1_800_000
    assert await room.advance(59.999) == []
    [ended] = await room.advance(0.001)
    assert (ended.kind, ended.data["present"], ended.data["timed_out"], ended.data["due_ms"]) == \
        ("staff.presence", False, True, since + 1_800_000)
    out = room.c.outputs()
    assert (out.presence, out.presence_ending, out.tone) == (False, False, "off")
    assert room.call("bath_emergency")["held_by_presence"] is False
    # The emergency staff were present for is on its reminder clock from the moment presence ended.
    assert await room.advance(179.999) == []
    [reminded] = await room.advance(0.001)
    assert (reminded.kind, reminded.data["due_ms"]) == ("call.reminded", since + 1_800_000 + 180_000)
    assert room.c.outputs().tone == "high"


async def test_a_silence_does_not_hide_the_presence_reminder(room):
    await room.press("door", "presence")
    await room.c.silence_tone("Nurse Kim")
    await room.advance(1740)
    assert (room.c.outputs().presence_ending, room.c.outputs().tone) == (True, "low")


async def test_presence_pressed_during_its_reminder_renews_it_and_outside_it_ends_it(room):
    await room.press("door", "presence")
    await room.advance(1740)                          # the reminder is on
    new = await _raise(room, "patient_call")          # raised while staff are in the room: not held
    await room.press("door", "presence")              # still here: renewed, not ended
    renewed = (await room.log("staff.presence"))[-1].data
    assert (renewed["present"], renewed["renewed"]) == (True, True)
    since = room.clock.ms
    out = room.c.outputs()
    assert (out.presence, out.presence_ending) == (True, False)
    assert room.types() == [], "renewing registers presence again: the routine call raised meanwhile is answered"
    assert [r.data["call_id"] for r in await room.log("call.cleared")] == [new["id"]]
    assert await room.advance(1739.999) == []
    assert [r.kind for r in await room.advance(0.001)] == ["staff.presence_reminder"]
    assert since + 1_740_000 == room.clock.ms
    await room.press("door", "presence")              # renewed again
    await room.advance(60)
    await room.press("door", "presence")              # outside the reminder: staff leave
    left = (await room.log("staff.presence"))[-1].data
    assert (left["present"], "timed_out" in left) == (False, False)
    assert room.c.outputs().presence is False


async def test_presence_time_and_reminder_are_configurable(tmp_path):
    config = rules_config(timers={"presence_s": 600, "presence_reminder_s": 30})
    async with RoomSim(config, tmp_path / "room.db") as room:
        await room.press("door", "presence")
        assert await room.advance(569.999) == []
        assert [r.kind for r in await room.advance(0.001)] == ["staff.presence_reminder"]
        assert [(r.kind, r.data["present"]) for r in await room.advance(30)] == [("staff.presence", False)]


async def test_presence_deadlines_come_from_stored_times_across_a_restart(room):
    await room.press("door", "presence")
    since = room.clock.ms
    await room.advance(1000)
    await room.restart(down_s=2000)                   # the reminder and the end both passed while down
    records = await room.advance(0)
    assert [(r.kind, r.data["due_ms"] - since) for r in records] == [("staff.presence_reminder", 1_740_000),
                                                                     ("staff.presence", 1_800_000)]
    assert room.c.snapshot()["occupancy"]["staff_present"] is False


# ---------------------------------------------------------------------- 5. outputs
async def test_dome_and_tone_follow_the_highest_call_and_silence_never_changes_the_light(room):
    assert room.c.outputs().dome_colour == "off"
    await _raise(room, "patient_call")
    assert (room.c.outputs().dome_colour, room.c.outputs().tone) == ("white", "medium")
    bath = await _raise(room, "bath_emergency")
    out = room.c.outputs()
    assert (out.dome_colour, out.dome_pattern, out.dome_call, out.tone) == ("red", "fast", bath["id"], "high")
    await room.c.silence_tone("Nurse Kim")
    out = room.c.outputs()
    assert (out.dome_colour, out.dome_pattern, out.tone, out.tone_silenced) == ("red", "fast", "off", True)
    await room.advance(60)
    await _raise(room, "code_call")           # a new call sounds through a silence
    out = room.c.outputs()
    assert (out.dome_colour, out.tone, out.tone_silenced) == ("blue", "high", False)
    await room.press("door", "cancel")
    assert (room.c.outputs().dome_colour, room.c.outputs().tone) == ("off", "off")


async def test_silence_runs_out_and_acknowledged_calls_do_not_sound(room):
    call = await _raise(room, "patient_call")
    await room.c.silence_tone("Nurse Kim")
    await room.advance(119)
    assert room.c.outputs().tone == "off"
    await room.advance(1)
    assert room.c.outputs().tone == "medium"
    await room.c.acknowledge(call["id"], "Nurse Kim")
    assert (room.c.outputs().tone, room.c.outputs().dome_colour) == ("off", "white")


async def test_presence_shows_on_the_dome_and_reassurance_lights_at_the_source(room):
    call = await _raise(room, "patient_call")
    ind = dict(room.c.outputs().indicators)
    assert (ind["bedside-a"], ind["bath"]) == ("received", "off")
    await room.c.acknowledge(call["id"], "Nurse Kim")
    assert dict(room.c.outputs().indicators)["bedside-a"] == "acknowledged"
    await _raise(room, "bath_emergency")
    await room.press("door", "presence")
    out = room.c.outputs()
    assert out.presence and out.dome_colour == "red" and dict(out.indicators)["bedside-a"] == "off"


# ---------------------------------------------------------------------- 6. occupancy and fall prevention
@pytest.mark.parametrize("room_pir, bath_pir, bed_a, expected", [
    (False, False, False, "empty"), (True, False, False, "in_room"), (False, True, False, "in_bathroom"),
    (True, True, False, "in_bathroom"), (True, False, True, "in_bed"), (False, True, True, "in_bed"),
])
async def test_occupancy_fuses_room_bath_and_bed_inputs(room, room_pir, bath_pir, bed_a, expected):
    await room.presence("door", "pir", room_pir)
    await room.presence("bath", "pir", bath_pir)
    await room.presence("bedside-a", "pad", bed_a)
    occ = room.c.snapshot()["occupancy"]
    assert (occ["state"], occ["room"], occ["bath"], occ["beds"]["A"]) == (expected, room_pir, bath_pir, bed_a)


async def test_bed_exit_alarms_only_when_fall_risk_mode_is_on_for_that_bed(room):
    for bed in ("A", "B"):
        await room.presence(f"bedside-{bed.lower()}", "pad", True)
    await room.presence("bedside-a", "pad", False)
    assert room.types() == []
    await room.c.set_fall_risk("A", True, "Nurse Kim")
    await room.presence("bedside-a", "pad", True)
    await room.presence("bedside-b", "pad", False)   # bed B is not in fall-risk mode
    assert room.types() == []
    await room.presence("bedside-a", "pad", False)
    exit_call = room.call("bed_exit")
    assert (exit_call["bed"], exit_call["priority"], exit_call["cancel_at_origin"]) == ("A", "medium", True)
    with pytest.raises(UnknownBed):
        await room.c.set_fall_risk("Z", True, "Nurse Kim")
    [risk] = await room.log("bed.fall_risk")
    assert (risk.data["bed"], risk.data["enabled"], risk.data["by"]) == ("A", True, "Nurse Kim")


async def test_bathroom_dwell_alarm_once_per_stay(room):
    await room.presence("bath", "pir", True)
    assert await room.advance(1199) == []
    raised = [r for r in await room.advance(1) if r.kind == "call.raised"]
    assert [r.data["type"] for r in raised] == ["bath_dwell"]
    assert [r.kind for r in await room.advance(3600) if r.kind == "call.raised"] == [], "one alarm per stay"
    await room.presence("bath", "pir", False)
    await room.presence("bath", "pir", True)
    await room.advance(1200)
    assert room.call("bath_dwell")["presses"] == 2, "a second long stay repeats the still-active alarm"
    await room.presence("bath", "pir", False)
    await room.press("door", "cancel")
    await room.presence("bath", "pir", True)
    await room.advance(600)
    await room.presence("bath", "pir", False)
    await room.advance(3600)
    assert room.types() == [], "a short stay is no alarm"


# ---------------------------------------------------------------------- 7. falls
async def test_fall_is_a_high_call_at_once_and_im_ok_in_the_window_downgrades_it_with_a_record(room):
    records = await room.event("wearable-a", "fall", "accel", peak_mg=4100)
    fall = records[-1].data
    assert (fall["type"], fall["level"], fall["detail"]) == ("fall", "high", {"peak_mg": 4100})
    await room.advance(29)
    await room.press("wearable-a", "ok")
    assert room.types() == []
    [cleared] = await room.log("call.cleared")
    assert cleared.data == {"call_id": fall["call_id"], "how": "patient_ok", "at_ms": fall["at_ms"] + 29_000,
                            "by": "patient pressed I'm OK (wearable-a/ok)"}
    assert [r.kind for r in await room.log() if r.data.get("call_id") == fall["call_id"]] == \
        ["call.raised", "call.annunciated", "call.cleared"], "the fall stays in the history"


async def test_im_ok_after_the_window_is_noted_and_the_fall_call_stays(room):
    await room.presence("bath", "pir", True)
    await room.event("wearable-a", "fall", "accel")
    assert room.call("fall")["detail"]["where"] == "bathroom"
    await room.advance(31)
    await room.press("wearable-a", "ok")
    fall = room.call("fall")
    assert fall["timeline"][-1]["step"] == "noted" and "after the 30 s window" in fall["timeline"][-1]["note"]


# ---------------------------------------------------------------------- 8. environment
async def test_environment_alarm_needs_its_minimum_duration_and_hysteresis_to_clear(room):
    await room.reading("env", temp_mdegc=25_000)
    await room.advance(599)
    await room.reading("env", temp_mdegc=23_000)   # back in range before 10 min: no alarm
    assert await room.advance(3600) == []
    await room.reading("env", temp_mdegc=24_600)
    started = room.clock.ms
    for _ in range(9):
        await room.advance(60)
        await room.reading("env", temp_mdegc=24_100 + (_ % 2) * 500)   # flaps just above the limit
    [raised] = [r for r in await room.advance(60) if r.kind == "call.raised"]
    assert (raised.data["type"], raised.data["detail"]["since_ms"], raised.data["detail"]["bound"]) == \
        ("environment", started, "high")
    await room.reading("env", temp_mdegc=23_800)   # inside the limit, not past the 0.5 °C hysteresis
    await room.advance(3600)
    assert room.types() == ["environment"]
    await room.reading("env", temp_mdegc=23_400)
    assert await room.advance(59) == []
    [cleared] = await room.advance(1)
    assert (cleared.kind, cleared.data["how"]) == ("call.cleared", "resolved")


@pytest.mark.parametrize("profile, dp_mpa, alarms", [
    ("airborne_isolation", -1_000, True), ("airborne_isolation", -3_000, False),
    ("patient_room", -1_000, False)])
async def test_isolation_room_needs_negative_pressure(tmp_path, profile, dp_mpa, alarms):
    config = rules_config(room={"id": "4b-12", "profile": profile})
    async with RoomSim(config, tmp_path / "room.db") as room:
        await room.reading("env", dp_mpa=dp_mpa)
        await room.advance(60)
        assert room.types() == (["environment"] if alarms else [])


async def test_implausible_reading_is_a_sensor_fault_not_an_environment_alarm(room):
    await room.reading("env", temp_mdegc=150_000)
    fault = room.call("sensor_fault")
    assert fault["source"] == {"node": "env", "input": "sensor:temp_c"}
    await room.advance(3600)
    assert room.types() == ["sensor_fault"]
    await room.reading("env", temp_mdegc=22_000)
    assert room.types() == []


async def test_node_reported_sensor_fault_clears_when_the_node_reports_recovery(room):
    await room.event("env", "fault", "sht3x", 2)
    await room.event("env", "fault", "sht3x", 2)
    assert room.call("sensor_fault")["detail"] == {"sensor": "sht3x", "code": 2}
    await room.event("env", "fault", "sht3x", 0)
    assert room.types() == []


# ---------------------------------------------------------------------- 9. supervision
async def test_node_missing_three_heartbeats_is_offline_until_it_returns(room):
    await room.hello("bath")
    await room.advance(20)
    await room.heartbeat("bath")
    assert await room.advance(31) == []            # 3 x 10 s + 1 s grace from the last heartbeat
    records = await room.advance(0.001)
    assert [r.kind for r in records] == ["node.offline", "call.raised"]
    assert room.call("node_offline")["source"] == {"node": "bath", "input": "supervision"}
    await room.hello("bath")
    assert room.types() == []
    assert (await room.log("call.cleared"))[0].data["by"] == "bath back online"


async def test_low_battery_stays_through_acknowledgement_until_the_battery_is_replaced(room):
    call = await _raise(room, "low_battery")
    await room.c.acknowledge(call["id"], "Tech Ana")
    await room.heartbeat("wearable-a", batt_mv=3700)    # recovering a little is not a new battery
    await room.advance(3600)
    assert room.types() == ["low_battery"]
    await room.heartbeat("wearable-a", batt_mv=4100)
    assert room.types() == []
    assert (await room.log("call.cleared"))[0].data["by"] == "wearable-a: battery replaced (4.10 V)"


# ---------------------------------------------------------------------- 9b. nurse screens
async def test_a_call_no_screen_shows_in_time_is_a_technical_alarm_until_one_does(unwatched):
    room = unwatched
    call = await _raise(room, "patient_call")
    assert await room.advance(14.999) == [] and room.c.degraded() == []
    [alarm] = await room.advance(0.001)
    assert (alarm.kind, alarm.data["type"], alarm.data["detail"]) == \
        ("call.raised", "not_displayed", {"calls": [call["id"]], "after_s": 15})
    assert [d["reason"] for d in room.c.degraded()] == ["not_displayed"]
    out = room.c.outputs()
    assert (out.dome_colour, out.tone) == ("white", "medium"), "the light and the tone keep going"
    with pytest.raises(ClearsItself, match="every call is shown on a nurse screen"):
        await room.c.clear(alarm.data["call_id"], "Nurse Kim")
    await room.advance(60)
    records = await room.c.shown([call["id"], alarm.data["call_id"]], "station 4B")
    assert [(r.kind, r.data["call_id"]) for r in records] == [
        ("call.annunciated", call["id"]), ("call.annunciated", alarm.data["call_id"]),
        ("call.cleared", alarm.data["call_id"])]
    assert room.types() == ["patient_call"] and room.c.degraded() == []
    assert await room.advance(600) != [] and "not_displayed" not in room.types(), "shown once is shown"


async def test_a_call_shown_in_time_raises_nothing_and_receipts_count_once(unwatched):
    room = unwatched
    call = await _raise(room, "bath_emergency")
    await room.advance(14.999)
    assert [r.data["by"] for r in await room.c.shown([call["id"], call["id"], "c-gone"], "station 4B")] == \
        ["station 4B"]
    assert await room.c.shown([call["id"]], "phone 12") == []
    assert [r.kind for r in await room.advance(15.001)] == ["call.escalated"]   # at 30 s, nothing else
    assert room.c.room.not_displayed(room.clock.ms) == []


async def test_the_alarm_clears_when_the_unshown_call_is_cleared_in_the_room(unwatched):
    room = unwatched
    await _raise(room, "patient_call")
    [alarm] = await room.advance(15)
    await room.press("door", "cancel")
    assert room.types() == ["not_displayed"]
    [cleared] = await room.advance(0)
    assert (cleared.kind, cleared.data["call_id"], cleared.data["how"]) == ("call.cleared", alarm.data["call_id"],
                                                                             "resolved")
    assert room.c.room.next_due_ms(room.clock.ms, room.c.offline_after_ms) is None


# ---------------------------------------------------------------------- 10. durability
async def test_restart_keeps_calls_and_deadlines_come_from_stored_times(room):
    bath = await _raise(room, "bath_emergency")
    await room.advance(5)
    patient = await _raise(room, "patient_call")
    await room.c.acknowledge(patient["id"], "Nurse Kim")
    before = room.c.snapshot()
    await room.restart(down_s=20)                     # down for 20 s: bath's 30 s deadline is 5 s away
    after = room.c.snapshot()
    assert after["calls"] == [dict(c, next_due_ms=c["next_due_ms"]) for c in before["calls"]]
    assert await room.advance(4.999) == []
    [escalated] = await room.advance(0.001)
    assert (escalated.data["call_id"], escalated.data["due_ms"], escalated.data["at_ms"]) == \
        (bath["id"], bath["raised_at_ms"] + 30_000, bath["raised_at_ms"] + 30_000)


async def test_deadlines_that_passed_while_down_fire_at_restart_with_their_due_times(room):
    bath = await _raise(room, "bath_emergency")
    await room.restart(down_s=100)
    records = await room.advance(0)
    assert [(r.data["level"], r.data["due_ms"] - bath["raised_at_ms"]) for r in records] == [(2, 30_000),
                                                                                             (3, 60_000)]
    assert all(r.data["at_ms"] == room.clock.ms for r in records)


async def test_clock_going_back_never_makes_the_log_go_back(room):
    await _raise(room, "patient_call")
    room.clock.ms -= 60_000
    await room.press("bedside-a", "water")
    times = [r.ts_ms for r in await room.log()]
    assert times == sorted(times)




# ---------------------------------------------------------------------- Pi-attached sources
def _local_config(monkeypatch):
    from controller.room import config as config_mod

    monkeypatch.setitem(config_mod._OPTION_PARSERS, "voice", "tests.test_room_rules:_checked_options")
    monkeypatch.setitem(config_mod._OPTION_PARSERS, "gpio", "tests.test_room_rules:_checked_options")
    doc = {"room": {"id": "4b-12"}, "beds": [{"id": "A"}, {"id": "B"}],
           "nodes": {"voice-a": {"bed": "A", "transport": "voice", "voice": {"enabled": True},
                                 "inputs": {"nurse": "patient_call", "help": "patient_emergency",
                                            "water": "request_water", "never mind": "patient_cancel"}},
                     "wired": {"transport": "gpio", "check_in_s": 60, "inputs": {"cord": "bath_emergency"}},
                     "bedside-a": {"bed": "A", "inputs": {"call": "patient_call"}}}}
    from controller.room.config import parse_room
    return parse_room(doc, "local.toml")


def _checked_options(table):
    """A stand-in transport options parser: knows one key, so the error path can be tested."""
    from controller.room.config import OptionError

    if set(table) - {"enabled"}:
        raise OptionError((sorted(set(table) - {"enabled"})[0],), "unknown option")
    return table


async def test_voice_and_wired_sources_raise_calls_with_their_detail(tmp_path, monkeypatch):
    config = _local_config(monkeypatch)
    async with RoomSim(config, tmp_path / "room.db") as room:
        await room.c.local_online("voice-a", "voice 1", "pi")
        await room.c.local_event("voice-a", "button", "nurse", detail={"phrase": "call the nurse", "confidence": 0.91})
        call = room.call("patient_call")
        assert call["source"] == {"node": "voice-a", "input": "nurse"} and call["bed"] == "A"
        assert call["detail"] == {"phrase": "call the nurse", "confidence": 0.91}
        await room.c.local_event("voice-a", "button", "help")
        assert room.call("patient_emergency")["priority"] == "high"
        assert room.c.snapshot()["voice"] == {"A": True}
        with pytest.raises(ValueError, match="not a Pi-attached node"):
            await room.c.local_event("bedside-a", "button", "call")


async def test_patient_cancel_takes_back_routine_calls_of_that_bed_only(tmp_path, monkeypatch):
    config = _local_config(monkeypatch)
    async with RoomSim(config, tmp_path / "room.db") as room:
        await room.press("bedside-a", "call")
        await room.c.local_event("voice-a", "button", "water")
        await room.c.local_event("voice-a", "button", "help")
        await room.c.local_event("voice-a", "button", "never mind")
        assert room.types() == ["patient_emergency"], "an emergency is cancelled in the room, not by voice"
        assert {r.data["how"] for r in await room.log("call.cleared")} == {"patient_cancel"}


async def test_cord_removed_and_system_fault_are_technical_alarms_that_clear_themselves(tmp_path, monkeypatch):
    config = _local_config(monkeypatch)
    async with RoomSim(config, tmp_path / "room.db") as room:
        await room.c.local_event("wired", "fault", "cord", 4)
        assert room.call("cord_removed")["source"] == {"node": "wired", "input": "cord:cord"}
        await room.c.system_fault("bluetooth", True, {"error": "no adapter"})
        assert sorted(room.types()) == ["cord_removed", "system_fault"]
        with pytest.raises(ClearsItself):
            await room.c.clear(room.call("system_fault")["id"], "Tech Ana")
        await room.c.local_event("wired", "fault", "cord", 0)
        await room.c.system_fault("bluetooth", False)
        assert room.types() == []


async def test_a_node_with_its_own_check_in_interval_is_supervised_on_it(tmp_path, monkeypatch):
    config = _local_config(monkeypatch)
    async with RoomSim(config, tmp_path / "room.db") as room:
        await room.c.local_online("wired", "gpio 1", "pi")
        await room.hello("bedside-a")
        records = await room.advance(31.001)          # 3 x 10 s heartbeat + 1 s grace
        assert [r.data["node"] for r in records if r.kind == "node.offline"] == ["bedside-a"]
        room.c.local_seen("wired")
        records = await room.advance(180)            # 3 x 60 s + 1 s grace from the last check-in
        assert [r for r in records if r.kind == "node.offline"] == []
        records = await room.advance(1.001)
        assert [r.data["node"] for r in records if r.kind == "node.offline"] == ["wired"]


def test_transport_options_are_checked_with_file_line_and_key(tmp_path, monkeypatch):
    from controller.room import config as config_mod

    monkeypatch.setitem(config_mod._OPTION_PARSERS, "voice", "tests.test_room_rules:_checked_options")
    path = tmp_path / "room.toml"
    path.write_text('[room]\nid = "r"\n[nodes.v]\ntransport = "voice"\n[nodes.v.voice]\nenabld = true\n')
    with pytest.raises(config_mod.ConfigError, match=r"room.toml:6: nodes.v.voice.enabld: unknown option"):
        config_mod.load_room(path)
    path.write_text('[room]\nid = "r"\n[nodes.v]\ntransport = "carrier pigeon"\n')
    with pytest.raises(config_mod.ConfigError, match=r"room.toml:4: nodes.v.transport: 'carrier pigeon' is not one of"):
        config_mod.load_room(path)


async def test_heartbeat_battery_is_kept_for_the_chart_once_a_minute(room):
    for _ in range(7):                         # a heartbeat every 10 s for a minute
        await room.heartbeat("wearable-a", batt_mv=3900)
        await room.advance(10)
    await room.advance(50)
    await room.heartbeat("wearable-a", batt_mv=3850)   # 60 s after the last stored one
    await room.c.flush_readings()
    series = await room.c.history.query("batt_v", room.clock.ms - 180_000, room.clock.ms + 1, 60_000)
    assert [(b.n, b.mean) for b in series.buckets] == [(1, 3.9), (1, 3.9), (1, 3.85)], \
        "8 heartbeats over two minutes, 3 rows: at 0 s, 60 s and 120 s"


async def test_an_escalated_alarm_escalates_one_period_after_staff_leave_not_its_level_times(room):
    await _raise(room, "sensor_fault")                 # technical: staff presence does not answer it
    [escalated] = await room.advance(120)               # low tier: 120 s per level
    assert escalated.data["level"] == 2
    await room.press("door", "presence")
    assert await room.advance(600) == []                 # held while staff are in the room
    await room.press("door", "presence")
    left_at = room.clock.ms
    [escalated] = await room.advance(120)
    assert (escalated.data["level"], escalated.data["due_ms"]) == (3, left_at + 120_000)


async def test_a_reminder_sounds_through_a_silence_and_an_escalation_does_not(room):
    call = await _raise(room, "patient_call")
    await room.c.silence_tone("Nurse Kim")
    await room.advance(60)                               # escalated to the charge nurse meanwhile
    assert room.call("patient_call")["escalation_level"] == 2 and room.c.outputs().tone == "off"
    await room.c.acknowledge(call["id"], "Nurse Kim")
    await room.advance(170)
    await room.c.silence_tone("Nurse Kim")               # silenced again, 10 s before the reminder
    [reminder] = await room.advance(10)
    assert reminder.kind == "call.reminded"
    assert (room.c.outputs().tone, room.c.outputs().tone_silenced) == ("medium", False)
