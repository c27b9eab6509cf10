"""Calls and their escalation: the call types, a call's lifecycle, the room's outputs.

One part of :class:`~controller.room.state.Room` (see state.py for the decide → store → apply
shape). The tables are docs/call-model.md's source: priorities (IEC 60601-1-8 tiers), how each call
clears, the dome light it shows. Escalation and reminders are deadlines from stored times.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..store import LogEntry

if TYPE_CHECKING:
    from .config import RoomConfig

TIERS = ("high", "medium", "low", "info")  # IEC 60601-1-8 alarm priorities, highest first
PRESENCE_REMINDER_TONE = "low"  # one short pulse every 5 s: "presence ends soon", quieter than any call

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
    "node_cannot_deliver": CallType(5, "low", CONDITION, ("yellow", "steady"), "Node cannot deliver"),
    "node_never_connected": CallType(5, "low", CONDITION, ("yellow", "steady"), "Node never connected"),
    "unmapped_input": CallType(5, "low", CONDITION, ("yellow", "steady"), "Input not in the room file"),
    "low_battery": CallType(5, "low", CONDITION, ("yellow", "steady"), "Low battery"),
    "sensor_fault": CallType(5, "low", CONDITION, ("yellow", "steady"), "Sensor fault"),
    "cord_removed": CallType(5, "low", CONDITION, ("yellow", "steady"), "Call cord removed"),
    "system_fault": CallType(5, "low", CONDITION, ("yellow", "steady"), "System fault"),
    "environment": CallType(6, "info", CONDITION, ("yellow", "slow"), "Environment out of range"),
    # Supervision of the screens (supervision.py): calls raised but not shown on any nurse screen in time.
    "not_displayed": CallType(5, "medium", CONDITION, ("yellow", "fast"), "Calls not shown on any nurse screen"),
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


# What a call's timeline keeps in the room's state: its first steps (how it began: raised, the first
# answer and escalations) and its latest ones; the steps between are counted (``timeline_omitted``),
# not kept. A call that stays active for days (a condition nobody clears, acknowledged and reminded
# every few minutes) would otherwise grow the state, every checkpoint and every answer about the
# room without bound. The log keeps every step (GET /api/v1/events).
TIMELINE_FIRST_STEPS = 10
TIMELINE_LATEST_STEPS = 40


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
    held: bool = False                      # on when staff registered presence: its clocks wait while they stay
    timeline: list[dict[str, Any]] = field(default_factory=list)
    patient: dict[str, str] | None = None   # from the hospital's admissions (hospital.py), where known
    timeline_omitted: int = 0               # steps dropped from the timeline's middle (TIMELINE_FIRST_STEPS)

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
            "reminders": self.reminders, "next_due_ms": due_ms, "held_by_presence": self.held,
            "detail": self.detail,
            "timeline": list(self.timeline), "timeline_omitted": self.timeline_omitted, "patient": self.patient,
        }


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
    presence_ending: bool = False  # staff presence is about to end by itself: the reminder is on

    def to_json(self) -> dict[str, Any]:
        return {"dome": {"colour": self.dome_colour, "pattern": self.dome_pattern, "call_id": self.dome_call,
                         "presence": self.presence, "presence_ending": self.presence_ending},
                "tone": {"pattern": self.tone, "silenced": self.tone_silenced},
                "indicators": dict(self.indicators)}


def _call_id() -> str:
    return "c" + uuid.uuid4().hex[:12]


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


_RESOLVES = {
    "node_offline": "the node checks in again",
    "node_cannot_deliver": "an event from the node is stored, or it reports nothing waiting",
    "node_never_connected": "the node checks in",
    "unmapped_input": "the room file maps the input and the controller is restarted",
    "low_battery": "a reading shows the battery replaced",
    "sensor_fault": "the sensor reports plausible values again",
    "environment": "the measure is back in range for its clear time",
    "cord_removed": "the cord is plugged in again",
    "system_fault": "the part works again",
    "not_displayed": "every call is shown on a nurse screen",
}


class CallRules:
    """The calls part of the room: queries, nurse actions, escalation and reminders, outputs."""

    config: RoomConfig
    calls: dict[str, Call]
    staff_present: bool
    presence_reminded_ms: int | None
    silence: tuple[int, int, str] | None

    # ------------------------------------------------------------------ queries
    def active_calls(self) -> list[Call]:
        """Highest priority first, then oldest first."""
        return sorted(self.calls.values(), key=lambda c: c.sort_key)

    def call_from(self, node: str | None, src: str | None, ctype: str | None = None) -> Call | None:
        for call in self.calls.values():
            if call.node == node and call.input == src and (ctype is None or call.type == ctype):
                return call
        return None

    def indicator_for(self, node: str) -> str:
        """The reassurance light at a node: received until a nurse answers, then acknowledged."""
        mine = [c for c in self.calls.values() if c.node == node and c.ctype.clears != CONDITION]
        if not mine:
            return "off"
        return "acknowledged" if all(c.answered for c in mine) else "received"

    def indicators(self) -> dict[str, str]:
        """Every node's reassurance light in one pass over the calls; a node not named here is off."""
        lights: dict[str, str] = {}
        for call in self.calls.values():
            if call.node is None or call.ctype.clears == CONDITION:
                continue
            if not call.answered:
                lights[call.node] = "received"
            elif call.node not in lights:
                lights[call.node] = "acknowledged"
        return lights

    def outputs(self, now_ms: int) -> RoomOutputs:
        """The dome shows the highest active call; the tone is :meth:`tone`'s; the reassurance lights
        are :meth:`indicators`'."""
        calls = self.active_calls()
        top = calls[0] if calls else None
        colour, pattern = top.ctype.dome if top else ("off", "off")
        tone, silenced = self._tone(calls, now_ms)
        lights = self.indicators()
        indicators = tuple((n, lights.get(n, "off")) for n, cfg in sorted(self.config.nodes.items()) if cfg.indicator)
        return RoomOutputs(colour, pattern, top.id if top else None, self.staff_present, tone, silenced, indicators,
                           self._presence_ending())

    def tone(self, now_ms: int) -> str:
        """The in-room tone alone (what the nodes' sync needs after each commit, without the rest of
        :meth:`outputs`)."""
        return self._tone(self.active_calls(), now_ms)[0]

    def _tone(self, calls: list[Call], now_ms: int) -> tuple[str, bool]:
        """(tone, silenced): the tone sounds for the highest call nobody has answered and staff
        presence does not hold: a call raised while staff are in the room sounds like any other.
        Before presence ends by itself, the tone gives the low-priority pulse if nothing else sounds
        (the presence reminder)."""
        sounding = [c for c in calls if not c.answered and not c.held and c.ctype.level != "info"]
        tone, silenced = "off", False
        if sounding:
            tone = sounding[0].ctype.level
            if self.silence is not None:
                at_ms, until_ms, _ = self.silence
                if now_ms < until_ms and all(c.signalled_at_ms <= at_ms for c in sounding):
                    silenced = True
        if silenced:
            tone = "off"
        if tone == "off" and self._presence_ending():
            tone = PRESENCE_REMINDER_TONE
        return tone, silenced

    def _presence_ending(self) -> bool:
        """Staff presence will end by itself soon: the reminder has been given."""
        return self.staff_present and self.presence_reminded_ms is not None

    def call_due_ms(self, call: Call) -> int | None:
        """When this call's next escalation or reminder falls due (None: nothing pending, or held while
        staff are in the room for it; a call raised after they registered presence is not held)."""
        if call.held:
            return None
        timers = self.config.timers.tiers[call.ctype.level]
        if call.answered:
            return call.phase_since_ms + _ms(timers.reminder_s)
        if call.level >= len(self.config.escalation_levels):
            return None
        return call.phase_since_ms + _ms(timers.escalate_s)

    def _calls_due(self, now_ms: int) -> list[int]:
        due: list[int] = [d for c in self.calls.values() if (d := self.call_due_ms(c)) is not None]
        if self.silence is not None and self.silence[1] > now_ms:
            due.append(self.silence[1])
        return due

    # ------------------------------------------------------------------ decisions
    def _decide_escalations(self, now_ms: int) -> list[LogEntry]:
        """Escalations of unanswered calls and reminders of answered ones, as they fall due."""
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
        return entries

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

    def decide_silence(self, by: str, now_ms: int) -> list[LogEntry]:
        until = now_ms + _ms(self.config.timers.silence_s)
        return [LogEntry("tone.silenced", {"by": by, "at_ms": now_ms, "until_ms": until})]

    def _raise_or_repeat(self, ctype: str, node: str | None, src: str | None, now_ms: int,
                         detail: dict[str, Any], bed: str | None = None, by: str | None = None) -> list[LogEntry]:
        active = self.call_from(node, src, ctype)
        if active is not None:
            return [LogEntry("call.repeated", {"call_id": active.id, "presses": active.presses + 1, "at_ms": now_ms})]
        node_cfg = self.config.nodes.get(node) if node else None
        if bed is None and node_cfg is not None:
            bed = node_cfg.bed
        data = {"call_id": _call_id(), "type": ctype, "level": CALL_TYPES[ctype].level, "node": node, "input": src,
                "bed": bed, "by": by or (f"{node}/{src}" if node else "room controller"), "at_ms": now_ms,
                "detail": detail}
        patient = self.patient_for(bed) if CALL_TYPES[ctype].clears != CONDITION else None
        if patient is not None:
            data["patient"] = patient
        return [LogEntry("call.raised", data)]

    def patient_for(self, bed: str | None) -> dict[str, str] | None:
        """The patient a call from ``bed`` is about, where admissions say (hospital.py overrides this)."""
        return None

    @staticmethod
    def _clear(call: Call, by: str, how: str, now_ms: int) -> LogEntry:
        return LogEntry("call.cleared", {"call_id": call.id, "by": by, "how": how, "at_ms": now_ms})

    def _mark_present(self, calls: Iterable[Call], by: str, now_ms: int) -> list[LogEntry]:
        return [LogEntry("call.present", {"call_id": c.id, "by": by, "at_ms": now_ms})
                for c in calls if c.present_at_ms is None]

    # ------------------------------------------------------------------ state changes
    def _step(self, d: dict[str, Any], step: str, **extra: Any) -> Call | None:
        call = self.calls.get(d["call_id"])
        if call is not None:
            entry = {"step": step, "at_ms": d["at_ms"]}
            if "by" in d:
                entry["by"] = d["by"]
            entry.update(extra)
            timeline = call.timeline
            timeline.append(entry)
            if len(timeline) > TIMELINE_FIRST_STEPS + TIMELINE_LATEST_STEPS:
                del timeline[TIMELINE_FIRST_STEPS]  # the oldest of the latest steps
                call.timeline_omitted += 1
        return call

    def _apply_raised(self, d: dict[str, Any]) -> None:
        call = Call(d["call_id"], d["type"], d["node"], d["input"], d["bed"], d["at_ms"], d.get("by", ""),
                    dict(d.get("detail", {})), phase_since_ms=d["at_ms"], signalled_at_ms=d["at_ms"],
                    patient=d.get("patient"))
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

    def _apply_silenced(self, d: dict[str, Any]) -> None:
        self.silence = (d["at_ms"], d["until_ms"], d["by"])



CALL_APPLY: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "call.raised": CallRules._apply_raised,
    "call.repeated": CallRules._apply_repeated,
    "call.annunciated": CallRules._apply_annunciated,
    "call.acknowledged": CallRules._apply_acknowledged,
    "call.present": CallRules._apply_present,
    "call.escalated": CallRules._apply_escalated,
    "call.reminded": CallRules._apply_reminded,
    "call.noted": CallRules._apply_noted,
    "call.clear_refused": CallRules._apply_clear_refused,
    "call.cleared": CallRules._apply_cleared,
    "tone.silenced": CallRules._apply_silenced,
}
