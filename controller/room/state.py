"""One :class:`Room`: the room's state, kept as a fold over its event log (event sourcing), and the
nurse-call rules, composed from calls.py, presence.py, environment.py and supervision.py.

``decide_*`` methods look at the current state and an input (or the time) and return the log
entries that input causes, without changing anything; the service stores those entries durably and
only then :meth:`Room.apply`-s them. Rebuilding the room after a restart is applying the stored log
again, so the state after a restart is the state before it, times, escalation levels and all.

Time-driven rules (escalation, reminders, bathroom dwell, environment minimum durations) are
deadlines computed from times stored in the log: :meth:`Room.decide_tick` emits what is due at
``now`` and :meth:`Room.next_due_ms` says when to look again. Nothing depends on process start.

A checkpoint is the whole state as JSON (:meth:`Room.state_json`, :meth:`Room.load_state`): loading
the newest one and applying the log after it gives the state a full replay gives, in a fraction of
the time. Every attribute of a Room is either configuration or has a codec in ``_STATE_CODECS``;
:meth:`Room.state_json` refuses to run otherwise, so a field added later cannot be left out.

docs/call-model.md explains the model for a nurse manager; the tables below are that page's source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterable, Mapping

from ..model import NodeEvent
from ..store import LogEntry, LogRecord
from .calls import CALL_APPLY, CALL_INPUTS, CONDITION, Call, CallRules
from .config import RoomConfig
from .environment import ENVIRONMENT_APPLY, EnvironmentRules, EnvState
from .hospital import HOSPITAL_APPLY, HospitalRules
from .presence import AREA_INPUTS, PRESENCE_APPLY, PresenceRules
from .supervision import (BATTERY_MEASURE, FAULT_CORD_REMOVED, LIVE_NODE_FIELDS, PLAUSIBLE, SUPERVISION_APPLY,
                          NodeStatus, SupervisionRules)

# Bump when the meaning of a checkpoint's fields changes: older checkpoints are then ignored and the
# room is rebuilt by a full replay (and checkpointed again).
STATE_FORMAT = 2  # 2: a call's timeline is bounded (timeline_omitted)


class Room(PresenceRules, EnvironmentRules, SupervisionRules, HospitalRules, CallRules):
    def __init__(self, config: RoomConfig) -> None:
        self.config = config
        self.calls: dict[str, Call] = {}
        self.area: dict[str, bool] = {"room": False, "bath": False}
        self.area_since: dict[str, int] = {}
        self.beds: dict[str, bool] = {bed: False for bed in config.beds}
        self.fall_risk: dict[str, bool] = {bed: bed in config.fall_risk_beds for bed in config.beds}
        self.staff_present = False
        self.staff_since_ms: int | None = None
        self.presence_reminded_ms: int | None = None  # when the reminder before presence ends fell due
        self.bath_dwell_for: int | None = None   # bathroom stay (its start) that already alarmed
        self.silence: tuple[int, int, str] | None = None  # (at_ms, until_ms, by)
        self.nodes: dict[str, NodeStatus] = {node: NodeStatus(node) for node in config.nodes}
        self.started_ms: int | None = None  # set by the controller once rebuilt: supervision runs from then
        self.environment: dict[str, dict[str, Any]] = {}
        self.env: dict[str, EnvState] = {m: EnvState() for m in config.environment}
        self.cursor = 0
        self.last_ms = 0
        self.patients: dict[str, dict[str, str] | None] = {bed: None for bed in config.beds}  # hospital.py
        self.quiet_bands = quiet_bands(config)

    # ------------------------------------------------------------------ queries
    def next_due_ms(self, now_ms: int, offline_after_ms: int) -> int | None:
        """The earliest moment :meth:`decide_tick` has something to do."""
        due = self._calls_due(now_ms) + self._envs_due() + self._nodes_due(offline_after_ms)
        due += [d for d in (self._bath_dwell_due(), self._presence_due(), self._display_due(now_ms)) if d is not None]
        return min(due) if due else None

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        levels = self.config.escalation_levels
        return {
            "room": {"id": self.config.room_id, "name": self.config.name, "beds": list(self.config.beds),
                     "profile": self.config.profile},
            "cursor": self.cursor,
            "calls": [c.to_json(self.call_due_ms(c), levels) for c in self.active_calls()],
            "occupancy": {"state": self.occupancy(), "room": self.area["room"], "bath": self.area["bath"],
                          "beds": dict(self.beds), "staff_present": self.staff_present,
                          "staff_since_ms": self.staff_since_ms, "presence_ends_at_ms": self.presence_ends_ms()},
            "fall_risk": dict(self.fall_risk),
            "voice": {n.bed or n.id: bool(n.options.get("enabled", True))
                      for n in self.config.nodes.values() if n.transport == "voice"},
            "outputs": self.outputs(now_ms).to_json(),
            "environment": {m: dict(v, **self._env_json(m)) for m, v in self.environment.items()},
            "nodes": [self.node_json(n) for n in sorted(self.nodes.values(), key=lambda n: n.id)],
            "patients": dict(self.patients),
        }

    # ------------------------------------------------------------------ decisions: node inputs
    def decide_node_event(self, ev: NodeEvent, now_ms: int) -> list[LogEntry]:
        meaning = self.config.meaning(ev.node, ev.src)
        entries = [LogEntry("node.event", {
            "node": ev.node, "boot": ev.event_boot, "seq": ev.seq, "e": ev.e, "kind": ev.kind, "src": ev.src,
            "val": ev.val, "at_ms": ev.at_ms, "x": dict(ev.features), "meaning": meaning,
            # kept through a restart (protocol §9): it came in a frame of this later boot
            **({"frame_boot": ev.boot} if ev.origin_boot is not None else {}),
        })]
        source = f"{ev.node}/{ev.src}"
        entries += self.decide_unmapped(ev.node, ev.src, ev.kind, ev.val, now_ms)
        if ev.kind == "button" and ev.val:
            if meaning in CALL_INPUTS:
                ctype, detail = CALL_INPUTS[meaning]
                entries += self._raise_or_repeat(ctype, ev.node, ev.src, now_ms, {**detail, **ev.features})
            elif meaning == "cancel":
                entries += self._in_room_cancel(f"in-room cancel ({source})", now_ms)
            elif meaning == "staff_presence":
                entries += self._staff_presence_press(f"staff presence ({source})", now_ms)
            elif meaning == "im_ok":
                entries += self._patient_ok(ev.node, f"patient pressed I'm OK ({source})", now_ms)
            elif meaning == "patient_cancel":
                entries += self._patient_cancel(ev.node, f"patient cancelled ({source})", now_ms)
        elif ev.kind == "presence" and meaning in AREA_INPUTS:
            entries += self._presence(AREA_INPUTS[meaning], bool(ev.val), ev.node, ev.src, now_ms)
        elif ev.kind == "fall":
            detail = dict(ev.features)
            if self.area["bath"]:
                detail["where"] = "bathroom"
            entries += self._raise_or_repeat("fall", ev.node, ev.src, now_ms, detail)
        elif ev.kind == "fault":
            cord = ev.val == FAULT_CORD_REMOVED or self.call_from(ev.node, f"cord:{ev.src}", "cord_removed")
            if cord:
                entries += self._fault(ev.node, f"cord:{ev.src}", ev.val != 0, now_ms, {"input": ev.src},
                                       f"{source}: cord plugged in again", "cord_removed")
            else:
                entries += self._fault(ev.node, f"sensor:{ev.src}", ev.val != 0, now_ms,
                                       {"sensor": ev.src, "code": ev.val}, f"{source} reports the sensor working")
        return entries

    def decide_reading(self, node: str, measure: str, value: float, now_ms: int) -> list[LogEntry]:
        """A sensor value: plausibility (sensor fault), battery, environment excursions."""
        plausible, entries = self._decide_plausible_and_battery(node, measure, value, now_ms)
        if not plausible:
            return entries
        rule = self.config.environment.get(measure)
        if rule is not None:
            entries += self._env_reading(rule, value, node, now_ms)
        return entries

    def reading_matters(self, node: str, measure: str, value: float) -> bool:
        """False when :meth:`decide_reading` would return nothing: the value is inside every limit
        of its measure and no alarm it could end is active. The readings path; allocates nothing."""
        band = self.quiet_bands.get(measure)
        if band is None or not band[0] <= value <= band[1]:
            return True
        st = self.env.get(measure)
        if st is not None and st.out:
            return True
        if self.calls:
            for call in self.calls.values():  # a sensor fault or low battery of this node may end
                if call.node == node and call.ctype.clears == CONDITION:
                    return True
        return False

    # ------------------------------------------------------------------ decisions: time
    def decide_tick(self, now_ms: int, offline_after_ms: int) -> list[LogEntry]:
        """Everything that has fallen due by ``now_ms``; call again until it returns nothing."""
        return (self._decide_escalations(now_ms) + self._decide_bath_dwell(now_ms)
                + self._decide_presence_timeout(now_ms) + self._decide_environment(now_ms)
                + self._decide_supervision(now_ms, offline_after_ms) + self._decide_display(now_ms))

    # ------------------------------------------------------------------ checkpoints
    def state_key(self) -> str:
        """Names what a checkpoint of this room is valid for: the state format and the configuration
        that shapes the fold (nodes, beds, rules, timers). Another room file means a full replay."""
        return f"v{STATE_FORMAT}:{config_fingerprint(self.config)}"

    def state_json(self) -> dict[str, Any]:
        """The whole state (everything but the configuration) as JSON-able data."""
        unknown = set(vars(self)) - NOT_STATE - _STATE_CODECS.keys()
        if unknown:
            raise TypeError(f"Room attribute(s) {sorted(unknown)} have no checkpoint codec: add them to "
                            "_STATE_CODECS in controller/room/state.py (or to NOT_STATE if they are not the log's)")
        return {name: encode(getattr(self, name)) for name, (encode, _) in _STATE_CODECS.items()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the whole state with one made by :meth:`state_json` (of a room with this configuration)."""
        missing = _STATE_CODECS.keys() - state.keys()
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)}")
        for name, (_, decode) in _STATE_CODECS.items():
            setattr(self, name, decode(state[name]))

    def take_state(self, other: "Room") -> None:
        """Take over ``other``'s whole state (a room of the same configuration, built aside)."""
        for name in _STATE_CODECS:
            setattr(self, name, getattr(other, name))

    def live_state(self) -> dict[str, Any]:
        """What heartbeats and readings set without the log (node health, latest values)."""
        return {"nodes": {n: {f: getattr(s, f) for f in LIVE_NODE_FIELDS} for n, s in self.nodes.items()},
                "environment": {m: dict(v) for m, v in self.environment.items()}}

    def restore_live(self, live: Mapping[str, Any]) -> None:
        """Put back what :meth:`live_state` took, after the state was rebuilt from the log."""
        for node, values in live["nodes"].items():
            status = self.nodes.get(node)
            if status is not None:
                for name, value in values.items():
                    setattr(status, name, value)
        self.environment.update(live["environment"])

    # ------------------------------------------------------------------ state changes
    @staticmethod
    def changes_state(records: Iterable[LogRecord]) -> bool:
        """False when applying ``records`` changes nothing but the cursor (e.g. only node.event records
        of inputs with no meaning): then no deadline and no output can have moved."""
        return any(record.kind in _APPLY for record in records)

    def apply_all(self, records: Iterable[LogRecord]) -> None:
        for record in records:
            self.apply(record)

    def apply(self, record: LogRecord) -> None:
        d = record.data
        handler = _APPLY.get(record.kind)
        if handler is not None:
            handler(self, d)
        self.cursor = max(self.cursor, record.id)
        self.last_ms = max(self.last_ms, record.ts_ms)



_APPLY = {**CALL_APPLY, **PRESENCE_APPLY, **ENVIRONMENT_APPLY, **SUPERVISION_APPLY, **HOSPITAL_APPLY}


# --------------------------------------------------------------------------- checkpoint codecs
def _to_json(obj: Any) -> dict[str, Any]:
    """A state dataclass, every field (tuples become lists)."""
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in dataclasses.fields(obj)}


def _from_json(cls: type, data: Mapping[str, Any]) -> Any:
    """The inverse of :func:`_to_json`; a field missing from ``data`` is an error, never a default."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = data[f.name]
        if isinstance(f.type, str) and f.type.startswith("tuple") and value is not None:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _same(value: Any) -> Any:
    return value


# Configuration, what is computed from it alone, and what the controller sets for this run (when it
# started supervising): never in a checkpoint, and kept through a rebuild.
NOT_STATE = frozenset({"config", "quiet_bands", "started_ms"})
_STATE_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    # a list keeps the calls' order, which is the order they were raised in
    "calls": (lambda calls: [_to_json(c) for c in calls.values()],
              lambda data: {c["id"]: _from_json(Call, c) for c in data}),
    "area": (dict, dict),
    "area_since": (dict, dict),
    "beds": (dict, dict),
    "fall_risk": (dict, dict),
    "staff_present": (_same, _same),
    "staff_since_ms": (_same, _same),
    "presence_reminded_ms": (_same, _same),
    "bath_dwell_for": (_same, _same),
    "silence": (lambda v: None if v is None else list(v), lambda v: None if v is None else tuple(v)),
    "nodes": (lambda nodes: [_to_json(n) for n in nodes.values()],
              lambda data: {n["id"]: _from_json(NodeStatus, n) for n in data}),
    "environment": (lambda env: {m: dict(v) for m, v in env.items()},
                    lambda data: {m: dict(v) for m, v in data.items()}),
    "env": (lambda env: {m: _to_json(st) for m, st in env.items()},
            lambda data: {m: _from_json(EnvState, st) for m, st in data.items()}),
    "patients": (lambda beds: {b: None if p is None else dict(p) for b, p in beds.items()},
                 lambda data: {b: None if p is None else dict(p) for b, p in data.items()}),
    "cursor": (_same, _same),
    "last_ms": (_same, _same),
}


def quiet_bands(config: RoomConfig) -> dict[str, tuple[float, float]]:
    """Per measure, the values that change nothing while no alarm of it is active: plausible,
    inside the environment rule's limits, and (the battery) at or above the low-battery level."""
    bands = {}
    for measure, (lo, hi) in PLAUSIBLE.items():
        rule = config.environment.get(measure)
        if rule is not None and rule.low is not None:
            lo = max(lo, rule.low)
        if rule is not None and rule.high is not None:
            hi = min(hi, rule.high)
        if measure == BATTERY_MEASURE:
            lo = max(lo, config.supervision.low_battery_v)
        bands[measure] = (lo, hi)
    return bands


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(str(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def config_fingerprint(config: RoomConfig) -> str:
    """A digest of everything in the room file that can shape the state (not where it listens)."""
    shape = {k: v for k, v in _canonical(config).items() if k not in ("source", "node_host", "node_port")}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]
