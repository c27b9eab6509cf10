"""The stored log, record by record, and the calls as a nurse sees them, field by field.

The log is the room's durable truth (a restart rebuilds the room from it) and the integration feed
(``GET /api/v1/events``); a call's JSON with its timeline is what the nurse page shows. A field
renamed or dropped is a break even where nothing in the room reads it back. One afternoon on a fake
clock touches every record kind the rules write; call ids are numbered in order of appearance and
times are milliseconds from the start. Every time below was checked against docs/call-model.md:
the reminder 180 s after the acknowledgement (181000) and after staff leave (186000), a medium call
escalating 60 s after its reminder, high 30 s, low 120 s, the environment alarm after 600 s out of
range and cleared 60 s back in range, "I'm OK" 31 s after a fall only noted.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.room import RoomError
from tests.roomsim import T0_MS, RoomSim, rules_config



async def scenario(room: RoomSim) -> list[list[dict[str, Any]]]:
    """The afternoon; returns the active calls as a nurse sees them after the acknowledgement and at the end."""
    await room.hello("bath")
    await room.presence("door", "pir", True)
    await room.press("bedside-a", "water")
    await room.c.clear(room.call("request")["id"], "Nurse Lee")
    await room.press("bedside-a", "call")
    await room.press("bedside-a", "call")
    call = room.call("patient_call")["id"]
    await room.advance(1)
    await room.c.annunciated(call, "station 4B")
    await room.c.silence_tone("Nurse Kim")
    await room.c.acknowledge(call, "Nurse Kim")
    seen = [room.calls()]
    await room.c.set_fall_risk("A", True, "Nurse Kim")
    await room.presence("bedside-a", "pad", True)
    await room.presence("bedside-a", "pad", False)
    exit_id = room.call("bed_exit")["id"]
    try:
        await room.c.clear(exit_id, "Nurse Lee")
    except RoomError:
        pass
    await room.press("door", "presence")
    await room.advance(5)
    await room.press("door", "presence")
    await room.advance(180)
    await room.advance(60)
    await room.event("wearable-a", "fall", "accel", peak_mg=4100)
    await room.advance(31)
    await room.press("wearable-a", "ok")
    await room.reading("env", temp_mdegc=25_000)
    await room.advance(600)
    await room.reading("env", temp_mdegc=23_000)
    await room.advance(60)
    return seen + [room.calls()]


EXPECTED: list[tuple[str, dict[str, Any]]] = [
    ('node.online', {'node': 'bath', 'boot': 1, 'fw': 'test', 'hw': 'sim', 'caps': ['button'], 'peer': '127.0.0.1:1', 'at_ms': 0}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 2, 'e': 2, 'kind': 'presence', 'src': 'pir', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'room_presence'}),
    ('presence.changed', {'area': 'room', 'present': True, 'node': 'door', 'input': 'pir', 'at_ms': 0}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 2, 'e': 2, 'kind': 'button', 'src': 'water', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'request_water'}),
    ('call.raised', {'call_id': 'c1', 'type': 'request', 'level': 'low', 'node': 'bedside-a', 'input': 'water', 'bed': 'A', 'by': 'bedside-a/water', 'at_ms': 0, 'detail': {'need': 'water'}}),
    ('call.annunciated', {'call_id': 'c1', 'by': 'nurse station (sim)', 'at_ms': 0}),
    ('call.cleared', {'call_id': 'c1', 'by': 'Nurse Lee', 'how': 'api', 'at_ms': 0}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 3, 'e': 3, 'kind': 'button', 'src': 'call', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'patient_call'}),
    ('call.raised', {'call_id': 'c2', 'type': 'patient_call', 'level': 'medium', 'node': 'bedside-a', 'input': 'call', 'bed': 'A', 'by': 'bedside-a/call', 'at_ms': 0, 'detail': {}}),
    ('call.annunciated', {'call_id': 'c2', 'by': 'nurse station (sim)', 'at_ms': 0}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 4, 'e': 4, 'kind': 'button', 'src': 'call', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'patient_call'}),
    ('call.repeated', {'call_id': 'c2', 'presses': 2, 'at_ms': 0}),
    ('tone.silenced', {'by': 'Nurse Kim', 'at_ms': 1000, 'until_ms': 121000}),
    ('call.acknowledged', {'call_id': 'c2', 'by': 'Nurse Kim', 'at_ms': 1000}),
    ('bed.fall_risk', {'bed': 'A', 'enabled': True, 'by': 'Nurse Kim', 'at_ms': 1000}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 5, 'e': 5, 'kind': 'presence', 'src': 'pad', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'bed_occupancy'}),
    ('presence.changed', {'area': 'bed', 'present': True, 'node': 'bedside-a', 'input': 'pad', 'at_ms': 1000, 'bed': 'A'}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 6, 'e': 6, 'kind': 'presence', 'src': 'pad', 'val': 0, 'at_ms': 0, 'x': {}, 'meaning': 'bed_occupancy'}),
    ('presence.changed', {'area': 'bed', 'present': False, 'node': 'bedside-a', 'input': 'pad', 'at_ms': 1000, 'bed': 'A'}),
    ('call.raised', {'call_id': 'c3', 'type': 'bed_exit', 'level': 'medium', 'node': 'bedside-a', 'input': 'pad', 'bed': 'A', 'by': 'bedside-a/pad', 'at_ms': 1000, 'detail': {'bed': 'A'}}),
    ('call.annunciated', {'call_id': 'c3', 'by': 'nurse station (sim)', 'at_ms': 1000}),
    ('call.clear_refused', {'call_id': 'c3', 'by': 'Nurse Lee', 'reason': 'a bed exit (fall risk) call is cancelled only at its point of origin: press the cancel button in the room', 'at_ms': 1000}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 3, 'e': 3, 'kind': 'button', 'src': 'presence', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'staff_presence'}),
    ('staff.presence', {'present': True, 'by': 'staff presence (door/presence)', 'at_ms': 1000}),
    ('call.present', {'call_id': 'c3', 'by': 'staff presence (door/presence)', 'at_ms': 1000}),
    ('call.present', {'call_id': 'c2', 'by': 'staff presence (door/presence)', 'at_ms': 1000}),
    ('call.cleared', {'call_id': 'c2', 'by': 'staff presence (door/presence)', 'how': 'presence', 'at_ms': 1000}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 4, 'e': 4, 'kind': 'button', 'src': 'presence', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'staff_presence'}),
    ('staff.presence', {'present': False, 'by': 'staff presence (door/presence)', 'at_ms': 6000}),
    ('call.reminded', {'call_id': 'c3', 'n': 1, 'due_ms': 186000, 'at_ms': 186000}),
    ('node.offline', {'node': 'bath', 'reason': 'missed 3 heartbeats', 'at_ms': 186000}),
    ('call.raised', {'call_id': 'c4', 'type': 'node_offline', 'level': 'low', 'node': 'bath', 'input': 'supervision', 'bed': None, 'by': 'bath/supervision', 'at_ms': 186000, 'detail': {'reason': 'missed 3 heartbeats'}}),
    ('call.annunciated', {'call_id': 'c4', 'by': 'nurse station (sim)', 'at_ms': 186000}),
    ('call.escalated', {'call_id': 'c3', 'level': 2, 'to': 'charge nurse', 'due_ms': 246000, 'at_ms': 246000}),
    ('node.event', {'node': 'wearable-a', 'boot': 1, 'seq': 2, 'e': 2, 'kind': 'fall', 'src': 'accel', 'val': 1, 'at_ms': 0, 'x': {'peak_mg': 4100}, 'meaning': None}),
    ('call.raised', {'call_id': 'c5', 'type': 'fall', 'level': 'high', 'node': 'wearable-a', 'input': 'accel', 'bed': 'A', 'by': 'wearable-a/accel', 'at_ms': 246000, 'detail': {'peak_mg': 4100}}),
    ('call.annunciated', {'call_id': 'c5', 'by': 'nurse station (sim)', 'at_ms': 246000}),
    ('call.escalated', {'call_id': 'c5', 'level': 2, 'to': 'charge nurse', 'due_ms': 276000, 'at_ms': 277000}),
    ('node.event', {'node': 'wearable-a', 'boot': 1, 'seq': 3, 'e': 3, 'kind': 'button', 'src': 'ok', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'im_ok'}),
    ('call.noted', {'call_id': 'c5', 'at_ms': 277000, 'note': "patient pressed I'm OK (wearable-a/ok) 31 s after the fall, after the 30 s window: the call stays until cancelled in the room"}),
    ('environment.excursion', {'measure': 'temp_c', 'value': 25.0, 'bound': 'high', 'limit': 24.0, 'node': 'env', 'at_ms': 277000}),
    ('call.escalated', {'call_id': 'c5', 'level': 3, 'to': 'all staff', 'due_ms': 306000, 'at_ms': 877000}),
    ('call.escalated', {'call_id': 'c3', 'level': 3, 'to': 'all staff', 'due_ms': 306000, 'at_ms': 877000}),
    ('call.escalated', {'call_id': 'c4', 'level': 2, 'to': 'charge nurse', 'due_ms': 306000, 'at_ms': 877000}),
    ('call.raised', {'call_id': 'c6', 'type': 'environment', 'level': 'info', 'node': None, 'input': 'env:temp_c', 'bed': None, 'by': 'room controller', 'at_ms': 877000, 'detail': {'measure': 'temp_c', 'value': 25.0, 'bound': 'high', 'limit': 24.0, 'since_ms': 277000, 'due_ms': 877000}}),
    ('call.escalated', {'call_id': 'c4', 'level': 3, 'to': 'all staff', 'due_ms': 426000, 'at_ms': 877000}),
    ('call.annunciated', {'call_id': 'c6', 'by': 'nurse station (sim)', 'at_ms': 877000}),
    ('environment.recovered', {'measure': 'temp_c', 'value': 23.0, 'node': 'env', 'at_ms': 877000}),
    ('call.cleared', {'call_id': 'c6', 'by': 'temp_c back in range (23)', 'how': 'resolved', 'at_ms': 937000}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 5, 'e': 5, 'kind': 'button', 'src': 'cancel', 'val': 1, 'at_ms': 0, 'x': {}, 'meaning': 'cancel'}),
    ('call.present', {'call_id': 'c5', 'by': 'in-room cancel (door/cancel)', 'at_ms': 937000}),
    ('call.present', {'call_id': 'c3', 'by': 'in-room cancel (door/cancel)', 'at_ms': 937000}),
    ('call.cleared', {'call_id': 'c5', 'by': 'in-room cancel (door/cancel)', 'how': 'in_room_cancel', 'at_ms': 937000}),
    ('call.cleared', {'call_id': 'c3', 'by': 'in-room cancel (door/cancel)', 'how': 'in_room_cancel', 'at_ms': 937000}),
]

EXPECTED_CALLS: list[list[dict[str, Any]]] = [
    [
        {'id': 'c2', 'type': 'patient_call', 'label': 'Patient call', 'priority': 'medium', 'rank': 3, 'cancel_at_origin': False, 'clears': 'routine', 'state': 'acknowledged', 'source': {'node': 'bedside-a', 'input': 'call'}, 'bed': 'A', 'raised_at_ms': 0, 'raised_by': 'bedside-a/call', 'presses': 2, 'annunciated_at_ms': 0, 'acknowledged_at_ms': 1000, 'acknowledged_by': 'Nurse Kim', 'present_at_ms': None, 'present_by': None, 'escalation_level': 1, 'escalated_to': 'primary nurse', 'reminders': 0, 'next_due_ms': 181000, 'held_by_presence': False, 'detail': {}, 'timeline': [{'step': 'raised', 'at_ms': 0, 'by': 'bedside-a/call'}, {'step': 'annunciated', 'at_ms': 0, 'by': 'nurse station (sim)'}, {'step': 'acknowledged', 'at_ms': 1000, 'by': 'Nurse Kim'}], 'timeline_omitted': 0, 'patient': None},
    ],
    [
        {'id': 'c5', 'type': 'fall', 'label': 'Fall detected', 'priority': 'high', 'rank': 1, 'cancel_at_origin': True, 'clears': 'in_room', 'state': 'annunciated', 'source': {'node': 'wearable-a', 'input': 'accel'}, 'bed': 'A', 'raised_at_ms': 246000, 'raised_by': 'wearable-a/accel', 'presses': 1, 'annunciated_at_ms': 246000, 'acknowledged_at_ms': None, 'acknowledged_by': None, 'present_at_ms': None, 'present_by': None, 'escalation_level': 3, 'escalated_to': 'all staff', 'reminders': 0, 'next_due_ms': None, 'held_by_presence': False, 'detail': {'peak_mg': 4100}, 'timeline': [{'step': 'raised', 'at_ms': 246000, 'by': 'wearable-a/accel'}, {'step': 'annunciated', 'at_ms': 246000, 'by': 'nurse station (sim)'}, {'step': 'escalated', 'at_ms': 277000, 'level': 2, 'to': 'charge nurse', 'due_ms': 276000}, {'step': 'noted', 'at_ms': 277000, 'note': "patient pressed I'm OK (wearable-a/ok) 31 s after the fall, after the 30 s window: the call stays until cancelled in the room"}, {'step': 'escalated', 'at_ms': 877000, 'level': 3, 'to': 'all staff', 'due_ms': 306000}], 'timeline_omitted': 0, 'patient': None},
        {'id': 'c3', 'type': 'bed_exit', 'label': 'Bed exit (fall risk)', 'priority': 'medium', 'rank': 2, 'cancel_at_origin': True, 'clears': 'in_room', 'state': 'annunciated', 'source': {'node': 'bedside-a', 'input': 'pad'}, 'bed': 'A', 'raised_at_ms': 1000, 'raised_by': 'bedside-a/pad', 'presses': 1, 'annunciated_at_ms': 1000, 'acknowledged_at_ms': None, 'acknowledged_by': None, 'present_at_ms': None, 'present_by': None, 'escalation_level': 3, 'escalated_to': 'all staff', 'reminders': 1, 'next_due_ms': None, 'held_by_presence': False, 'detail': {'bed': 'A'}, 'timeline': [{'step': 'raised', 'at_ms': 1000, 'by': 'bedside-a/pad'}, {'step': 'annunciated', 'at_ms': 1000, 'by': 'nurse station (sim)'}, {'step': 'clear_refused', 'at_ms': 1000, 'by': 'Nurse Lee', 'reason': 'a bed exit (fall risk) call is cancelled only at its point of origin: press the cancel button in the room'}, {'step': 'present', 'at_ms': 1000, 'by': 'staff presence (door/presence)'}, {'step': 'reminded', 'at_ms': 186000, 'n': 1, 'due_ms': 186000}, {'step': 'escalated', 'at_ms': 246000, 'level': 2, 'to': 'charge nurse', 'due_ms': 246000}, {'step': 'escalated', 'at_ms': 877000, 'level': 3, 'to': 'all staff', 'due_ms': 306000}], 'timeline_omitted': 0, 'patient': None},
        {'id': 'c4', 'type': 'node_offline', 'label': 'Node offline', 'priority': 'low', 'rank': 5, 'cancel_at_origin': False, 'clears': 'condition', 'state': 'annunciated', 'source': {'node': 'bath', 'input': 'supervision'}, 'bed': None, 'raised_at_ms': 186000, 'raised_by': 'bath/supervision', 'presses': 1, 'annunciated_at_ms': 186000, 'acknowledged_at_ms': None, 'acknowledged_by': None, 'present_at_ms': None, 'present_by': None, 'escalation_level': 3, 'escalated_to': 'all staff', 'reminders': 0, 'next_due_ms': None, 'held_by_presence': False, 'detail': {'reason': 'missed 3 heartbeats'}, 'timeline': [{'step': 'raised', 'at_ms': 186000, 'by': 'bath/supervision'}, {'step': 'annunciated', 'at_ms': 186000, 'by': 'nurse station (sim)'}, {'step': 'escalated', 'at_ms': 877000, 'level': 2, 'to': 'charge nurse', 'due_ms': 306000}, {'step': 'escalated', 'at_ms': 877000, 'level': 3, 'to': 'all staff', 'due_ms': 426000}], 'timeline_omitted': 0, 'patient': None},
    ],
]


class Numbering:
    """Call ids in order of appearance (c1, c2, ...), times from the start of the test."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def record(self, r) -> tuple[str, dict[str, Any]]:
        if "call_id" in r.data:
            self.ids.setdefault(r.data["call_id"], f"c{len(self.ids) + 1}")
        return r.kind, self.value(dict(r.data))

    def value(self, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str):
            return self.ids.get(v, v)
        if isinstance(v, int) and not isinstance(v, bool) and v > T0_MS // 2:
            return v - T0_MS
        return v


async def test_every_record_kind_and_call_field_is_as_documented(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        seen = await scenario(room)
        await room.press("door", "cancel")
        numbering = Numbering()
        got = [numbering.record(r) for r in await room.log()]
    for i, (want, have) in enumerate(zip(EXPECTED, got)):
        assert have == want, f"record {i + 1}"
    assert len(got) == len(EXPECTED)
    assert [[numbering.value(c) for c in snapshot] for snapshot in seen] == EXPECTED_CALLS


@pytest.mark.parametrize("down_s", [0, 45])
async def test_the_same_log_rebuilds_the_same_room(tmp_path, down_s):
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        await scenario(room)
        before = room.c.snapshot()
        await room.restart(down_s)
        after = room.c.snapshot()
    for key in ("calls", "occupancy", "fall_risk", "environment", "outputs"):
        assert after[key] == before[key], key
