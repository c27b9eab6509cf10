"""Test doubles for the firmware tests: a controller-side protocol v2 peer and a node process.

:class:`NodePeer` accepts node connections on loopback, checks every frame with
``controller/link/protocol.py``, answers ``hello`` with ``welcome`` and acks events and heartbeats.
Tests can make it misbehave (stop acking, close the connection, sign a welcome with the wrong
key) and send commands. It is not the controller: no store, no room, no acceptance rules
beyond framing and tags.

:class:`FirmwareNode` runs ``firmware/sim_main.py`` in the MicroPython unix port, with the other
modules compiled to .mpy as on a board's flash (compiling source on the node would spend the 64 KB
heap on the compiler), and hands the test its log lines (docs/firmware.md) as they arrive, so tests
await lines instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from controller.link import protocol as p
from controller.sim.firmware import compiled_firmware

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
MICROPYTHON = Path(sys.executable).with_name("micropython")
# 64 KB of heap on a 32-bit board. The unix port is 64-bit (8-byte words, 32-byte GC blocks), so
# the same objects take about twice the bytes there; MicroPython's `w` suffix scales the size by
# word width (64wK = 128 KB on this host) to keep the budget board-equivalent.
BOARD_HEAP = "64wK"
WAIT_S = 10.0  # every await on the node or peer gives up after this: a hung test fails, never hangs


@dataclass
class PeerConn:
    """One node connection as the peer sees it."""

    index: int
    writer: asyncio.StreamWriter
    key: bytes | None = None
    sid: int | None = None
    seq: int = 0
    hello: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class NodePeer:
    """``async with NodePeer({"node": key}) as peer:`` then ``peer.port`` for the node config."""

    def __init__(self, keys: dict[str, bytes], *, hb_ms: int = 10_000) -> None:
        self.keys = keys
        self.hb_ms = hb_ms
        self.ack_events = True
        self.ack_hbs = True
        self.bad_welcomes: list[str] = []  # spoil the next welcomes: "tag" (wrong key) or "sid"
        self.close_on_events = 0           # close the connection on this many events, unacked
        self.conns: list[PeerConn] = []
        self.errors: list[str] = []     # frames the peer refused: tests assert there are none
        self.port = 0
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> "NodePeer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            conn.writer.close()
        await self._server.wait_closed()

    # --- what the node sent
    def frames(self, t: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        """(connection index, message) for every frame received, in order."""
        return [(c.index, f) for c in self.conns for f in c.frames if t in (None, f["t"])]

    async def wait_frame(self, match: Callable[[int, dict[str, Any]], bool], timeout_s: float = WAIT_S
                         ) -> tuple[int, dict[str, Any]]:
        async def find() -> tuple[int, dict[str, Any]]:
            async with self._changed:
                while True:
                    for conn_index, frame in self.frames():
                        if match(conn_index, frame):
                            return conn_index, frame
                    await self._changed.wait()
        return await asyncio.wait_for(find(), timeout_s)

    # --- acting on the current connection
    @property
    def current(self) -> PeerConn:
        return self.conns[-1]

    async def send(self, conn: PeerConn, obj: dict[str, Any], *, key: bytes | None = None) -> None:
        conn.writer.write(p.encode_frame(key or conn.key, obj))
        await conn.writer.drain()

    async def send_cmd(self, c: str, **fields: Any) -> None:
        # built by hand, not with p.command(): tests also send commands the node must refuse
        conn = self.current
        await self.send(conn, {"v": p.PROTOCOL_VERSION, "t": "cmd", "sid": conn.sid, "s": conn.next_seq(),
                               "c": c, **fields})

    async def close_current(self) -> None:
        self.current.writer.close()

    # --- serving
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = PeerConn(len(self.conns), writer)
        async with self._changed:
            self.conns.append(conn)
        try:
            while True:
                (length,) = struct.unpack(">H", await reader.readexactly(2))
                p.check_length(length)
                payload = await reader.readexactly(length)
                body, tag, obj = p.split_payload(payload)
                conn.key = conn.key or self.keys[obj["n"]]
                p.verify_tag(conn.key, body, tag)
                p.parse_node_message(obj)
                async with self._changed:
                    conn.frames.append(obj)
                    self._changed.notify_all()
                await self._answer(conn, obj)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except (p.ProtocolError, KeyError) as exc:
            self.errors.append(f"connection {conn.index}: {exc!r}")
        finally:
            writer.close()
            async with self._changed:
                self._changed.notify_all()

    async def _answer(self, conn: PeerConn, obj: dict[str, Any]) -> None:
        if obj["t"] == "hello":
            conn.hello, conn.sid = obj, obj["nonce"]
            fault = self.bad_welcomes.pop(0) if self.bad_welcomes else None
            sid = conn.sid + 1 if fault == "sid" else conn.sid
            await self.send(conn, p.welcome(sid, conn.next_seq(), self.hb_ms, 0),
                            key=bytes(32) if fault == "tag" else None)
        elif obj["t"] == "event" and self.close_on_events > 0:
            self.close_on_events -= 1
            conn.writer.close()
        elif (obj["t"] == "event" and self.ack_events) or (obj["t"] == "hb" and self.ack_hbs):
            await self.send(conn, p.ack(conn.sid, conn.next_seq(), obj["s"], obj.get("e")))


# ------------------------------------------------------------------------------- the node process


@dataclass(frozen=True)
class Line:
    """``@<node_ms> <tag> key=value ...``; ``words`` are the bare words (``link up``)."""

    node_ms: int
    tag: str
    fields: dict[str, str]
    words: tuple[str, ...]
    raw: str

    @classmethod
    def parse(cls, raw: str) -> "Line | None":
        if not raw.startswith("@"):
            return None
        head, _, rest = raw.partition(" ")
        tag, _, rest = rest.partition(" ")
        parts = rest.split()
        return cls(int(head[1:]), tag, dict(w.split("=", 1) for w in parts if "=" in w),
                   tuple(w for w in parts if "=" not in w), raw)

    def int(self, key: str) -> int:
        return int(self.fields[key])


class FirmwareNode:
    """The firmware in a MicroPython process on simulated hardware."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, heap: str = BOARD_HEAP) -> None:
        self.config = config
        self.workdir = workdir
        self.heap = heap
        self.lines: list[Line] = []
        self.other: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> "FirmwareNode":
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{self.config['node_id']}.json"
        path.write_text(json.dumps(self.config))
        fw = self.workdir / "firmware"  # sim_main.py finds the pin maps in ../hardware/pinmaps
        if not fw.exists():
            shutil.copytree(compiled_firmware(), fw)
            (self.workdir / "hardware").symlink_to(ROOT / "hardware")
        self.proc = await asyncio.create_subprocess_exec(
            str(MICROPYTHON), "-X", f"heapsize={self.heap}", str(fw / "sim_main.py"), str(path), cwd=str(fw),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None and self._reader is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            text = raw.decode(errors="replace").rstrip("\n")
            line = Line.parse(text)
            async with self._changed:
                (self.lines.append(line) if line else self.other.append(text))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def find(self, tag: str, *words: str, start: int = 0, **fields: Any) -> list[Line]:
        return [ln for ln in self.lines[start:] if ln.tag == tag and all(w in ln.words for w in words)
                and all(ln.fields.get(k) == str(v) for k, v in fields.items())]

    async def wait_line(self, tag: str, *words: str, start: int = 0, timeout_s: float = WAIT_S,
                        **fields: Any) -> Line:
        """The first line from index ``start`` with this tag, bare words and field values."""
        async def find() -> Line:
            async with self._changed:
                while not (found := self.find(tag, *words, start=start, **fields)):
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(f"node exited before '{tag} {words} {fields}':\n{self.tail()}")
                    await self._changed.wait()
                return found[0]
        try:
            return await asyncio.wait_for(find(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no '{tag} {words} {fields}' within {timeout_s} s:\n{self.tail()}") from None

    async def wait_exit(self, timeout_s: float = WAIT_S) -> int:
        assert self.proc is not None and self._reader is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code

    def tail(self, n: int = 25) -> str:
        return "\n".join([ln.raw for ln in self.lines[-n:]] + self.other[-10:])
