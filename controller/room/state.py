"""One :class:`Room`: the room's state, kept as a fold over its event log (event sourcing), and the
nurse-call rules, composed from calls.py, presence.py, environment.py and supervision.py.

``decide_*`` methods look at the current state and an input (or the time) and return the log
entries that input causes, without changing anything; the service stores those entries durably and
only then :meth:`Room.apply`-s them. Rebuilding the room after a restart is applying the stored log
again, so the state after a restart is the state before it, times, escalation levels and all.

Time-driven rules (escalation, reminders, bathroom dwell, environment minimum durations) are
deadlines computed from times stored in the log: :meth:`Room.decide_tick` emits what is due at
``now`` and :meth:`Room.next_due_ms` says when to look again. Nothing depends on process start.

docs/call-model.md explains the model for a nurse manager; the tables below are that page's source.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..model import NodeEvent
from ..store import LogEntry, LogRecord
from .calls import CALL_APPLY, CALL_INPUTS, Call, CallRules
from .config import RoomConfig
from .environment import ENVIRONMENT_APPLY, EnvironmentRules, EnvState
from .hospital import HOSPITAL_APPLY, HospitalRules
from .presence import AREA_INPUTS, PRESENCE_APPLY, PresenceRules
from .supervision import FAULT_CORD_REMOVED, SUPERVISION_APPLY, NodeStatus, SupervisionRules


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

    # ------------------------------------------------------------------ decisions: time
    def decide_tick(self, now_ms: int, offline_after_ms: int) -> list[LogEntry]:
        """Everything that has fallen due by ``now_ms``; call again until it returns nothing."""
        return (self._decide_escalations(now_ms) + self._decide_bath_dwell(now_ms)
                + self._decide_presence_timeout(now_ms) + self._decide_environment(now_ms)
                + self._decide_supervision(now_ms, offline_after_ms) + self._decide_display(now_ms))

    # ------------------------------------------------------------------ state changes
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
