"""MLLP, the HL7 v2 transport: each message framed as 0x0B <message> 0x1C 0x0D on a TCP (or TLS)
stream. A client connection that matches ACKs to the messages it sent, a listener with an allow-list
of peers, and a capped exponential backoff for reconnecting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("smartroom.mllp")

START = b"\x0b"
END = b"\x1c\x0d"
MAX_FRAME_BYTES = 1 << 20   # HL7 v2 messages are a few KB; 1 MiB bounds a bad or hostile peer
CONNECT_TIMEOUT_S = 10.0    # a TCP (and TLS) handshake on a hospital LAN takes milliseconds; 10 s is "down"
HANDLED_WAIT_S = 5.0        # how long the reader holds later messages while an ACK's effects are stored
ENCODING = "utf-8"          # MSH-18 UNICODE UTF-8


class MllpError(ConnectionError):
    """The peer broke the framing or the connection is gone."""


def frame(text: str) -> bytes:
    return START + text.encode(ENCODING) + END


async def read_frame(reader: asyncio.StreamReader) -> str:
    """The next message on the stream (bytes before 0x0B are skipped); raises MllpError at EOF or on overflow."""
    try:
        data = await reader.readuntil(END)
    except asyncio.IncompleteReadError as exc:
        raise MllpError("connection closed" + (" inside a frame" if exc.partial.strip() else "")) from None
    except asyncio.LimitOverrunError:
        raise MllpError(f"frame longer than {MAX_FRAME_BYTES} bytes") from None
    start = data.rfind(START)
    if start < 0:
        raise MllpError("frame without its 0x0B start byte")
    return data[start + 1:-len(END)].decode(ENCODING, errors="replace")


# ---------------------------------------------------------------------------------- backoff


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter: ``first_s``, doubling, at most ``max_s``."""

    first_s: float
    max_s: float
    failures: int = 0

    def next_s(self) -> float:
        delay = min(self.max_s, self.first_s * 2 ** self.failures)
        self.failures += 1
        return delay * random.uniform(0.8, 1.0)  # jitter below the cap: many rooms do not retry in step

    def reset(self) -> None:
        self.failures = 0


# ---------------------------------------------------------------------------------- client


class MllpConnection:
    """One connection to an MLLP peer. :meth:`send` returns the ACK text for a control id; other
    messages the peer sends (e.g. ORA^R41 status) go to ``on_message``, whose return value (an ACK,
    or None) is written back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ack_id: Callable[[str], str | None],
                 on_message: Callable[[str], Awaitable[str | None]]) -> None:
        self._reader, self._writer = reader, writer
        self._ack_id = ack_id
        self._on_message = on_message
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._handling: dict[str, asyncio.Event] = {}
        self._write_lock = asyncio.Lock()
        self._reading = asyncio.create_task(self._read_loop(), name="mllp-read")
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, ssl_context: ssl.SSLContext | None,
                   ack_id: Callable[[str], str | None], on_message: Callable[[str], Awaitable[str | None]],
                   server_hostname: str | None = None) -> "MllpConnection":
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, limit=MAX_FRAME_BYTES,
                server_hostname=(server_hostname or host) if ssl_context else None)
        return cls(reader, writer, ack_id, on_message)

    async def send(self, text: str, control_id: str, timeout_s: float) -> str:
        """Send one message and wait for the ACK whose MSA-2 is ``control_id``."""
        if self.closed:
            raise MllpError("connection closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[control_id] = waiter
        try:
            await self._write(text)
            async with asyncio.timeout(timeout_s):
                return await waiter
        finally:
            self._waiting.pop(control_id, None)

    def handled(self, control_id: str) -> None:
        """The ACK for ``control_id`` has been dealt with: read on."""
        event = self._handling.get(control_id)
        if event is not None:
            event.set()

    async def _write(self, text: str) -> None:
        async with self._write_lock:
            self._writer.write(frame(text))
            await self._writer.drain()

    async def _read_loop(self) -> None:
        try:
            while True:
                text = await read_frame(self._reader)
                acked = self._ack_id(text)
                if acked is not None:
                    waiter = self._waiting.get(acked)
                    if waiter is not None and not waiter.done():
                        # what the peer sends after this ACK (a status about the same alarm) is taken
                        # in only once the sender has stored what the ACK means: the timeline keeps order
                        handled = self._handling[acked] = asyncio.Event()
                        waiter.set_result(text)
                        try:
                            async with asyncio.timeout(HANDLED_WAIT_S):
                                await handled.wait()
                        except TimeoutError:
                            pass
                        finally:
                            self._handling.pop(acked, None)
                    else:
                        log.info("MLLP: an ACK for %s, which is not waiting (late or duplicate)", acked)
                    continue
                reply = await self._on_message(text)
                if reply is not None:
                    await self._write(reply)
        except (MllpError, OSError) as exc:
            self._fail(MllpError(f"connection lost: {exc}"))
        except asyncio.CancelledError:
            self._fail(MllpError("connection closed"))
            raise
        except Exception as exc:  # a bug in a handler: drop the connection, the sender reconnects and resends
            log.exception("MLLP: reading from the peer failed")
            self._fail(MllpError(f"connection dropped after an error: {exc}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._writer.close()

    async def close(self) -> None:
        self.closed = True
        self._reading.cancel()
        try:
            await self._reading
        except (asyncio.CancelledError, Exception):
            pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


# ---------------------------------------------------------------------------------- listener


class AllowList:
    """Peers allowed to connect: addresses and networks ("10.1.2.0/24", "10.1.3.7", "::1")."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries)

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


Handler = Callable[[str, str], Awaitable[str]]  # (message text, peer address) -> the ACK to send back


class MllpServer:
    """Listens for MLLP connections from allowed peers; every message gets the handler's answer."""

    def __init__(self, handler: Handler, allow: AllowList, *, on_refused: Callable[[str], None] = lambda _: None,
                 on_bad_frame: Callable[[str, str], None] = lambda _p, _r: None) -> None:
        self._handler = handler
        self._allow = allow
        self._on_refused = on_refused
        self._on_bad_frame = on_bad_frame
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=ssl_context, limit=MAX_FRAME_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        try:
            if not self._allow.allows(address):
                log.warning("MLLP: refused a connection from %s (not in the allow-list)", address)
                self._on_refused(address)
                return
            while True:
                try:
                    text = await read_frame(reader)
                except MllpError as exc:
                    if "connection closed" not in str(exc) or "inside" in str(exc):
                        self._on_bad_frame(address, str(exc))
                        log.warning("MLLP: %s: %s; closing the connection", address, exc)
                    return
                reply = await self._handler(text, address)
                writer.write(frame(reply))
                await writer.drain()
        except (OSError, ssl.SSLError) as exc:
            log.info("MLLP: connection from %s ended: %s", address, exc)
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
