"""Hypothesis stateful test: random presses, cancels, acknowledgements, presence, restarts and time
jumps against the real controller and store, checking the nurse-call invariants after every step:

- no call is lost: every raised call is active or has exactly one clear, and nothing else is active;
- a call that requires cancel at origin (or clears itself) is never cleared remotely;
- the active list is always highest priority first, then oldest first;
- every cleared call has a complete timeline (raised ... cleared) whose times never go back;
- a restart changes nothing a nurse can see;
- an emergency nobody has answered always sounds, staff presence or not, and presence ends by itself.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controller.room import CALL_TYPES, CONDITION, IN_ROOM, RoomError
from tests.roomsim import RoomSim, rules_config

CALL_BUTTONS = [("bedside-a", "call"), ("bedside-a", "water"), ("bedside-b", "call"), ("bath", "cord"),
                ("door", "code"), ("door", "assist"), ("door", "emergency"), ("wearable-a", "pendant")]
STEPS_S = [0.5, 5, 29, 31, 59, 61, 181, 1201]
VISIBLE = ("calls", "occupancy", "fall_risk", "outputs")


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None  # fsyncs are cheap in RAM; the logic under test is the same


class NurseCallMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="smartroom-model-", dir=_tmp_root()))
        self.sim = RoomSim(rules_config(timers={"fall_ok_window_s": 30}), self.dir / "room.db")
        self.run(self.sim.start())
        self.bath = self.bed_a = False

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.sim.stop())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def active(self) -> list[dict]:
        return self.sim.calls()

    # ------------------------------------------------------------------ rules
    @rule(button=st.sampled_from(CALL_BUTTONS))
    def press(self, button):
        self.run(self.sim.press(*button))

    @rule()
    def in_room_cancel(self):
        self.run(self.sim.press("door", "cancel"))

    @rule()
    def staff_presence_toggle(self):
        self.run(self.sim.press("door", "presence"))

    @rule()
    def fall(self):
        self.run(self.sim.event("wearable-a", "fall", "accel", peak_mg=4000))

    @rule()
    def im_ok(self):
        self.run(self.sim.press("wearable-a", "ok"))

    @rule()
    def bathroom(self):
        self.bath = not self.bath
        self.run(self.sim.presence("bath", "pir", self.bath))

    @rule()
    def bed(self):
        self.bed_a = not self.bed_a
        self.run(self.sim.presence("bedside-a", "pad", self.bed_a))

    @rule(enabled=st.booleans())
    def fall_risk(self, enabled):
        self.run(self.sim.c.set_fall_risk("A", enabled, "Nurse Kim"))

    @rule(code=st.sampled_from([0, 2]))
    def sensor(self, code):
        self.run(self.sim.event("env", "fault", "sht3x", code))

    @precondition(lambda self: self.active())
    @rule(pick=st.integers(0, 20), who=st.sampled_from(["Nurse Kim", "Nurse Lee"]))
    def acknowledge(self, pick, who):
        calls = self.active()
        try:
            self.run(self.sim.c.acknowledge(calls[pick % len(calls)]["id"], who))
        except RoomError as exc:
            assert exc.code == "already_acknowledged"

    @precondition(lambda self: self.active())
    @rule(pick=st.integers(0, 20))
    def remote_clear(self, pick):
        calls = self.active()
        call = calls[pick % len(calls)]
        try:
            self.run(self.sim.c.clear(call["id"], "Nurse Kim"))
            refused = False
        except RoomError as exc:
            refused = True
            assert exc.code in ("cancel_at_origin", "clears_when_resolved")
        assert refused == (call["clears"] != "routine")
        assert (call["id"] in {c["id"] for c in self.active()}) == refused

    @rule(seconds=st.sampled_from(STEPS_S))
    def time_passes(self, seconds):
        self.run(self.sim.advance(seconds))

    @rule(down_s=st.sampled_from([0, 10, 45, 200]))
    def restart(self, down_s):
        before = self.sim.c.snapshot()
        self.run(self.sim.restart())
        after = self.sim.c.snapshot()
        assert {k: after[k] for k in VISIBLE} == {k: before[k] for k in VISIBLE}
        if down_s:
            self.run(self.sim.advance(down_s))

    # ------------------------------------------------------------------ invariants
    @invariant()
    def no_call_is_lost(self):
        log = self.run(self.sim.log())
        raised = [r.data["call_id"] for r in log if r.kind == "call.raised"]
        cleared = [r.data["call_id"] for r in log if r.kind == "call.cleared"]
        assert len(raised) == len(set(raised)) and len(cleared) == len(set(cleared))
        assert set(cleared) <= set(raised)
        assert {c["id"] for c in self.active()} == set(raised) - set(cleared)

    @invariant()
    def cancel_at_origin_calls_are_never_cleared_remotely(self):
        log = self.run(self.sim.log())
        types = {r.data["call_id"]: r.data["type"] for r in log if r.kind == "call.raised"}
        for r in log:
            if r.kind != "call.cleared":
                continue
            clears = CALL_TYPES[types[r.data["call_id"]]].clears
            if clears == IN_ROOM:
                assert r.data["how"] in ("in_room_cancel", "patient_ok"), r.data
            if clears == CONDITION:
                assert r.data["how"] == "resolved", r.data
            if r.data["how"] == "patient_ok":
                assert types[r.data["call_id"]] == "fall"

    @invariant()
    def an_emergency_nobody_answers_always_sounds(self):
        """Unless acknowledged, attended by the presence it was on for, or silenced (a new call sounds through)."""
        snapshot = self.sim.c.snapshot()
        tone = snapshot["outputs"]["tone"]
        waiting = [c["type"] for c in snapshot["calls"] if c["priority"] == "high" and c["acknowledged_at_ms"] is None
                   and c["present_at_ms"] is None and not c["held_by_presence"]]
        if waiting:
            assert tone["pattern"] == "high" or tone["silenced"], (waiting, tone, snapshot["occupancy"])

    @invariant()
    def staff_presence_never_outlasts_its_time(self):
        occupancy = self.sim.c.snapshot()["occupancy"]
        if occupancy["staff_present"]:
            assert self.sim.clock.ms < occupancy["presence_ends_at_ms"]

    @invariant()
    def active_list_is_ordered(self):
        keys = [(c["rank"], c["raised_at_ms"], c["id"]) for c in self.active()]
        assert keys == sorted(keys)

    @invariant()
    def cleared_calls_have_complete_monotonic_timelines(self):
        log = self.run(self.sim.log())
        by_call: dict[str, list] = {}
        for r in log:
            if r.kind.startswith("call.") and "call_id" in r.data:
                by_call.setdefault(r.data["call_id"], []).append(r)
        for records in by_call.values():
            kinds = [r.kind for r in records]
            assert kinds[0] == "call.raised"
            times = [r.data["at_ms"] for r in records]
            assert times == sorted(times), kinds
            if "call.cleared" in kinds:
                assert kinds[-1] == "call.cleared"
                assert all(r.data.get("by") for r in records
                           if r.kind in ("call.raised", "call.acknowledged", "call.present", "call.cleared"))


NurseCallMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
TestNurseCallModel = NurseCallMachine.TestCase
