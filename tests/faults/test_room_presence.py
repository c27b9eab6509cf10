"""Fault: staff presence left on. A nurse registers presence and forgets it; a bathroom emergency
pulled afterwards must still sound in the room and escalate, and presence must end by itself
after its reminder (docs/call-model.md, "Staff presence").

Real firmware nodes (door unit, bathroom cord, bedside unit with the in-room tone) talk to the real
controller and API; the controller's clock is the test's.
"""

from __future__ import annotations

from controller.sim.nodes import SimNode
from tests.faults.roomserver import FaultRoom, button, faults_config, node_steps, press_at
from tests.test_system import BEDSIDE

PRESENCE_S, REMINDER_S = 120, 30   # the shortest presence the room file allows is 60 s


async def test_presence_left_on_then_an_emergency_escalates_and_presence_ends_after_its_reminder(tmp_path):
    config = faults_config(presence_s=PRESENCE_S, presence_reminder_s=REMINDER_S)
    nodes = tmp_path / "nodes"
    async with FaultRoom(config, tmp_path) as room:
        port = room.node_port
        bedside_cfg = node_steps(tmp_path, "bedside-a", port, [], **BEDSIDE)
        door_cfg = node_steps(tmp_path, "door", port, [press_at("presence")], inputs=[button("presence")])
        bath_cfg = node_steps(tmp_path, "bath", port, [press_at("cord")], inputs=[button("cord")])
        async with SimNode(bedside_cfg, nodes) as bedside, SimNode(door_cfg, nodes):
            await room.next_record("node.online", node="bedside-a")
            arrived = await room.next_record("staff.presence", present=True)
            since = arrived.data["at_ms"]

            # Presence is still on when the patient pulls the bathroom cord.
            async with SimNode(bath_cfg, nodes):
                raised = await room.next_record("call.raised", type="bath_emergency")
            call_id = raised.data["call_id"]
            assert room.controller.outputs().tone == "high", "a new emergency sounds while staff are present"
            await bedside.wait_for("tone", pattern="high")
            snapshot = await room.get("/api/v1/room")
            [call] = snapshot["calls"]
            assert (call["id"], call["held_by_presence"], snapshot["occupancy"]["staff_present"]) == \
                (call_id, False, True)

            # The station shows it, but nobody acknowledges it: it escalates on the high tier's 30 s.
            await room.post("/api/v1/calls/shown", {"calls": [call_id], "by": "station 4B"})
            assert await room.advance_to(raised.ts_ms + 29_999) == []
            escalated = await room.advance_to(raised.ts_ms + 30_000)
            assert [(r.kind, r.data["call_id"], r.data["to"]) for r in escalated] == \
                [("call.escalated", call_id, "charge nurse")]
            mark = len(bedside.lines)
            await room.post(f"/api/v1/calls/{call_id}/ack", {"by": "Nurse Kim"})
            await bedside.wait_for("tone", pattern="off", start=mark)

            # The forgotten presence: its reminder first (the low pulse in the room), then its end.
            mark = len(bedside.lines)
            assert await room.advance_to(since + (PRESENCE_S - REMINDER_S) * 1000 - 1) == []
            [reminder] = await room.advance_to(since + (PRESENCE_S - REMINDER_S) * 1000)
            assert (reminder.kind, reminder.data["ends_at_ms"]) == ("staff.presence_reminder", since + PRESENCE_S * 1000)
            await bedside.wait_for("tone", pattern="low", start=mark)
            outputs = (await room.get("/api/v1/room"))["outputs"]
            assert (outputs["dome"]["presence"], outputs["dome"]["presence_ending"]) == (True, True)

            mark = len(bedside.lines)
            assert await room.advance_to(since + PRESENCE_S * 1000 - 1) == []
            [ended] = await room.advance_to(since + PRESENCE_S * 1000)
            assert (ended.kind, ended.data["present"], ended.data["timed_out"]) == ("staff.presence", False, True)
            await bedside.wait_for("tone", pattern="off", start=mark)
            snapshot = await room.get("/api/v1/room")
            assert snapshot["occupancy"]["staff_present"] is False
            assert snapshot["outputs"]["dome"]["presence"] is False
            assert [c["id"] for c in snapshot["calls"]] == [call_id], "the emergency is cancelled in the room only"
