"""Presence and occupancy: staff presence, the in-room cancel, patient areas and beds, "I'm OK",
bathroom dwell and bed exit for fall-risk beds.

Staff presence answers the calls that are on when staff register it (their clocks wait while staff
stay); a call raised afterwards is a new call and sounds and escalates like any other. Presence
ends by itself ``timers.presence_s`` after it was registered, with a reminder
``timers.presence_reminder_s`` before; pressing presence during the reminder renews it.

One part of :class:`~controller.room.state.Room`; it raises and clears calls through the calls part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..store import LogEntry
from .calls import (CONDITION, HOW_IN_ROOM_CANCEL, HOW_PATIENT_CANCEL, HOW_PATIENT_OK, HOW_PRESENCE, ROUTINE,
                    CallRules, UnknownBed, _ms)

if TYPE_CHECKING:
    from .config import RoomConfig

AREA_INPUTS = {"room_presence": "room", "bath_presence": "bath", "bed_occupancy": "bed"}


class PresenceRules(CallRules):
    """Who is where: staff, the patient's areas and beds; what each presence does to calls."""

    config: RoomConfig
    area: dict[str, bool]
    area_since: dict[str, int]
    beds: dict[str, bool]
    fall_risk: dict[str, bool]
    staff_since_ms: int | None
    presence_reminded_ms: int | None
    bath_dwell_for: int | None

    def occupancy(self) -> str:
        """The fused room occupancy: where the patient most likely is."""
        if any(self.beds.values()):
            return "in_bed"
        if self.area["bath"]:
            return "in_bathroom"
        if self.area["room"]:
            return "in_room"
        return "empty"

    def _bath_dwell_due(self) -> int | None:
        """When the running bathroom stay becomes a long-stay alarm (None: no stay, or it alarmed)."""
        if self.area["bath"] and self.bath_dwell_for != self.area_since.get("bath"):
            return self.area_since["bath"] + _ms(self.config.timers.bath_dwell_s)
        return None

    def _decide_bath_dwell(self, now_ms: int) -> list[LogEntry]:
        due = self._bath_dwell_due()
        if due is None or due > now_ms:
            return []
        since = self.area_since["bath"]
        # stay_ms marks this bathroom stay as alarmed, also when an earlier alarm is still active
        entry = self._raise_or_repeat("bath_dwell", None, "bath_dwell", now_ms,
                                      {"in_bathroom_since_ms": since, "due_ms": due})[0]
        return [LogEntry(entry.kind, dict(entry.data, stay_ms=since))]

    def decide_fall_risk(self, bed: str, enabled: bool, by: str, now_ms: int) -> list[LogEntry]:
        if bed not in self.fall_risk:
            raise UnknownBed(f"no bed '{bed}' in room {self.config.room_id} (beds: {', '.join(self.config.beds)})")
        if self.fall_risk[bed] == enabled:
            return []
        return [LogEntry("bed.fall_risk", {"bed": bed, "enabled": enabled, "by": by, "at_ms": now_ms})]

    def _patient_cancel(self, node: str, by: str, now_ms: int) -> list[LogEntry]:
        """The patient takes back their own routine call (same node, or same bed); never an emergency."""
        bed = self.config.nodes[node].bed if node in self.config.nodes else None
        return [self._clear(c, by, HOW_PATIENT_CANCEL, now_ms) for c in self.active_calls()
                if c.ctype.clears == ROUTINE and (c.node == node or (bed is not None and c.bed == bed))]

    def _in_room_cancel(self, by: str, now_ms: int) -> list[LogEntry]:
        """The in-room cancel resets every call raised by people; staff are evidently in the room."""
        calls = [c for c in self.active_calls() if c.ctype.clears != CONDITION]
        return self._mark_present(calls, by, now_ms) + [self._clear(c, by, HOW_IN_ROOM_CANCEL, now_ms) for c in calls]

    def _staff_presence_press(self, by: str, now_ms: int) -> list[LogEntry]:
        """The presence button toggles presence; during the reminder before it ends, a press renews it."""
        if self.staff_present and self.presence_reminded_ms is None:
            return self._staff_presence(False, by, now_ms)
        return self._staff_presence(True, by, now_ms)

    def _staff_presence(self, present: bool, by: str, now_ms: int) -> list[LogEntry]:
        data: dict[str, Any] = {"present": present, "by": by, "at_ms": now_ms}
        if present and self.staff_present:
            data["renewed"] = True
        entries = [LogEntry("staff.presence", data)]
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

    def _apply_presence(self, d: dict[str, Any]) -> None:
        if d["area"] == "bed":
            self.beds[d["bed"]] = d["present"]
            return
        self.area[d["area"]] = d["present"]
        if d["present"]:
            self.area_since[d["area"]] = d["at_ms"]
        else:
            self.area_since.pop(d["area"], None)

    def presence_ends_ms(self) -> int | None:
        """When registered presence ends by itself (None: no staff registered)."""
        if not self.staff_present or self.staff_since_ms is None:
            return None
        return self.staff_since_ms + _ms(self.config.timers.presence_s)

    def _presence_due(self) -> int | None:
        """When registered presence next needs something: its reminder, then its end."""
        ends = self.presence_ends_ms()
        if ends is None:
            return None
        return ends if self.presence_reminded_ms is not None else ends - _ms(self.config.timers.presence_reminder_s)

    def _decide_presence_timeout(self, now_ms: int) -> list[LogEntry]:
        due = self._presence_due()
        if due is None or due > now_ms:
            return []
        ends = self.presence_ends_ms()
        if self.presence_reminded_ms is None:
            return [LogEntry("staff.presence_reminder", {"due_ms": due, "ends_at_ms": ends, "at_ms": now_ms})]
        minutes = self.config.timers.presence_s / 60
        return [LogEntry("staff.presence", {"present": False, "by": f"presence ended by itself after {minutes:g} min",
                                            "timed_out": True, "due_ms": due, "at_ms": now_ms})]

    def _apply_staff(self, d: dict[str, Any]) -> None:
        self.staff_present = d["present"]
        self.presence_reminded_ms = None
        if d["present"]:
            self.staff_since_ms = d["at_ms"]
            for call in self.calls.values():  # staff are here for every call on now; later ones are new
                call.held = True
            return
        self.staff_since_ms = None
        left_ms = d.get("due_ms", d["at_ms"])  # a timed-out presence ended when it was due
        for call in self.calls.values():
            if call.held:  # their timers run again from the moment staff left
                call.held = False
                call.phase_since_ms = left_ms

    def _apply_presence_reminder(self, d: dict[str, Any]) -> None:
        self.presence_reminded_ms = d["due_ms"]

    def _apply_fall_risk(self, d: dict[str, Any]) -> None:
        self.fall_risk[d["bed"]] = d["enabled"]



PRESENCE_APPLY: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "presence.changed": PresenceRules._apply_presence,
    "staff.presence": PresenceRules._apply_staff,
    "staff.presence_reminder": PresenceRules._apply_presence_reminder,
    "bed.fall_risk": PresenceRules._apply_fall_risk,
}
