"""Fault: nobody watching. A call raised while no nurse screen shows anything must not go
unnoticed: after ``timers.not_displayed_s`` it is itself a technical alarm, the dome light and the
in-room tone keep going, /api/v1/health says "degraded" and why, and /metrics counts the calls.
A nurse screen's receipt (what the nurse page sends for the calls it displays) credits the call
and resolves the alarm.

A real firmware bedside node raises the call and plays the tone; the controller's clock is the test's.
"""

from __future__ import annotations

from controller.sim.nodes import SimNode
from tests.faults.roomserver import FaultRoom, faults_config, node_steps
from tests.test_system import BEDSIDE

NOT_DISPLAYED_S = 15  # the default


async def test_a_call_no_screen_shows_becomes_an_alarm_with_degraded_health_and_a_metric(tmp_path):
    async with FaultRoom(faults_config(), tmp_path) as room:
        cfg = node_steps(tmp_path, "bedside-a", room.node_port, [{"at_ms": 300, "pin": "call", "press_ms": 200}],
                         **BEDSIDE)
        async with SimNode(cfg, tmp_path / "nodes") as bedside:
            raised = await room.next_record("call.raised", type="patient_call")
            await bedside.wait_for("tone", pattern="medium")
            health = await room.get("/api/v1/health", role=None)
            assert (health["status"], health["reasons"], health["nurse_streams"]) == ("ok", [], 0)

            assert await room.advance_to(raised.ts_ms + NOT_DISPLAYED_S * 1000 - 1) == []
            assert await room.metric("smartroom_calls_not_displayed") == 0
            mark = len(bedside.lines)
            [alarm] = await room.advance_to(raised.ts_ms + NOT_DISPLAYED_S * 1000)
            assert (alarm.kind, alarm.data["type"], alarm.data["level"], alarm.data["detail"]["calls"]) == \
                ("call.raised", "not_displayed", "medium", [raised.data["call_id"]])

            health = await room.get("/api/v1/health", role=None)
            assert health["status"] == "degraded"
            assert [d["reason"] for d in health["reasons"]] == ["not_displayed"]
            assert "not shown on any nurse screen" in health["reasons"][0]["message"]
            assert await room.metric("smartroom_calls_not_displayed") == 1
            assert await room.metric("smartroom_active_calls", 'priority="medium"') == 2
            # The light and the tone keep going: nothing has answered the call.
            outputs = room.controller.outputs()
            assert (outputs.dome_colour, outputs.tone) == ("white", "medium")
            assert [line.fields["pattern"] for line in bedside.lines[mark:] if line.tag == "tone"] == []
            snapshot = await room.get("/api/v1/room", role="facilities")
            assert {c["type"]: c["clears"] for c in snapshot["calls"]} == {"patient_call": "routine",
                                                                           "not_displayed": "condition"}


async def test_a_screen_receipt_credits_the_call_and_resolves_the_alarm(tmp_path):
    async with FaultRoom(faults_config(), tmp_path) as room:
        cfg = node_steps(tmp_path, "bedside-a", room.node_port, [{"at_ms": 300, "pin": "call", "press_ms": 200}],
                         **BEDSIDE)
        async with SimNode(cfg, tmp_path / "nodes"):
            raised = await room.next_record("call.raised", type="patient_call")
            [alarm] = await room.advance_to(raised.ts_ms + 40_000)
            assert alarm.data["type"] == "not_displayed"

            # A nurse page comes up and confirms what it displays: both calls.
            ids = [raised.data["call_id"], alarm.data["call_id"]]
            answer = await room.post("/api/v1/calls/shown", {"calls": ids, "by": "nurse page (Nurse Kim)"})
            assert answer == {"shown": ids, "already_shown": [], "not_active": []}
            cleared = await room.next_record("call.cleared", call_id=alarm.data["call_id"])
            assert (cleared.data["how"], cleared.data["by"]) == ("resolved", "every call shown on a nurse screen")
            call = room.controller.room.calls[raised.data["call_id"]]
            assert (call.annunciated_at_ms, call.annunciated_by) == (raised.ts_ms + 40_000, "nurse page (Nurse Kim)")

            health = await room.get("/api/v1/health", role=None)
            assert (health["status"], health["reasons"]) == ("ok", [])
            assert await room.metric("smartroom_calls_not_displayed") == 0
            assert await room.metric("smartroom_call_delivery_seconds_count") == 2
            assert await room.metric("smartroom_call_delivery_seconds_bucket", 'le="30.0"') == 1, \
                "the patient call waited 40 s for a screen; the alarm was shown at once"
            assert await room.advance_to(raised.ts_ms + 55_000) == [], "shown once is shown"
