"""What an input's change is, for the room: the same rule for a wired contact and a BLE sensor.

Presence-type meanings (a bed pad, a PIR) report both edges as ``presence`` events 1/0; everything
else (calls, cancel, staff presence, I'm OK) is a ``button`` event when it becomes active, and
nothing when it is released. An input the room gives no meaning (a BLE door contact kept for the
log) reports both edges as ``presence`` events, which the room stores and otherwise ignores.
"""

from __future__ import annotations

PRESENCE_MEANINGS = frozenset({"bed_occupancy", "room_presence", "bath_presence"})


def input_event(meaning: str | None, active: bool) -> tuple[str, int] | None:
    """``(kind, val)`` of the event an input's new level makes, or None for no event."""
    if meaning is None or meaning in PRESENCE_MEANINGS:
        return "presence", int(active)
    return ("button", 1) if active else None
