"""The stored log, record by record: what every kind of room event carries, in order.

The log is the room's durable truth (a restart rebuilds the room from it) and the integration feed
(``GET /api/v1/events``): a field renamed or dropped is a break even where nothing in the room reads
it back. One afternoon on a fake clock touches every record kind the rules write; call ids are
numbered in order of appearance and times are milliseconds from the start. Every time below was
checked against docs/call-model.md: reminders 180 s after staff leave, medium escalation 60 s after
a reminder, high 30 s, low 120 s, an environment alarm after 600 s out of range, cleared 60 s back.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.room import RoomError
from tests.roomsim import T0_MS, RoomSim, rules_config

NODE_TIME = -T0_MS  # the node events' own at_ms (0, node uptime) seen from the start


async def scenario(room):
    await room.hello("bath")
    await room.presence("door", "pir", True)
    await room.press("bedside-a", "call")
    await room.press("bedside-a", "call")
    call = room.call("patient_call")["id"]
    await room.advance(1)
    await room.c.annunciated(call, "station 4B")
    await room.c.silence_tone("Nurse Kim")
    await room.c.acknowledge(call, "Nurse Kim")
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
    await room.press("door", "cancel")


EXPECTED: list[tuple[str, dict[str, Any]]] = [
    ('node.online', {'node': 'bath', 'boot': 1, 'fw': 'test', 'hw': 'sim', 'caps': ['button'], 'peer': '127.0.0.1:1', 'at_ms': 0}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 2, 'kind': 'presence', 'src': 'pir', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'room_presence'}),
    ('presence.changed', {'area': 'room', 'present': True, 'node': 'door', 'input': 'pir', 'at_ms': 0}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 2, 'kind': 'button', 'src': 'call', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'patient_call'}),
    ('call.raised', {'call_id': 'c1', 'type': 'patient_call', 'level': 'medium', 'node': 'bedside-a', 'input': 'call', 'bed': 'A', 'by': 'bedside-a/call', 'at_ms': 0, 'detail': {}}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 3, 'kind': 'button', 'src': 'call', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'patient_call'}),
    ('call.repeated', {'call_id': 'c1', 'presses': 2, 'at_ms': 0}),
    ('call.annunciated', {'call_id': 'c1', 'by': 'station 4B', 'at_ms': 1000}),
    ('tone.silenced', {'by': 'Nurse Kim', 'at_ms': 1000, 'until_ms': 121000}),
    ('call.acknowledged', {'call_id': 'c1', 'by': 'Nurse Kim', 'at_ms': 1000}),
    ('bed.fall_risk', {'bed': 'A', 'enabled': True, 'by': 'Nurse Kim', 'at_ms': 1000}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 4, 'kind': 'presence', 'src': 'pad', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'bed_occupancy'}),
    ('presence.changed', {'area': 'bed', 'present': True, 'node': 'bedside-a', 'input': 'pad', 'at_ms': 1000, 'bed': 'A'}),
    ('node.event', {'node': 'bedside-a', 'boot': 1, 'seq': 5, 'kind': 'presence', 'src': 'pad', 'val': 0, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'bed_occupancy'}),
    ('presence.changed', {'area': 'bed', 'present': False, 'node': 'bedside-a', 'input': 'pad', 'at_ms': 1000, 'bed': 'A'}),
    ('call.raised', {'call_id': 'c2', 'type': 'bed_exit', 'level': 'medium', 'node': 'bedside-a', 'input': 'pad', 'bed': 'A', 'by': 'bedside-a/pad', 'at_ms': 1000, 'detail': {'bed': 'A'}}),
    ('call.clear_refused', {'call_id': 'c2', 'by': 'Nurse Lee', 'reason': 'a bed exit (fall risk) call is cancelled only at its point of origin: press the cancel button in the room', 'at_ms': 1000}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 3, 'kind': 'button', 'src': 'presence', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'staff_presence'}),
    ('staff.presence', {'present': True, 'by': 'staff presence (door/presence)', 'at_ms': 1000}),
    ('call.present', {'call_id': 'c2', 'by': 'staff presence (door/presence)', 'at_ms': 1000}),
    ('call.present', {'call_id': 'c1', 'by': 'staff presence (door/presence)', 'at_ms': 1000}),
    ('call.cleared', {'call_id': 'c1', 'by': 'staff presence (door/presence)', 'how': 'presence', 'at_ms': 1000}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 4, 'kind': 'button', 'src': 'presence', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'staff_presence'}),
    ('staff.presence', {'present': False, 'by': 'staff presence (door/presence)', 'at_ms': 6000}),
    ('call.reminded', {'call_id': 'c2', 'n': 1, 'due_ms': 186000, 'at_ms': 186000}),
    ('node.offline', {'node': 'bath', 'reason': 'missed 3 heartbeats', 'at_ms': 186000}),
    ('call.raised', {'call_id': 'c3', 'type': 'node_offline', 'level': 'low', 'node': 'bath', 'input': 'supervision', 'bed': None, 'by': 'bath/supervision', 'at_ms': 186000, 'detail': {'reason': 'missed 3 heartbeats'}}),
    ('call.escalated', {'call_id': 'c2', 'level': 2, 'to': 'charge nurse', 'due_ms': 246000, 'at_ms': 246000}),
    ('node.event', {'node': 'wearable-a', 'boot': 1, 'seq': 2, 'kind': 'fall', 'src': 'accel', 'val': 1, 'at_ms': NODE_TIME, 'x': {'peak_mg': 4100}, 'meaning': None}),
    ('call.raised', {'call_id': 'c4', 'type': 'fall', 'level': 'high', 'node': 'wearable-a', 'input': 'accel', 'bed': 'A', 'by': 'wearable-a/accel', 'at_ms': 246000, 'detail': {'peak_mg': 4100}}),
    ('call.escalated', {'call_id': 'c4', 'level': 2, 'to': 'charge nurse', 'due_ms': 276000, 'at_ms': 277000}),
    ('node.event', {'node': 'wearable-a', 'boot': 1, 'seq': 3, 'kind': 'button', 'src': 'ok', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'im_ok'}),
    ('call.noted', {'call_id': 'c4', 'at_ms': 277000, 'note': "patient pressed I'm OK (wearable-a/ok) 31 s after the fall, after the 30 s window: the call stays until cancelled in the room"}),
    ('environment.excursion', {'measure': 'temp_c', 'value': 25.0, 'bound': 'high', 'limit': 24.0, 'node': 'env', 'at_ms': 277000}),
    ('call.escalated', {'call_id': 'c4', 'level': 3, 'to': 'all staff', 'due_ms': 306000, 'at_ms': 877000}),
    ('call.escalated', {'call_id': 'c2', 'level': 3, 'to': 'all staff', 'due_ms': 306000, 'at_ms': 877000}),
    ('call.escalated', {'call_id': 'c3', 'level': 2, 'to': 'charge nurse', 'due_ms': 306000, 'at_ms': 877000}),
    ('call.raised', {'call_id': 'c5', 'type': 'environment', 'level': 'info', 'node': None, 'input': 'env:temp_c', 'bed': None, 'by': 'room controller', 'at_ms': 877000, 'detail': {'measure': 'temp_c', 'value': 25.0, 'bound': 'high', 'limit': 24.0, 'since_ms': 277000, 'due_ms': 877000}}),
    ('call.escalated', {'call_id': 'c3', 'level': 3, 'to': 'all staff', 'due_ms': 426000, 'at_ms': 877000}),
    ('environment.recovered', {'measure': 'temp_c', 'value': 23.0, 'node': 'env', 'at_ms': 877000}),
    ('call.cleared', {'call_id': 'c5', 'by': 'temp_c back in range (23)', 'how': 'resolved', 'at_ms': 937000}),
    ('node.event', {'node': 'door', 'boot': 1, 'seq': 5, 'kind': 'button', 'src': 'cancel', 'val': 1, 'at_ms': NODE_TIME, 'x': {}, 'meaning': 'cancel'}),
    ('call.present', {'call_id': 'c4', 'by': 'in-room cancel (door/cancel)', 'at_ms': 937000}),
    ('call.present', {'call_id': 'c2', 'by': 'in-room cancel (door/cancel)', 'at_ms': 937000}),
    ('call.cleared', {'call_id': 'c4', 'by': 'in-room cancel (door/cancel)', 'how': 'in_room_cancel', 'at_ms': 937000}),
    ('call.cleared', {'call_id': 'c2', 'by': 'in-room cancel (door/cancel)', 'how': 'in_room_cancel', 'at_ms': 937000}),
]


def _normalised(records) -> list[tuple[str, dict[str, Any]]]:
    ids: dict[str, str] = {}
    out = []
    for r in records:
        data = dict(r.data)
        if "call_id" in data:
            data["call_id"] = ids.setdefault(data["call_id"], f"c{len(ids) + 1}")
        for key in ("at_ms", "due_ms", "until_ms"):
            if key in data:
                data[key] -= T0_MS
        if isinstance(data.get("detail"), dict):
            data["detail"] = {k: v - T0_MS if k.endswith("_ms") else v for k, v in data["detail"].items()}
        out.append((r.kind, data))
    return out


async def test_every_record_kind_carries_its_fields(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        await scenario(room)
        got = _normalised(await room.log())
    for i, (want, have) in enumerate(zip(EXPECTED, got)):
        assert have == want, f"record {i + 1}"
    assert len(got) == len(EXPECTED)


@pytest.mark.parametrize("down_s", [0, 45])
async def test_the_same_log_rebuilds_the_same_room(tmp_path, down_s):
    async with RoomSim(rules_config(), tmp_path / "room.db") as room:
        await scenario(room)
        before = room.c.snapshot()
        await room.restart(down_s)
        after = room.c.snapshot()
    for key in ("calls", "occupancy", "fall_risk", "environment"):
        assert after[key] == before[key], key
