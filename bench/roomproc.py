"""A real controller for the benchmarks: ``smartroom run`` in its own process, TLS and tokens as shipped.

    async with RoomProcess(workdir, nodes={"pub-000": {}}, ...) as room:
        room.api_url, room.node_port, room.ssl   # HTTPS with the self-signed pin
        room.headers                             # a nurse's token; room.get(path) uses a facilities one
        room.rss_kb()                            # the controller's resident memory

The room file, the node keys and the tokens are made in ``workdir`` the way an installer makes
them (``smartroom keygen``-style JSON keys, the library call behind ``smartroom token create``);
the controller then makes its self-signed certificate next to the database and prints its
fingerprint, which is pinned here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import socket
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controller.security import tokens  # noqa: E402
from controller.security.tls import pin  # noqa: E402

API_TIMEOUT_S = 60.0    # a controller saturated by a benchmark still answers, late
START_TIMEOUT_S = 600.0  # a hang guard: the first start on a 1 M-event log written before checkpoints replays it all
SMARTROOM = [sys.executable, "-m", "controller.cli"]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..1)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def commit_ms(directory: Path, n: int = 100) -> tuple[float, float]:
    """p50 and p99 of a one-row SQLite commit with the store's settings (WAL, synchronous=FULL) in
    ``directory``: what this disk adds to every durable event, however fast the controller is."""
    path = directory / "fsync-probe.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (x)")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t VALUES (?)", (i,))
        con.execute("COMMIT")
        times.append((time.perf_counter() - t0) * 1000)
    con.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return percentile(times, 0.5), percentile(times, 0.99)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def write_room(workdir: Path, nodes: dict[str, dict[str, str]], keys: dict[str, bytes], *,
               heartbeat_ms: int = 10_000, room_id: str = "bench",
               gateway: dict[str, float] | None = None) -> tuple[Path, Path]:
    """room.toml (one node per entry, ``{input: meaning}``; ``gateway``: more of its [gateway] table,
    e.g. the readings budget) and keys.json, as an installer writes them."""
    extra = "".join(f"{k} = {v}\n" for k, v in (gateway or {}).items())
    # plain_tcp: the bench's nodes speak the link without TLS; TLS costs the handshake only, once a
    # connection (bench/node_tls.py measures it), not per event
    lines = [f'[room]\nid = "{room_id}"\n[[beds]]\nid = "A"\n[gateway]\nheartbeat_ms = {heartbeat_ms}\n'
             f'plain_tcp = true\n{extra}']
    for node, inputs in nodes.items():
        table = ", ".join(f'{k} = "{v}"' for k, v in inputs.items())
        lines.append(f"[nodes.{node}]\ninputs = {{ {table} }}\n")
    room, key_file = workdir / "room.toml", workdir / "keys.json"
    room.write_text("\n".join(lines))
    key_file.write_text(json.dumps({"nodes": {n: k.hex() for n, k in keys.items()}}))
    key_file.chmod(0o600)
    return room, key_file


def create_token(db: Path, role: str = "nurse", name: str = "bench") -> str:
    """A token as ``smartroom token create`` makes it (the same library call, without a process)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    con = tokens.open_db(str(db))
    try:
        _, secret = tokens.create(con, role, name, time.time_ns() // 1_000_000)
    finally:
        con.close()
    return secret


class RoomProcess:
    """``smartroom run`` on loopback with free ports; started and stopped as an async context."""

    def __init__(self, workdir: Path, nodes: dict[str, dict[str, str]], keys: dict[str, bytes], *,
                 heartbeat_ms: int = 10_000, db: Path | None = None, gateway: dict[str, float] | None = None) -> None:
        self.workdir = workdir
        self.db = db or workdir / "room.db"
        self.config, self.keys_file = write_room(workdir, nodes, keys, heartbeat_ms=heartbeat_ms, gateway=gateway)
        self.proc: asyncio.subprocess.Process | None = None
        self.api_url = ""
        self.node_port = 0
        self.fingerprint = ""
        self.token = ""             # a nurse's: the event stream
        self.facilities_token = ""  # gateway counters
        self.started_s = 0.0  # process start -> first API answer
        self.rebuilt = ""     # the controller's own account of its start ("state rebuilt ... in 0.05 s")
        self._drain: asyncio.Task[None] | None = None

    @property
    def ssl(self) -> aiohttp.Fingerprint:
        return pin(self.fingerprint)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def start(self) -> "RoomProcess":
        if not self.token:
            self.token = create_token(self.db)
            self.facilities_token = create_token(self.db, "facilities", "bench facilities")
        self.api_url, self.fingerprint, self.rebuilt = "", "", ""
        t0 = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *SMARTROOM, "run", "--config", str(self.config), "--keys", str(self.keys_file), "--db", str(self.db),
            "--api-port", "0", "--node-port", "0", "--no-advertise", stdout=asyncio.subprocess.PIPE,
            env=subprocess_env())
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            while not (self.api_url and self.fingerprint and self.rebuilt):
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"smartroom run ended before serving (exit {await self.proc.wait()})")
                if m := re.search(r"API (\S+)\s+nodes \S+:(\d+)", line):
                    self.api_url, self.node_port = m.group(1), int(m.group(2))
                elif "tate rebuilt" in line:
                    self.rebuilt = line.strip()
                elif m := re.search(r"SHA-256 fingerprint (\S+)", line):
                    self.fingerprint = m.group(1)
            async with aiohttp.ClientSession() as http:
                async with http.get(self.api_url + "/api/v1/room", ssl=self.ssl, headers=self.headers) as resp:
                    resp.raise_for_status()
        self.started_s = time.monotonic() - t0
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))
        return self

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    async def get(self, path: str) -> Any:
        """GET with the facilities token (the room, nodes, gateway counters)."""
        headers = {"Authorization": f"Bearer {self.facilities_token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S)) as http:
            async with http.get(self.api_url + path, ssl=self.ssl, headers=headers) as resp:
                resp.raise_for_status()
                return await resp.json()

    def rss_kb(self) -> tuple[int, int]:
        """(resident now, peak) of the controller process, kB."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
        self.proc = None

    async def __aenter__(self) -> "RoomProcess":
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BenchNode:
    """Protocol v2 reduced to what the benchmarks need: a hello, then frames the caller builds, on
    one TCP connection without TLS (the rooms here set ``plain_tcp``)."""

    def __init__(self, node: str, key: bytes, boot: int = 1) -> None:
        self.node, self.key, self.boot = node, key, boot
        self.seq = 1
        self.event_no = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def frame(self, body: bytes) -> bytes:
        return struct.pack(">H", len(body) + 32) + body + hmac.new(self.key, body, hashlib.sha256).digest()

    async def connect(self, port: int, nonce: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = (b'{"b":%d,"caps":["button"],"fw":"bench","hb_ms":10000,"hw":"cpython","n":"%s","nonce":%d,'
                 b'"s":1,"t":"hello","v":2}' % (self.boot, self.node.encode(), nonce))
        self.writer.write(self.frame(hello))
        while (await self.recv())["t"] != "welcome":
            pass

    async def recv(self) -> dict:
        assert self.reader is not None
        (length,) = struct.unpack(">H", await self.reader.readexactly(2))
        return json.loads((await self.reader.readexactly(length))[:-32])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
