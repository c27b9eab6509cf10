"""The ward's MQTT topics and messages (docs/ward.md): what a room publishes and what the ward sends.

Topics name the site, the unit and the room::

    smartroom/<site>/<unit>/<room>/event    room -> ward  QoS 1       every stored room event, with its cursor
    smartroom/<site>/<unit>/<room>/state    room -> ward  QoS 1, retained   the room now (calls, dome light, ...)
    smartroom/<site>/<unit>/<room>/status   room -> ward  QoS 1, retained   online / offline (the last will)
    smartroom/<site>/<unit>/<room>/firmware room -> ward  QoS 1, retained   its nodes' firmware, bundles, rollouts
    smartroom/<site>/<unit>/<room>/cmd      ward -> room  QoS 1       ack, clear, silence, fall-risk, firmware
    smartroom/<site>/<unit>/<room>/result   room -> ward  QoS 1       the answer to one command

Payloads are JSON objects with ``"v": 1``. Decoding checks every field and raises :class:`WireError`
(a ``ValueError``) with a message saying what is wrong; the receiver counts it and carries on.
Pure functions and frozen dataclasses: both the room's uplink and the ward console use them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

ROOT = "smartroom"
VERSION = 1
LEAVES = ("event", "state", "status", "firmware", "cmd", "result")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # no MQTT wildcards or separators in a name
ACTIONS = ("ack", "clear", "silence", "fall_risk", "firmware")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_ROLLOUT_NODES = 500  # a room's nodes, with room to spare (room_api/firmware.py has the same bound)
STATUSES = ("online", "offline")
MAX_PAYLOAD = 256 * 1024  # a room's state with many calls is a few KB; anything far bigger is not ours
MAX_NAME_LEN = 64


class WireError(ValueError):
    """A topic or payload that is not a valid ward message; the message says why."""


def check_segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not SEGMENT_RE.match(value):
        raise WireError(f"{what} {value!r} must be 1 to 64 of A-Z a-z 0-9 . _ - (it is part of MQTT topics)")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one room."""

    site: str
    unit: str
    room: str

    def __post_init__(self) -> None:
        check_segment(self.site, "site")
        check_segment(self.unit, "unit")
        check_segment(self.room, "room")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.site}/{self.unit}/{self.room}"

    def leaf(self, leaf: str) -> str:
        return f"{self.base}/{leaf}"

    @property
    def event(self) -> str:
        return self.leaf("event")

    @property
    def state(self) -> str:
        return self.leaf("state")

    @property
    def status(self) -> str:
        return self.leaf("status")

    @property
    def firmware(self) -> str:
        return self.leaf("firmware")

    @property
    def cmd(self) -> str:
        return self.leaf("cmd")

    @property
    def result(self) -> str:
        return self.leaf("result")


def unit_filter(site: str, unit: str, leaf: str) -> str:
    """A subscription for one leaf of every room of a unit; ``unit="+"`` for a whole site,
    ``site="+"`` too for the whole hospital broker."""
    return f"{ROOT}/{site}/{unit}/+/{leaf}"


def parse_topic(topic: str) -> tuple[Topics, str]:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[4] not in LEAVES:
        raise WireError(f"topic {topic!r} is not {ROOT}/<site>/<unit>/<room>/<{'|'.join(LEAVES)}>")
    return Topics(parts[1], parts[2], parts[3]), parts[4]


# --------------------------------------------------------------------------- payloads


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **obj}, separators=(",", ":")).encode()


def _load(payload: bytes | bytearray | str, what: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"{what}: {len(payload)} bytes is over the {MAX_PAYLOAD} byte limit")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what}: not a JSON object")
    if obj.get("v") != VERSION:
        raise WireError(f"{what}: version {obj.get('v')!r}, this side speaks {VERSION}")
    return obj


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"{what}: '{key}' missing or of the wrong type ({value!r})")
    return value


def _name(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = _field(obj, key, str, what).strip()
    if not value or len(value) > MAX_NAME_LEN:
        raise WireError(f"{what}: '{key}' must be 1 to {MAX_NAME_LEN} characters")
    return value


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One stored room event; ``cursor`` is the room's log id (increasing; a write that failed in
    the room leaves its ids unused, a hole the ward console passes over once the room's API shows it)."""

    room: str
    cursor: int
    ts_ms: int
    kind: str
    data: Mapping[str, Any]

    def encode(self) -> bytes:
        return _dump({"room": self.room, "cursor": self.cursor, "ts_ms": self.ts_ms, "kind": self.kind,
                      "data": dict(self.data)})

    def to_json(self) -> dict[str, Any]:
        return {"room": self.room, "cursor": self.cursor, "ts_ms": self.ts_ms, "kind": self.kind,
                "data": dict(self.data)}


def decode_event(payload: bytes, room: str) -> RoomEvent:
    obj = _load(payload, "event")
    ev = RoomEvent(_field(obj, "room", str, "event"), _field(obj, "cursor", int, "event"),
                   _field(obj, "ts_ms", int, "event"), _field(obj, "kind", str, "event"),
                   _field(obj, "data", dict, "event"))
    if ev.room != room:
        raise WireError(f"event: names room {ev.room!r} but came on room {room!r}'s topic")
    if ev.cursor < 1:
        raise WireError(f"event: cursor {ev.cursor} is not a log id")
    return ev


@dataclass(frozen=True, slots=True)
class RoomStatus:
    room: str
    status: str          # online | offline
    reason: str          # "started", "stopped", "connection lost" (the last will)
    ts_ms: int
    api_url: str | None = None  # where the ward backfills a gap from (GET /api/v1/events)
    name: str | None = None
    fingerprint: str | None = None  # the API's TLS certificate (SHA-256), pinned by the ward's backfill

    def encode(self) -> bytes:
        return _dump({"room": self.room, "status": self.status, "reason": self.reason, "ts_ms": self.ts_ms,
                      "api_url": self.api_url, "name": self.name, "fingerprint": self.fingerprint})


def decode_status(payload: bytes, room: str) -> RoomStatus:
    obj = _load(payload, "status")
    status = _field(obj, "status", str, "status")
    if status not in STATUSES:
        raise WireError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    api_url, name, fp = obj.get("api_url"), obj.get("name"), obj.get("fingerprint")
    st = RoomStatus(_field(obj, "room", str, "status"), status, _field(obj, "reason", str, "status"),
                    _field(obj, "ts_ms", int, "status"), api_url if isinstance(api_url, str) else None,
                    name if isinstance(name, str) else None, fp if isinstance(fp, str) else None)
    if st.room != room:
        raise WireError(f"status: names room {st.room!r} but came on room {room!r}'s topic")
    return st


def encode_state(room: str, snapshot: Mapping[str, Any], ts_ms: int) -> bytes:
    """The room's snapshot (GET /api/v1/room's shape, with its ``cursor``)."""
    return _dump({"room": room, "ts_ms": ts_ms, "state": dict(snapshot)})


@dataclass(frozen=True, slots=True)
class RoomState:
    room: str
    ts_ms: int
    cursor: int
    state: Mapping[str, Any]


def decode_state(payload: bytes, room: str) -> RoomState:
    obj = _load(payload, "state")
    state = _field(obj, "state", dict, "state")
    st = RoomState(_field(obj, "room", str, "state"), _field(obj, "ts_ms", int, "state"),
                   _field(state, "cursor", int, "state"), state)
    if st.room != room:
        raise WireError(f"state: names room {st.room!r} but came on room {room!r}'s topic")
    if not isinstance(state.get("calls"), list):
        raise WireError("state: 'calls' missing")
    return st


@dataclass(frozen=True, slots=True)
class FirmwareStatus:
    """A room's nodes' firmware (``OtaServer.status()``'s shape): each node's version, board and
    update, the bundles it holds verified, its rollouts (each naming the ward rollout it is part of)."""

    room: str
    ts_ms: int
    nodes: tuple[Mapping[str, Any], ...]
    bundles: tuple[Mapping[str, Any], ...]
    rollouts: tuple[Mapping[str, Any], ...]
    bad_bundles: tuple[Mapping[str, Any], ...] = ()

    def encode(self) -> bytes:
        return _dump({"room": self.room, "ts_ms": self.ts_ms, "nodes": [dict(n) for n in self.nodes],
                      "bundles": [dict(b) for b in self.bundles], "rollouts": [dict(r) for r in self.rollouts],
                      "bad_bundles": [dict(b) for b in self.bad_bundles]})

    def to_json(self) -> dict[str, Any]:
        return {"room": self.room, "ts_ms": self.ts_ms, "nodes": [dict(n) for n in self.nodes],
                "bundles": [dict(b) for b in self.bundles], "rollouts": [dict(r) for r in self.rollouts],
                "bad_bundles": [dict(b) for b in self.bad_bundles]}


def decode_firmware(payload: bytes, room: str) -> FirmwareStatus:
    obj = _load(payload, "firmware")

    def items(key: str, needs: tuple[str, ...]) -> tuple[Mapping[str, Any], ...]:
        value = obj.get(key, [])
        if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
            raise WireError(f"firmware: '{key}' must be a list of objects")
        for item in value:
            for need in needs:
                if not isinstance(item.get(need), (str, int)) or isinstance(item.get(need), bool):
                    raise WireError(f"firmware: an item of '{key}' lacks '{need}'")
        return tuple(value)

    st = FirmwareStatus(_field(obj, "room", str, "firmware"), _field(obj, "ts_ms", int, "firmware"),
                        items("nodes", ("node",)), items("bundles", ("sha256", "version", "board")),
                        items("rollouts", ("id", "state", "bundle")), items("bad_bundles", ("folder",)))
    if st.room != room:
        raise WireError(f"firmware: names room {st.room!r} but came on room {room!r}'s topic")
    return st


@dataclass(frozen=True, slots=True)
class Command:
    """A nurse's (or a technician's) action sent from the ward: ``by`` is the acting person.
    ``firmware``: update ``nodes`` to the bundle whose manifest hashes to ``bundle``, as part of
    ward rollout ``rollout`` (the room installs only a bundle of its own that verifies with its key)."""

    id: str
    action: str
    by: str
    ts_ms: int
    call_id: str | None = None
    bed: str | None = None
    enabled: bool | None = None
    bundle: str | None = None
    nodes: tuple[str, ...] | None = None
    rollout: str | None = None

    def encode(self) -> bytes:
        return _dump({k: v for k, v in (("id", self.id), ("action", self.action), ("by", self.by),
                                        ("ts_ms", self.ts_ms), ("call_id", self.call_id), ("bed", self.bed),
                                        ("enabled", self.enabled), ("bundle", self.bundle),
                                        ("nodes", list(self.nodes) if self.nodes is not None else None),
                                        ("rollout", self.rollout)) if v is not None})

    @property
    def target(self) -> str:
        if self.action == "firmware":
            return f"bundle {(self.bundle or '')[:12]} to {', '.join(self.nodes or ())} (ward rollout {self.rollout})"
        return self.call_id or (f"bed {self.bed}" if self.bed else "room")


def decode_command(payload: bytes) -> Command:
    obj = _load(payload, "command")
    cmd_id = _name(obj, "id", "command")
    action = _field(obj, "action", str, "command")
    if action not in ACTIONS:
        raise WireError(f"command: action {action!r} is not one of {', '.join(ACTIONS)}")
    cmd = Command(cmd_id, action, _name(obj, "by", "command"), _field(obj, "ts_ms", int, "command"))
    if action in ("ack", "clear"):
        return Command(cmd.id, action, cmd.by, cmd.ts_ms, call_id=_name(obj, "call_id", "command"))
    if action == "fall_risk":
        return Command(cmd.id, action, cmd.by, cmd.ts_ms, bed=_name(obj, "bed", "command"),
                       enabled=_field(obj, "enabled", bool, "command"))
    if action == "firmware":
        bundle = _field(obj, "bundle", str, "command")
        if not SHA256_RE.match(bundle):
            raise WireError("command: 'bundle' must be a manifest's SHA-256 (64 lowercase hex digits)")
        nodes = _field(obj, "nodes", list, "command")
        if not 1 <= len(nodes) <= MAX_ROLLOUT_NODES or len(set(map(str, nodes))) != len(nodes) or not all(
                isinstance(n, str) and 0 < len(n) <= MAX_NAME_LEN for n in nodes):
            raise WireError(f"command: 'nodes' must be 1 to {MAX_ROLLOUT_NODES} distinct node ids")
        return Command(cmd.id, action, cmd.by, cmd.ts_ms, bundle=bundle, nodes=tuple(nodes),
                       rollout=_name(obj, "rollout", "command"))
    return cmd


@dataclass(frozen=True, slots=True)
class Result:
    """The room's answer to a command: ``status`` is the HTTP status the room API would give."""

    id: str
    room: str
    ok: bool
    status: int
    code: str
    message: str
    result: Mapping[str, Any] | None = None

    def encode(self) -> bytes:
        return _dump({"id": self.id, "room": self.room, "ok": self.ok, "status": self.status, "code": self.code,
                      "message": self.message, "result": dict(self.result) if self.result is not None else None})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "room": self.room, "ok": self.ok, "status": self.status, "code": self.code,
                "message": self.message, "result": dict(self.result) if self.result is not None else None}


def decode_result(payload: bytes, room: str) -> Result:
    obj = _load(payload, "result")
    result = obj.get("result")
    res = Result(_name(obj, "id", "result"), _field(obj, "room", str, "result"), _field(obj, "ok", bool, "result"),
                 _field(obj, "status", int, "result"), _field(obj, "code", str, "result"),
                 _field(obj, "message", str, "result"), result if isinstance(result, dict) else None)
    if res.room != room:
        raise WireError(f"result: names room {res.room!r} but came on room {room!r}'s topic")
    return res
