"""The ward console's configuration: ``ward.toml`` (docs/ward.md).

::

    [ward]
    name = "Ward 4B"
    site = "general"
    unit = "4b"                 # "+" : every unit of the site (a hospital console on the hospital broker)
    rooms = ["4b-12", "4b-14"]  # rooms expected on this ward: one never heard from is an alarm
    [broker]
    host = "127.0.0.1"
    port = 1883
    username = "ward-4b"
    password_file = "ward-broker.password"
    [http]
    host = "127.0.0.1"
    port = 8090
    [backfill]                  # a gap in a room's cursors is read from the room's API
    token_file = "room-tokens.json"   # {"4b-12": "srt_…"}: an integration token per room

Errors name the file, the line and the key, like the room file's.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from controller.room.config import ConfigError, dotted, key_line
from controller.uplink.wire import SEGMENT_RE

DEFAULT_HTTP_PORT = 8090


@dataclass(frozen=True, slots=True)
class BrokerLink:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = 6
    client_id: str | None = None  # default: ward-<site>-<unit>; the broker keeps the session by it


@dataclass(frozen=True, slots=True)
class WardConfig:
    name: str
    site: str
    unit: str
    broker: BrokerLink
    rooms: tuple[str, ...] = ()
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    room_tokens: Mapping[str, str] | None = None   # room -> integration token for backfill
    room_urls: Mapping[str, str] | None = None     # room -> API base URL, overriding what the room announces
    source: str = "<memory>"


_TOP = ("ward", "broker", "http", "backfill")
_WARD = ("name", "site", "unit", "rooms")
_BROKER = ("host", "port", "username", "password_file", "tls", "ca_file", "keepalive_s", "client_id")
_HTTP = ("host", "port")
_BACKFILL = ("token_file", "urls")


class _Doc:
    def __init__(self, source: str, text: str | None) -> None:
        self.source, self.text = source, text

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        line = key_line(self.text, path) if self.text is not None else None
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {dotted(path)}: {message}")

    def table(self, root: Mapping[str, Any], key: str, allowed: tuple[str, ...], required: bool = False) -> dict:
        if key not in root:
            if required:
                raise self.error((key,), f"missing table [{key}]")
            return {}
        table = root[key]
        if not isinstance(table, dict):
            raise self.error((key,), "must be a table")
        for k in table:
            if k not in allowed:
                raise self.error((key, k), f"unknown key '{k}' (allowed: {', '.join(allowed)})")
        return table

    def get(self, table: Mapping[str, Any], path: tuple[str, ...], kind: type, default: Any = ...,
            bounds: tuple[int, int] | None = None) -> Any:
        key = path[-1]
        if key not in table:
            if default is ...:
                raise self.error(path, f"missing key '{key}'")
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(path, f"expected {kind.__name__}, got {value!r}")
        if kind is str and not value.strip():
            raise self.error(path, "must not be empty")
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise self.error(path, f"{value!r} is out of range: allowed {bounds[0]} to {bounds[1]}")
        return value

    def segment(self, value: str, path: tuple[str, ...], wildcard: bool = False) -> str:
        if not (SEGMENT_RE.match(value) or (wildcard and value == "+")):
            raise self.error(path, f"{value!r} must be 1 to 64 of A-Z a-z 0-9 . _ -"
                                   + (" (or '+' for all)" if wildcard else "") + " (it names MQTT topics)")
        return value


def parse_ward(doc: Mapping[str, Any], source: str = "<memory>", *, text: str | None = None,
               base: Path = Path(".")) -> WardConfig:
    d = _Doc(source, text)
    for key in doc:
        if key not in _TOP:
            raise d.error((key,), f"unknown table '{key}' (allowed: {', '.join(_TOP)})")
    ward = d.table(doc, "ward", _WARD, required=True)
    site = d.segment(d.get(ward, ("ward", "site"), str), ("ward", "site"), wildcard=True)
    unit = d.segment(d.get(ward, ("ward", "unit"), str), ("ward", "unit"), wildcard=True)
    rooms = d.get(ward, ("ward", "rooms"), list, [])
    for i, room in enumerate(rooms):
        if not isinstance(room, str):
            raise d.error(("ward", "rooms"), f"rooms[{i}] must be a room id string")
        d.segment(room, ("ward", "rooms"))
    name = d.get(ward, ("ward", "name"), str, f"Ward {unit}")

    broker = d.table(doc, "broker", _BROKER, required=True)
    password = None
    if "password_file" in broker:
        pf = base / d.get(broker, ("broker", "password_file"), str)
        try:
            password = pf.read_text().strip()
        except OSError as exc:
            raise d.error(("broker", "password_file"), f"{pf}: {exc.strerror or exc}") from None
    tls = d.get(broker, ("broker", "tls"), bool, False)
    ca = d.get(broker, ("broker", "ca_file"), str, None)
    link = BrokerLink(d.get(broker, ("broker", "host"), str),
                      d.get(broker, ("broker", "port"), int, 8883 if tls else 1883, (1, 65535)),
                      d.get(broker, ("broker", "username"), str, None), password, tls,
                      base / ca if ca else None,
                      d.get(broker, ("broker", "keepalive_s"), int, 6, (2, 300)),
                      d.get(broker, ("broker", "client_id"), str, None))

    http = d.table(doc, "http", _HTTP)
    backfill = d.table(doc, "backfill", _BACKFILL)
    tokens = None
    if "token_file" in backfill:
        tf = base / d.get(backfill, ("backfill", "token_file"), str)
        try:
            tokens = json.loads(tf.read_text())
        except (OSError, ValueError) as exc:
            raise d.error(("backfill", "token_file"), f"{tf}: {exc}") from None
        if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in tokens.items()):
            raise d.error(("backfill", "token_file"), f"{tf}: must be a JSON object of room id -> token")
    urls = d.get(backfill, ("backfill", "urls"), dict, None)
    return WardConfig(name, site, unit, link, tuple(rooms),
                      d.get(http, ("http", "host"), str, "127.0.0.1"),
                      d.get(http, ("http", "port"), int, DEFAULT_HTTP_PORT, (0, 65535)),
                      tokens, urls, source)


def load_ward(path: Path) -> WardConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_ward(doc, str(path), text=text, base=path.parent)
