"""The room's state, kept as a fold over its event log (event sourcing).

``decide_*`` methods look at the current state and an input and return the log entries that input
causes, without changing anything; the service stores those entries durably and only then
:meth:`Room.apply`-s them. Rebuilding the room after a restart is applying the stored log again,
so the state after a restart is the state before it, times and all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from .config import RoomConfig
from .protocol import Hello, Heartbeat, NodeEvent
from .store import LogEntry, LogRecord


@dataclass(frozen=True, slots=True)
class CallType:
    rank: int            # position in the room's priority order, 0 = highest
    level: str           # IEC 60601-1-8 alarm priority: high / medium / low / info
    cancel_at_origin: bool  # only the in-room cancel input may clear it


# Highest first, from shared nurse-call practice (docs/call-model.md will hold the full model).
CALL_TYPES: dict[str, CallType] = {
    "code_call": CallType(0, "high", True),
    "bath_emergency": CallType(1, "high", True),
    "fall": CallType(1, "high", True),
    "staff_assist": CallType(2, "medium", False),
    "patient_call": CallType(3, "medium", False),
    "request": CallType(4, "low", False),
    "technical": CallType(5, "low", False),
}
CALL_MEANINGS = ("patient_call", "bath_emergency", "staff_assist", "code_call")
PRESENCE_AREAS = {"room_presence": "room", "bath_presence": "bath", "bed_occupancy": "bed"}


class RoomError(Exception):
    """A nurse action the room refuses; ``code`` and ``status`` shape the API's error."""

    code = "room_error"
    status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CallNotFound(RoomError):
    code = "call_not_found"
    status = 404


class CallAlreadyAcknowledged(RoomError):
    code = "already_acknowledged"
    status = 409


@dataclass(slots=True)
class Call:
    id: str
    type: str
    node: str | None
    input: str | None
    bed: str | None
    raised_at_ms: int
    presses: int = 1
    acknowledged_at_ms: int | None = None
    acknowledged_by: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (CALL_TYPES[self.type].rank, self.raised_at_ms, self.id)

    def to_json(self) -> dict[str, Any]:
        ctype = CALL_TYPES[self.type]
        return {
            "id": self.id,
            "type": self.type,
            "priority": ctype.level,
            "rank": ctype.rank,
            "cancel_at_origin": ctype.cancel_at_origin,
            "state": "acknowledged" if self.acknowledged_at_ms is not None else "raised",
            "source": {"node": self.node, "input": self.input},
            "bed": self.bed,
            "raised_at_ms": self.raised_at_ms,
            "presses": self.presses,
            "acknowledged_at_ms": self.acknowledged_at_ms,
            "acknowledged_by": self.acknowledged_by,
            "detail": self.detail,
        }


@dataclass(slots=True)
class NodeStatus:
    id: str
    online: bool = False
    since_ms: int | None = None
    last_seen_ms: int | None = None
    fw: str | None = None
    hw: str | None = None
    boot: int | None = None
    caps: tuple[str, ...] = ()
    rssi: int | None = None
    batt_mv: int | None = None
    heap: int | None = None
    queued: int | None = None
    dropped: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "online": self.online, "since_ms": self.since_ms, "last_seen_ms": self.last_seen_ms,
            "fw": self.fw, "hw": self.hw, "boot": self.boot, "caps": list(self.caps), "rssi": self.rssi,
            "batt_mv": self.batt_mv, "heap": self.heap, "queued": self.queued, "dropped": self.dropped,
        }


class Room:
    def __init__(self, config: RoomConfig) -> None:
        self.config = config
        self.calls: dict[str, Call] = {}
        self.presence: dict[str, bool] = {area: False for area in PRESENCE_AREAS.values()}
        self.nodes: dict[str, NodeStatus] = {node: NodeStatus(node) for node in config.nodes}
        self.environment: dict[str, dict[str, Any]] = {}
        self.cursor = 0

    # ------------------------------------------------------------------ queries
    def active_calls(self) -> list[Call]:
        return sorted(self.calls.values(), key=lambda c: c.sort_key)

    def call_from(self, node: str, src: str) -> Call | None:
        for call in self.calls.values():
            if call.node == node and call.input == src:
                return call
        return None

    def indicator_for(self, node: str) -> str:
        """The reassurance light at a node: the state of the calls it raised."""
        mine = [c for c in self.calls.values() if c.node == node]
        if not mine:
            return "off"
        return "received" if any(c.acknowledged_at_ms is None for c in mine) else "acknowledged"

    def snapshot(self) -> dict[str, Any]:
        return {
            "room": {"id": self.config.room_id, "name": self.config.name, "beds": list(self.config.beds)},
            "cursor": self.cursor,
            "calls": [c.to_json() for c in self.active_calls()],
            "presence": dict(self.presence),
            "environment": dict(self.environment),
            "nodes": [n.to_json() for n in sorted(self.nodes.values(), key=lambda n: n.id)],
        }

    # ------------------------------------------------------------------ decisions
    def decide_node_event(self, ev: NodeEvent, now_ms: int) -> list[LogEntry]:
        meaning = self.config.meaning(ev.node, ev.src)
        entries = [LogEntry("node.event", {
            "node": ev.node, "boot": ev.boot, "seq": ev.seq, "kind": ev.kind, "src": ev.src,
            "val": ev.val, "at_ms": ev.at_ms, "x": dict(ev.features), "meaning": meaning,
        })]
        if ev.kind == "button" and ev.val and meaning in CALL_MEANINGS:
            entries.append(self._raise_or_repeat(meaning, ev.node, ev.src, now_ms, {}))
        elif ev.kind == "button" and ev.val and meaning == "cancel":
            by = f"in-room cancel ({ev.node}/{ev.src})"
            entries.extend(self._clear(c, by, "cancel_at_origin", now_ms) for c in self.active_calls())
        elif ev.kind == "presence" and meaning in PRESENCE_AREAS:
            area = PRESENCE_AREAS[meaning]
            if self.presence[area] != bool(ev.val):
                entries.append(LogEntry("presence.changed", {
                    "area": area, "present": bool(ev.val), "node": ev.node, "input": ev.src, "at_ms": now_ms}))
        elif ev.kind == "fall":
            entries.append(self._raise_or_repeat("fall", ev.node, ev.src, now_ms, dict(ev.features)))
        elif ev.kind == "fault":
            entries.append(self._raise_or_repeat("technical", ev.node, ev.src, now_ms,
                                                 {"fault": "sensor_fault", "code": ev.val}))
        return entries

    def _raise_or_repeat(self, ctype: str, node: str, src: str, now_ms: int, detail: dict[str, Any]) -> LogEntry:
        active = self.call_from(node, src)
        if active is not None and active.type == ctype:
            return LogEntry("call.repeated", {"call_id": active.id, "presses": active.presses + 1, "at_ms": now_ms})
        node_cfg = self.config.nodes.get(node)
        return LogEntry("call.raised", {
            "call_id": "c" + uuid.uuid4().hex[:12], "type": ctype, "node": node, "input": src,
            "bed": node_cfg.bed if node_cfg else None, "at_ms": now_ms, "detail": detail,
        })

    @staticmethod
    def _clear(call: Call, by: str, how: str, now_ms: int) -> LogEntry:
        return LogEntry("call.cleared", {"call_id": call.id, "by": by, "how": how, "at_ms": now_ms})

    def decide_ack(self, call_id: str, by: str, now_ms: int) -> list[LogEntry]:
        call = self.calls.get(call_id)
        if call is None:
            raise CallNotFound(f"no active call with id '{call_id}'")
        if call.acknowledged_at_ms is not None:
            raise CallAlreadyAcknowledged(
                f"call '{call_id}' was already acknowledged by {call.acknowledged_by} at {call.acknowledged_at_ms}")
        return [LogEntry("call.acknowledged", {"call_id": call_id, "by": by, "at_ms": now_ms})]

    def decide_online(self, hello: Hello, peer: str, now_ms: int) -> list[LogEntry]:
        return [LogEntry("node.online", {
            "node": hello.node, "boot": hello.boot, "fw": hello.fw, "hw": hello.hw, "caps": list(hello.caps),
            "peer": peer, "at_ms": now_ms})]

    def decide_offline(self, node: str, reason: str, now_ms: int) -> list[LogEntry]:
        status = self.nodes.get(node)
        if status is None or not status.online:
            return []
        return [LogEntry("node.offline", {"node": node, "reason": reason, "at_ms": now_ms})]

    # ------------------------------------------------------------------ state changes
    def apply_all(self, records: Iterable[LogRecord]) -> None:
        for record in records:
            self.apply(record)

    def apply(self, record: LogRecord) -> None:
        d = record.data
        kind = record.kind
        if kind == "call.raised":
            self.calls[d["call_id"]] = Call(d["call_id"], d["type"], d["node"], d["input"], d["bed"], d["at_ms"],
                                            detail=dict(d.get("detail", {})))
        elif kind == "call.repeated":
            if d["call_id"] in self.calls:
                self.calls[d["call_id"]].presses = d["presses"]
        elif kind == "call.acknowledged":
            call = self.calls.get(d["call_id"])
            if call is not None:
                call.acknowledged_at_ms = d["at_ms"]
                call.acknowledged_by = d["by"]
        elif kind == "call.cleared":
            self.calls.pop(d["call_id"], None)
        elif kind == "presence.changed":
            self.presence[d["area"]] = d["present"]
        elif kind == "node.online":
            status = self.nodes.setdefault(d["node"], NodeStatus(d["node"]))
            status.online, status.since_ms, status.last_seen_ms = True, d["at_ms"], d["at_ms"]
            status.fw, status.hw, status.boot, status.caps = d["fw"], d["hw"], d["boot"], tuple(d["caps"])
        elif kind == "node.offline":
            status = self.nodes.setdefault(d["node"], NodeStatus(d["node"]))
            status.online, status.since_ms = False, d["at_ms"]
        self.cursor = max(self.cursor, record.id)

    def note_heartbeat(self, hb: Heartbeat, now_ms: int) -> None:
        """Heartbeats are too frequent for the log; they only refresh the node's live status."""
        status = self.nodes.setdefault(hb.node, NodeStatus(hb.node))
        status.last_seen_ms = now_ms
        status.rssi, status.batt_mv, status.heap = hb.rssi, hb.batt_mv, hb.heap
        status.queued, status.dropped = hb.queued, hb.dropped

    def note_seen(self, node: str, now_ms: int) -> None:
        if node in self.nodes:
            self.nodes[node].last_seen_ms = now_ms

    def note_reading(self, measure: str, value: float, node: str, ts_ms: int) -> None:
        self.environment[measure] = {"value": value, "node": node, "ts_ms": ts_ms}
