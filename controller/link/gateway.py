"""The node gateway: a TCP server speaking node link protocol v1 (docs/protocol.md).

Layers: :func:`read_frame` (framing) → :class:`NodeConnection` (one node's session: hello,
acceptance rules, acks, commands) → :class:`RoomController` (storage and room logic). A bad frame
closes only the connection it came on.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from . import protocol as p
from ..model import wall_ms
from ..service import RoomController
from ..store import StorageError

log = logging.getLogger("smartroom.gateway")

HELLO_TIMEOUT_S = 5.0          # a node sends hello right after connecting; anything slower is not a node
WRITE_TIMEOUT_S = 5.0          # a node that cannot take a 60-byte ack in 5 s is gone
WRITE_BUFFER_HIGH = 16 * 1024  # unsent bytes before a send waits for the node: ~150 acks, far more than its window
WRITE_BUFFER_MAX = 64 * 1024   # unsent bytes (~600 commands) that mean a node no longer reads at all
FAIR_SHARE_FRAMES = 32         # frames one connection handles before the others get a turn (~1 ms)
IDLE_GRACE_S = 1.0             # on top of three heartbeat intervals before a silent link is closed


@dataclass
class GatewayStats:
    accepted: Counter[str] = field(default_factory=Counter)   # by message type
    rejected: Counter[str] = field(default_factory=Counter)   # by reason (docs/protocol.md §4)
    duplicates: int = 0
    connections: int = 0

    def to_json(self) -> dict[str, object]:
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected), "duplicates": self.duplicates,
                "connections": self.connections}


class _ConnectionEnded(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """One frame's payload (body + tag). Raises ProtocolError or _ConnectionEnded.

    One deadline per frame (asyncio.timeout: one timer, where wait_for made a task per read): the
    whole frame must be in within ``timeout_s``. A node writes a frame at once, so a frame that
    began in time but did not end by then is broken, not slow.
    """
    length = -1
    try:
        async with asyncio.timeout(timeout_s):
            (length,) = struct.unpack(">H", await reader.readexactly(p.LENGTH_BYTES))
            p.check_length(length)
            return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        if length >= 0:
            raise p.ProtocolError("malformed_frame",
                                  f"connection ended {len(exc.partial)}/{length} bytes into a frame") from exc
        if exc.partial:
            raise p.ProtocolError("malformed_frame", "connection ended inside a length prefix") from exc
        raise _ConnectionEnded("closed by peer") from exc
    except TimeoutError as exc:
        if length >= 0:
            raise p.ProtocolError("malformed_frame", "frame not completed in time") from exc
        raise _ConnectionEnded(f"silent for {timeout_s:.1f} s") from exc


class NodeConnection:
    def __init__(self, gateway: "NodeGateway", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gateway = gateway
        self.controller = gateway.controller
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.node: str | None = None
        self.boot = 0
        self.key = b""
        self.sid = 0
        self.out_seq = 0
        self.shown: dict[str, str] = {}  # output -> the pattern last sent to the node
        self.has_tone = False  # the room file gives this node the in-room tone

    # ------------------------------------------------------------------ sending
    def _write(self, build: Callable[[int], dict[str, object]]) -> None:
        """Queue ``build(s)`` on the socket; ``s`` is taken here, with no await between, so frames
        leave in sequence order without a lock."""
        self.out_seq += 1
        self.writer.write(p.encode_frame(self.key, build(self.out_seq)))

    async def _drained(self) -> None:
        """Wait (at most WRITE_TIMEOUT_S) only when the node is not reading what it is sent."""
        if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.writer.drain()

    async def send(self, build: Callable[[int], dict[str, object]]) -> None:
        """Send ``build(s)``."""
        self._write(build)
        await self._drained()

    async def send_ack(self, seq: int) -> None:
        self.out_seq += 1
        self.writer.write(p.ack_frame(self.key, self.sid, self.out_seq, seq))
        await self._drained()

    def show(self, indicator: str, tone: str) -> None:
        """Command the reassurance light and tone patterns the room wants, where the node shows others.

        Written at once, without waiting: a node that leaves its commands unread past
        WRITE_BUFFER_MAX is closed (it reconnects and is sent the current state again).
        """
        for output, pattern in (("indicator", indicator), ("tone", tone)):
            if (output == "indicator" or self.has_tone) and self.shown.get(output) != pattern:
                self.shown[output] = pattern
                self._write(lambda s, c=output, pat=pattern: p.command(self.sid, s, c, p=pat))
        if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
            log.warning("node=%s peer=%s does not read its commands; closing its connection", self.node, self.peer)
            self.writer.close()

    async def sync_outputs(self) -> None:
        """Send the reassurance light and tone patterns the room wants, where the node shows others."""
        if self.node is None:
            return
        room = self.controller.room
        self.show(room.indicator_for(self.node), self.controller.outputs().tone)

    # ------------------------------------------------------------------ receiving
    def idle_timeout_s(self) -> float:
        return 3 * self.controller.config.heartbeat_ms / 1000 + IDLE_GRACE_S

    async def run(self) -> None:
        stats = self.gateway.stats
        try:
            first = await read_frame(self.reader, HELLO_TIMEOUT_S)
            await self._handle(first, hello_expected=True)
            frames = 0
            while True:
                await self._handle(await read_frame(self.reader, self.idle_timeout_s()), hello_expected=False)
                frames += 1
                if frames % FAIR_SHARE_FRAMES == 0:  # buffered frames are read without a pause: let others in
                    await asyncio.sleep(0)
        except p.ProtocolError as exc:
            stats.rejected[exc.reason] += 1
            log.warning("rejected frame from node=%s peer=%s reason=%s: %s; closing its connection",
                        self.node or "?", self.peer, exc.reason, exc.detail)
        except _ConnectionEnded as exc:
            log.info("node=%s peer=%s connection ended: %s", self.node or "?", self.peer, exc)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("node=%s peer=%s connection lost: %r", self.node or "?", self.peer, exc)
        except StorageError as exc:  # nothing was acked: the node keeps its events; the storage alarm is up
            stats.rejected["storage_unavailable"] += 1
            log.warning("node=%s peer=%s: cannot store (%s); closing its connection", self.node or "?", self.peer, exc)
        except Exception:  # e.g. the store failed: nothing was acked, so the node will resend
            stats.rejected["internal_error"] += 1
            log.exception("node=%s peer=%s: internal error; closing so the node resends", self.node or "?", self.peer)

    async def _handle(self, payload: bytes, *, hello_expected: bool) -> None:
        body, tag, obj = p.split_payload(payload)
        msg = p.parse_node_message(obj)
        if hello_expected and not isinstance(msg, p.Hello):
            raise p.ProtocolError("hello_required", f"first message is {obj.get('t')!r}")
        key = self.controller.keys.get(msg.node)
        if key is None:
            raise p.ProtocolError("unknown_node", f"no key for node {msg.node!r}")
        p.verify_tag(key, body, tag)
        if isinstance(msg, p.Hello):
            if not hello_expected:
                raise p.ProtocolError("bad_message", "second hello on one connection")
            await self._hello(msg, key)
            return
        if msg.node != self.node:
            raise p.ProtocolError("node_mismatch", f"connection is {self.node}, frame says {msg.node}")
        if msg.boot != self.boot:
            raise p.ProtocolError("stale_boot", f"connection is boot {self.boot}, frame says {msg.boot}")
        mark = self.controller.marks.get(msg.node)
        max_seq = mark.max_seq if mark and mark.boot == msg.boot else 0
        if isinstance(msg, p.NodeEvent):
            if msg.seq <= max_seq - p.SEQ_WINDOW:
                raise p.ProtocolError("seq_out_of_window", f"seq {msg.seq} <= {max_seq} - {p.SEQ_WINDOW}")
            if msg.seq <= max_seq and await self.controller.is_duplicate(msg):
                self.gateway.stats.duplicates += 1
                log.info("node=%s duplicate event boot=%d seq=%d: acked again, not stored", msg.node, msg.boot, msg.seq)
            else:
                try:
                    await self.controller.node_event(msg)
                except StorageError as exc:  # not acked: the node keeps it and offers it again after its
                    self.gateway.stats.rejected["storage_unavailable"] += 1  # ack timeout (the alarm is up)
                    log.warning("node=%s event seq=%d not stored (%s); not acked, so the node resends it",
                                msg.node, msg.seq, exc)
                    return
                self.gateway.stats.accepted["event"] += 1
            await self.send_ack(msg.seq)
            return
        if msg.seq <= max_seq:
            raise p.ProtocolError("replayed_seq", f"seq {msg.seq} <= highest accepted {max_seq}")
        if isinstance(msg, p.Heartbeat):
            await self.controller.node_heartbeat(msg)
            self.gateway.stats.accepted["hb"] += 1
            await self.send_ack(msg.seq)
        else:
            self.controller.node_reading(msg)
            self.gateway.stats.accepted["reading"] += 1

    async def _hello(self, hello: p.Hello, key: bytes) -> None:
        mark = self.controller.marks.get(hello.node)
        if mark is not None and hello.boot < mark.boot:
            raise p.ProtocolError("stale_boot", f"boot {hello.boot} < newest seen {mark.boot}")
        if mark is not None and hello.boot == mark.boot and hello.seq <= mark.max_seq:
            raise p.ProtocolError("replayed_seq", f"hello seq {hello.seq} <= highest accepted {mark.max_seq}")
        self.node, self.boot, self.key, self.sid = hello.node, hello.boot, key, hello.nonce
        cfg = self.controller.config.nodes.get(hello.node)
        self.has_tone = cfg is not None and cfg.tone
        await self.controller.node_hello(hello, self.peer)
        self.gateway.stats.accepted["hello"] += 1
        await self.send(lambda s: p.welcome(self.sid, s, self.controller.config.heartbeat_ms, wall_ms()))
        self.gateway.attach(self)  # only now may output updates go to this connection
        await self.sync_outputs()
        log.info("node=%s boot=%d fw=%s hw=%s online from %s", hello.node, hello.boot, hello.fw, hello.hw, self.peer)


class NodeGateway:
    def __init__(self, controller: RoomController) -> None:
        self.controller = controller
        self.stats = GatewayStats()
        self.connections: dict[str, NodeConnection] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        controller.on_outputs_changed(self._schedule_sync)

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("node gateway listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            conn.writer.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def attach(self, conn: NodeConnection) -> None:
        """A node has one live connection; a new hello replaces (and closes) the old one."""
        old = self.connections.get(conn.node)  # type: ignore[arg-type]
        if old is not None and old is not conn:
            log.info("node=%s reconnected from %s; closing older connection %s", conn.node, conn.peer, old.peer)
            old.writer.close()
        self.connections[conn.node] = conn  # type: ignore[index]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.stats.connections += 1
        conn = NodeConnection(self, reader, writer)
        try:
            await conn.run()
        except asyncio.CancelledError:  # stopping; ended, not cancelled: 3.11's streams log a cancelled handler
            pass
        finally:
            self._handlers.discard(task)
            if conn.node is not None and self.connections.get(conn.node) is conn:
                del self.connections[conn.node]
            writer.close()

    def _schedule_sync(self) -> None:
        """After each commit: the wanted light and tone, computed once for the room; only the nodes
        that show something else are sent a command (no task, no await, per node)."""
        if not self.connections:
            return
        indicators = self.controller.room.indicators()
        tone = self.controller.outputs().tone
        for node, conn in self.connections.items():
            conn.show(indicators.get(node, "off"), tone)
