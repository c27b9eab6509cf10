"""The room's state, kept as a fold over its event log (event sourcing), and the nurse-call rules.

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

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from .config import EnvRule, RoomConfig
from .protocol import Hello, Heartbeat, NodeEvent
from .store import LogEntry, LogRecord

TIERS = ("high", "medium", "low", "info")  # IEC 60601-1-8 alarm priorities, highest first

# How a call may be cleared.
IN_ROOM = "in_room"        # only the in-room cancel input (cancel at the point of origin)
ROUTINE = "routine"        # staff presence in the room, the in-room cancel, or a nurse via the API
CONDITION = "condition"    # technical: clears itself when the condition is gone


@dataclass(frozen=True, slots=True)
class CallType:
    rank: int                # position in the room's priority order, 0 = highest
    level: str               # IEC 60601-1-8 tier: high / medium / low / info
    clears: str              # IN_ROOM, ROUTINE or CONDITION
    dome: tuple[str, str]    # corridor dome light (colour, pattern) when this is the highest call
    label: str

    @property
    def cancel_at_origin(self) -> bool:
        return self.clears == IN_ROOM


CALL_TYPES: dict[str, CallType] = {
    "code_call": CallType(0, "high", IN_ROOM, ("blue", "fast"), "Code call"),
    "staff_emergency": CallType(0, "high", IN_ROOM, ("blue", "fast"), "Staff emergency"),
    "bath_emergency": CallType(1, "high", IN_ROOM, ("red", "fast"), "Bathroom emergency"),
    "fall": CallType(1, "high", IN_ROOM, ("red", "fast"), "Fall detected"),
    "patient_emergency": CallType(1, "high", IN_ROOM, ("red", "fast"), "Patient emergency"),
    "bed_exit": CallType(2, "medium", IN_ROOM, ("red", "slow"), "Bed exit (fall risk)"),
    "bath_dwell": CallType(2, "medium", IN_ROOM, ("red", "slow"), "Long time in bathroom"),
    "staff_assist": CallType(2, "medium", ROUTINE, ("orange", "slow"), "Staff assist"),
    "patient_call": CallType(3, "medium", ROUTINE, ("white", "steady"), "Patient call"),
    "request": CallType(4, "low", ROUTINE, ("white", "slow"), "Request"),
    "node_offline": CallType(5, "low", CONDITION, ("yellow", "steady"), "Node offline"),
    "low_battery": CallType(5, "low", CONDITION, ("yellow", "steady"), "Low battery"),
    "sensor_fault": CallType(5, "low", CONDITION, ("yellow", "steady"), "Sensor fault"),
    "cord_removed": CallType(5, "low", CONDITION, ("yellow", "steady"), "Call cord removed"),
    "system_fault": CallType(5, "low", CONDITION, ("yellow", "steady"), "System fault"),
    "environment": CallType(5, "info", CONDITION, ("yellow", "slow"), "Environment out of range"),
}

# Input meanings (config.INPUT_MEANINGS) that raise a call when pressed: meaning -> (type, detail).
CALL_INPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "patient_call": ("patient_call", {}),
    "bath_emergency": ("bath_emergency", {}),
    "staff_assist": ("staff_assist", {}),
    "staff_emergency": ("staff_emergency", {}),
    "code_call": ("code_call", {}),
    "patient_emergency": ("patient_emergency", {}),
    "request_water": ("request", {"need": "water"}),
    "request_pain": ("request", {"need": "pain"}),
    "request_toilet": ("request", {"need": "toilet"}),
}
AREA_INPUTS = {"room_presence": "room", "bath_presence": "bath", "bed_occupancy": "bed"}

# Values outside these ranges are not the room, they are a broken sensor ("sensor fault").
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "temp_c": (-30.0, 70.0), "rh_pct": (0.0, 100.0), "co2_ppm": (250.0, 10_000.0),
    "noise_db": (10.0, 140.0), "pressure_pa": (-200.0, 200.0), "batt_v": (1.5, 6.0),
}
BATTERY_MEASURE = "batt_v"
FAULT_CORD_REMOVED = 4  # fault code of a call cord pulled out of its socket (nurse-call supervision)

# Clearing, as recorded in call.cleared's "how".
HOW_IN_ROOM_CANCEL = "in_room_cancel"
HOW_PRESENCE = "presence"
HOW_API = "api"
HOW_PATIENT_OK = "patient_ok"
HOW_RESOLVED = "resolved"
HOW_PATIENT_CANCEL = "patient_cancel"


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


class CancelAtOrigin(RoomError):
    code = "cancel_at_origin"


class ClearsItself(RoomError):
    code = "clears_when_resolved"


class UnknownBed(RoomError):
    code = "bed_not_found"
    status = 404


@dataclass(slots=True)
class Call:
    id: str
    type: str
    node: str | None
    input: str | None
    bed: str | None
    raised_at_ms: int
    raised_by: str
    detail: dict[str, Any] = field(default_factory=dict)
    presses: int = 1
    annunciated_at_ms: int | None = None
    annunciated_by: str | None = None
    acknowledged_at_ms: int | None = None   # the current signal's acknowledgement (reset by a reminder)
    acknowledged_by: str | None = None
    present_at_ms: int | None = None
    present_by: str | None = None
    level: int = 1                          # escalation level, 1 = primary nurse
    reminders: int = 0
    phase_since_ms: int = 0                 # start of the running escalation step or reminder period
    signalled_at_ms: int = 0                # raised, or re-signalled by a reminder: sounds through a silence
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ctype(self) -> CallType:
        return CALL_TYPES[self.type]

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (self.ctype.rank, self.raised_at_ms, self.id)

    @property
    def answered(self) -> bool:
        """Acknowledged, or staff have been in the room for it: escalation stops, reminders run."""
        return self.acknowledged_at_ms is not None or self.present_at_ms is not None

    @property
    def state(self) -> str:
        if self.present_at_ms is not None:
            return "present"
        if self.acknowledged_at_ms is not None:
            return "acknowledged"
        return "annunciated" if self.annunciated_at_ms is not None else "raised"

    def to_json(self, due_ms: int | None = None, levels: tuple[str, ...] = ()) -> dict[str, Any]:
        ctype = self.ctype
        return {
            "id": self.id, "type": self.type, "label": ctype.label, "priority": ctype.level, "rank": ctype.rank,
            "cancel_at_origin": ctype.cancel_at_origin, "clears": ctype.clears, "state": self.state,
            "source": {"node": self.node, "input": self.input}, "bed": self.bed,
            "raised_at_ms": self.raised_at_ms, "raised_by": self.raised_by, "presses": self.presses,
            "annunciated_at_ms": self.annunciated_at_ms, "acknowledged_at_ms": self.acknowledged_at_ms,
            "acknowledged_by": self.acknowledged_by, "present_at_ms": self.present_at_ms,
            "present_by": self.present_by, "escalation_level": self.level,
            "escalated_to": levels[self.level - 1] if 0 < self.level <= len(levels) else None,
            "reminders": self.reminders, "next_due_ms": due_ms, "detail": self.detail,
            "timeline": list(self.timeline),
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


@dataclass(slots=True)
class EnvState:
    """One environment measure against its rule; excursions and recoveries are logged."""

    out: bool = False
    bound: str | None = None         # "high" or "low" while out of range
    since_ms: int | None = None      # excursion start
    back_since_ms: int | None = None  # recovery start, while an alarm is still active
    value: float | None = None


@dataclass(frozen=True, slots=True)
class RoomOutputs:
    """What the room's lights and sounders show; derived from the state, never stored."""

    dome_colour: str
    dome_pattern: str
    dome_call: str | None
    presence: bool
    tone: str
    tone_silenced: bool
    indicators: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {"dome": {"colour": self.dome_colour, "pattern": self.dome_pattern, "call_id": self.dome_call,
                         "presence": self.presence},
                "tone": {"pattern": self.tone, "silenced": self.tone_silenced},
                "indicators": dict(self.indicators)}


def _call_id() -> str:
    return "c" + uuid.uuid4().hex[:12]


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class Room:
    def __init__(self, config: RoomConfig) -> None:
        self.config = config
        self.calls: dict[str, Call] = {}
        self.area: dict[str, bool] = {"room": False, "bath": False}
        self.area_since: dict[str, int] = {}
        self.beds: dict[str, bool] = {bed: False for bed in config.beds}
        self.fall_risk: dict[str, bool] = {bed: bed in config.fall_risk_beds for bed in config.beds}
        self.staff_present = False
        self.staff_since_ms: int | None = None
        self.bath_dwell_for: int | None = None   # bathroom stay (its start) that already alarmed
        self.silence: tuple[int, int, str] | None = None  # (at_ms, until_ms, by)
        self.nodes: dict[str, NodeStatus] = {node: NodeStatus(node) for node in config.nodes}
        self.environment: dict[str, dict[str, Any]] = {}
        self.env: dict[str, EnvState] = {m: EnvState() for m in config.environment}
        self.cursor = 0
        self.last_ms = 0

    # ------------------------------------------------------------------ queries
    def active_calls(self) -> list[Call]:
        """Highest priority first, then oldest first."""
        return sorted(self.calls.values(), key=lambda c: c.sort_key)

    def call_from(self, node: str | None, src: str | None, ctype: str | None = None) -> Call | None:
        for call in self.calls.values():
            if call.node == node and call.input == src and (ctype is None or call.type == ctype):
                return call
        return None

    def occupancy(self) -> str:
        """The fused room occupancy: where the patient most likely is."""
        if any(self.beds.values()):
            return "in_bed"
        if self.area["bath"]:
            return "in_bathroom"
        if self.area["room"]:
            return "in_room"
        return "empty"

    def indicator_for(self, node: str) -> str:
        """The reassurance light at a node: received until a nurse answers, then acknowledged."""
        mine = [c for c in self.calls.values() if c.node == node and c.ctype.clears != CONDITION]
        if not mine:
            return "off"
        return "acknowledged" if all(c.answered for c in mine) else "received"

    def outputs(self, now_ms: int) -> RoomOutputs:
        calls = [c for c in self.active_calls()]
        top = calls[0] if calls else None
        colour, pattern = top.ctype.dome if top else ("off", "off")
        sounding = [c for c in calls if not c.answered and c.ctype.level != "info"]
        tone, silenced = "off", False
        if sounding and not self.staff_present:
            tone = sounding[0].ctype.level
            if self.silence is not None:
                at_ms, until_ms, _ = self.silence
                if now_ms < until_ms and all(c.signalled_at_ms <= at_ms for c in sounding):
                    silenced = True
        indicators = tuple((n, self.indicator_for(n)) for n, cfg in sorted(self.config.nodes.items()) if cfg.indicator)
        return RoomOutputs(colour, pattern, top.id if top else None, self.staff_present,
                           "off" if silenced else tone, silenced, indicators)

    def offline_after_ms(self, node: str, default_ms: int) -> int:
        """Silence that makes a node offline: its own check-in interval's worth, or the gateway's."""
        cfg = self.config.nodes.get(node)
        if cfg is None or cfg.check_in_ms is None:
            return default_ms
        missed = self.config.supervision.missed_heartbeats
        grace_ms = default_ms - missed * self.config.heartbeat_ms
        return missed * cfg.check_in_ms + grace_ms

    def call_due_ms(self, call: Call) -> int | None:
        """When this call's next escalation or reminder falls due (None: nothing pending)."""
        if self.staff_present:
            return None
        timers = self.config.timers.tiers[call.ctype.level]
        if call.answered:
            return call.phase_since_ms + _ms(timers.reminder_s)
        if call.level >= len(self.config.escalation_levels):
            return None
        return call.phase_since_ms + _ms(timers.escalate_s)

    def next_due_ms(self, now_ms: int, offline_after_ms: int) -> int | None:
        """The earliest moment :meth:`decide_tick` has something to do."""
        due: list[int] = [d for c in self.calls.values() if (d := self.call_due_ms(c)) is not None]
        if self.area["bath"] and self.bath_dwell_for != self.area_since.get("bath"):
            due.append(self.area_since["bath"] + _ms(self.config.timers.bath_dwell_s))
        for measure, st in self.env.items():
            d = self._env_due(measure, st)
            if d is not None:
                due.append(d)
        for status in self.nodes.values():
            if status.online and status.last_seen_ms is not None:
                due.append(status.last_seen_ms + self.offline_after_ms(status.id, offline_after_ms) + 1)
        if self.silence is not None and self.silence[1] > now_ms:
            due.append(self.silence[1])
        return min(due) if due else None

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        levels = self.config.escalation_levels
        return {
            "room": {"id": self.config.room_id, "name": self.config.name, "beds": list(self.config.beds),
                     "profile": self.config.profile},
            "cursor": self.cursor,
            "calls": [c.to_json(self.call_due_ms(c), levels) for c in self.active_calls()],
            "occupancy": {"state": self.occupancy(), "room": self.area["room"], "bath": self.area["bath"],
                          "beds": dict(self.beds), "staff_present": self.staff_present},
            "fall_risk": dict(self.fall_risk),
            "voice": {n.bed or n.id: bool(n.options.get("enabled", True))
                      for n in self.config.nodes.values() if n.transport == "voice"},
            "outputs": self.outputs(now_ms).to_json(),
            "environment": {m: dict(v, **self._env_json(m)) for m, v in self.environment.items()},
            "nodes": [n.to_json() for n in sorted(self.nodes.values(), key=lambda n: n.id)],
        }

    def _env_json(self, measure: str) -> dict[str, Any]:
        st = self.env.get(measure)
        if st is None:
            return {}
        rule = self.config.environment[measure]
        return {"low": rule.low, "high": rule.high, "in_range": not st.out,
                "alarm": self.call_from(None, f"env:{measure}") is not None}

    # ------------------------------------------------------------------ decisions: node inputs
    def decide_node_event(self, ev: NodeEvent, now_ms: int) -> list[LogEntry]:
        meaning = self.config.meaning(ev.node, ev.src)
        entries = [LogEntry("node.event", {
            "node": ev.node, "boot": ev.boot, "seq": ev.seq, "kind": ev.kind, "src": ev.src,
            "val": ev.val, "at_ms": ev.at_ms, "x": dict(ev.features), "meaning": meaning,
        })]
        source = f"{ev.node}/{ev.src}"
        if ev.kind == "button" and ev.val:
            if meaning in CALL_INPUTS:
                ctype, detail = CALL_INPUTS[meaning]
                entries += self._raise_or_repeat(ctype, ev.node, ev.src, now_ms, {**detail, **ev.features})
            elif meaning == "cancel":
                entries += self._in_room_cancel(f"in-room cancel ({source})", now_ms)
            elif meaning == "staff_presence":
                entries += self._staff_presence(not self.staff_present, f"staff presence ({source})", now_ms)
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

    def _patient_cancel(self, node: str, by: str, now_ms: int) -> list[LogEntry]:
        """The patient takes back their own routine call (same node, or same bed); never an emergency."""
        bed = self.config.nodes[node].bed if node in self.config.nodes else None
        return [self._clear(c, by, HOW_PATIENT_CANCEL, now_ms) for c in self.active_calls()
                if c.ctype.clears == ROUTINE and (c.node == node or (bed is not None and c.bed == bed))]

    def decide_system_fault(self, src: str, faulty: bool, detail: dict[str, Any], now_ms: int) -> list[LogEntry]:
        """A part of the controller itself (e.g. the Bluetooth adapter) failed or works again."""
        return self._fault(None, f"system:{src}", faulty, now_ms, detail, f"{src} works again", "system_fault")

    def _raise_or_repeat(self, ctype: str, node: str | None, src: str | None, now_ms: int,
                         detail: dict[str, Any], bed: str | None = None, by: str | None = None) -> list[LogEntry]:
        active = self.call_from(node, src, ctype)
        if active is not None:
            return [LogEntry("call.repeated", {"call_id": active.id, "presses": active.presses + 1, "at_ms": now_ms})]
        node_cfg = self.config.nodes.get(node) if node else None
        if bed is None and node_cfg is not None:
            bed = node_cfg.bed
        return [LogEntry("call.raised", {
            "call_id": _call_id(), "type": ctype, "level": CALL_TYPES[ctype].level, "node": node, "input": src,
            "bed": bed, "by": by or (f"{node}/{src}" if node else "room controller"), "at_ms": now_ms,
            "detail": detail})]

    @staticmethod
    def _clear(call: Call, by: str, how: str, now_ms: int) -> LogEntry:
        return LogEntry("call.cleared", {"call_id": call.id, "by": by, "how": how, "at_ms": now_ms})

    def _mark_present(self, calls: Iterable[Call], by: str, now_ms: int) -> list[LogEntry]:
        return [LogEntry("call.present", {"call_id": c.id, "by": by, "at_ms": now_ms})
                for c in calls if c.present_at_ms is None]

    def _in_room_cancel(self, by: str, now_ms: int) -> list[LogEntry]:
        """The in-room cancel resets every call raised by people; staff are evidently in the room."""
        calls = [c for c in self.active_calls() if c.ctype.clears != CONDITION]
        return self._mark_present(calls, by, now_ms) + [self._clear(c, by, HOW_IN_ROOM_CANCEL, now_ms) for c in calls]

    def _staff_presence(self, present: bool, by: str, now_ms: int) -> list[LogEntry]:
        entries = [LogEntry("staff.presence", {"present": present, "by": by, "at_ms": now_ms})]
        if present:
            calls = [c for c in self.active_calls() if c.ctype.clears != CONDITION]
            entries += self._mark_present(calls, by, now_ms)
            entries += [self._clear(c, by, HOW_PRESENCE, now_ms) for c in calls if c.ctype.clears == ROUTINE]
        return entries

    def _patient_ok(self, node: str, by: str, now_ms: int) -> list[LogEntry]:
        """"I'm OK" inside the window turns a fall call into a logged event; later, it is only noted."""
        bed = self.config.nodes[node].bed if node in self.config.nodes else None
        window_ms = _ms(self.config.timers.fall_ok_window_s)
        entries: list[LogEntry] = []
        for call in self.active_calls():
            if call.type != "fall" or not (call.node == node or (bed is not None and call.bed == bed)):
                continue
            if now_ms - call.raised_at_ms <= window_ms:
                entries.append(self._clear(call, by, HOW_PATIENT_OK, now_ms))
            else:
                entries.append(LogEntry("call.noted", {
                    "call_id": call.id, "at_ms": now_ms,
                    "note": f"{by} {(now_ms - call.raised_at_ms) / 1000:.0f} s after the fall, after the "
                            f"{self.config.timers.fall_ok_window_s:g} s window: the call stays until cancelled in the room"}))
        return entries

    def _presence(self, area: str, present: bool, node: str, src: str, now_ms: int) -> list[LogEntry]:
        data: dict[str, Any] = {"area": area, "present": present, "node": node, "input": src, "at_ms": now_ms}
        if area == "bed":
            bed = self.config.nodes[node].bed
            if bed is None or self.beds.get(bed) == present:
                return []
            data["bed"] = bed
            entries = [LogEntry("presence.changed", data)]
            if not present and self.fall_risk.get(bed):
                entries += self._raise_or_repeat("bed_exit", node, src, now_ms, {"bed": bed}, bed=bed)
            return entries
        if self.area[area] == present:
            return []
        return [LogEntry("presence.changed", data)]

    def _fault(self, node: str | None, src: str, faulty: bool, now_ms: int, detail: dict[str, Any],
               resolved_by: str, ctype: str = "sensor_fault") -> list[LogEntry]:
        active = self.call_from(node, src, ctype)
        if faulty and active is None:
            return self._raise_or_repeat(ctype, node, src, now_ms, detail)
        if not faulty and active is not None:
            return [self._clear(active, resolved_by, HOW_RESOLVED, now_ms)]
        return []

    def decide_reading(self, node: str, measure: str, value: float, now_ms: int) -> list[LogEntry]:
        """A sensor value: plausibility (sensor fault), battery, environment excursions."""
        entries: list[LogEntry] = []
        lo, hi = PLAUSIBLE.get(measure, (-math.inf, math.inf))
        plausible = lo <= value <= hi and math.isfinite(value)
        entries += self._fault(node, f"sensor:{measure}", not plausible, now_ms,
                               {"measure": measure, "value": value, "plausible": [lo, hi]},
                               f"{node} reports plausible {measure} again ({value:g})")
        if not plausible:
            return entries
        if measure == BATTERY_MEASURE:
            sup = self.config.supervision
            active = self.call_from(node, "battery", "low_battery")
            if active is None and value < sup.low_battery_v:
                entries += self._raise_or_repeat("low_battery", node, "battery", now_ms,
                                                 {"batt_v": value, "below_v": sup.low_battery_v})
            elif active is not None and value >= sup.battery_replaced_v:
                entries.append(self._clear(active, f"{node}: battery replaced ({value:.2f} V)", HOW_RESOLVED, now_ms))
        rule = self.config.environment.get(measure)
        if rule is not None:
            entries += self._env_reading(rule, value, node, now_ms)
        return entries

    def _env_reading(self, rule: EnvRule, value: float, node: str, now_ms: int) -> list[LogEntry]:
        st = self.env[rule.measure]
        bound = "high" if rule.high is not None and value > rule.high else \
            "low" if rule.low is not None and value < rule.low else None
        if not st.out and bound is not None:
            return [LogEntry("environment.excursion", {
                "measure": rule.measure, "value": value, "bound": bound,
                "limit": rule.high if bound == "high" else rule.low, "node": node, "at_ms": now_ms})]
        if st.out:
            back = (rule.high is None or value <= rule.high - rule.hysteresis) and \
                   (rule.low is None or value >= rule.low + rule.hysteresis)
            if back:
                return [LogEntry("environment.recovered", {"measure": rule.measure, "value": value, "node": node,
                                                           "at_ms": now_ms})]
        return []

    # ------------------------------------------------------------------ decisions: time
    def _env_due(self, measure: str, st: EnvState) -> int | None:
        rule = self.config.environment[measure]
        alarm = self.call_from(None, f"env:{measure}", "environment")
        if st.out and alarm is None and st.since_ms is not None:
            return st.since_ms + _ms(rule.min_duration_s)
        if not st.out and alarm is not None and st.back_since_ms is not None:
            return st.back_since_ms + _ms(rule.clear_s)
        return None

    def decide_tick(self, now_ms: int, offline_after_ms: int) -> list[LogEntry]:
        """Everything that has fallen due by ``now_ms``; call again until it returns nothing."""
        entries: list[LogEntry] = []
        levels = self.config.escalation_levels
        for call in self.active_calls():
            due = self.call_due_ms(call)
            if due is None or due > now_ms:
                continue
            if call.answered:
                entries.append(LogEntry("call.reminded", {"call_id": call.id, "n": call.reminders + 1,
                                                          "due_ms": due, "at_ms": now_ms}))
            else:
                entries.append(LogEntry("call.escalated", {"call_id": call.id, "level": call.level + 1,
                                                           "to": levels[call.level], "due_ms": due, "at_ms": now_ms}))
        if self.area["bath"] and self.bath_dwell_for != self.area_since.get("bath"):
            since = self.area_since["bath"]
            due = since + _ms(self.config.timers.bath_dwell_s)
            if due <= now_ms:
                # stay_ms marks this bathroom stay as alarmed, also when an earlier alarm is still active
                entry = self._raise_or_repeat("bath_dwell", None, "bath_dwell", now_ms,
                                              {"in_bathroom_since_ms": since, "due_ms": due})[0]
                entries.append(LogEntry(entry.kind, dict(entry.data, stay_ms=since)))
        for measure, st in self.env.items():
            due = self._env_due(measure, st)
            if due is None or due > now_ms:
                continue
            alarm = self.call_from(None, f"env:{measure}", "environment")
            if alarm is None:
                rule = self.config.environment[measure]
                entries += self._raise_or_repeat("environment", None, f"env:{measure}", now_ms, {
                    "measure": measure, "value": st.value, "bound": st.bound,
                    "limit": rule.high if st.bound == "high" else rule.low, "since_ms": st.since_ms, "due_ms": due})
            else:
                entries.append(self._clear(alarm, f"{measure} back in range ({st.value:g})", HOW_RESOLVED, now_ms))
        for status in list(self.nodes.values()):
            if status.online and status.last_seen_ms is not None and \
                    now_ms > status.last_seen_ms + self.offline_after_ms(status.id, offline_after_ms):
                entries += self.decide_offline(status.id, f"missed {self.config.supervision.missed_heartbeats} "
                                                          "heartbeats", now_ms)
        return entries

    # ------------------------------------------------------------------ decisions: nurses and nodes
    def _active(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise CallNotFound(f"no active call with id '{call_id}'")
        return call

    def decide_ack(self, call_id: str, by: str, now_ms: int) -> list[LogEntry]:
        call = self._active(call_id)
        if call.acknowledged_at_ms is not None:
            raise CallAlreadyAcknowledged(
                f"call '{call_id}' was already acknowledged by {call.acknowledged_by} at {call.acknowledged_at_ms}")
        return [LogEntry("call.acknowledged", {"call_id": call_id, "by": by, "at_ms": now_ms})]

    def decide_clear(self, call_id: str, by: str, now_ms: int) -> list[LogEntry]:
        """A remote clear: routine calls only. The refusal is logged as well as returned."""
        call = self._active(call_id)
        ctype = call.ctype
        if ctype.clears == ROUTINE:
            return [self._clear(call, by, HOW_API, now_ms)]
        if ctype.clears == IN_ROOM:
            reason = (f"a {ctype.label.lower()} call is cancelled only at its point of origin: "
                      "press the cancel button in the room")
        else:
            reason = f"a {ctype.label.lower()} alarm clears itself when {_RESOLVES[call.type]}"
        return [LogEntry("call.clear_refused", {"call_id": call_id, "by": by, "reason": reason, "at_ms": now_ms})]

    def decide_annunciated(self, call_id: str, endpoint: str, now_ms: int) -> list[LogEntry]:
        call = self.calls.get(call_id)
        if call is None or call.annunciated_at_ms is not None:
            return []
        return [LogEntry("call.annunciated", {"call_id": call_id, "by": endpoint, "at_ms": now_ms})]

    def decide_fall_risk(self, bed: str, enabled: bool, by: str, now_ms: int) -> list[LogEntry]:
        if bed not in self.fall_risk:
            raise UnknownBed(f"no bed '{bed}' in room {self.config.room_id} (beds: {', '.join(self.config.beds)})")
        if self.fall_risk[bed] == enabled:
            return []
        return [LogEntry("bed.fall_risk", {"bed": bed, "enabled": enabled, "by": by, "at_ms": now_ms})]

    def decide_silence(self, by: str, now_ms: int) -> list[LogEntry]:
        until = now_ms + _ms(self.config.timers.silence_s)
        return [LogEntry("tone.silenced", {"by": by, "at_ms": now_ms, "until_ms": until})]

    def decide_online(self, hello: Hello, peer: str, now_ms: int) -> list[LogEntry]:
        entries = [LogEntry("node.online", {
            "node": hello.node, "boot": hello.boot, "fw": hello.fw, "hw": hello.hw, "caps": list(hello.caps),
            "peer": peer, "at_ms": now_ms})]
        offline = self.call_from(hello.node, "supervision", "node_offline")
        if offline is not None:
            entries.append(self._clear(offline, f"{hello.node} back online", HOW_RESOLVED, now_ms))
        return entries

    def decide_offline(self, node: str, reason: str, now_ms: int) -> list[LogEntry]:
        status = self.nodes.get(node)
        if status is None or not status.online:
            return []
        return [LogEntry("node.offline", {"node": node, "reason": reason, "at_ms": now_ms}),
                *self._raise_or_repeat("node_offline", node, "supervision", now_ms, {"reason": reason})]

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

    def _step(self, d: dict[str, Any], step: str, **extra: Any) -> Call | None:
        call = self.calls.get(d["call_id"])
        if call is not None:
            entry = {"step": step, "at_ms": d["at_ms"]}
            if "by" in d:
                entry["by"] = d["by"]
            entry.update(extra)
            call.timeline.append(entry)
        return call

    def _apply_raised(self, d: dict[str, Any]) -> None:
        call = Call(d["call_id"], d["type"], d["node"], d["input"], d["bed"], d["at_ms"], d.get("by", ""),
                    dict(d.get("detail", {})), phase_since_ms=d["at_ms"], signalled_at_ms=d["at_ms"])
        self.calls[call.id] = call
        self._step(d, "raised")
        if "stay_ms" in d:
            self.bath_dwell_for = d["stay_ms"]

    def _apply_repeated(self, d: dict[str, Any]) -> None:
        call = self.calls.get(d["call_id"])
        if call is not None:
            call.presses = d["presses"]
        if "stay_ms" in d:
            self.bath_dwell_for = d["stay_ms"]

    def _apply_annunciated(self, d: dict[str, Any]) -> None:
        call = self._step(d, "annunciated")
        if call is not None:
            call.annunciated_at_ms, call.annunciated_by = d["at_ms"], d["by"]

    def _apply_acknowledged(self, d: dict[str, Any]) -> None:
        call = self._step(d, "acknowledged")
        if call is not None:
            call.acknowledged_at_ms, call.acknowledged_by = d["at_ms"], d["by"]
            call.phase_since_ms = d["at_ms"]

    def _apply_present(self, d: dict[str, Any]) -> None:
        call = self._step(d, "present")
        if call is not None:
            call.present_at_ms, call.present_by = d["at_ms"], d["by"]
            call.phase_since_ms = d["at_ms"]

    def _apply_escalated(self, d: dict[str, Any]) -> None:
        call = self._step(d, "escalated", level=d["level"], to=d["to"], due_ms=d["due_ms"])
        if call is not None:
            call.level = d["level"]
            call.phase_since_ms = d["due_ms"]  # the next level is one escalation period later

    def _apply_reminded(self, d: dict[str, Any]) -> None:
        """A reminder re-signals the call as if new: it needs acknowledging again and escalates again."""
        call = self._step(d, "reminded", n=d["n"], due_ms=d["due_ms"])
        if call is not None:
            call.reminders = d["n"]
            call.acknowledged_at_ms = call.acknowledged_by = None
            call.present_at_ms = call.present_by = None
            call.level = 1
            call.phase_since_ms = call.signalled_at_ms = d["due_ms"]

    def _apply_noted(self, d: dict[str, Any]) -> None:
        self._step(d, "noted", note=d["note"])

    def _apply_clear_refused(self, d: dict[str, Any]) -> None:
        self._step(d, "clear_refused", reason=d["reason"])

    def _apply_cleared(self, d: dict[str, Any]) -> None:
        self.calls.pop(d["call_id"], None)

    def _apply_presence(self, d: dict[str, Any]) -> None:
        if d["area"] == "bed":
            self.beds[d["bed"]] = d["present"]
            return
        self.area[d["area"]] = d["present"]
        if d["present"]:
            self.area_since[d["area"]] = d["at_ms"]
        else:
            self.area_since.pop(d["area"], None)

    def _apply_staff(self, d: dict[str, Any]) -> None:
        self.staff_present = d["present"]
        self.staff_since_ms = d["at_ms"] if d["present"] else None
        if not d["present"]:
            for call in self.calls.values():  # timers run again from the moment staff left
                call.phase_since_ms = d["at_ms"]

    def _apply_fall_risk(self, d: dict[str, Any]) -> None:
        self.fall_risk[d["bed"]] = d["enabled"]

    def _apply_silenced(self, d: dict[str, Any]) -> None:
        self.silence = (d["at_ms"], d["until_ms"], d["by"])

    def _apply_excursion(self, d: dict[str, Any]) -> None:
        st = self.env.get(d["measure"])
        if st is not None:
            st.out, st.bound, st.since_ms, st.back_since_ms, st.value = True, d["bound"], d["at_ms"], None, d["value"]

    def _apply_recovered(self, d: dict[str, Any]) -> None:
        st = self.env.get(d["measure"])
        if st is not None:
            st.out, st.bound, st.since_ms, st.back_since_ms, st.value = False, None, None, d["at_ms"], d["value"]

    def _apply_online(self, d: dict[str, Any]) -> None:
        status = self.nodes.setdefault(d["node"], NodeStatus(d["node"]))
        status.online, status.since_ms, status.last_seen_ms = True, d["at_ms"], d["at_ms"]
        status.fw, status.hw, status.boot, status.caps = d["fw"], d["hw"], d["boot"], tuple(d["caps"])

    def _apply_offline(self, d: dict[str, Any]) -> None:
        status = self.nodes.setdefault(d["node"], NodeStatus(d["node"]))
        status.online, status.since_ms = False, d["at_ms"]

    # ------------------------------------------------------------------ live, unlogged node status
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


_RESOLVES = {
    "node_offline": "the node checks in again",
    "low_battery": "a reading shows the battery replaced",
    "sensor_fault": "the sensor reports plausible values again",
    "environment": "the measure is back in range for its clear time",
    "cord_removed": "the cord is plugged in again",
    "system_fault": "the part works again",
}

_APPLY = {
    "call.raised": Room._apply_raised,
    "call.repeated": Room._apply_repeated,
    "call.annunciated": Room._apply_annunciated,
    "call.acknowledged": Room._apply_acknowledged,
    "call.present": Room._apply_present,
    "call.escalated": Room._apply_escalated,
    "call.reminded": Room._apply_reminded,
    "call.noted": Room._apply_noted,
    "call.clear_refused": Room._apply_clear_refused,
    "call.cleared": Room._apply_cleared,
    "presence.changed": Room._apply_presence,
    "staff.presence": Room._apply_staff,
    "bed.fall_risk": Room._apply_fall_risk,
    "tone.silenced": Room._apply_silenced,
    "environment.excursion": Room._apply_excursion,
    "environment.recovered": Room._apply_recovered,
    "node.online": Room._apply_online,
    "node.offline": Room._apply_offline,
}
