"""Room state as a fold over the stored log; the event bus's bounded subscribers; config errors."""

from __future__ import annotations

import pytest

from controller import bus as bus_mod
from controller.room.config import ConfigError, load_keys, load_room, parse_room
from controller.link.nodeclient import NodeClient
from controller.runner import RoomServer
from controller.store import LogRecord
from tests.helpers import ROOM_DOC, node_key


async def test_restart_rebuilds_the_same_active_calls(tmp_path, config, keys):
    db = tmp_path / "room.db"
    async with RoomServer(config, keys, db, api_port=0, node_port=0) as srv:
        for node, src in (("bedside-a", "call"), ("bath", "cord")):
            client = NodeClient(node, node_key(node))
            await client.connect(srv.endpoints.node_host, srv.endpoints.node_port)
            ev = client.event_msg("button", src)
            await client.send(ev)
            await client.recv_ack(ev["s"])
            await client.close()
        bath_call = next(c for c in srv.controller.snapshot()["calls"] if c["type"] == "bath_emergency")
        await srv.controller.acknowledge(bath_call["id"], "Nurse Kim")
        before = srv.controller.snapshot()
    async with RoomServer(config, keys, db, api_port=0, node_port=0) as srv:
        after = srv.controller.snapshot()
    assert after["calls"] == before["calls"]
    assert [c["acknowledged_by"] for c in after["calls"]] == ["Nurse Kim", None]
    # A node online before the restart keeps that status: supervision gives it the usual three
    # heartbeats from the restart to check in again (test_room_rules covers the timing).
    assert {n["id"]: n["online"] for n in after["nodes"]}["bedside-a"] is True


def test_lagging_subscriber_is_ended_others_keep_going(monkeypatch):
    monkeypatch.setattr(bus_mod, "SUBSCRIBER_QUEUE_LEN", 3)
    bus = bus_mod.EventBus()
    slow, fast = bus.subscribe(), bus.subscribe()
    records = [LogRecord(i, 0, "x", {}) for i in range(1, 5)]
    bus.publish(records[:3])
    for r in records[:3]:
        assert fast._queue.get_nowait() is r
    bus.publish(records[3:])
    assert slow.lagged and not fast.lagged
    assert fast._queue.get_nowait() is records[3]


async def test_ended_subscription_wakes_a_waiting_reader():
    bus = bus_mod.EventBus()
    sub = bus.subscribe()
    import asyncio

    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    bus.end_all()
    assert await asyncio.wait_for(waiter, 1) is None


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["nodes"]["bath"]["inputs"].update(cord="explode"), "nodes.bath.inputs.cord"),
    (lambda d: d["nodes"]["bedside-a"].update(bed="Z"), "nodes.bedside-a.bed"),
    (lambda d: d.pop("room"), "missing key 'room'"),
    (lambda d: d["gateway"].update(heartbeat_ms=5), "gateway.heartbeat_ms"),
    (lambda d: d["nodes"].update({"Bad Name": {}}), "nodes.Bad Name"),
])
def test_config_errors_name_file_and_key(mutate, message):
    import copy

    doc = copy.deepcopy(ROOM_DOC)
    mutate(doc)
    with pytest.raises(ConfigError, match="room.toml") as info:
        parse_room(doc, "room.toml")
    assert message in str(info.value)


def test_config_files(tmp_path):
    bad_toml = tmp_path / "room.toml"
    bad_toml.write_text("[room\nid = 1")
    with pytest.raises(ConfigError, match=str(bad_toml)):
        load_room(bad_toml)
    keys = tmp_path / "keys.json"
    keys.write_text('{"nodes": {"a": "abcd"}}')
    with pytest.raises(ConfigError, match="nodes.a: key must be 64 hex digits"):
        load_keys(keys)
