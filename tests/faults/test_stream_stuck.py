"""Fault: a screen that stops reading. A nurse client that opens the event stream and then takes
nothing (a hung browser, a frozen tablet) must be dropped within ``STREAM_SEND_TIMEOUT_S`` and
counted, and must never be credited with showing a call.

The room is real (controller, gateway, API on loopback); the stuck client is a raw socket with a
tiny receive buffer that never reads, resuming from the start of a long log so the server's
writes back up at once.
"""

from __future__ import annotations

import asyncio
import socket

from controller.link.nodeclient import NodeClient
from controller.store import LogEntry
from room_api import app as app_mod
from tests.faults.roomserver import FaultRoom, faults_config
from tests.helpers import node_key

SEND_TIMEOUT_S = 0.5          # the test's stream send timeout (the room's is 10 s)
HISTORY_ROWS = 8000           # x 2 KB: a long history, several times what socket buffers hold
DROP_DEADLINE_S = 30.0        # filling the buffers, then the send timeout; seconds in practice


async def press(room: FaultRoom, node: str, src: str) -> None:
    client = NodeClient(node, node_key(node))
    await client.connect("127.0.0.1", room.node_port)
    ev = client.event_msg("button", src)
    await client.send(ev)
    await client.recv_ack(ev["s"])
    await client.close()


def stuck_client(url: str, token: str) -> socket.socket:
    """Connect, ask for the stream from the start of the log, and never read."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((host, int(port)))
    sock.sendall(f"GET /api/v1/events/stream?after=0&endpoint=stuck%20tablet HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


async def until(condition, deadline_s: float, what: str) -> None:
    """Poll an observable condition until it holds, failing after ``deadline_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not await condition():
        if loop.time() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        await asyncio.sleep(0.05)


async def test_a_stuck_stream_is_dropped_counted_and_never_credited(tmp_path, monkeypatch):
    monkeypatch.setattr(app_mod, "STREAM_SEND_TIMEOUT_S", SEND_TIMEOUT_S)
    async with FaultRoom(faults_config(), tmp_path) as room:
        await press(room, "bath", "cord")                  # first in the log: the first thing sent
        raised = await room.next_record("call.raised", type="bath_emergency")
        now = room.clock.ms
        await room.controller.store.append(now, [LogEntry("test.history", {"pad": "x" * 2000, "at_ms": now})
                                                 for _ in range(HISTORY_ROWS)])
        sock = await asyncio.to_thread(stuck_client, room.url, room.tokens["nurse"])
        try:
            async def dropped() -> bool:
                return await room.metric("smartroom_event_stream_dropped_total", 'reason="send_timeout"') == 1

            await until(dropped, DROP_DEADLINE_S, "the stuck stream dropped for its send timeout")
            assert await room.metric("smartroom_event_stream_subscribers") == 0
            assert await room.metric("smartroom_nurse_streams") == 0
            assert room.controller.room.calls[raised.data["call_id"]].annunciated_at_ms is None, \
                "written into a socket is not shown on a screen"
            # The server aborted the connection: the client sees it end (after what was buffered).
            sock.settimeout(DROP_DEADLINE_S)
            ended = await asyncio.to_thread(_read_to_end, sock)
            assert ended in ("eof", "reset")
        finally:
            sock.close()
        assert await room.metric("smartroom_calls_not_displayed") == 0, "the fake clock has not moved"


def _read_to_end(sock: socket.socket) -> str:
    try:
        while sock.recv(1 << 16):
            pass
        return "eof"
    except ConnectionResetError:
        return "reset"
