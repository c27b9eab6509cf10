"""Shared test helpers: a room configuration, keys, an SSE reader."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp

from controller.room.config import parse_room

ROOM_DOC = {
    "room": {"id": "4b-12", "name": "Ward 4B room 12"},
    "beds": [{"id": "A"}],
    "gateway": {"heartbeat_ms": 10000},
    "nodes": {
        "bedside-a": {"bed": "A", "location": "bedside", "indicator": True, "tone": True,
                      "inputs": {"call": "patient_call", "cancel": "cancel", "pir": "room_presence"}},
        "bath": {"location": "bathroom", "inputs": {"cord": "bath_emergency", "pir": "bath_presence"}},
        "env": {"location": "door", "inputs": {"cancel": "cancel", "pir": "room_presence"}},
        "wearable-a": {"bed": "A", "location": "patient", "inputs": {"pendant": "patient_call"}},
        "good": {"inputs": {"call": "patient_call"}},
    },
}


def room_config(heartbeat_ms: int = 10000):
    doc = json.loads(json.dumps(ROOM_DOC))
    doc["gateway"]["heartbeat_ms"] = heartbeat_ms
    return parse_room(doc, "test-room.toml")


def node_key(node: str) -> bytes:
    return bytes((i * 7 + len(node) + sum(node.encode())) % 256 for i in range(32))


def keys_for(config) -> dict[str, bytes]:
    return {node: node_key(node) for node in config.nodes}


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Yield (id, data) for each event on an open SSE response."""
    event_id, data = None, []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield int(event_id), json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def next_event(stream: AsyncIterator[tuple[int, dict[str, Any]]], kind: str, timeout_s: float = 10.0,
                     **match: Any) -> tuple[int, dict[str, Any]]:
    """The next stream event of ``kind`` whose data has the given fields."""

    async def find() -> tuple[int, dict[str, Any]]:
        async for event_id, event in stream:
            if event["kind"] == kind and all(event["data"].get(k) == v for k, v in match.items()):
                return event_id, event
        raise AssertionError(f"stream ended before a {kind} event")

    return await asyncio.wait_for(find(), timeout_s)


def write_room_files(tmp: Path, room_id: str, extra_toml: str = "") -> tuple[Path, Path]:
    """ROOM_DOC as the TOML room file and JSON key file an installer writes; returns their paths."""
    room, keys = tmp / "room.toml", tmp / "keys.json"
    if not room.exists():
        lines = [f'[room]\nid = "{room_id}"\n[[beds]]\nid = "A"\n[gateway]\nheartbeat_ms = 10000\n' + extra_toml]
        for node, table in ROOM_DOC["nodes"].items():
            inputs = ", ".join(f'{k} = "{v}"' for k, v in table["inputs"].items())
            bed = f'bed = "{table["bed"]}"\n' if table.get("bed") else ""
            lines.append(f"[nodes.{node}]\n{bed}inputs = {{ {inputs} }}\n")
        room.write_text("\n".join(lines))
        keys.write_text(json.dumps({"nodes": {n: node_key(n).hex() for n in ROOM_DOC["nodes"]}}))
        keys.chmod(0o600)  # as `smartroom keygen` writes it; wider is a warning (security/files.py)
    return room, keys


class HandTransport:
    """The transport under a node link fed by hand (tests of the gateway without sockets)."""

    def __init__(self) -> None:
        self.paused = False
        self.closed = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.9", 5000) if name == "peername" else default


def fed_link(*chunks: bytes, eof: bool = False):
    """A gateway's reader (controller/link/gateway.py, ``_NodeLink``) that was sent ``chunks``."""
    from controller.link.gateway import _NodeLink

    link = _NodeLink(asyncio.get_running_loop(), tls=False)
    link.connection_made(HandTransport())  # type: ignore[arg-type]
    for chunk in chunks:
        link.data_received(chunk)
    if eof:
        link.eof_received()
    return link
