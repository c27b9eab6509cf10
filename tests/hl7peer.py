"""Test peers for the HL7 integrations: an in-test Alarm Manager (an MLLP server on 127.0.0.1 that
validates every ORU^R40 against HL7 v2.6 with hl7apy, ACKs it and can send ORA^R41 status), an MLLP
client for the room's listener, and a deadline-bounded wait for an observable condition.

Framing and ACKs here are written independently of ``integrations/`` so the tests check our side
against the standard, not against itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

SB, EB = b"\x0b", b"\x1c\x0d"
WAIT_S = 10.0  # generous on a loaded 2-core machine; every wait ends as soon as its condition holds


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll an observable condition until it holds; fail with ``what`` after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def fields(text: str, segment: str, occurrence: int = 0) -> list[str]:
    """``segment``'s fields (index = HL7 field number; MSH counts its field separator as MSH-1)."""
    found = [s for s in text.split("\r") if s.startswith(segment + "|")][occurrence]
    parts = found.split("|")
    return ["MSH", "|", *parts[1:]] if segment == "MSH" else parts


def ack_for(text: str, code: str, note: str = "", control_id: str = "AM-ACK") -> str:
    msg = Message("ACK", version="2.6", validation_level=VALIDATION_LEVEL.STRICT)
    msg.msh.msh_3 = "AM"
    msg.msh.msh_7 = "20260101000000"
    msg.msh.msh_9 = "ACK^R40^ACK"
    msg.msh.msh_10 = control_id
    msg.msh.msh_11 = "P"
    msg.msa.msa_1 = code
    msg.msa.msa_2 = fields(text, "MSH")[10]
    if note:
        msg.msa.msa_3 = note
    return msg.to_er7()


def ora_r41(alarm_id: str, status: str, control_id: str) -> str:
    """A PCD-05 dispatch status, as an alarm manager sends it (v2.6 header, ORA_R41 structure)."""
    return "\r".join([
        f"MSH|^~\\&|AM|HOSP|SMARTROOM||20260101000001||ORA^R41^ORA_R41|{control_id}|P|2.6",
        f"OBR|1|{alarm_id}^SMARTROOM||196616^MDC_EVT_ALARM^MDC",
        f"OBX|1|ST|0^MDCX_ATTR_ALERT_DELIVERY_STATUS^MDC|1.0.0.1|{status}||||||F",
    ])


@dataclass
class Received:
    text: str
    control_id: str
    valid: bool
    problem: str = ""


@dataclass
class AlarmManager:
    """``mode``: "AA" (accept), "AE", "AR", or "silent" (read, never answer). ``statuses``: ORA^R41
    texts to send after the ACK of a start, keyed by nothing (every start gets them, in order)."""

    mode: str = "AA"
    statuses: tuple[str, ...] = ()
    received: list[Received] = field(default_factory=list)
    heartbeats: list[Received] = field(default_factory=list)   # ORU^R40 196614^MDC_EVT_ACTIVE, kept apart
    status_acks: list[str] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _n: int = 0

    async def start(self, port: int = 0, ssl_context=None) -> int:  # noqa: ANN001 - ssl.SSLContext
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port or self.port, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Down: the port refuses connections and every open one is cut."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @property
    def control_ids(self) -> list[str]:
        return [r.control_id for r in self.received]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    data = await reader.readuntil(EB)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                text = data[data.index(SB) + 1:-2].decode()
                msh9 = fields(text, "MSH")[9]
                if msh9.startswith("ACK"):  # the reporter acknowledging our ORA^R41
                    self.status_acks.append(text)
                    continue
                heartbeat = fields(text, "OBR")[4].startswith("196614^")
                (self.heartbeats if heartbeat else self.received).append(self._check(text))
                if self.mode == "silent":
                    continue
                writer.write(SB + ack_for(text, self.mode, "test NAK" if self.mode != "AA" else "").encode() + EB)
                if self.mode == "AA" and not heartbeat and fields(text, "OBX", 1)[5] == "start":
                    alarm_id = fields(text, "OBR")[2].split("^")[0]
                    for status in self.statuses:
                        self._n += 1
                        writer.write(SB + ora_r41(alarm_id, status, f"AM-ORA-{self._n}").encode() + EB)
                await writer.drain()
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    def _check(text: str) -> Received:
        control_id = fields(text, "MSH")[10]
        try:
            msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            msg.validate()
        except HL7apyException as exc:
            return Received(text, control_id, False, str(exc))
        if fields(text, "MSH")[9] != "ORU^R40^ORU_R01" or fields(text, "MSH")[12] != "2.6":
            return Received(text, control_id, False, "not an ORU^R40^ORU_R01 v2.6")
        return Received(text, control_id, True)


class MllpClient:
    """A sending system (an ADT feed, an alarm manager's status channel) connected to the room's listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, ssl_context=None) -> "MllpClient":  # noqa: ANN001 - ssl.SSLContext
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context))

    async def send_raw(self, payload: bytes) -> str:
        self.writer.write(payload)
        await self.writer.drain()
        data = await asyncio.wait_for(self.reader.readuntil(EB), WAIT_S)
        return data[data.index(SB) + 1:-2].decode()

    async def send(self, text: str) -> str:
        return await self.send_raw(SB + text.encode() + EB)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
