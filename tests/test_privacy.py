"""Facilities staff see the room without its patients: the snapshot, the event log and the stream
name no patient for the facilities role, and name them for the roles that care for patients."""

from __future__ import annotations

import aiohttp

from controller.model import NodeEvent
from controller.room.hospital import ADMIT, Patient
from room_api.privacy import record_without_patient, room_without_patients
from tests.helpers import next_event, sse_events

JANE = Patient("MRN-7", "Jane Doe", "Doe", "Jane")


async def _admit_and_call(server) -> str:
    controller = server.controller
    await controller.admission("A", JANE, ADMIT, "test", "adt-1")
    await controller.node_event(NodeEvent("bedside-a", 1, 5, 5, "button", "call", 1, 0))
    return next(iter(controller.room.calls))


def _names_jane(obj) -> bool:
    return "MRN-7" in str(obj) or "Jane" in str(obj)


async def test_room_snapshot_names_the_patient_only_for_carers(server):
    call_id = await _admit_and_call(server)
    async with aiohttp.ClientSession(server.endpoints.api_url) as http:
        seen = {}
        for role in ("facilities", "nurse", "admin", "integration"):
            async with http.get("/api/v1/room", headers={"Authorization": f"Bearer {server.tokens[role]}"}) as resp:
                assert resp.status == 200
                seen[role] = await resp.json()
    fac = seen["facilities"]
    assert not _names_jane(fac)
    assert fac["patients"] == {bed: None for bed in seen["nurse"]["patients"]}
    assert [c["id"] for c in fac["calls"]] == [call_id] and fac["calls"][0]["patient"] is None
    for role in ("nurse", "admin", "integration"):
        assert seen[role]["patients"]["A"]["id"] == "MRN-7"
        assert seen[role]["calls"][0]["patient"]["name"] == "Jane Doe"
    # nothing else differs: the facilities view is the same room
    assert {k: v for k, v in fac.items() if k not in ("patients", "calls")} == \
        {k: v for k, v in seen["nurse"].items() if k not in ("patients", "calls")}


async def test_event_log_and_stream_hide_the_patient_from_facilities(server):
    await _admit_and_call(server)
    async with aiohttp.ClientSession(server.endpoints.api_url) as http:
        logs = {}
        for role in ("facilities", "nurse"):
            headers = {"Authorization": f"Bearer {server.tokens[role]}"}
            async with http.get("/api/v1/events", headers=headers) as resp:
                logs[role] = (await resp.json())["events"]
            async with http.get("/api/v1/events/stream?after=0", headers=headers) as resp:
                stream = sse_events(resp)
                _, admitted = await next_event(stream, "bed.patient")
                _, raised = await next_event(stream, "call.raised")
                logs[role + " stream"] = [admitted, raised]
    assert [e["kind"] for e in logs["facilities"]] == [e["kind"] for e in logs["nurse"]]
    assert _names_jane(logs["nurse"]) and _names_jane(logs["nurse stream"])
    assert not _names_jane(logs["facilities"]) and not _names_jane(logs["facilities stream"])
    admitted, raised = logs["facilities stream"]
    assert admitted["data"]["patient"] is None and admitted["data"]["reason"] == ADMIT  # what happened stays
    assert raised["data"]["patient"] is None and raised["data"]["type"] == "patient_call"


def test_redaction_keeps_what_has_no_patient_and_never_changes_its_input():
    record = {"id": 3, "ts_ms": 1, "kind": "call.raised", "data": {"patient": {"id": "MRN-7"}, "type": "x"}}
    assert record_without_patient(record)["data"] == {"patient": None, "type": "x"}
    assert record["data"]["patient"] == {"id": "MRN-7"}  # a copy, not the store's record
    plain = {"id": 4, "ts_ms": 1, "kind": "node.online", "data": {"node": "a"}}
    assert record_without_patient(plain) == plain
    discharged = {"id": 5, "ts_ms": 1, "kind": "bed.patient", "data": {"patient": None, "reason": "discharge"}}
    assert record_without_patient(discharged) == discharged
    snap = {"patients": {"A": {"id": "MRN-7"}, "B": None}, "calls": [{"id": "c1", "patient": {"id": "MRN-7"}}]}
    assert room_without_patients(snap) == {"patients": {"A": None, "B": None}, "calls": [{"id": "c1", "patient": None}]}
    assert snap["patients"]["A"] == {"id": "MRN-7"}
