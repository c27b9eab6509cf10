"""The node gateway: a TCP server speaking node link protocol v2 (docs/protocol.md).

Layers: :func:`read_frame` (framing) → :class:`NodeConnection` (one node's session: hello,
acceptance rules, acks, commands) → :class:`RoomController` (storage and room logic). A bad frame
closes only the connection it came on.

Failures are made loud here (docs/architecture.md, "Failure modes"): a node whose sessions keep
ending rejected with nothing delivered is a technical alarm; a live connection that ends starts
the room's offline grace; each node's readings have a budget (a token bucket), so one node's
flood cannot delay the others' calls — events are never limited.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import socket
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Protocol

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
# Events of one connection waiting for their group commit (the node's window is smaller: a firmware
# node's outbox holds 4); past this the connection's frames wait, and so does TCP, at the node.
PIPELINE_MAX = 64
IDLE_GRACE_S = 1.0             # on top of three heartbeat intervals before a silent link is closed
# Sessions in a row, each ended by a rejection with no event delivered, before a node that keeps
# connecting is a "cannot deliver" alarm. One or two are a glitch (a restart, a torn frame); by
# the third the node's own backoff has run ~2 s and the same frame was refused each time.
CANNOT_DELIVER_SESSIONS = 3
BUDGET_WARN_EVERY_MS = 60_000  # a node over its readings budget is logged at most once a minute
# After a reading dropped by the budget, that connection waits this long before its next frame:
# a flooding node then costs the controller at most 200 frames/s of parsing (bench/flood.py: +5 %
# of a core) instead of all of it, and with the small buffers below TCP holds the rest back at the
# node. A firmware node cannot flood (its outbox holds 4 messages and it writes queued events
# first); a flooding node's own event waits behind the ~300 frames those buffers hold (~1.5 s).
DROPPED_READING_PACE_S = 0.005
# A node's frames are at most 1 KB and a well-behaved node has a handful in flight; a small receive
# buffer (the kernel doubles it) keeps a flooding node's backlog at the node, not in the Pi's memory,
# so TCP slows it down within a few frames of the pacing above.
NODE_RCVBUF_BYTES = 16 * 1024
NODE_STREAM_LIMIT = 4 * 1024  # likewise the bytes waiting for the connection's task (reading pauses at twice this)
# The TLS handshake from the slowest node (an RP2040 doing P-256 in software: a few seconds) fits;
# the node itself gives up after 10 s (firmware/srnode/link.py).
TLS_HANDSHAKE_TIMEOUT_S = 15.0
# How a connection's first byte tells TLS from plain: a TLS record of type handshake (a ClientHello)
# starts with 22; a plain frame starts with its length's high byte, at most 1024 >> 8 = 4.
TLS_HANDSHAKE_RECORD = 0x16


@dataclass
class GatewayStats:
    accepted: Counter[str] = field(default_factory=Counter)   # by message type
    rejected: Counter[str] = field(default_factory=Counter)   # by reason (docs/protocol.md §4)
    duplicates: int = 0
    connections: int = 0
    readings_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (node, reason)
    undelivered_sessions: Counter[str] = field(default_factory=Counter)  # node: sessions rejected, nothing delivered
    transport: Counter[str] = field(default_factory=Counter)  # connections served by "tls" / "plain"

    def to_json(self) -> dict[str, object]:
        dropped = {f"{node}/{reason}": count for (node, reason), count in sorted(self.readings_dropped.items())}
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected), "duplicates": self.duplicates,
                "connections": self.connections, "readings_dropped": dropped,
                "undelivered_sessions": dict(sorted(self.undelivered_sessions.items())),
                "transport": dict(sorted(self.transport.items()))}


@dataclass
class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; a reading takes one or is dropped. Time in ms."""

    rate_per_s: float
    burst: float
    tokens: float
    at_ms: int

    def take(self, now_ms: int) -> bool:
        if now_ms > self.at_ms:  # a clock that steps back refills nothing until it catches up
            self.tokens = min(self.burst, self.tokens + (now_ms - self.at_ms) * self.rate_per_s / 1000)
            self.at_ms = now_ms
        if self.tokens >= 1 - 1e-9:  # (floating-point refill in steps must still reach a whole token)
            self.tokens = max(0.0, self.tokens - 1)
            return True
        return False


class _ConnectionEnded(Exception):
    pass


class _NodeLink(asyncio.streams.FlowControlMixin, asyncio.Protocol):
    """A node connection's reading side, at the protocol level: bytes are cut into frames as they
    arrive (:class:`~controller.link.protocol.FrameSplitter`), no stream and no task per frame.

    A frame goes one of two ways, keeping the order they came in. The usual ones (a new event, a
    reading within its budget) are handled at once by :meth:`NodeConnection._fast`, the event left
    to ride the next group commit while the following frames are read (the connection's pipeline);
    any other frame, and every frame behind it, waits for the connection's task, which takes them
    one at a time with :meth:`next_frame`, as before. The task is idle meanwhile.

    One deadline per connection (one timer, re-armed only when it falls due): it ends a connection
    that completed no frame for ``timeout_s`` while nothing of it was being handled — as a
    connection gone silent, or as a broken frame when one was begun (a node writes a frame at once).
    Writing is the StreamWriter's (this is its flow control); reading pauses while more than twice
    NODE_STREAM_LIMIT bytes wait for the task, so a flooding node's backlog stays at the node.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, tls: bool) -> None:
        super().__init__(loop)
        self._tls = tls
        self.transport: asyncio.Transport | None = None
        self.splitter = p.FrameSplitter()
        self.waiting: collections.deque[bytes | BaseException] = collections.deque()  # for the task, in order
        self._waiting_bytes = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self.fast: Callable[[bytes], bool] | None = None  # NodeConnection._fast, once the node is welcomed
        self.busy: Callable[[], bool] = lambda: False      # frames of it still being handled (its pipeline)
        self.timeout_s: float | None = None
        self._last_s = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        items = self.splitter.feed(data)
        if not items:
            return
        self._last_s = self._loop.time()
        waiting = self.waiting
        if not waiting and self._waiter is not None and self.fast is not None:
            fast = self.fast
            for i, item in enumerate(items):  # (a long run of frames: the rest wait for the task's turn)
                if i == FAIR_SHARE_FRAMES or type(item) is not bytes or not fast(item):
                    items = items[i:]
                    break
            else:
                return
        for item in items:
            waiting.append(item)
            if type(item) is bytes:
                self._waiting_bytes += len(item)
            else:
                self._end()
        self._wake()
        if self._waiting_bytes > 2 * NODE_STREAM_LIMIT and not self._reading_paused and not self._ended:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self._finish(None)
        return not self._tls  # plain TCP: half open, so the acks of what was sent still go out

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._finish(exc)
        if self._timer is not None:
            self._timer.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed

    # -- the end of the stream
    def _finish(self, exc: Exception | None) -> None:
        if self._ended:
            return
        cut = self.splitter.ended()
        if cut is not None:
            self.waiting.append(p.ProtocolError("malformed_frame", cut))
        elif exc is not None:
            self.waiting.append(exc)
        else:
            self.waiting.append(_ConnectionEnded("closed by peer"))
        self._end()
        self._wake()

    def _end(self) -> None:
        """Nothing after this is read (an error or the end is queued for the task)."""
        self._ended = True
        self.splitter.broken = True

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the deadline
    def set_deadline(self, timeout_s: float | None) -> None:
        """From now on, a connection that completes no frame for ``timeout_s`` is ended (None: never)."""
        self.timeout_s = timeout_s
        self._last_s = self._loop.time()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_s is not None:
            self._timer = self._loop.call_at(self._last_s + timeout_s, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._ended or self.timeout_s is None:
            return
        now = self._loop.time()
        if self._waiter is None or self.waiting or self.busy():  # a frame is being handled: not silent
            self._last_s = max(self._last_s, now)
        if self._last_s + self.timeout_s > now:
            self._timer = self._loop.call_at(self._last_s + self.timeout_s, self._due)
            return
        if self.splitter.partial:
            self.waiting.append(p.ProtocolError("malformed_frame", "frame not completed in time"))
        else:
            self.waiting.append(_ConnectionEnded(f"silent for {self.timeout_s:.1f} s"))
        self._end()
        self._wake()

    # -- the task's side
    async def next_frame(self) -> bytes:
        """The next frame for the task, after handling those in front of it that the fast path
        takes; raises how the stream ended (ProtocolError, _ConnectionEnded, OSError) in its turn."""
        waiting = self.waiting
        handled = 0
        while True:
            while not waiting:
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            item = waiting.popleft()
            if type(item) is not bytes:
                raise item  # type: ignore[misc]
            self._waiting_bytes -= len(item)
            if self._reading_paused and self._waiting_bytes <= NODE_STREAM_LIMIT and not self._ended:
                self._reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            if self.fast is None or not self.fast(item):
                return item
            handled += 1
            if handled % FAIR_SHARE_FRAMES == 0:  # buffered frames are handled without a pause: let others in
                await asyncio.sleep(0)


def _peer(peer: object) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"


async def _peek_byte(sock: socket.socket) -> bytes:
    """The next byte on ``sock`` without taking it (b"" when the peer closed)."""
    loop = asyncio.get_running_loop()
    while True:
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:  # reset before a byte came
            return b""


class _Sniff(asyncio.Protocol):
    """A new node connection before it is TLS or plain: reads nothing, peeks at the first byte, then
    hands the connection to :meth:`NodeGateway._open` (one port serves both)."""

    def __init__(self, gateway: "NodeGateway") -> None:
        self.gateway = gateway

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the first bytes stay in the socket for TLS to read
        task = asyncio.create_task(self._sniff(transport))
        self.gateway._handlers.add(task)
        task.add_done_callback(self.gateway._handlers.discard)

    async def _sniff(self, transport: asyncio.Transport) -> None:
        gateway = self.gateway
        peer = _peer(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket").dup()  # the same connection; closing the copy keeps it
        try:
            first = await asyncio.wait_for(_peek_byte(sock), gateway.hello_timeout_s)
        except TimeoutError:
            log.info("peer=%s sent nothing within %.1f s; closing", peer, gateway.hello_timeout_s)
            first = b""
        except asyncio.CancelledError:
            transport.close()
            raise
        finally:
            sock.close()
        if not first:
            transport.close()
            return
        tls = first[0] == TLS_HANDSHAKE_RECORD
        if tls and gateway.tls is None:
            gateway.stats.rejected["tls_unavailable"] += 1
            log.warning("peer=%s starts TLS, but this node gateway has no certificate (plain TCP only); closing",
                        peer)
            transport.close()
            return
        await gateway._open(transport, tls)


class OtaHandler(Protocol):
    """Firmware updates over the link (controller/ota/server.py): gets the nodes' ota messages."""

    def on_message(self, conn: "NodeConnection", msg: p.OtaGet | p.OtaReport) -> Awaitable[None]: ...

    def on_welcome(self, conn: "NodeConnection") -> Awaitable[None]: ...


class NodeConnection:
    def __init__(self, gateway: "NodeGateway", link: _NodeLink, writer: asyncio.StreamWriter, *,
                 encrypted: bool = False) -> None:
        self.gateway = gateway
        self.encrypted = encrypted
        self.controller = gateway.controller
        self.link = link
        self.writer = writer
        # Events handled by the fast path, oldest first, each acked when its group commit has stored
        # it and every one before it is answered: acks leave in the order the events came.
        self._pipeline: collections.deque[tuple[asyncio.Future[object], p.NodeEvent]] = collections.deque()
        self._pipeline_empty: asyncio.Future[None] | None = None
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.node: str | None = None
        self.verified_node: str | None = None  # whose tag verified on this connection, even if refused after
        self.delivered = False                 # an event was stored (or was a duplicate) on this connection
        self.rejected: str | None = None       # the reason the gateway ended the session, if it did
        self.boot = 0
        self.hello: p.Hello | None = None  # this connection's hello: firmware version, caps
        self.key = b""
        self.sid = 0
        self.out_seq = 0
        self.shown: dict[str, str] = {}  # output -> the pattern last sent to the node
        self.has_tone = False  # the room file gives this node the in-room tone

    # ------------------------------------------------------------------ sending
    def _write(self, build: Callable[[int], dict[str, object]]) -> None:
        """Queue ``build(s)`` on the socket; ``s`` is taken here, with no await between, so frames
        leave in sequence order without a lock."""
        self._check_open()
        self.out_seq += 1
        self.writer.write(p.encode_frame(self.key, build(self.out_seq)))

    def _check_open(self) -> None:
        if self.writer.is_closing():  # a closed TLS transport raises AttributeError on write (CPython 3.11)
            raise ConnectionResetError("connection already closed")

    async def _drained(self) -> None:
        """Wait (at most WRITE_TIMEOUT_S) only when the node is not reading what it is sent."""
        if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.writer.drain()

    async def send(self, build: Callable[[int], dict[str, object]]) -> None:
        """Send ``build(s)``."""
        self._write(build)
        await self._drained()

    async def send_ack(self, seq: int, event_no: int | None = None, origin_boot: int | None = None) -> None:
        self._check_open()
        self.out_seq += 1
        self.writer.write(p.ack_frame(self.key, self.sid, self.out_seq, seq, event_no, origin_boot))
        await self._drained()

    def show(self, indicator: str, tone: str) -> None:
        """Command the reassurance light and tone patterns the room wants, where the node shows others.

        Written at once, without waiting: a node that leaves its commands unread past
        WRITE_BUFFER_MAX is closed (it reconnects and is sent the current state again).
        """
        if self.writer.is_closing():  # going away: it is sent the room's state when it is back
            return
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
        self.show(room.indicator_for(self.node), room.tone(self.controller.clock()))

    # ------------------------------------------------------------------ receiving
    def idle_timeout_s(self) -> float:
        return 3 * self.controller.config.heartbeat_ms / 1000 + self.gateway.idle_grace_s

    async def run(self) -> None:
        stats = self.gateway.stats
        link = self.link
        try:
            self.link.set_deadline(self.gateway.hello_timeout_s)
            first = await link.next_frame()
            if not self.encrypted and not self.gateway.allow_plain:
                self._refuse_plain(first)
            await self._handle(first, hello_expected=True)
            link.set_deadline(self.idle_timeout_s())
            link.busy = self._pipeline.__len__
            link.fast = self._fast  # the node is welcomed: its usual frames take the fast path from here
            frames = 0
            while True:
                try:
                    payload = await link.next_frame()
                except asyncio.CancelledError:
                    raise
                except BaseException:  # the end: what came before it is answered first, if it can be
                    if not self.writer.is_closing():
                        await self._settled()
                    raise
                await self._settled()  # what came before this frame is answered first, in order
                await self._handle(payload, hello_expected=False)
                frames += 1
                if frames % FAIR_SHARE_FRAMES == 0:
                    await asyncio.sleep(0)
        except p.ProtocolError as exc:
            stats.rejected[exc.reason] += 1
            self.rejected = exc.reason
            log.warning("rejected frame from node=%s peer=%s reason=%s: %s; closing its connection",
                        self.node or self.verified_node or "?", self.peer, exc.reason, exc.detail)
        except _ConnectionEnded as exc:
            log.info("node=%s peer=%s connection ended: %s", self.node or "?", self.peer, exc)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("node=%s peer=%s connection lost: %r", self.node or "?", self.peer, exc)
        except StorageError as exc:  # nothing was acked: the node keeps its events; the storage alarm is up
            stats.rejected["storage_unavailable"] += 1
            log.warning("node=%s peer=%s: cannot store (%s); closing its connection", self.node or "?", self.peer, exc)
        except Exception:  # e.g. the store failed: nothing was acked, so the node will resend
            stats.rejected["internal_error"] += 1
            self.rejected = "internal_error"
            log.exception("node=%s peer=%s: internal error; closing so the node resends", self.node or "?", self.peer)

    def _refuse_plain(self, payload: bytes) -> None:
        """A plain-TCP hello to a TLS gateway: refused, naming the node when its tag proves who it is
        (so a node left on plain TCP becomes "node cannot deliver", not a silent stream of refusals)."""
        try:
            body, tag, obj = p.split_payload(payload)
        except p.ProtocolError:
            pass  # not even a frame: the refusal below still says why
        else:
            self._note_sender(obj, body, tag)
        raise p.ProtocolError("tls_required", "plain TCP, but this gateway requires TLS: give the node the "
                              "controller's fingerprint (ctl_fp) or set [gateway] plain_tcp = true")

    def _note_sender(self, obj: dict[str, object], body: bytes, tag: bytes) -> None:
        """Who sent a frame that will be refused (e.g. another protocol version), if its tag proves it."""
        node = obj.get("n")
        key = self.controller.keys.get(node) if isinstance(node, str) else None
        if key is not None and hmac.compare_digest(p.compute_tag(key, body), tag):
            self.verified_node = node  # type: ignore[assignment]

    async def _handle(self, payload: bytes, *, hello_expected: bool) -> None:
        body, tag, obj = p.split_payload(payload)
        try:
            msg = p.parse_node_message(obj)
        except p.ProtocolError:
            self._note_sender(obj, body, tag)
            raise
        if hello_expected and not isinstance(msg, p.Hello):
            raise p.ProtocolError("hello_required", f"first message is {obj.get('t')!r}")
        key = self.gateway.key_for(msg.node, body, tag, hello=isinstance(msg, p.Hello))
        self.verified_node = self.verified_node or msg.node
        if isinstance(msg, p.Hello):
            if not hello_expected:
                raise p.ProtocolError("bad_message", "second hello on one connection")
            await self._hello(msg, key)
            return
        self._check_session(msg)
        if isinstance(msg, p.NodeEvent):
            if await self.controller.is_duplicate(msg):
                self.controller.accept_mark(msg.node, msg.boot, msg.seq)
                self.gateway.stats.duplicates += 1
                log.info("node=%s duplicate event boot=%d e=%d (seq %d): acked again, not stored",
                         msg.node, msg.event_boot, msg.e, msg.seq)
            else:
                try:
                    await self.controller.node_event(msg)
                except StorageError as exc:  # not acked: the node keeps it and offers it again after its
                    self.gateway.stats.rejected["storage_unavailable"] += 1  # ack timeout (the alarm is up)
                    log.warning("node=%s event e=%d not stored (%s); not acked, so the node resends it",
                                msg.node, msg.e, exc)
                    return
                self.gateway.stats.accepted["event"] += 1
            if not self.delivered:
                self.delivered = True
                self.gateway.delivered(msg.node)
            await self.send_ack(msg.seq, msg.e, msg.origin_boot)
            return
        if isinstance(msg, (p.OtaGet, p.OtaReport)):  # firmware updates (docs/protocol.md §12)
            self.controller.accept_mark(msg.node, msg.boot, msg.seq)
            self.gateway.stats.accepted["ota_get" if isinstance(msg, p.OtaGet) else "ota"] += 1
            if self.gateway.ota is None:
                log.warning("node=%s sent %s but this controller serves no updates", msg.node, type(msg).__name__)
            else:
                await self.gateway.ota.on_message(self, msg)
            return
        if isinstance(msg, p.Heartbeat):
            if self.gateway.nodes is not None:
                self.gateway.nodes.heartbeat(msg)
            await self.controller.node_heartbeat(msg)
            self.gateway.stats.accepted["hb"] += 1
            await self.send_ack(msg.seq)
            if msg.queued == 0 and self.gateway.failing(msg.node) == 0:
                await self.controller.node_delivers(msg.node, "its heartbeat says nothing is waiting")
        elif self.gateway.take_reading(msg.node):
            self.controller.node_reading(msg)
            self.gateway.stats.accepted["reading"] += 1  # (a node streaming readings yields every FAIR_SHARE_FRAMES)
        else:
            self.controller.accept_mark(msg.node, msg.boot, msg.seq)  # a good frame, dropped by the budget
            await asyncio.sleep(DROPPED_READING_PACE_S)

    def _check_session(self, msg: p.NodeMessage) -> None:
        """A frame after the hello must be this connection's node and boot, and above the node's
        highest accepted ``s``; ProtocolError otherwise."""
        if msg.node != self.node:
            raise p.ProtocolError("node_mismatch", f"connection is {self.node}, frame says {msg.node}")
        if msg.boot != self.boot:
            raise p.ProtocolError("stale_boot", f"connection is boot {self.boot}, frame says {msg.boot}")
        mark = self.controller.marks.get(msg.node)
        max_seq = mark.max_seq if mark and mark.boot == msg.boot else 0
        if msg.seq <= max_seq:
            raise p.ProtocolError("replayed_seq", f"seq {msg.seq} <= highest accepted {max_seq}")

    # ------------------------------------------------------------------ the fast path (pipelined)
    def _fast(self, payload: bytes) -> bool:
        """Handle a usual frame now, without the task: a new event (queued for the next group commit,
        acked by :meth:`_answer` once stored) or a reading within its budget. False leaves the frame to
        the task's general path (:meth:`_handle`), which decides it, refusals included, as before."""
        if len(self._pipeline) >= PIPELINE_MAX or \
                self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            return False  # the task waits for the node to read, or the pipeline to drain, first
        body = payload[:-p.TAG_BYTES]
        msg = p.fast_message(body)
        if msg is None:
            return False
        try:
            self.gateway.key_for(msg.node, body, payload[-p.TAG_BYTES:], hello=False)
            self._check_session(msg)
        except p.ProtocolError:
            return False  # refused by the general path, which says why
        try:
            if type(msg) is p.NodeEvent:
                done = self.controller.new_node_event(msg)
                if done is None:  # a possible duplicate: the store has the answer
                    return False
                self._pipeline.append((done, msg))
                done.add_done_callback(self._answer)
                return True
            if not self.gateway.take_reading_if_within_budget(msg.node):
                return False  # dropped (counted) and paced by the general path
            self.controller.node_reading(msg)  # type: ignore[arg-type]
            self.gateway.stats.accepted["reading"] += 1
        except Exception:  # a bug: loud, and this connection ends (as the task's general path does)
            self.gateway.stats.rejected["internal_error"] += 1
            self.rejected = "internal_error"
            log.exception("node=%s peer=%s: internal error; closing so the node resends", self.node, self.peer)
            self.writer.close()
        return True

    def _answer(self, _done: object = None) -> None:
        """Ack the pipeline's events from its oldest on, as far as each is answered (stored, or not)."""
        pipeline = self._pipeline
        stats = self.gateway.stats
        acks: list[bytes] = []  # written at once: one send for the events one commit stored
        while pipeline and pipeline[0][0].done():
            done, ev = pipeline.popleft()
            if done.cancelled():
                continue
            exc = done.exception()
            if exc is None:
                stats.accepted["event"] += 1
                if not self.delivered:
                    self.delivered = True
                    self.gateway.delivered(ev.node)
                self.out_seq += 1
                acks.append(p.ack_frame(self.key, self.sid, self.out_seq, ev.seq, ev.e, ev.origin_boot))
            elif isinstance(exc, StorageError):  # not acked: the node keeps it and offers it again after
                stats.rejected["storage_unavailable"] += 1  # its ack timeout (the alarm is up)
                log.warning("node=%s event e=%d not stored (%s); not acked, so the node resends it",
                            ev.node, ev.e, exc)
            elif self.rejected != "internal_error":  # e.g. a bug deciding it: nothing later is acked either
                stats.rejected["internal_error"] += 1
                self.rejected = "internal_error"
                log.error("node=%s peer=%s: internal error; closing so the node resends", self.node, self.peer,
                          exc_info=exc)
                self.writer.close()
        if acks and not self.writer.is_closing():
            self.writer.write(b"".join(acks))
        if not pipeline and self._pipeline_empty is not None and not self._pipeline_empty.done():
            self._pipeline_empty.set_result(None)

    async def _settled(self) -> None:
        """Until every pipelined event is answered."""
        while self._pipeline:
            self._pipeline_empty = asyncio.get_running_loop().create_future()
            await self._pipeline_empty

    async def _hello(self, hello: p.Hello, key: bytes) -> None:
        mark = self.controller.marks.get(hello.node)
        if mark is not None and hello.boot < mark.boot:
            raise p.ProtocolError("stale_boot", f"boot {hello.boot} < newest seen {mark.boot}")
        if mark is not None and hello.boot == mark.boot and hello.seq <= mark.max_seq:
            raise p.ProtocolError("replayed_seq", f"hello seq {hello.seq} <= highest accepted {mark.max_seq}")
        self.node, self.boot, self.key, self.sid = hello.node, hello.boot, key, hello.nonce
        cfg = self.controller.config.nodes.get(hello.node)
        self.has_tone = cfg is not None and cfg.tone
        if self.gateway.nodes is not None:  # provisioned nodes: registry, adoption, decommission
            await self.gateway.nodes.hello(self, hello)
        self.hello = hello
        await self.controller.node_hello(hello, self.peer)
        self.gateway.stats.accepted["hello"] += 1
        await self.send(lambda s: p.welcome(self.sid, s, self.controller.config.heartbeat_ms, wall_ms()))
        self.gateway.attach(self)  # only now may output updates go to this connection
        await self.sync_outputs()
        if self.gateway.nodes is not None:
            await self.gateway.nodes.welcomed(self)
        if self.gateway.ota is not None:
            await self.gateway.ota.on_welcome(self)
        log.info("node=%s boot=%d fw=%s hw=%s online from %s", hello.node, hello.boot, hello.fw, hello.hw, self.peer)


class NodeGateway:
    """``hello_timeout_s`` and ``idle_grace_s`` are the protocol's numbers; tests pass short ones."""

    def __init__(self, controller: RoomController, *, hello_timeout_s: float = HELLO_TIMEOUT_S,
                 idle_grace_s: float = IDLE_GRACE_S, tls: ssl.SSLContext | None = None,
                 allow_plain: bool = False) -> None:
        """``tls``: serve TLS (docs/protocol.md, Transport); a plain-TCP node is then refused
        (``tls_required``) unless ``allow_plain``. Without ``tls`` the link is plain TCP only."""
        self.controller = controller
        self.tls = tls
        self.allow_plain = allow_plain or tls is None
        self.hello_timeout_s = hello_timeout_s
        self.idle_grace_s = idle_grace_s
        self.stats = GatewayStats()
        self.ota: OtaHandler | None = None  # set by controller/ota/server.py when updates are served
        self.connections: dict[str, NodeConnection] = {}
        self._failing: dict[str, int] = {}  # node -> sessions in a row rejected with nothing delivered
        self._budgets: dict[str, TokenBucket] = {}
        self._budget_warned_ms: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.nodes = None  # link.lifecycle.NodeLifecycle: provisioned nodes' keys and adoption, when set
        # The lights and tone the last sync sent every connection (None: the next goes over them all).
        self._synced: tuple[dict[str, str], str] | None = None
        controller.on_outputs_changed(self._schedule_sync)

    def key_for(self, node: str, body: bytes, tag: bytes, *, hello: bool) -> bytes:
        """The key this frame verifies with (key file, then the node registry), or ProtocolError."""
        if self.nodes is not None:
            return self.nodes.key_for(node, body, tag, hello=hello)
        key = self.controller.keys.get(node)
        if key is None:
            raise p.ProtocolError("unknown_node", f"no key for node {node!r}")
        p.verify_tag(key, body, tag)
        return key

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Sniff(self), host, port)
        for sock in self._server.sockets:  # accepted connections inherit it (and so the TCP window it allows)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NODE_RCVBUF_BYTES)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("node gateway listening on %s:%d (%s)", host, bound, self.transport_name())
        if self.tls is None:
            log.warning("node gateway on port %d speaks plain TCP only: node frames are authenticated but "
                        "not encrypted (no certificate given)", bound)
        elif self.allow_plain:
            log.warning("node gateway on port %d also accepts plain-TCP nodes ([gateway] plain_tcp = true): "
                        "their frames are authenticated but not encrypted", bound)
        return bound

    def transport_name(self) -> str:
        if self.tls is None:
            return "plain TCP"
        return "TLS, plain TCP allowed" if self.allow_plain else "TLS only"

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
        self._synced = None  # it shows what sync_outputs sends it: the next sync goes over every node

    async def _open(self, transport: asyncio.Transport, tls: bool) -> None:
        """A new connection whose first byte said TLS or plain: give it its reader (and a writer),
        then serve it. (Runs in the task _Sniff started, which stop() cancels with the others.)"""
        try:
            loop = asyncio.get_running_loop()
            protocol = _NodeLink(loop, tls=tls)
            peer = transport.get_extra_info("peername")
            if tls:
                assert self.tls is not None
                try:
                    transport = await loop.start_tls(transport, protocol, self.tls, server_side=True,
                                                     ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
                except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
                    self.stats.rejected["tls_handshake"] += 1
                    log.warning("node link TLS handshake with %s failed: %s (a node that does not pin this "
                                "controller's certificate refuses it)", _peer(peer), exc)
                    transport.close()
                    return
            else:
                transport.set_protocol(protocol)
            protocol.connection_made(transport)
            if not tls:
                transport.resume_reading()
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
            await self._accept(protocol, writer, encrypted=tls)
        except asyncio.CancelledError:
            transport.close()

    async def _accept(self, link: _NodeLink, writer: asyncio.StreamWriter, *, encrypted: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.stats.connections += 1
        self.stats.transport["tls" if encrypted else "plain"] += 1
        conn = NodeConnection(self, link, writer, encrypted=encrypted)
        try:
            try:
                await conn.run()
            finally:
                if conn.node is not None and self.connections.get(conn.node) is conn:
                    del self.connections[conn.node]
                    self.controller.node_connection_lost(conn.node)
                writer.close()
            await self._session_ended(conn)
        except asyncio.CancelledError:
            pass  # stop(): ending quietly, since 3.11's start_server callback logs a cancelled handler as an error
        finally:
            self._handlers.discard(task)

    # ------------------------------------------------------------------ failure modes, made loud
    def failing(self, node: str) -> int:
        """Sessions in a row that ended rejected with nothing delivered."""
        return self._failing.get(node, 0)

    def delivered(self, node: str) -> None:
        self._failing.pop(node, None)

    async def _session_ended(self, conn: NodeConnection) -> None:
        """Count a session that ended in a rejection with nothing delivered; alarm at the Nth in a row."""
        node = conn.verified_node
        if node is None:
            return  # nobody proved who they are: the rejection counters say it all
        if conn.delivered or conn.rejected is None:
            self._failing.pop(node, None)
            return
        self.stats.undelivered_sessions[node] += 1
        failing = self._failing[node] = self._failing.get(node, 0) + 1
        if failing < CANNOT_DELIVER_SESSIONS:
            return
        log.error("node=%s: %d sessions in a row ended rejected (%s) with nothing delivered: cannot deliver",
                  node, failing, conn.rejected)
        try:
            await self.controller.node_cannot_deliver(node, {"sessions": failing, "reason": conn.rejected})
        except Exception:  # the store failed too; the rejection counters and this log still say it
            log.exception("node=%s: could not store the cannot-deliver alarm", node)

    def take_reading_if_within_budget(self, node: str) -> bool:
        """:meth:`take_reading` for the fast path: False (nothing counted) when the reading is over
        the budget or the node has none yet, and the general path decides it."""
        bucket = self._budgets.get(node)
        return bucket is not None and bucket.take(self.controller.clock())

    def take_reading(self, node: str) -> bool:
        """The node's readings budget (docs/configuration.md, [gateway]); False: drop it and count it."""
        now = self.controller.clock()
        bucket = self._budgets.get(node)
        if bucket is None:
            gw = self.controller.config
            bucket = self._budgets[node] = TokenBucket(gw.readings_per_s, gw.readings_burst, gw.readings_burst, now)
        if bucket.take(now):
            return True
        self.stats.readings_dropped[(node, "over_budget")] += 1
        if now - self._budget_warned_ms.get(node, -BUDGET_WARN_EVERY_MS) >= BUDGET_WARN_EVERY_MS:
            self._budget_warned_ms[node] = now
            log.warning("node=%s sends readings faster than its budget (%g/s, burst %d): the excess is dropped "
                        "and counted", node, bucket.rate_per_s, bucket.burst)
        return False

    def _schedule_sync(self) -> None:
        """After each commit that changed the room: the wanted lights and tone, computed once for the
        room, and a command only to the nodes whose light (or, when the tone changed, tone) differs
        from what the last sync sent: a repeat press, or a call at one bed, touches the nodes whose
        light it changes, not every connection (no task, no await, per node). A welcomed node is
        sent the room's state by its own :meth:`NodeConnection.sync_outputs`; the sync after it
        then goes over every connection again (``_synced`` forgotten in :meth:`attach`)."""
        if not self.connections:
            return
        room = self.controller.room
        indicators, tone = room.indicators(), room.tone(self.controller.clock())
        last, self._synced = self._synced, (indicators, tone)
        targets: Iterable[tuple[str, NodeConnection]] = self.connections.items()
        if last is not None and last[1] == tone:
            if last[0] == indicators:
                return
            changed = {node for node in last[0].keys() | indicators.keys() if last[0].get(node) != indicators.get(node)}
            targets = [(node, conn) for node in changed if (conn := self.connections.get(node)) is not None]
        for node, conn in targets:
            conn.show(indicators.get(node, "off"), tone)
