# The node's side of the connection lifecycle (docs/protocol.md section 3).
#
# One session: connect -> hello -> verified welcome -> resend unacked events oldest first (each
# in a new frame: new `s`, same event number `e`) -> stream. Every frame gets its `s` here, as it
# is written, so `s` grows in the order frames leave (protocol v2, section 2). A session ends on a read/write error, a bad frame length or a missing ack; then the
# link waits a jittered, capped exponential backoff and starts the next session.
import asyncio
import os
from micropython import const

from srnode import proto
from srnode.equeue import EV, SENT_MS

# Section 3. 5 s covers a Wi-Fi reassociation and a controller busy with an fsync, and is short
# enough that a call waits at most one connect + welcome before the next attempt.
_CONNECT_TIMEOUT_MS = const(5000)
_WELCOME_TIMEOUT_MS = const(5000)
# Section 3: an event or heartbeat not acked within 5 s means the path is dead even if TCP has
# not noticed (a controller that lost power sends no RST).
_ACK_TIMEOUT_MS = const(5000)
# Section 3: first retry after 250 ms (about a controller restart), doubling to 30 s so a room
# of nodes does not hammer a controller that is down for long.
BACKOFF_MIN_MS = const(250)
BACKOFF_MAX_MS = const(30000)
# How often the sender looks at the ack deadlines: 5 % of the ack timeout is precise enough.
_WATCH_MS = const(250)
# Heartbeats and readings waiting for the sender. They come every few seconds at most, so more
# than this only piles up on a stalled link; then the oldest goes.
_OUTBOX_LEN = const(4)
_NONCE_MASK = const(0x7FFFFFFF)  # section 2: nonce 0 ... 2^31-1


class LinkDown(Exception):
    pass  # args[0]: the reason logged with `link down`


class Backoff:
    """Capped exponential backoff; each wait is drawn uniformly from [d/2, d]."""

    def __init__(self, rand_below, min_ms=BACKOFF_MIN_MS, max_ms=BACKOFF_MAX_MS):
        self._rand_below = rand_below
        self._min_ms = min_ms
        self._max_ms = max_ms
        self._d = min_ms

    def reset(self):
        self._d = self._min_ms

    def next_ms(self):
        d = self._d
        self._d = min(d * 2, self._max_ms)
        return d // 2 + self._rand_below(d - d // 2 + 1)


def _io_reason(e):
    return "io_error errno=%d" % (e.args[0] if e.args else 0)


class Link:
    """Keeps the node connected. `node` numbers the frames and builds the messages and takes
    the commands: node.next_seq(), node.hello_msg(nonce), node.event_msg(entry, s),
    node.on_welcome(msg), node.on_cmd(msg)."""

    def __init__(self, hal, mac, queue, host, port, node):
        self._hal = hal
        self._mac = mac
        self._queue = queue
        self._addr = (host, port)
        self._node = node
        self.up = False
        self.backoff = Backoff(hal.rand_below)
        self._outbox = []
        self._wake = asyncio.Event()
        self._fail = None        # why the session must end, set by the reader task
        self._last_s = 0         # highest controller `s` accepted on this connection
        self._hb_seq = 0         # newest heartbeat sent; its ack clears the deadline
        self._hb_sent_ms = -1    # when the oldest heartbeat not yet acked was sent, or -1

    def wake(self):
        self._wake.set()

    def post(self, msg):
        """Send a heartbeat or reading on the live connection; False (dropped) when down."""
        if not self.up:
            return False
        if len(self._outbox) >= _OUTBOX_LEN:
            self._outbox.pop(0)
        self._outbox.append(msg)
        self._wake.set()
        return True

    async def run(self):
        hal = self._hal
        while True:
            hal.log("link", "down reason=" + await self._session())
            wait_ms = self.backoff.next_ms()
            hal.log("backoff", "ms=%d" % wait_ms)
            await hal.sleep_ms(wait_ms)

    async def _session(self):
        hal = self._hal
        writer = None
        tasks = []
        phase = "connect"
        try:
            reader, writer = await hal.wait_for_ms(hal.open_connection(*self._addr), _CONNECT_TIMEOUT_MS)
            sid = int.from_bytes(os.urandom(4), "big") & _NONCE_MASK
            writer.write(proto.encode_frame(self._mac, self._node.hello_msg(sid)))
            await writer.drain()  # a refused connect surfaces here on some ports
            phase = "welcome"
            welcome = await hal.wait_for_ms(self._await_welcome(reader, sid), _WELCOME_TIMEOUT_MS)
            self.backoff.reset()
            self._fail = None
            self._hb_sent_ms = -1
            self._outbox.clear()
            self._queue.unsent()
            self.up = True
            self._node.on_welcome(welcome)
            hal.log("link", "up")
            tasks.append(asyncio.create_task(self._read_loop(reader, sid)))
            tasks.append(asyncio.create_task(self._watch()))
            await self._send_loop(writer)
        except LinkDown as e:
            return e.args[0]
        except asyncio.TimeoutError:
            return phase + "_timeout"
        except EOFError:
            return "closed"
        except OSError as e:
            return _io_reason(e)
        finally:
            self.up = False
            for t in tasks:
                t.cancel()
            if writer is not None:
                writer.close()

    async def _read_msg(self, reader, sid):
        """The next verified controller message, or None for a frame to ignore."""
        head = await reader.readexactly(2)
        n = (head[0] << 8) | head[1]
        try:
            proto.check_length(n)
        except proto.ProtoError as e:
            raise LinkDown(e.reason)  # framing lost: nothing after this can be trusted
        payload = await reader.readexactly(n)
        try:  # tag, version, this connection's sid, increasing s
            msg = proto.decode_payload(self._mac, payload)
            proto.check_controller_msg(msg, sid, self._last_s)
        except proto.ProtoError as e:
            self._hal.log("reject", "reason=" + e.reason)
            return None
        self._last_s = msg["s"]
        return msg

    async def _await_welcome(self, reader, sid):
        # A welcome that fails verification is ignored (section 3): keep waiting for a good one.
        self._last_s = 0
        while True:
            msg = await self._read_msg(reader, sid)
            if msg is not None:
                if msg["t"] == "welcome":
                    return msg
                self._hal.log("reject", "reason=welcome_required")

    async def _read_loop(self, reader, sid):
        try:
            while True:
                msg = await self._read_msg(reader, sid)
                if msg is None:
                    continue
                if msg["t"] == "cmd":
                    self._node.on_cmd(msg)
                elif msg["t"] == "ack":
                    ev = msg.get("e")  # an event's ack names the event; a heartbeat's only the frame
                    if ev is not None:
                        if self._queue.ack(ev) is not None:
                            self._hal.log("acked", "e=%d" % ev)
                    elif msg.get("a") == self._hb_seq and self._hb_sent_ms >= 0:
                        self._hb_sent_ms = -1
        except LinkDown as e:
            self._fail = e.args[0]
        except EOFError:
            self._fail = "closed"
        except OSError as e:
            self._fail = _io_reason(e)
        self._wake.set()

    async def _watch(self):
        while True:
            await self._hal.sleep_ms(_WATCH_MS)
            self._wake.set()

    async def _send_loop(self, writer):
        hal = self._hal
        queue = self._queue
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._fail is not None:
                raise LinkDown(self._fail)
            now = hal.ticks_ms()
            oldest = queue.oldest_sent_ms()
            if (oldest >= 0 and now - oldest > _ACK_TIMEOUT_MS) or \
                    (self._hb_sent_ms >= 0 and now - self._hb_sent_ms > _ACK_TIMEOUT_MS):
                raise LinkDown("ack_timeout")
            node = self._node
            for e in queue.items:  # events first: they go ahead of heartbeats and readings
                if e[SENT_MS] < 0:
                    e[SENT_MS] = now
                    s = node.next_seq()
                    writer.write(proto.encode_frame(self._mac, node.event_msg(e, s)))
                    hal.log("sent", "e=%d s=%d" % (e[EV], s))
            while self._outbox:
                msg = self._outbox.pop(0)
                msg["s"] = node.next_seq()
                if msg["t"] == "hb":  # the deadline runs from the oldest heartbeat not acked
                    self._hb_seq = msg["s"]
                    if self._hb_sent_ms < 0:
                        self._hb_sent_ms = now
                writer.write(proto.encode_frame(self._mac, msg))
            await writer.drain()
