"""Storage faults without root: the room database turns read-only (as an SD card does after write
errors: ``PRAGMA query_only``, a real SQLite refusal) and the free space is faked at the floor's
edges. The full-disk run with real processes is tests/faults/test_storage_full.py."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from controller.link.protocol import NodeEvent
from controller.store.health import READINGS_MIN_FREE_BYTES, READINGS_RESUME_MARGIN
from controller.store import StorageError, Store
from tests.helpers import node_key
from tests.roomsim import RoomSim, rules_config

FLOOR = READINGS_MIN_FREE_BYTES
RESUME = int(FLOOR * (1 + READINGS_RESUME_MARGIN))


async def read_only(controller, on: bool = True) -> None:
    """The database refuses writes (OperationalError: attempt to write a readonly database)."""
    await controller.store._run(lambda db: db.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}"))


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


def storage_alarms(room: RoomSim) -> list[dict]:
    return [c for c in room.calls() if c["source"]["input"] == "system:storage"]


async def test_a_storage_failure_is_an_alarm_at_once_and_stored_with_its_end_when_writes_work(room):
    await room.press("bedside-a", "call")
    stored_before = await room.log()
    await read_only(room.c)
    with pytest.raises(StorageError):
        await room.press("bath", "cord")  # the gateway does not ack it: the node keeps it
    bath_seq = room._seq["bath"]
    assert await room.c.check_storage() is True, "still failing"
    [alarm] = storage_alarms(room)
    assert (alarm["type"], alarm["priority"], alarm["clears"]) == ("system_fault", "low", "condition")
    assert alarm["detail"]["inputs_waiting"] == {"bath/cord": "bath_emergency"}
    assert "readonly" in alarm["detail"]["error"]
    outputs = room.c.snapshot()["outputs"]  # the patient's call keeps the dome light and the tone
    assert (outputs["dome"]["colour"], outputs["tone"]["pattern"]) == ("white", "medium")
    assert [r["reason"] for r in room.c.storage.reasons()] == ["storage_failed"]
    assert "bath/cord (bath_emergency)" in room.c.storage.reasons()[0]["message"]
    assert await room.log() == stored_before, "nothing could be stored, and nothing was"
    with pytest.raises(StorageError):
        await room.c.acknowledge(room.call("patient_call")["id"], "Nurse Kim")
    assert await room.c.check_storage() is True, "the probe fails while the database is read-only"

    await read_only(room.c, False)
    assert await room.c.check_storage() is False
    assert storage_alarms(room) == [] and room.c.storage.state == "ok" and room.c.storage.reasons() == []
    new = (await room.log())[len(stored_before):]
    assert [r.kind for r in new] == ["call.raised", "call.cleared"]
    raised, cleared = new
    assert raised.data["call_id"] == alarm["id"] == cleared.data["call_id"]
    assert raised.data["at_ms"] == alarm["raised_at_ms"], "stored with the time it was raised"
    assert raised.data["detail"]["inputs_waiting"] == {"bath/cord": "bath_emergency"}
    # The node resends the same event: stored once, the emergency is raised.
    await room.c.node_event(NodeEvent("bath", room.boot, room._next("bath"), bath_seq, "button", "cord", 1, 0, {}))
    assert room.types() == ["bath_emergency", "patient_call"]


async def test_when_a_resent_event_finds_the_storage_working_the_alarm_is_stored_before_it(room):
    await read_only(room.c)
    with pytest.raises(StorageError):
        await room.press("bath", "cord")
    await room.c.check_storage()
    before = len(await room.log())
    await read_only(room.c, False)
    event_no = room._seq["bath"]  # the event that was refused, resent in a new frame
    await room.c.node_event(NodeEvent("bath", room.boot, room._next("bath"), event_no, "button", "cord", 1, 0, {}))
    new = (await room.log())[before:]
    assert [(r.kind, r.data.get("type")) for r in new] == [
        ("call.raised", "system_fault"), ("call.cleared", None),
        ("node.event", None), ("call.raised", "bath_emergency")]
    assert storage_alarms(room) == [] and room.types() == ["bath_emergency"]
    assert await room.c.check_storage() is False, "nothing left to store"


async def test_with_no_call_active_the_storage_alarm_lights_the_dome_and_sounds(room):
    await read_only(room.c)
    with pytest.raises(StorageError):
        await room.c.silence_tone("Nurse Kim")
    await room.c.check_storage()
    outputs = room.c.snapshot()["outputs"]
    assert (outputs["dome"]["colour"], outputs["dome"]["pattern"], outputs["tone"]["pattern"]) == \
        ("yellow", "steady", "low")


async def test_a_repeated_failure_after_recovery_raises_the_alarm_again(room):
    for _ in range(2):
        await read_only(room.c)
        with pytest.raises(StorageError):
            await room.press("bedside-a", "call")
        assert await room.c.check_storage() is True and len(storage_alarms(room)) == 1
        await read_only(room.c, False)
        assert await room.c.check_storage() is False and storage_alarms(room) == []
    raised = [r for r in await room.log("call.raised") if r.data["input"] == "system:storage"]
    assert len(raised) == 2 and len({r.data["call_id"] for r in raised}) == 2


async def test_a_heartbeat_needs_no_disk(room):
    await room.hello("bedside-a")
    await read_only(room.c)
    await room.heartbeat("bedside-a")  # acked: liveness is not a write; the mark waits in memory
    assert room.c.marks["bedside-a"].max_seq == room._seq["bedside-a"]


@pytest.mark.parametrize("free, stored", [(FLOOR + 1, True), (FLOOR, True), (FLOOR - 1, False)])
async def test_readings_stop_below_the_floor_and_are_counted(room, free, stored):
    room.c.store.free_bytes = lambda: free
    await room.reading("env", temp_mdegc=22_000, rh_mpct=45_000)
    await room.c.flush_readings()
    await room.c.settle()
    assert room.c.readings_stored == (2 if stored else 0)
    assert room.c.storage.readings_not_stored["disk_floor"] == (0 if stored else 2)
    disk_alarms = [c for c in room.calls() if c["source"]["input"] == "system:disk_space"]
    assert len(disk_alarms) == (0 if stored else 1)
    assert [r["reason"] for r in room.c.storage.reasons()] == ([] if stored else ["disk_low"])


@pytest.mark.parametrize("free, resumed", [(RESUME - 1, False), (RESUME, True)])
async def test_readings_resume_only_with_a_margin_above_the_floor(room, free, resumed):
    room.c.store.free_bytes = lambda: FLOOR - 1
    await room.reading("env", temp_mdegc=22_000)
    await room.c.flush_readings()
    room.c.store.free_bytes = lambda: free
    await room.reading("env", temp_mdegc=22_100)
    await room.c.flush_readings()
    await room.c.settle()
    assert room.c.readings_stored == (1 if resumed else 0)
    assert room.c.storage.readings_not_stored["disk_floor"] == (1 if resumed else 2)
    disk = [r for r in await room.log() if r.kind.startswith("call.") and
            (r.data.get("input") == "system:disk_space" or r.kind == "call.cleared")]
    assert [r.kind for r in disk] == (["call.raised", "call.cleared"] if resumed else ["call.raised"])


async def test_a_disk_space_alarm_from_before_a_restart_clears_when_there_is_room(room, monkeypatch):
    room.c.store.free_bytes = lambda: FLOOR - 1
    await room.reading("env", temp_mdegc=22_000)
    await room.c.flush_readings()
    await room.c.settle()
    assert [c["source"]["input"] for c in room.calls()] == ["system:disk_space"]
    await room.stop()
    monkeypatch.setattr(Store, "free_bytes", lambda self: RESUME)  # space was freed while it was down
    await room.start()
    await room.c.settle()
    assert room.calls() == [] and room.c.storage.reasons() == []


# ---------------------------------------------------------------------- through the API
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _until(check, what: str, timeout_s: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (result := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)  # polling the API for an observable condition
    return result


async def test_health_metrics_stream_and_pages_data_follow_the_storage(server):
    api = server.endpoints.api_url
    async with aiohttp.ClientSession() as http:
        async def health() -> dict:
            async with http.get(f"{api}/api/v1/health") as resp:
                return await resp.json()

        async def metric(name: str) -> float:
            async with http.get(f"{api}/metrics", headers=bearer(server.tokens["facilities"])) as resp:
                line = next(l for l in (await resp.text()).splitlines() if l.startswith(name + " "))
            return float(line.split()[1])

        assert (await health())["status"] == "ok" and await metric("smartroom_storage_up") == 1
        nurse = bearer(server.tokens["nurse"])
        async with http.get(f"{api}/api/v1/events/stream", headers=nurse) as stream:
            await read_only(server.controller)
            client = NodeClient("bath", node_key("bath"))
            await client.connect(server.endpoints.node_host, server.endpoints.node_port)
            ev = client.event_msg("button", "cord")
            await client.send(ev)
            async with http.post(f"{api}/api/v1/room/silence", headers=nurse, json={}) as resp:
                err = await resp.json()
            assert resp.status == 503 and err["error"]["code"] == "storage_unavailable"
            status = await asyncio.wait_for(_status_event(stream), 10)
            assert [r["reason"] for r in status["reasons"]] == ["storage_failed"]
            degraded = await _until(lambda: _degraded(health), "health is degraded")
            assert degraded["reasons"][0]["reason"] == "storage_failed"
            assert await metric("smartroom_storage_up") == 0
            assert await metric("smartroom_storage_write_failures_total") >= 1
            async with http.get(f"{api}/api/v1/room", headers=nurse) as resp:
                room = await resp.json()
            assert room["storage"]["state"] == "failed"
            assert [c["source"]["input"] for c in room["calls"]] == ["system:storage"]
            async with http.get(f"{api}/api/v1/gateway", headers=bearer(server.tokens["facilities"])) as resp:
                assert (await resp.json())["rejected"]["storage_unavailable"] >= 1
            await read_only(server.controller, False)
            resent = client.resend(ev)  # the node's resend: a new frame, the same event
            assert (await client.send_event(resent))["e"] == ev["e"]
            await _until(lambda: _ok(health), "health is ok again")
            await client.close()
    kinds = [(r.kind, r.data.get("type")) for r in await server.controller.events_after(0, 100)]
    assert kinds.count(("call.raised", "bath_emergency")) == 1
    assert ("call.raised", "system_fault") in kinds and ("call.cleared", None) in kinds


async def _status_event(resp: aiohttp.ClientResponse) -> dict:
    """The next ``event: status`` on an SSE response (it has no id: it is not in the log)."""
    event, data = None, []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line:
            if event == "status":
                return json.loads("\n".join(data))
            event, data = None, []
    raise AssertionError("the stream ended")


async def _degraded(health) -> dict | None:
    body = await health()
    return body if body["status"] == "degraded" else None


async def _ok(health) -> bool:
    body = await health()
    return body["status"] == "ok" and body["reasons"] == []


async def test_an_input_waiting_on_the_store_is_announced_to_the_streams_at_once(room):
    """The pages name the inputs waiting on a failed store ("check in person: bath/cord"): each new
    one is a status change for the streams right away, not only at the storage probe's next round."""
    from controller.bus import STATUS_CHANGED

    await read_only(room.c)
    with room.c.subscribe() as sub:
        with pytest.raises(StorageError):
            await room.press("bath", "cord")
        seen = []
        while (item := await asyncio.wait_for(sub.get(), 5)) is STATUS_CHANGED:
            seen.append(dict(room.c.storage.waiting))
            if "bath/cord" in room.c.storage.waiting:
                break
        assert seen[-1] == {"bath/cord": "bath_emergency"}
        with pytest.raises(StorageError):
            await room.press("bath", "cord")                 # the same input again: nothing new to say
        assert room.c.storage.waiting == {"bath/cord": "bath_emergency"}
    await read_only(room.c, False)
