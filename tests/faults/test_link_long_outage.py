"""Issue 12, item 1: a node's held events reach the room exactly once, however long it was away.

Protocol v1 resent an event with the frame number it was made with and accepted it only within
1,024 numbers of the newest: after a longer outage every resend was refused, the node reconnected
forever and its call was lost while it showed online. v2 numbers frames as they leave and events
on their own (docs/protocol.md §8).
"""

from __future__ import annotations

import asyncio

from controller.link.nodeclient import NodeClient
from controller.sim.nodes import SimNode
from tests.faults.linkfaults import WAIT_S, firmware, free_port, room_server, smartroom_exe, stored, until
from tests.helpers import node_key, write_room_files

OUTAGE_FRAMES = 1_100  # more than v1's window of 1,024


async def test_a_call_held_through_a_long_outage_is_delivered_exactly_once(tmp_path):
    """The real controller process and the real firmware: the call is made while the controller is
    down, the node goes on working for more than 1,100 frames' worth, then the controller starts."""
    node_port, api_port = free_port(), free_port()
    room, keys = write_room_files(tmp_path, "outage", "plain_tcp = true  # a plain-TCP node: [gateway] plain_tcp\n")
    cfg = firmware("bedside-a", node_port, tmp_path, [{"at_ms": 500, "pin": "call", "press_ms": 100}], speed=10,
                   inputs=[{"name": "call", "kind": "button", "pin": "call"}],
                   i2c=[{"part": "sht3x", "bus": 0, "addr": 68}], reading_ms=20)
    async with SimNode(cfg, tmp_path / "nodes") as node:
        press = await node.wait_for("event", kind="button", src="call", timeout_s=WAIT_S)
        start = node.lines.index(press)
        # The outage: the node keeps measuring (a reading every ~36 ms of node time) with nobody to tell.
        await until(lambda: sum(1 for ln in node.lines[start:] if ln.tag == "reading") >= OUTAGE_FRAMES,
                    f"{OUTAGE_FRAMES} readings made during the outage", timeout_s=60)
        proc = await asyncio.create_subprocess_exec(
            smartroom_exe(), "run", "--config", str(room), "--keys", str(keys), "--db", str(tmp_path / "room.db"),
            "--api-port", str(api_port), "--node-port", str(node_port), "--no-tls", "--no-advertise",
            stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(proc.stdout.readline(), WAIT_S)  # "room outage: API ..." once listening
            acked = await node.wait_for("acked", start=start, timeout_s=WAIT_S)
            # The link stays healthy after the ack: the next heartbeat goes out and nothing is resent.
            await node.wait_for("hb", start=node.lines.index(acked), timeout_s=WAIT_S)
        finally:
            proc.terminate()
            await proc.wait()
    event_no = press.fields["e"]
    assert acked.fields == {"e": event_no}
    assert [ln.fields["e"] for ln in node.lines if ln.tag == "acked"] == [event_no], "acked once"
    assert not [ln for ln in node.lines[node.lines.index(acked):] if ln.tag == "sent"], "resent after its ack"
    events = [d for d in stored(tmp_path / "room.db", "node.event") if d["node"] == "bedside-a"]
    assert [(d["kind"], d["src"], d["e"]) for d in events] == [("button", "call", int(event_no))], "stored once"
    calls = [d for d in stored(tmp_path / "room.db", "call.raised") if d["node"] == "bedside-a"]
    assert [(d["type"], d["input"]) for d in calls] == [("patient_call", "call")]


async def test_resends_after_lost_acks_and_a_long_outage_are_stored_once_each(tmp_path):
    """The issue's repro with a CPython node: one event stored but its ack lost, one made while the
    link was down; 1,100 frame numbers later both are resent (new frames, same event numbers)."""
    async with room_server(tmp_path) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        node = NodeClient("bedside-a", node_key("bedside-a"), boot=7)
        await node.connect(host, port)
        stored_but_unacked = node.event_msg("button", "call")
        await node.send_event(stored_but_unacked)  # stored; say the ack was lost on the way back
        await node.close()
        made_while_down = node.event_msg("button", "cancel")
        node.seq += OUTAGE_FRAMES  # heartbeats and readings of a long outage took these numbers
        await node.connect(host, port)
        first = await node.send_event(node.resend(stored_but_unacked))
        second = await node.send_event(node.resend(made_while_down))
        await node.close()
        await node.connect(host, port)  # the second ack was lost too: once more
        third = await node.send_event(node.resend(made_while_down))
        await node.close()
        stats = server.gateway.stats
        assert stats.rejected == {} and stats.duplicates == 2 and stats.accepted["event"] == 2
    assert (first["e"], second["e"], third["e"]) == (stored_but_unacked["e"], made_while_down["e"], made_while_down["e"])
    assert first["a"] > stored_but_unacked["s"] + OUTAGE_FRAMES, "acked in its new frame"
    events = [(d["e"], d["src"]) for d in stored(tmp_path / "room.db", "node.event")]
    assert events == [(1, "call"), (2, "cancel")]
