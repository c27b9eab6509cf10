"""Improv Wi-Fi over serial, client side (https://www.improv-wifi.com/serial/), plus the node's vendor
commands: CERT, the node link certificate in chunks, and TRUST, which carries its key and commits the
certificate over the same physically local session (docs/provisioning.md).

The firmware's copy is ``firmware/srnode/improv.py``; both are tested against each other through a
pseudo-terminal (tests/test_provisioning.py). The port is passed in (a ``serial.Serial`` or anything
with ``read(n)``/``write(b)`` and a read timeout), gpiozero-style.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Protocol

HEADER = b"IMPROV"
VERSION = 1
TYPE_STATE, TYPE_ERROR, TYPE_RPC, TYPE_RESULT = 1, 2, 3, 4
STATE_AUTH_REQUIRED, STATE_READY, STATE_PROVISIONING, STATE_PROVISIONED = 1, 2, 3, 4
STATES = {1: "authorization required", 2: "ready", 3: "provisioning", 4: "provisioned"}
ERRORS = {1: "invalid RPC packet", 2: "unknown RPC command", 3: "unable to connect to the Wi-Fi network",
          4: "not authorized (press the node's button)", 0xFF: "unknown error"}
CMD_WIFI, CMD_GET_STATE, CMD_DEVICE_INFO, CMD_SCAN = 1, 2, 3, 4
CMD_TRUST = 0xA0  # vendor: node id, key hex, controller host, port, certificate fingerprint hex
CMD_CERT = 0xA1   # vendor: offset (decimal), the next bytes of the node link certificate (DER)
# Bytes of certificate per CERT packet: py-improv-ble-client packs string lengths as a signed byte
# (at most 127), so one size that fits both transports; ~480 bytes of DER is four packets.
CERT_CHUNK = 120
MAX_CERT = 1536  # the node's limit (firmware/srnode/improv.py _MAX_CERT)

# A node answers a state or info request at once; 3 s covers a board busy booting when the port opened.
REPLY_TIMEOUT_S = 3.0
# Joining Wi-Fi: association + DHCP, which the node bounds at 15 s (hal/board.py), plus margin.
WIFI_TIMEOUT_S = 20.0
# A scan takes ~2 s on an ESP32 (all channels, passive on some).
SCAN_TIMEOUT_S = 10.0


class ImprovError(RuntimeError):
    """The node refused or did not answer; the message says what to do."""


class Port(Protocol):
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    firmware: str
    version: str
    hardware: str
    name: str


@dataclass(frozen=True, slots=True)
class Trust:
    """What the vendor TRUST command carries: never over Wi-Fi."""

    node_id: str
    key: bytes
    host: str
    port: int
    fingerprint: str  # hex SHA-256 of the node link certificate (DER), lower case, no colons
    certificate: bytes  # that certificate's DER: the node's only trust anchor (firmware/srnode/tlspin.py)

    def __post_init__(self) -> None:
        if hashlib.sha256(self.certificate).hexdigest() != self.fingerprint:
            raise ValueError("the certificate does not match its fingerprint")
        if not 0 < len(self.certificate) <= MAX_CERT:
            raise ValueError(f"the certificate is {len(self.certificate)} bytes; a node takes 1 to {MAX_CERT}")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def packet(ptype: int, data: bytes = b"") -> bytes:
    if len(data) > 255:
        raise ValueError("Improv data is at most 255 bytes")
    body = HEADER + bytes((VERSION, ptype, len(data))) + data
    return body + bytes((checksum(body),))


def strings(items: tuple[str | bytes, ...] | list[str | bytes]) -> bytes:
    out = b""
    for s in items:
        b = s.encode() if isinstance(s, str) else s
        if len(b) > 255:
            raise ValueError(f"Improv string over 255 bytes: {s[:20]!r}...")
        out += bytes((len(b),)) + b
    return out


def parse_strings(data: bytes) -> list[str]:
    out, i = [], 0
    while i < len(data):
        n = data[i]
        if i + 1 + n > len(data):
            raise ImprovError("a result string runs past its packet")
        out.append(data[i + 1:i + 1 + n].decode(errors="replace"))
        i += 1 + n
    return out


def rpc(cmd: int, payload: bytes = b"") -> bytes:
    return packet(TYPE_RPC, bytes((cmd, len(payload))) + payload)


def trust_rpc(trust: Trust) -> bytes:
    return rpc(CMD_TRUST, strings([trust.node_id, trust.key.hex(), trust.host, str(trust.port),
                                   trust.fingerprint]))


def cert_chunks(der: bytes) -> list[list[bytes]]:
    """CERT's strings, one list per packet: the offset (decimal) and the next CERT_CHUNK bytes."""
    return [[str(at).encode(), der[at:at + CERT_CHUNK]] for at in range(0, len(der), CERT_CHUNK)]


def wifi_rpc(ssid: str, password: str) -> bytes:
    return rpc(CMD_WIFI, strings([ssid, password]))


class Decoder:
    """feed(bytes) -> [(type, data)]; skips the log lines that share the port and counts bad packets."""

    def __init__(self) -> None:
        self._buf = b""
        self.bad = 0
        self.text = b""  # what was not a packet (the node's log), for error messages

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + chunk
        out = []
        while True:
            i = buf.find(HEADER)
            if i < 0:
                keep = len(HEADER) - 1
                self.text = (self.text + buf[:-keep] if len(buf) > keep else self.text)[-4096:]
                buf = buf[-keep:] if len(buf) > keep else buf
                break
            self.text = (self.text + buf[:i])[-4096:]
            buf = buf[i:]
            if len(buf) < 9:
                break
            total = 9 + buf[8] + 1
            if len(buf) < total:
                break
            if buf[6] != VERSION or checksum(buf[:total - 1]) != buf[total - 1]:
                self.bad += 1
                buf = buf[1:]
                continue
            out.append((buf[7], buf[9:total - 1]))
            buf = buf[total:]
        self._buf = buf
        return out


class ImprovSerialClient:
    """Drives one node's Improv session; ``progress`` gets one line per step."""

    def __init__(self, port: Port, *, progress: Callable[[str], None] = lambda line: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._port = port
        self._progress = progress
        self._clock = clock
        self._dec = Decoder()
        self.state: int | None = None

    def _send(self, data: bytes) -> None:
        self._port.write(data)

    def _await(self, want: Callable[[int, bytes], bool], timeout_s: float, what: str) -> tuple[int, bytes]:
        """Read until a packet satisfies ``want``; an error packet raises ImprovError."""
        deadline = self._clock() + timeout_s
        while self._clock() < deadline:
            chunk = self._port.read(256)
            for ptype, data in self._dec.feed(chunk):
                if ptype == TYPE_STATE and data:
                    self.state = data[0]
                    self._progress(f"node state: {STATES.get(data[0], data[0])}")
                if ptype == TYPE_ERROR and data and data[0] != 0:
                    raise ImprovError(f"{what}: the node says {ERRORS.get(data[0], hex(data[0]))}")
                if want(ptype, data):
                    return ptype, data
        tail = self._dec.text.decode(errors="replace").strip().splitlines()[-3:]
        raise ImprovError(f"{what}: no answer in {timeout_s:g} s (is this a smartroom node in provisioning "
                          f"mode, on the right port?)" + (f"; it last printed: {' | '.join(tail)}" if tail else ""))

    def current_state(self) -> int:
        self._send(rpc(CMD_GET_STATE))
        _, data = self._await(lambda t, d: t == TYPE_STATE, REPLY_TIMEOUT_S, "state request")
        return data[0]

    def device_info(self) -> DeviceInfo:
        self._send(rpc(CMD_DEVICE_INFO))
        _, data = self._await(lambda t, d: t == TYPE_RESULT and d[:1] == bytes((CMD_DEVICE_INFO,)),
                              REPLY_TIMEOUT_S, "device info")
        items = parse_strings(data[2:])
        if len(items) < 4:
            raise ImprovError(f"device info has {len(items)} fields, not 4")
        return DeviceInfo(*items[:4])

    def scan(self) -> list[tuple[str, int, bool]]:
        self._send(rpc(CMD_SCAN))
        found = []
        while True:
            _, data = self._await(lambda t, d: t == TYPE_RESULT and d[:1] == bytes((CMD_SCAN,)),
                                  SCAN_TIMEOUT_S, "Wi-Fi scan")
            items = parse_strings(data[2:])
            if not items:
                return found
            found.append((items[0], int(items[1]), items[2] == "YES"))

    def send_trust(self, trust: Trust) -> None:
        """The certificate in chunks (each answered with the bytes the node holds), then TRUST."""
        for chunk in cert_chunks(trust.certificate):
            self._send(rpc(CMD_CERT, strings(chunk)))
            _, data = self._await(lambda t, d: t == TYPE_RESULT and d[:1] == bytes((CMD_CERT,)), REPLY_TIMEOUT_S,
                                  "sending the node the controller's certificate")
            held = parse_strings(data[2:])
            if held != [str(int(chunk[0]) + len(chunk[1]))]:
                raise ImprovError(f"the node holds {held} bytes of the certificate, not "
                                  f"{int(chunk[0]) + len(chunk[1])}")
        self._send(trust_rpc(trust))
        self._await(lambda t, d: t == TYPE_RESULT and d[:1] == bytes((CMD_TRUST,)), REPLY_TIMEOUT_S,
                    "sending the node its key")

    def send_wifi(self, ssid: str, password: str) -> int:
        """Returns the state after joining: provisioned, or ready when the node still lacks its trust."""
        self._send(wifi_rpc(ssid, password))
        self._await(lambda t, d: t == TYPE_RESULT and d[:1] == bytes((CMD_WIFI,)), WIFI_TIMEOUT_S,
                    f"joining Wi-Fi {ssid!r}")
        assert self.state is not None
        return self.state
