"""The node side of protocol v2 in CPython: for load generators, tests and commissioning tools.

The real node is ``firmware/`` under MicroPython; this client exists so that a benchmark can put
fifty nodes' worth of traffic on one machine, and so tests can send exactly the frames they need.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import ssl
import struct
from typing import Any

from . import protocol as p


class PinMismatch(ConnectionError):
    """The controller's certificate is not the pinned one; the client closed without sending a byte."""


class NodeClient:
    """``pin``: the controller certificate's SHA-256 (hex, a node's ``ctl_fp``): connect over TLS and
    refuse any other certificate, as the firmware does. Without it: plain TCP."""

    def __init__(self, node: str, key: bytes, *, boot: int = 1, hb_ms: int = 10_000, pin: str | None = None) -> None:
        self.node, self.key, self.boot, self.hb_ms = node, key, boot, hb_ms
        self.pin = bytes.fromhex(pin.replace(":", "")) if pin else None
        self.seq = 0           # frame numbers: every frame takes the next
        self.event_no = 0      # event numbers: a resent event keeps its own
        self.nonce = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_controller_seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def next_event_no(self) -> int:
        self.event_no += 1
        return self.event_no

    def base(self, t: str, seq: int | None = None) -> dict[str, Any]:
        return {"v": p.PROTOCOL_VERSION, "t": t, "n": self.node, "b": self.boot,
                "s": self.next_seq() if seq is None else seq}

    def hello_msg(self) -> dict[str, Any]:
        return {**self.base("hello"), "fw": "pyclient", "hw": "cpython", "caps": ["button"], "hb_ms": self.hb_ms,
                "nonce": self.nonce}

    def event_msg(self, kind: str, src: str, val: int = 1, at_ms: int = 0, seq: int | None = None,
                  e: int | None = None) -> dict[str, Any]:
        """A new event (the next event number), or with ``e`` given a resend of that event."""
        return {**self.base("event", seq), "e": self.next_event_no() if e is None else e, "k": kind, "src": src,
                "val": val, "at_ms": at_ms}

    def resend(self, event: dict[str, Any]) -> dict[str, Any]:
        """The same event in a new frame: a new ``s``, the same ``e`` (what a node does after a reconnect)."""
        return {**event, "s": self.next_seq()}

    def reading_msg(self, at_ms: int, **measures: int) -> dict[str, Any]:
        return {**self.base("reading"), "at_ms": at_ms, "m": measures}

    def reading_frame(self, at_ms: int, **measures: int) -> bytes:
        """A reading, framed and tagged, to write without waiting (load generators)."""
        return p.encode_frame(self.key, self.reading_msg(at_ms, **measures))

    def hb_msg(self, up_ms: int = 0) -> dict[str, Any]:
        return {**self.base("hb"), "up_ms": up_ms, "q": 0, "heap": 0, "drop": 0}

    async def connect(self, host: str, port: int, *, expect_welcome: bool = True) -> dict[str, Any] | None:
        if self.pin is None:
            self.reader, self.writer = await asyncio.open_connection(host, port)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check: exactly one certificate is right
            self.reader, self.writer = await asyncio.open_connection(host, port, ssl=ctx)
            der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if not hmac.compare_digest(hashlib.sha256(der).digest(), self.pin):
                self.writer.close()
                raise PinMismatch(f"{host}:{port} presented a certificate that is not the pinned one")
        self.last_controller_seq = 0
        await self.send(self.hello_msg())
        if expect_welcome:
            msg = await self.recv()
            if msg["t"] != "welcome":
                raise p.ProtocolError("bad_message", f"expected welcome, got {msg['t']}")
            return msg
        return None

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_raw(p.encode_frame(self.key, obj))

    async def send_raw(self, frame: bytes) -> None:
        assert self.writer is not None
        self.writer.write(frame)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        """The next controller message, verified (tag, sid, increasing s)."""
        assert self.reader is not None
        (length,) = struct.unpack(">H", await self.reader.readexactly(2))
        obj = p.decode_frame(self.key, struct.pack(">H", length) + await self.reader.readexactly(length))
        if obj.get("sid") != self.nonce or obj["s"] <= self.last_controller_seq:
            raise p.ProtocolError("bad_message", f"controller frame for another session or replayed: {obj}")
        self.last_controller_seq = obj["s"]
        return obj

    async def recv_ack(self, seq: int) -> dict[str, Any]:
        """Wait for the ack of frame ``seq``, skipping commands; returns the ack."""
        while True:
            msg = await self.recv()
            if msg["t"] == "ack" and msg["a"] == seq:
                return msg

    async def send_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Send an event frame and wait for its ack, which must name the event; returns the ack."""
        await self.send(event)
        ack = await self.recv_ack(event["s"])
        if ack.get("e") != event["e"]:
            raise p.ProtocolError("bad_message", f"ack of event {event['e']} names event {ack.get('e')}")
        return ack

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None
