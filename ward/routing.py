"""Escalation to people: who a call reaches, by the room's escalation level and the nurses' answers.

Pure functions over the call (as the room's state shows it), the shift's assignments and the
call's route (declines, acceptance). Levels reach people, and each level keeps the earlier ones:

    0  primary nurse  the nurse(s) assigned to the call's bed, else to its room
    1  charge nurse   + the shift's charge nurse
    2  all staff      + everyone on the shift

A call is at the higher of the room's own level (it escalates on its timers when nobody
acknowledges: an unanswered call moves on) and the ward's level (a decline moves it on at once).
A call with nobody assigned starts at the charge nurse: no one to wait for is no reason to wait.
Accepting acknowledges the call in the room, as the person who accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from .store import Route, Shift

LEVELS = ("primary nurse", "charge nurse", "all staff")
TOP = len(LEVELS) - 1


@dataclass(frozen=True, slots=True)
class Reach:
    level: int                  # 0..2, as above
    people: tuple[str, ...]     # everyone the call reaches now, in order of level
    newest: tuple[str, ...]     # the people this level added (whose decline moves the call on)

    @property
    def label(self) -> str:
        return LEVELS[self.level]


def primaries(shift: Shift | None, room: str, bed: str | None) -> tuple[str, ...]:
    if shift is None:
        return ()
    by_bed = [n for r, b, n in shift.assignments if r == room and bed is not None and b == bed]
    return tuple(by_bed or [n for r, b, n in shift.assignments if r == room and b == "*"])


def _people(shift: Shift | None, room: str, bed: str | None, level: int) -> list[tuple[str, ...]]:
    """People added at each level 0..level."""
    first = primaries(shift, room, bed)
    charge = (shift.charge,) if shift else ()
    everyone = shift.staff if shift else ()
    return [first, charge, tuple(everyone)][: level + 1]


def reach(call: Mapping[str, Any], room: str, shift: Shift | None, route: Route | None) -> Reach:
    room_level = max(0, int(call.get("escalation_level") or 1) - 1)
    level = min(TOP, max(room_level, route.level if route else 0))
    if level == 0 and not primaries(shift, room, call.get("bed")):
        level = 1
    added = _people(shift, room, call.get("bed"), level)
    people: list[str] = []
    for group in added:
        people += [p for p in group if p not in people]
    newest = tuple(p for p in added[-1]) if added else ()
    return Reach(level, tuple(people), newest)


def decline(route: Route, call: Mapping[str, Any], room: str, shift: Shift | None, person: str,
            now_ms: int) -> Route:
    """The route after ``person`` declines: moved on a level when the person was one this level reached."""
    now = reach(call, room, shift, route)
    declined = route.declined if person in route.declined else route.declined + (person,)
    level = max(route.level, now.level)
    if person in now.newest and level < TOP:
        level += 1
    return replace(route, level=level, declined=declined, updated_ms=now_ms)


def new_route(room: str, call_id: str, now_ms: int) -> Route:
    return Route(room, call_id, 0, (), None, now_ms)
