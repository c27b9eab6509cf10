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


class FakeRoomLog:
    """A room's /api/v1/events as _backfill reads it: its log, in id order, which may have holes
    (ids a failed write there never stored; the room never reuses them)."""

    def __init__(self, room: str, cursors: list[int]) -> None:
        self.room, self.log = room, [ev(room, c) for c in cursors]
        self.calls: list[tuple[int, int]] = []

    async def backfill(self, room: str, after: int, upto: int):
        self.calls.append((after, upto))
        later = [e for e in self.log if e.cursor > after]
        return [e for e in later if e.cursor <= upto], next((e.cursor for e in later if e.cursor > upto), None)


async def _until(condition, what: str) -> None:
    import asyncio
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def test_ids_the_rooms_own_log_never_stored_are_passed_over_not_waited_for(console, monkeypatch):
    """The room stored 1, failed a write (ids 2 and 3 never stored, never reused), then stored 4 and 5.
    The ward sees 1 and 4: the gap filler asks the room, whose log goes on past 3, so 2 and 3 are
    holes, passed over once and counted; 4 and 5 are stored and the room is not stuck behind them."""
    import ward.console as wc

    monkeypatch.setattr(wc, "GAP_GRACE_S", 0)
    room = FakeRoomLog("a", [1, 4, 5])
    monkeypatch.setattr(console, "_backfill", room.backfill)
    await console._on_events([ev("a", 1), ev("a", 4)])
    await _until(lambda: console.cursors.get("a") == 4, "the ward past the room's hole")
    await console._on_events([ev("a", 5)])
    assert await console.store.room_event_cursors("a") == [1, 4, 5]
    assert console.stats.skipped == 2 and console.gaps == {}
    assert room.calls[0] == (1, 3)


async def test_missing_ids_the_room_cannot_vouch_for_stay_a_gap(console, monkeypatch):
    """The room's log ends at 1 but the ward holds 4 (from the broker): the room cannot say 2 and 3
    never existed, so they are not passed over: the gap stays, and is shown."""
    import ward.console as wc

    monkeypatch.setattr(wc, "GAP_GRACE_S", 0)
    room = FakeRoomLog("a", [1])
    monkeypatch.setattr(console, "_backfill", room.backfill)
    await console._on_events([ev("a", 1), ev("a", 4)])
    await _until(lambda: "a" in console.gaps, "the gap shown")
    assert console.gaps["a"][0] == 2 and console.cursors["a"] == 1
    assert console.stats.skipped == 0
    assert await console.store.room_event_cursors("a") == [1]
