"""Supervision of the room's own parts: nodes online and offline (check-in, a dropped connection),
nodes that connect but cannot deliver, nodes that never checked in, inputs the room file does not
map, their batteries, sensor faults and implausible values, call cords pulled out, faults of the
controller itself, and the nurse screens: a call that no nurse screen has shown within
``timers.not_displayed_s`` raises "calls not shown on any nurse screen". Each is a technical alarm
that clears itself when the condition is gone.

One part of :class:`~controller.room.state.Room`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..model import Heartbeat, Hello
from ..store import LogEntry
from .calls import HOW_RESOLVED, Call, CallRules, _ms

if TYPE_CHECKING:
    from .config import RoomConfig

# Values outside these ranges are not the room, they are a broken sensor ("sensor fault").
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "temp_c": (-30.0, 70.0), "rh_pct": (0.0, 100.0), "co2_ppm": (250.0, 10_000.0),
    "noise_db": (10.0, 140.0), "pressure_pa": (-200.0, 200.0), "batt_v": (1.5, 6.0),
}
BATTERY_MEASURE = "batt_v"
FAULT_CORD_REMOVED = 4  # fault code of a call cord pulled out of its socket (nurse-call supervision)
# A node whose connection ended is offline when no new one is welcomed within this. A node's first
# reconnects come after 0.25 + 0.5 + 1 + 2 s of backoff at most (docs/protocol.md §3), and a Wi-Fi
# reassociation takes a second or two: 5 s lets a healthy node come back unnoticed, and keeps
# "offline" well inside the 30 s supervision goal. Heartbeat silence stays the backstop.
DROP_GRACE_MS = 5000
LINK_SOURCE = "link"             # the input of a node's "cannot deliver" alarm
SUPERVISION_SOURCE = "supervision"
MAPPED_KINDS = ("button", "presence")  # event kinds whose meaning comes from the room file
NOT_DISPLAYED = "not_displayed"  # the call type of "calls not shown on any nurse screen"
DISPLAY_SRC = "display"          # its source (no node: the room controller raises it)
# NodeStatus fields that heartbeats, check-ins and dropped connections set without the log (the rest
# follow node.online/offline)
LIVE_NODE_FIELDS = ("last_seen_ms", "rssi", "batt_mv", "heap", "queued", "dropped", "connection_lost_ms")

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
    connection_lost_ms: int | None = None  # live: its connection ended then, and no new one yet

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "online": self.online, "since_ms": self.since_ms, "last_seen_ms": self.last_seen_ms,
            "fw": self.fw, "hw": self.hw, "boot": self.boot, "caps": list(self.caps), "rssi": self.rssi,
            "batt_mv": self.batt_mv, "heap": self.heap, "queued": self.queued, "dropped": self.dropped,
        }


class SupervisionRules(CallRules):
    """Node status (online, last seen, health) and the technical alarms of nodes and the controller."""

    config: RoomConfig
    nodes: dict[str, NodeStatus]

    def offline_after_ms(self, node: str, default_ms: int) -> int:
        """Silence that makes a node offline: its own check-in interval's worth, or the gateway's."""
        cfg = self.config.nodes.get(node)
        if cfg is None or cfg.check_in_ms is None:
            return default_ms
        missed = self.config.supervision.missed_heartbeats
        grace_ms = default_ms - missed * self.config.heartbeat_ms
        return missed * cfg.check_in_ms + grace_ms

    def _nodes_due(self, offline_after_ms: int) -> list[int]:
        due = [status.last_seen_ms + self.offline_after_ms(status.id, offline_after_ms) + 1
               for status in self.nodes.values() if status.online and status.last_seen_ms is not None]
        due += [status.connection_lost_ms + DROP_GRACE_MS + 1 for status in self.nodes.values()
                if status.online and status.connection_lost_ms is not None]
        due += [self._first_check_in_due(status.id, offline_after_ms) + 1 for status in self._never_seen()]
        return due

    def _decide_supervision(self, now_ms: int, offline_after_ms: int) -> list[LogEntry]:
        entries: list[LogEntry] = []
        for status in list(self.nodes.values()):
            if status.online and status.connection_lost_ms is not None and \
                    now_ms > status.connection_lost_ms + DROP_GRACE_MS:
                entries += self.decide_offline(status.id, f"connection lost, not back within "
                                                          f"{DROP_GRACE_MS // 1000} s", now_ms)
            elif status.online and status.last_seen_ms is not None and \
                    now_ms > status.last_seen_ms + self.offline_after_ms(status.id, offline_after_ms):
                entries += self.decide_offline(status.id, f"missed {self.config.supervision.missed_heartbeats} "
                                                          "heartbeats", now_ms)
        for status in self._never_seen():
            due = self._first_check_in_due(status.id, offline_after_ms)
            if now_ms > due:
                entries += self._raise_or_repeat("node_never_connected", status.id, SUPERVISION_SOURCE, now_ms, {
                    "reason": f"configured, but not checked in within {(due - self.started_ms) // 1000} s "
                              "of the controller's start", "transport": self.config.nodes[status.id].transport})
        return entries

    # ------------------------------------------------------------------ never connected
    started_ms: int | None  # when the controller started supervising (None: not yet)

    def _never_seen(self) -> list[NodeStatus]:
        """Configured nodes with no check-in ever (none in the log either), not yet alarmed."""
        if self.started_ms is None:
            return []
        return [status for status in self.nodes.values()
                if status.id in self.config.nodes and status.since_ms is None and status.last_seen_ms is None
                and not status.online and self.call_from(status.id, SUPERVISION_SOURCE, "node_never_connected") is None]

    def _first_check_in_due(self, node: str, offline_after_ms: int) -> int:
        """A node has this long from the controller's start to check in (at least its own offline time)."""
        assert self.started_ms is not None
        first_ms = int(self.config.supervision.first_check_in_s * 1000)
        return self.started_ms + max(first_ms, self.offline_after_ms(node, offline_after_ms))

    # ------------------------------------------------------------------ cannot deliver
    def decide_cannot_deliver(self, node: str, detail: dict[str, Any], now_ms: int) -> list[LogEntry]:
        """A node keeps connecting but its sessions end rejected with nothing delivered: a technical alarm."""
        if self.call_from(node, LINK_SOURCE, "node_cannot_deliver") is not None:
            return []
        return self._raise_or_repeat("node_cannot_deliver", node, LINK_SOURCE, now_ms, detail)

    def decide_delivers(self, node: str, how: str, now_ms: int) -> list[LogEntry]:
        """The node delivers again (an event stored, or nothing waiting): its "cannot deliver" clears."""
        active = self.call_from(node, LINK_SOURCE, "node_cannot_deliver")
        if active is None:
            return []
        return [self._clear(active, f"{node} delivers again ({how})", HOW_RESOLVED, now_ms)]

    def cannot_deliver(self, node: str) -> bool:
        return self.call_from(node, LINK_SOURCE, "node_cannot_deliver") is not None

    # ------------------------------------------------------------------ inputs the room file does not map
    def decide_unmapped(self, node: str, src: str, kind: str, val: int, now_ms: int) -> list[LogEntry]:
        """A press (or presence change) from an input the room file gives no meaning: it would be lost."""
        if kind not in MAPPED_KINDS or self.config.meaning(node, src) is not None:
            return []
        source = f"input:{src}"
        press = kind == "button" and val != 0  # every press counts on the alarm ("pressed 3x")
        if not press and self.call_from(node, source, "unmapped_input") is not None:
            return []
        why = ("the node is not in the room file" if node not in self.config.nodes
               else f"the room file has no meaning for input '{src}' of node '{node}'")
        return self._raise_or_repeat("unmapped_input", node, source, now_ms,
                                     {"input": src, "kind": kind, "reason": why})

    def decide_inputs_reported(self, node: str, inputs: Iterable[str], now_ms: int) -> list[LogEntry]:
        """The node's heartbeat names its inputs: one the room file does not map is an alarm now, before a
        patient's press on it is the first sign (the press would raise no call)."""
        entries: list[LogEntry] = []
        for src in inputs:
            source = f"input:{src}"
            if self.config.meaning(node, src) is not None or self.call_from(node, source, "unmapped_input"):
                continue
            why = ("the node is not in the room file" if node not in self.config.nodes
                   else f"the room file has no meaning for input '{src}' of node '{node}'")
            entries += self._raise_or_repeat("unmapped_input", node, source, now_ms,
                                              {"input": src, "kind": "reported", "reason": why + " (its heartbeat "
                                               "lists it; no press yet)"})
        return entries

    def decide_config_checked(self, now_ms: int) -> list[LogEntry]:
        """At start: "input not in the room file" alarms whose input the room file now maps are cleared."""
        return [self._clear(call, f"the room file maps {call.node}/{call.detail.get('input')} now", HOW_RESOLVED,
                            now_ms)
                for call in list(self.calls.values())
                if call.type == "unmapped_input" and call.node is not None
                and self.config.meaning(call.node, str(call.detail.get("input"))) is not None]

    # ------------------------------------------------------------------ node state, as shown
    def node_state(self, status: NodeStatus) -> str:
        """cannot_deliver (keeps connecting, delivers nothing: the diagnosis that matters, whether its
        last welcome was long ago or not), online, offline or never_connected."""
        if self.cannot_deliver(status.id):
            return "cannot_deliver"
        if status.online:
            return "online"
        if status.since_ms is None and status.last_seen_ms is None:
            return "never_connected"
        return "offline"

    def node_json(self, status: NodeStatus) -> dict[str, Any]:
        state = self.node_state(status)
        return {**status.to_json(), "online": state == "online", "state": state}

    def decide_online(self, hello: Hello, peer: str, now_ms: int) -> list[LogEntry]:
        """A node checked in. Only a change is logged: a reconnect of an online node (same boot and
        firmware) adds no row, so a flapping connection cannot fill the log."""
        status = self.nodes.get(hello.node)
        if status is not None and status.online and (status.boot, status.fw, status.hw) == \
                (hello.boot, hello.fw, hello.hw):
            return []
        entries = [LogEntry("node.online", {
            "node": hello.node, "boot": hello.boot, "fw": hello.fw, "hw": hello.hw, "caps": list(hello.caps),
            "peer": peer, "at_ms": now_ms})]
        offline = self.call_from(hello.node, SUPERVISION_SOURCE, "node_offline")
        if offline is not None:
            entries.append(self._clear(offline, f"{hello.node} back online", HOW_RESOLVED, now_ms))
        never = self.call_from(hello.node, SUPERVISION_SOURCE, "node_never_connected")
        if never is not None:
            entries.append(self._clear(never, f"{hello.node} checked in", HOW_RESOLVED, now_ms))
        return entries

    def decide_offline(self, node: str, reason: str, now_ms: int) -> list[LogEntry]:
        status = self.nodes.get(node)
        if status is None or not status.online:
            return []
        return [LogEntry("node.offline", {"node": node, "reason": reason, "at_ms": now_ms}),
                *self._raise_or_repeat("node_offline", node, SUPERVISION_SOURCE, now_ms, {"reason": reason})]

    def decide_system_fault(self, src: str, faulty: bool, detail: dict[str, Any], now_ms: int) -> list[LogEntry]:
        """A part of the controller itself (e.g. the Bluetooth adapter) failed or works again."""
        return self._fault(None, f"system:{src}", faulty, now_ms, detail, f"{src} works again", "system_fault")

    def _fault(self, node: str | None, src: str, faulty: bool, now_ms: int, detail: dict[str, Any],
               resolved_by: str, ctype: str = "sensor_fault") -> list[LogEntry]:
        active = self.call_from(node, src, ctype)
        if faulty and active is None:
            return self._raise_or_repeat(ctype, node, src, now_ms, detail)
        if not faulty and active is not None:
            return [self._clear(active, resolved_by, HOW_RESOLVED, now_ms)]
        return []

    def _decide_plausible_and_battery(self, node: str, measure: str, value: float,
                                      now_ms: int) -> tuple[bool, list[LogEntry]]:
        """Plausibility (a sensor fault) and, for the battery measure, low battery; (plausible, entries)."""
        entries: list[LogEntry] = []
        lo, hi = PLAUSIBLE.get(measure, (-math.inf, math.inf))
        plausible = lo <= value <= hi and math.isfinite(value)
        entries += self._fault(node, f"sensor:{measure}", not plausible, now_ms,
                               {"measure": measure, "value": value, "plausible": [lo, hi]},
                               f"{node} reports plausible {measure} again ({value:g})")
        if not plausible:
            return False, entries
        if measure == BATTERY_MEASURE:
            sup = self.config.supervision
            active = self.call_from(node, "battery", "low_battery")
            if active is None and value < sup.low_battery_v:
                entries += self._raise_or_repeat("low_battery", node, "battery", now_ms,
                                                 {"batt_v": value, "below_v": sup.low_battery_v})
            elif active is not None and value >= sup.battery_replaced_v:
                entries.append(self._clear(active, f"{node}: battery replaced ({value:.2f} V)", HOW_RESOLVED, now_ms))
        return True, entries

    # ------------------------------------------------------------------ the nurse screens
    def not_displayed(self, now_ms: int) -> list[Call]:
        """Active calls that no nurse screen has shown although they were raised ``not_displayed_s`` ago."""
        limit = _ms(self.config.timers.not_displayed_s)
        return [c for c in self.active_calls()
                if c.type != NOT_DISPLAYED and c.annunciated_at_ms is None and now_ms - c.raised_at_ms >= limit]

    def display_alarm(self) -> Call | None:
        return self.call_from(None, DISPLAY_SRC, NOT_DISPLAYED)

    def _display_due(self, now_ms: int) -> int | None:
        """The next call to become "not shown in time"; with the alarm on, now once nothing is late."""
        if self.display_alarm() is not None:
            return None if self.not_displayed(now_ms) else now_ms
        limit = _ms(self.config.timers.not_displayed_s)
        waiting = [c.raised_at_ms + limit for c in self.calls.values()
                   if c.type != NOT_DISPLAYED and c.annunciated_at_ms is None]
        return min(waiting) if waiting else None

    def _decide_display(self, now_ms: int, shown: Iterable[str] = ()) -> list[LogEntry]:
        """Raise the alarm when a call is late on every screen; clear it when none is (``shown``: being shown now)."""
        just_shown = set(shown)
        late = [c for c in self.not_displayed(now_ms) if c.id not in just_shown]
        alarm = self.display_alarm()
        if late and alarm is None:
            return self._raise_or_repeat(NOT_DISPLAYED, None, DISPLAY_SRC, now_ms, {
                "calls": [c.id for c in late], "after_s": self.config.timers.not_displayed_s}, by="room controller")
        if not late and alarm is not None:
            return [self._clear(alarm, "every call shown on a nurse screen", HOW_RESOLVED, now_ms)]
        return []

    def decide_shown(self, call_ids: Iterable[str], by: str, now_ms: int) -> list[LogEntry]:
        """A nurse screen's receipt for calls it displayed: the first one for a call is its annunciation.
        Calls already shown, or no longer active, are left alone."""
        entries = [LogEntry("call.annunciated", {"call_id": cid, "by": by, "at_ms": now_ms})
                   for cid in dict.fromkeys(call_ids)
                   if (call := self.calls.get(cid)) is not None and call.annunciated_at_ms is None]
        if entries:
            entries += self._decide_display(now_ms, (e.data["call_id"] for e in entries))
        return entries

    def _apply_online(self, d: dict[str, Any]) -> None:
        status = self.nodes.setdefault(d["node"], NodeStatus(d["node"]))
        status.online, status.since_ms, status.last_seen_ms = True, d["at_ms"], d["at_ms"]
        status.fw, status.hw, status.boot, status.caps = d["fw"], d["hw"], d["boot"], tuple(d["caps"])

    def _apply_offline(self, d: dict[str, Any]) -> None:
        status = self.nodes.setdefault(d["node"], NodeStatus(d["node"]))
        status.online, status.since_ms = False, d["at_ms"]
        status.connection_lost_ms = None

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

    def note_connected(self, node: str) -> None:
        """A connection of the node was welcomed: a lost one no longer counts."""
        if node in self.nodes:
            self.nodes[node].connection_lost_ms = None

    def note_connection_lost(self, node: str, now_ms: int) -> None:
        """The node's live connection ended; offline after DROP_GRACE_MS unless it is welcomed again."""
        status = self.nodes.get(node)
        if status is not None and status.online:
            status.connection_lost_ms = now_ms



SUPERVISION_APPLY: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "node.online": SupervisionRules._apply_online,
    "node.offline": SupervisionRules._apply_offline,
}
