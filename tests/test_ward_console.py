"""The ward console against a real Mosquitto and real rooms: every call of the unit in priority
order, each room event stored once in cursor order through broker kills, console restarts and a room
cut off, gaps filled from the room's API, commands under the room's rules, escalation to people."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from controller.runner import RoomServer
from tests.helpers import keys_for
from tests.test_system import free_port
from tests.test_ward_uplink import WARD_ALARM_S, _spawn_room, eventually
from tests.wardkit import ROOMS, Cutter, broker, press, ward_config, ward_room  # noqa: F401
from ward.server import WardServer


@contextlib.asynccontextmanager
async def rooms_and_ward(broker, tmp_path, *, rooms=ROOMS, backfill=True, broker_port: dict | None = None):
    """Running rooms on the broker and a ward console with an integration token per room."""
    servers = {}
    stack = contextlib.AsyncExitStack()
    async with stack:
        for room in rooms:
            class At:  # where this room reaches the broker (maybe through a Cutter)
                host, port = broker.host, (broker_port or {}).get(room, broker.port)
            (tmp_path / room).mkdir()
            config = ward_room(room, At, tmp_path / room)
            servers[room] = await stack.enter_async_context(
                RoomServer(config, keys_for(config), tmp_path / room / "room.db", api_port=0, node_port=0))
        tokens = {room: await s.create_token("integration", "ward 4B") for room, s in servers.items()}
        config, _ = ward_config(broker, tmp_path, tokens if backfill else None, rooms=rooms)
        ward = await stack.enter_async_context(WardServer(config, tmp_path / "ward.db", http_port=0))
        yield servers, ward


async def stored_cursors(ward: WardServer, room: str) -> list[int]:
    return await ward.console.store.room_event_cursors(room)


async def room_cursors(server: RoomServer) -> list[int]:
    return [r.id for r in await server.controller.events_after(0, 100_000)]


async def all_stored(ward: WardServer, servers: dict) -> bool:
    for room, server in servers.items():
        if await stored_cursors(ward, room) != await room_cursors(server):
            return False
    return True


async def until_all_stored(ward, servers, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await all_stored(ward, servers):
            await asyncio.sleep(0.05)


async def test_the_ward_shows_every_call_of_the_unit_in_priority_order(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        await eventually(lambda: all(ward.console.rooms.get(r) and ward.console.rooms[r].status == "online"
                                     for r in ROOMS))
        await press(servers["4b-12"], "bedside-a", "call")
        await press(servers["4b-14"], "bath", "cord")
        await press(servers["4b-14"], "wearable-a", "pendant")
        await until_all_stored(ward, servers)
        await eventually(lambda: len(ward.console.calls()) == 3)
        calls = ward.console.calls()
        assert [(c["room"], c["type"]) for c in calls] == [
            ("4b-14", "bath_emergency"), ("4b-12", "patient_call"), ("4b-14", "patient_call")]
        view = ward.console.ward_view()
        grid = {r["room"]: r for r in view["rooms"]}
        assert grid["4b-14"]["dome"]["colour"] == servers["4b-14"].controller.outputs().dome_colour
        assert grid["4b-12"]["status"] == "online" and view["alarms"] == []
        # The ward's log holds each room event once, in each room's cursor order.
        for room, server in servers.items():
            assert await stored_cursors(ward, room) == await room_cursors(server)
        assert ward.console.stats.duplicates == 0


async def _raise_steadily(servers, stop: asyncio.Event) -> int:
    """Calls and cancels in every room, one round per 100 ms, until ``stop``."""
    n = 0
    while not stop.is_set():
        for server in servers.values():
            await press(server, "bedside-a", "call")
            await press(server, "bedside-a", "cancel")
        n += 1
        await asyncio.sleep(0.1)  # the pace of the traffic, not a wait for a result
    return n


async def test_broker_sigkilled_mid_stream_and_restarted_loses_and_duplicates_nothing(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        await eventually(lambda: ward.console.connected.is_set())
        stop = asyncio.Event()
        traffic = asyncio.create_task(_raise_steadily(servers, stop))
        await eventually(lambda: ward.console.stats.events_stored > 20)
        await broker.kill()      # SIGKILL: no persistence, everything in flight in the broker is gone
        at_kill = {room: s.controller.room.cursor for room, s in servers.items()}
        await asyncio.sleep(0.5)  # the rooms keep raising calls while it is down (traffic, not a wait)
        assert all(s.controller.room.cursor > at_kill[room] for room, s in servers.items())
        await broker.start()
        await eventually(lambda: ward.console.connected.is_set(), timeout_s=20)
        await asyncio.sleep(0.5)  # and while everyone reconnects
        stop.set()
        rounds = await traffic
        assert rounds >= 5
        await until_all_stored(ward, servers, timeout_s=30)
        for room, server in servers.items():
            stored = await stored_cursors(ward, room)
            assert stored == await room_cursors(server)  # every event, once, in the room's order
        assert ward.console.gaps == {}
