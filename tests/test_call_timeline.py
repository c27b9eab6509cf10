"""A call's timeline is bounded: its first steps and its latest ones, the steps between counted.

A call that stays active for days (a condition nobody clears, acknowledged and reminded every few
minutes) would otherwise grow the room's state, every checkpoint and every answer about the room
without bound; the log keeps every step."""

from __future__ import annotations

import json

import pytest

from controller.room import Room
from controller.room.calls import TIMELINE_FIRST_STEPS, TIMELINE_LATEST_STEPS
from controller.store import LogRecord
from tests.test_checkpoints import CONFIG, state

KEPT = TIMELINE_FIRST_STEPS + TIMELINE_LATEST_STEPS


def _log(steps: int) -> list[LogRecord]:
    """A call raised, then noted until its timeline has ``steps`` steps (the raise is the first)."""
    log = [LogRecord(1, 1000, "call.raised", {
        "call_id": "c1", "type": "unmapped_input", "level": "low", "node": "door", "input": "input:x", "bed": None,
        "by": "door/input:x", "at_ms": 1000, "detail": {}})]
    for i in range(1, steps):
        log.append(LogRecord(len(log) + 1, 1000 + i, "call.noted", {"call_id": "c1", "at_ms": 1000 + i, "note": str(i)}))
    return log


def _expected(steps: int) -> list[str]:
    names = ["raised"] + [str(i) for i in range(1, steps)]
    return names if steps <= KEPT else names[:TIMELINE_FIRST_STEPS] + names[-TIMELINE_LATEST_STEPS:]


def _names(room: Room) -> list[str]:
    return [s.get("note", s["step"]) for s in room.calls["c1"].timeline]


@pytest.mark.parametrize("steps", [1, KEPT - 1, KEPT, KEPT + 1, KEPT + 2, 5000])
def test_a_call_keeps_its_first_and_latest_steps_and_counts_the_rest(steps):
    room = Room(CONFIG)
    room.apply_all(_log(steps))
    assert _names(room) == _expected(steps)
    call = room.calls["c1"].to_json()
    assert call["timeline_omitted"] == max(0, steps - KEPT)
    assert len(call["timeline"]) == min(steps, KEPT)


@pytest.mark.parametrize("at", [1, TIMELINE_FIRST_STEPS + 1, KEPT, KEPT + 1, KEPT + 7, 120])
def test_a_checkpoint_taken_anywhere_gives_the_bounded_timeline_of_a_full_replay(at):
    log = _log(130)
    full = Room(CONFIG)
    full.apply_all(log)
    head = Room(CONFIG)
    head.apply_all(log[:at])
    resumed = Room(CONFIG)
    resumed.load_state(json.loads(json.dumps(head.state_json())))
    resumed.apply_all(log[at:])
    assert state(resumed) == state(full)
    assert resumed.calls["c1"].timeline_omitted == 130 - KEPT
