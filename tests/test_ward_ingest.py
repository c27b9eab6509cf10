"""The console's ingest rules without a broker: each room's events stored once and in cursor order,
whatever order and however often they arrive; a gap waits for the missing events."""

from __future__ import annotations

import json

import pytest

from controller.uplink.wire import RoomEvent
from ward.config import BrokerLink, WardConfig
from ward.console import WardConsole


@pytest.fixture
async def console(tmp_path):
    config = WardConfig("Ward 4B", "general", "4b", BrokerLink("127.0.0.1", 1))
    ward = WardConsole(config, tmp_path / "ward.db")
    await ward.store.open()  # only the store: no broker connection in these tests
    yield ward
    for task in ward._gap_tasks.values():
        task.cancel()
    await ward.store.close()


def ev(room: str, cursor: int) -> RoomEvent:
    return RoomEvent(room, cursor, 1000 + cursor, "call.raised", {"call_id": f"c{cursor}"})


async def test_events_are_stored_once_in_each_rooms_cursor_order(console):
    with console.subscribe() as sub:
        await console._on_events([ev("a", 1), ev("b", 1), ev("a", 3)])  # a/3 ahead of a/2: it waits
        assert await console.store.room_event_cursors("a") == [1]
        assert "a" in console._gap_tasks  # and the gap filler is on its way
        await console._on_events([ev("a", 2), ev("a", 2), ev("b", 1)])  # a/2 fills the gap; repeats
        assert await console.store.room_event_cursors("a") == [1, 2, 3]
        assert await console.store.room_event_cursors("b") == [1]
        assert console.stats.duplicates == 2 and console.stats.events_stored == 4
        await console._on_events([ev("a", 1), ev("a", 3)])  # already stored: nothing new
        assert console.stats.duplicates == 4
        streamed = [(r.data["room"], r.data["cursor"]) for r in sub.get_nowait(100)]
    # the stream in each room's order (rooms interleave as their events come)
    assert [c for r, c in streamed if r == "a"] == [1, 2, 3] and [c for r, c in streamed if r == "b"] == [1]


async def test_the_cursors_survive_a_restart(tmp_path, console):
    await console._on_events([ev("a", 1), ev("a", 2)])
    again = WardConsole(console.config, tmp_path / "ward.db")
    await console.store.close()
    await again.store.open()
    try:
        assert await again.store.room_cursors() == {"a": 2}
        again.cursors = await again.store.room_cursors()
        await again._on_events([ev("a", 2), ev("a", 3)])
        assert await again.store.room_event_cursors("a") == [1, 2, 3]
        assert again.stats.duplicates == 1
    finally:
        await again.store.close()
        console.store._db = None  # closed above


async def test_a_room_events_data_keeps_the_rooms_own_fields(console):
    await console._on_events([RoomEvent("a", 1, 5, "call.acknowledged", {"call_id": "c1", "by": "Nurse Kim"})])
    [record] = await console.events_after(0, 10)
    assert record.kind == "call.acknowledged"
    assert json.loads(json.dumps(record.data)) == {"room": "a", "cursor": 1, "at_ms": 5, "call_id": "c1",
                                                    "by": "Nurse Kim"}
