"""Issue 16, item 5: a node's unacknowledged events survive power loss (the flash journal).

The real firmware in MicroPython with a directory as its flash, killed with SIGKILL (power lost:
no clean-up runs), then booted again against the real controller: every event it had not got an
ack for is resent once as the same event — its original boot as `ob` (docs/protocol.md §9) — and
stored exactly once. The controller's side of §9 is checked with the CPython node.
"""

from __future__ import annotations

from controller.link import gateway
from controller.link.nodeclient import NodeClient
from controller.sim.nodes import SimNode
from tests.faults.linkfaults import WAIT_S, firmware, free_port, room_server, stored, until
from tests.helpers import node_key

BEDSIDE = {"inputs": [{"name": "call", "kind": "button", "pin": "call"},
                      {"name": "cancel", "kind": "button", "pin": "cancel"}],
           "indicator": {"pin": "led"}}


def node_events(tmp_path) -> list[tuple[int, int, str]]:
    return [(d["boot"], d["e"], d["src"]) for d in stored(tmp_path / "room.db", "node.event")
            if d["node"] == "bedside-a"]


async def kill(node: SimNode) -> None:
    """Power lost: SIGKILL, so nothing the firmware would do on the way out happens."""
    assert node.proc is not None
    node.proc.kill()
    await node.wait_exit(WAIT_S)


async def test_calls_made_while_the_link_is_down_outlive_a_kill_and_are_stored_once(tmp_path):
    nodes = tmp_path / "nodes"
    steps = [{"at_ms": 300, "pin": "call", "press_ms": 100}, {"at_ms": 900, "pin": "cancel", "press_ms": 100},
             {"at_ms": 1500, "pin": "call", "press_ms": 100}]
    # Boot 1: nobody listens on the controller's port, so nothing is ever acked.
    async with SimNode(firmware("bedside-a", free_port(), tmp_path, steps, speed=5, **BEDSIDE), nodes) as node:
        assert (await node.wait_for("boot", timeout_s=WAIT_S)).fields["boot"] == "1"
        await node.wait_for("event", e="3", timeout_s=WAIT_S)
        await node.wait_for("indicator", pattern="undelivered", timeout_s=WAIT_S)
        await kill(node)
    assert not [ln for ln in node.lines if ln.tag == "acked"]
    # Power was lost while a fourth record was being written: half of it is on flash.
    journal = tmp_path / "state" / "bedside-a" / "journal"
    with journal.open("ab") as f:
        f.write(bytes([0xA5, 0x45, 0x00, 0x30]) + b'[1,4,"button"')
    async with room_server(tmp_path) as server:
        port = server.endpoints.node_port
        cfg = firmware("bedside-a", port, tmp_path, [], speed=5, **BEDSIDE)
        async with SimNode(cfg, nodes) as node:
            boot = await node.wait_for("boot", timeout_s=WAIT_S)
            assert (boot.fields["boot"], boot.fields["held"], boot.fields["torn"]) == ("2", "3", "1")
            await node.wait_for("indicator", pattern="undelivered", timeout_s=WAIT_S)
            for e in ("1", "2", "3"):
                await node.wait_for("acked", e=e, ob="1", timeout_s=WAIT_S)
            # delivered: the light shows what the controller commands (the call was received)
            await node.wait_for("indicator", pattern="received", timeout_s=WAIT_S)
            sent = [ln.fields for ln in node.lines if ln.tag == "sent"]
            await kill(node)
        assert [(f["e"], f.get("ob")) for f in sent] == [("1", "1"), ("2", "1"), ("3", "1")], "each resent once"
        # Boot 3: everything was acked, so nothing is held and nothing is resent.
        async with SimNode(cfg, nodes) as node:
            boot = await node.wait_for("boot", timeout_s=WAIT_S)
            await node.wait_for("cmd", c="indicator", timeout_s=WAIT_S)  # welcomed: the light's state follows
            await node.wait_for("hb", timeout_s=WAIT_S)
        stats = server.gateway.stats
        assert stats.rejected == {} and stats.duplicates == 0 and stats.accepted["event"] == 3
    assert (boot.fields["boot"], boot.fields["held"], boot.fields["torn"]) == ("3", "0", "0")
    assert not [ln for ln in node.lines if ln.tag == "sent"], "boot 3 resent something"
    assert node_events(tmp_path) == [(1, 1, "call"), (1, 2, "cancel"), (1, 3, "call")], "each stored once, as boot 1's"
    assert {d["frame_boot"] for d in stored(tmp_path / "room.db", "node.event")} == {2}
    calls = [(d["type"], d["input"]) for d in stored(tmp_path / "room.db", "call.raised") if d["node"] == "bedside-a"]
    assert calls[0] == ("patient_call", "call")


async def test_an_event_stored_whose_ack_never_left_is_not_stored_twice(tmp_path, monkeypatch):
    """Stored, then the power failed before the ack reached the node: the resend after boot is a
    duplicate of the stored event (same node, boot, e), acked and not stored again."""
    acks = {"events": False}
    send_ack = gateway.NodeConnection.send_ack

    async def lossy_send_ack(self, seq, event_no=None, origin_boot=None):
        if event_no is not None and not acks["events"]:
            return  # stored; the ack is lost on the way back
        await send_ack(self, seq, event_no, origin_boot)

    monkeypatch.setattr(gateway.NodeConnection, "send_ack", lossy_send_ack)
    nodes = tmp_path / "nodes"
    async with room_server(tmp_path) as server:
        press = [{"at_ms": 300, "pin": "call", "press_ms": 100}]
        cfg = firmware("bedside-a", server.endpoints.node_port, tmp_path, press, speed=5, **BEDSIDE)
        async with SimNode(cfg, nodes) as node:
            await node.wait_for("event", kind="button", timeout_s=WAIT_S)
            await until(lambda: node_events(tmp_path), "the press stored")
            await kill(node)
        acks["events"] = True
        cfg = firmware("bedside-a", server.endpoints.node_port, tmp_path, [], speed=5, **BEDSIDE)
        async with SimNode(cfg, nodes) as node:
            boot = await node.wait_for("boot", timeout_s=WAIT_S)
            await node.wait_for("acked", e="1", ob="1", timeout_s=WAIT_S)
        assert server.gateway.stats.duplicates >= 1 and server.gateway.stats.accepted["event"] == 1
    assert (boot.fields["boot"], boot.fields["held"]) == ("2", "1")
    assert node_events(tmp_path) == [(1, 1, "call")], "stored once"
    calls = [d for d in stored(tmp_path / "room.db", "call.raised") if d["node"] == "bedside-a"]
    assert len(calls) == 1


async def test_the_controller_names_a_kept_event_by_its_own_boot(tmp_path):
    """§9 at the controller: (node, ob, e) is the identity of a kept event; the ack names ob."""
    key = node_key("bedside-a")
    async with room_server(tmp_path) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        old = NodeClient("bedside-a", key, boot=7)
        await old.connect(host, port)
        stored_before = old.event_msg("button", "call")
        await old.send_event(stored_before)  # stored in boot 7 (its ack reached the node, or not)
        never_sent = old.event_msg("button", "cancel")  # made in boot 7, power lost before sending
        await old.close()
        new = NodeClient("bedside-a", key, boot=8)
        await new.connect(host, port)
        again = await new.send_event({**stored_before, "b": 8, "s": new.next_seq(), "ob": 7})
        fresh = new.event_msg("button", "call")  # boot 8's e=1: another event than boot 7's e=1
        fresh_ack = await new.send_event(fresh)
        kept = await new.send_event({**never_sent, "b": 8, "s": new.next_seq(), "ob": 7})
        kept_again = await new.send_event({**never_sent, "b": 8, "s": new.next_seq(), "ob": 7})
        await new.send({**fresh, "s": new.next_seq(), "e": 9, "ob": 8})  # ob must be an earlier boot
        await until(lambda: server.gateway.stats.rejected.get("bad_message"), "ob = b refused")
        await new.close()
        stats = server.gateway.stats
        assert stats.duplicates == 2 and stats.accepted["event"] == 3
    assert (again["e"], again["ob"]) == (1, 7) and (kept["e"], kept["ob"]) == (2, 7) and kept_again["ob"] == 7
    assert "ob" not in fresh_ack and fresh_ack["e"] == 1
    assert node_events(tmp_path) == [(7, 1, "call"), (8, 1, "call"), (7, 2, "cancel")]


async def test_a_journal_that_cannot_keep_events_is_a_technical_alarm_until_it_can(tmp_path):
    """The node's `fault` from `journal` (1: the flash failed, 5: full) raises a technical alarm
    (its events would not outlive a power loss), and its end (val 0) clears it."""
    async with room_server(tmp_path) as server:
        node = NodeClient("bedside-a", node_key("bedside-a"), boot=2)
        await node.connect(server.endpoints.node_host, server.endpoints.node_port)
        await node.send_event(node.event_msg("fault", "journal", 5))
        raised = [d for d in stored(tmp_path / "room.db", "call.raised") if d["node"] == "bedside-a"]
        assert [(d["type"], d["input"], d["detail"]) for d in raised] == \
            [("sensor_fault", "sensor:journal", {"sensor": "journal", "code": 5})]
        room = server.controller.room
        assert room.call_from("bedside-a", "sensor:journal", "sensor_fault") is not None, "active"
        await node.send_event(node.event_msg("fault", "journal", 0))
        await node.close()
        assert room.call_from("bedside-a", "sensor:journal", "sensor_fault") is None, "cleared"
    cleared = [d for d in stored(tmp_path / "room.db", "call.cleared")]
    assert [d["call_id"] for d in cleared] == [raised[0]["call_id"]]
