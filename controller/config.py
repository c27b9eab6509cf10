"""Room configuration (one TOML file per room) and the node key file.

Errors name the file and the key, so a technician can fix the file without reading code.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .protocol import NODE_ID_RE

# What a node's input can mean in this room. The node reports only which input changed.
INPUT_MEANINGS = (
    "patient_call",    # bedside call button, pendant
    "bath_emergency",  # bathroom pull-cord
    "staff_assist",    # staff assist button
    "code_call",       # code blue / staff emergency
    "cancel",          # in-room cancel / presence button
    "room_presence",   # PIR in the room
    "bath_presence",   # PIR in the bathroom
    "bed_occupancy",   # bed pad
)

DEFAULT_HEARTBEAT_MS = 10_000
DEFAULT_NODE_PORT = 7700
DEFAULT_API_PORT = 8080
KEY_BYTES = 32


class ConfigError(ValueError):
    """The room configuration or key file is wrong; the message names file and key."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    location: str = ""
    bed: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)  # input name -> meaning
    indicator: bool = False


@dataclass(frozen=True, slots=True)
class RoomConfig:
    room_id: str
    name: str
    beds: tuple[str, ...]
    nodes: Mapping[str, NodeConfig]
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    node_host: str = "127.0.0.1"
    node_port: int = DEFAULT_NODE_PORT
    source: str = "<memory>"

    def meaning(self, node: str, src: str) -> str | None:
        cfg = self.nodes.get(node)
        return cfg.inputs.get(src) if cfg else None


def _need(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_room(doc: Mapping[str, Any], source: str = "<memory>") -> RoomConfig:
    room = _need(doc, "room", dict, source)
    room_id = _need(room, "id", str, f"{source}: room")
    name = room.get("name", room_id)
    beds = tuple(_need(b, "id", str, f"{source}: beds[{i}]") for i, b in enumerate(doc.get("beds", [])))
    gateway = doc.get("gateway", {})
    heartbeat_ms = gateway.get("heartbeat_ms", DEFAULT_HEARTBEAT_MS)
    if not isinstance(heartbeat_ms, int) or not 1000 <= heartbeat_ms <= 600_000:
        raise ConfigError(f"{source}: gateway.heartbeat_ms must be an integer from 1000 to 600000")
    nodes: dict[str, NodeConfig] = {}
    for node_id, table in _need(doc, "nodes", dict, source).items():
        where = f"{source}: nodes.{node_id}"
        if not NODE_ID_RE.match(node_id):
            raise ConfigError(f"{where}: node id must match [a-z0-9-]{{1,32}}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        inputs = table.get("inputs", {})
        for src, meaning in inputs.items():
            if meaning not in INPUT_MEANINGS:
                raise ConfigError(f"{where}.inputs.{src}: '{meaning}' is not one of {', '.join(INPUT_MEANINGS)}")
        bed = table.get("bed")
        if bed is not None and bed not in beds:
            raise ConfigError(f"{where}.bed: bed '{bed}' is not listed under [[beds]]")
        nodes[node_id] = NodeConfig(node_id, table.get("location", ""), bed, dict(inputs),
                                    bool(table.get("indicator", False)))
    return RoomConfig(room_id, name, beds, nodes, heartbeat_ms, gateway.get("host", "127.0.0.1"),
                      gateway.get("port", DEFAULT_NODE_PORT), source)


def load_room(path: Path) -> RoomConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_room(doc, str(path))


def load_keys(path: Path) -> dict[str, bytes]:
    """Read ``{"nodes": {"<node id>": "<64 hex digits>"}}``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    keys: dict[str, bytes] = {}
    for node, hex_key in _need(doc, "nodes", dict, str(path)).items():
        if not isinstance(hex_key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", hex_key):
            raise ConfigError(f"{path}: nodes.{node}: key must be {KEY_BYTES * 2} hex digits")
        keys[node] = bytes.fromhex(hex_key)
    return keys
