"""The event stream and the paged log under concurrency: every id exactly once, in order.

docs: README "API" (the stream's ``id:`` is the cursor; resume with ``Last-Event-ID`` to get exactly
what you missed) and room_api/app.py's subscribe-then-read-the-backlog. Commits are injected where
the stream is most fragile: between subscribing and reading the backlog, and around a record that
reached the log without passing the bus; clients connect and resume while presses arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from controller.store import LogEntry
from tests.helpers import node_key, sse_events

WAIT_S = 20.0  # a guard only: every wait ends as soon as the awaited ids have arrived


def api(server, path: str) -> str:
    return server.endpoints.api_url + path


def bearer(server, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.tokens[role]}"}


async def node(server, name: str) -> NodeClient:
    client = NodeClient(name, node_key(name))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    return client


async def press(client: NodeClient, src: str) -> None:
    ev = client.event_msg("button", src)
    await client.send(ev)
    await client.recv_ack(ev["s"])  # acked: stored and published


@contextlib.asynccontextmanager
async def stream(server, role: str = "integration", *, after: int | None = None,
                 last_event_id: int | None = None) -> AsyncIterator[AsyncIterator[tuple[int, dict]]]:
    headers = bearer(server, role)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    query = "" if after is None else f"?after={after}"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(api(server, "/api/v1/events/stream" + query)) as resp:
            assert resp.status == 200
            yield sse_events(resp)


async def ids_until(events: AsyncIterator[tuple[int, dict]], last_id: int) -> list[int]:
    """Every id the stream sends, up to and including ``last_id``."""
    got: list[int] = []

    async def read() -> None:
        async for event_id, _ in events:
            got.append(event_id)
            if event_id >= last_id:
                return

    await asyncio.wait_for(read(), WAIT_S)
    return got


async def test_a_commit_between_subscribing_and_reading_the_backlog_is_sent_once(server, monkeypatch):
    bedside = await node(server, "bedside-a")
    await press(bedside, "call")
    call_id = server.controller.snapshot()["calls"][0]["id"]
    read_log = server.controller.events_after
    acked_at: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def ack_then_read(after: int, limit: int):
        if not acked_at.done():  # the stream has subscribed; a nurse acknowledges before its backlog is read
            await server.controller.acknowledge(call_id, "Nurse Kim")
            acked_at.set_result(server.controller.room.cursor)
        return await read_log(after, limit)

    monkeypatch.setattr(server.controller, "events_after", ack_then_read)
    async with stream(server, after=0) as events:
        got = await ids_until(events, await asyncio.wait_for(acked_at, WAIT_S))
        await press(bedside, "call")        # live from here: the acknowledgement is not sent again
        got += await ids_until(events, server.controller.room.cursor)
    assert got == list(range(1, server.controller.room.cursor + 1))
    await bedside.close()


async def test_a_record_the_bus_never_carried_is_sent_before_the_next_live_one(server):
    """The stream serves the log, not the bus: a record stored by another writer (or whose publish
    was lost) reaches the client in order, as soon as a later record shows the gap."""
    bedside = await node(server, "bedside-a")
    start = server.controller.room.cursor
    async with stream(server, after=start) as events:
        await press(bedside, "call")
        got = await ids_until(events, server.controller.room.cursor)     # live now
        [quiet] = await server.controller.store.append(server.controller.clock(),
                                                       [LogEntry("test.note", {"by": "another writer"})])
        await press(bedside, "call")
        final = await server.controller.store.last_log_id()
        got += await ids_until(events, final)
    assert quiet.id in got and got == list(range(start + 1, final + 1))
    await bedside.close()


class Readers:
    """Stream clients reading in the background; ``wait_all(last)`` until each has reached ``last``."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()

    def start(self, name: str, server, *, after: int | None = None, last_event_id: int | None = None,
              stop_after: int | None = None) -> None:
        self.ids.setdefault(name, [])
        self.tasks.append(asyncio.create_task(self._read(name, server, after, last_event_id, stop_after)))

    async def _read(self, name, server, after, last_event_id, stop_after) -> None:
        async with stream(server, "nurse" if name == "nurse" else "integration", after=after,
                          last_event_id=last_event_id) as events:
            async for event_id, _ in events:
                async with self._changed:
                    self.ids[name].append(event_id)
                    self._changed.notify_all()
                if stop_after is not None and len(self.ids[name]) >= stop_after:
                    return

    async def wait_all(self, last: int, names: tuple[str, ...]) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: all(self.ids[n] and self.ids[n][-1] >= last for n in names))

    async def wait_count(self, name: str, n: int) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.ids[name]) >= n)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_clients_connecting_and_resuming_while_presses_arrive_get_every_id_once(server):
    bedside, door = await node(server, "bedside-a"), await node(server, "env")
    readers = Readers()
    progress = asyncio.Queue()

    async def presses() -> None:
        for i in range(30):
            await press(bedside, "call")              # a call, then repeats of it
            if i % 4 == 3:
                await press(door, "cancel")           # cleared in the room: the next press raises anew
            await progress.put(i)

    pressing = asyncio.create_task(presses())
    try:
        readers.start("nurse", server, after=0)       # annunciates calls: its own commits interleave
        readers.start("from-start", server, after=0)
        while await progress.get() < 5:
            pass
        resume_at = server.controller.room.cursor
        readers.start("new", server)                  # no cursor: from now on
        readers.start("dropped", server, after=0, stop_after=15)
        await readers.wait_count("dropped", 15)
        while await progress.get() < 15:
            pass
        readers.start("resumed", server, last_event_id=resume_at)
        dropped = readers.ids["dropped"][-1]
        readers.start("dropped-again", server, last_event_id=dropped)
        await pressing
        await press(bedside, "call")                  # a last record every client must reach
        final = await server.controller.store.last_log_id()
        await readers.wait_all(final, ("nurse", "from-start", "new", "resumed", "dropped-again"))
    finally:
        pressing.cancel()
        await readers.stop()
    ids = readers.ids
    everything = list(range(1, final + 1))
    assert ids["from-start"] == everything and ids["nurse"] == everything
    assert ids["new"] == list(range(ids["new"][0], final + 1)) and ids["new"][0] > resume_at
    assert ids["resumed"] == list(range(resume_at + 1, final + 1))
    assert ids["dropped"] + ids["dropped-again"] == everything
    await bedside.close()
    await door.close()


async def test_paging_the_log_while_presses_arrive_gives_every_id_once(server):
    bedside, door = await node(server, "bedside-a"), await node(server, "env")

    async def presses() -> None:
        for i in range(20):
            await press(bedside, "call")
            if i % 3 == 2:
                await press(door, "cancel")

    pressing = asyncio.create_task(presses())
    seen: list[int] = []
    after = 0
    async with aiohttp.ClientSession(headers=bearer(server, "integration")) as http:
        while True:
            async with http.get(api(server, f"/api/v1/events?after={after}&limit=3")) as resp:
                assert resp.status == 200
                page = await resp.json()
            seen += [e["id"] for e in page["events"]]
            assert page["next"] == (seen[-1] if seen else 0)
            after = page["next"]
            if pressing.done() and not page["more"] and after == await server.controller.store.last_log_id():
                break
            if not page["events"]:
                await asyncio.sleep(0.01)  # caught up with the presses: poll the log again
    await pressing
    assert seen == list(range(1, await server.controller.store.last_log_id() + 1))
    await bedside.close()
    await door.close()


@pytest.mark.parametrize("limit", [1, 2, 7, 1000])
async def test_pages_of_any_size_tile_the_log(server, limit):
    bedside = await node(server, "bedside-a")
    for _ in range(5):
        await press(bedside, "call")
    seen, after = [], 0
    async with aiohttp.ClientSession(headers=bearer(server, "integration")) as http:
        while True:
            async with http.get(api(server, f"/api/v1/events?after={after}&limit={limit}")) as resp:
                page = await resp.json()
            assert len(page["events"]) <= limit
            seen += [e["id"] for e in page["events"]]
            after = page["next"]
            if not page["more"]:
                break
    assert seen == list(range(1, server.controller.room.cursor + 1))
    await bedside.close()
