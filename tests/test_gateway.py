"""Node gateway over real TCP on loopback: acceptance rules, acks after storage, duplicates."""

from __future__ import annotations

import asyncio
import sqlite3
import struct

import pytest

from controller.link import protocol as p
from controller.link.nodeclient import NodeClient
from controller.runner import RoomServer
from tests.helpers import node_key


async def connected(server, node="bedside-a", boot=1) -> NodeClient:
    client = NodeClient(node, node_key(node), boot=boot)
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    return client


WAIT_S = 10.0  # a guard only: the controller closes a bad connection within milliseconds


async def closed_by_controller(client: NodeClient) -> bool:
    """True when the controller closes the connection (EOF) instead of answering."""
    try:
        while True:
            await asyncio.wait_for(client.recv(), WAIT_S)
    except (asyncio.IncompleteReadError, ConnectionError):
        return True


async def good_node_still_works(server, client: NodeClient) -> None:
    await asyncio.wait_for(client.send_event(client.event_msg("button", "call")), 5)


async def test_hello_welcome_event_ack_and_indicator(server):
    client = NodeClient("bedside-a", node_key("bedside-a"), boot=4)
    welcome = await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    assert welcome["hb_ms"] == 10000 and welcome["sid"] == client.nonce
    # Outputs follow the room state: nothing active -> reassurance light and in-room tone off.
    first = [await client.recv(), await client.recv()]
    assert [(m["t"], m["c"], m["p"]) for m in first] == [("cmd", "indicator", "off"), ("cmd", "tone", "off")]

    ev = client.event_msg("button", "call", at_ms=1234)
    await client.send(ev)
    msgs = [await client.recv() for _ in range(3)]
    assert {"t": "ack", "a": ev["s"], "e": ev["e"]}.items() <= next(m for m in msgs if m["t"] == "ack").items()
    cmds = [(m["c"], m["p"]) for m in msgs if m["t"] == "cmd"]
    assert cmds == [("indicator", "received"), ("tone", "medium")]

    calls = server.controller.snapshot()["calls"]
    assert [(c["type"], c["source"], c["bed"]) for c in calls] == [
        ("patient_call", {"node": "bedside-a", "input": "call"}, "A")]
    await client.close()


async def test_event_is_durable_before_its_ack(server, tmp_path):
    client = await connected(server)
    ev = client.event_msg("button", "call")
    await client.send(ev)
    await client.recv_ack(ev["s"])
    # A second, independent reader of the database file already sees it: the ack followed the commit.
    db = sqlite3.connect(tmp_path / "room.db")
    rows = db.execute("SELECT node, boot, e FROM node_events").fetchall()
    db.close()
    assert rows == [("bedside-a", 1, ev["e"])]
    await client.close()


async def test_duplicate_event_is_acked_but_stored_once(server):
    client = await connected(server)
    ev = client.event_msg("button", "call")
    await client.send(ev)
    await client.recv_ack(ev["s"])
    await client.close()

    # The node did not see the ack (say): it reconnects and resends the same (boot, e) in a new frame.
    again = NodeClient("bedside-a", node_key("bedside-a"), boot=1)
    again.seq = client.seq
    await again.connect(server.endpoints.node_host, server.endpoints.node_port)
    ack = await again.send_event(again.resend(ev))
    assert ack["a"] > ev["s"] and server.gateway.stats.duplicates == 1
    events = await server.controller.events_after(0, 100)
    assert [(e.data["e"], e.data["seq"]) for e in events if e.kind == "node.event"] == [(ev["e"], ev["s"])]
    assert len(server.controller.snapshot()["calls"]) == 1
    await again.close()


async def test_an_event_resent_in_an_old_frame_is_a_replay(server):
    """v2: a frame's s must grow, events included; a resend goes in a new frame (v1 allowed old s)."""
    client = await connected(server)
    hb = client.hb_msg()
    await client.send(hb)
    await client.recv_ack(hb["s"])
    await client.send(client.event_msg("button", "call", seq=hb["s"] - 1))
    assert await closed_by_controller(client)
    assert server.gateway.stats.rejected == {"replayed_seq": 1}
    assert server.controller.snapshot()["calls"] == []


async def test_event_numbers_name_events_and_frames_only_carry_them(server):
    """Two events of one boot with the same e are one event, whatever frames carry them."""
    client = await connected(server)
    first = client.event_msg("button", "call")
    await client.send_event(first)
    other = client.event_msg("button", "cancel")  # e = 2: a new event although its frame came later
    await client.send_event(other)
    await client.send_event(client.event_msg("button", "call", e=first["e"]))  # e = 1 again: a duplicate
    assert server.gateway.stats.duplicates == 1 and server.gateway.stats.accepted["event"] == 2
    await client.close()


def _frame_with_length(length: int, payload: bytes) -> bytes:
    return struct.pack(">H", length) + payload


BAD_INPUTS = {
    "oversized_frame": lambda c: _frame_with_length(p.MAX_FRAME_BYTES + 1, b"x" * 40),
    "malformed_frame": lambda c: _frame_with_length(40, b"not json at all!" + bytes(24)),
    "bad_mac": lambda c: p.encode_frame(bytes(32), c.event_msg("button", "call")),
    "bad_message": lambda c: p.encode_frame(c.key, {**c.base("event"), "k": "explode", "src": "x", "val": 1,
                                                    "at_ms": 0}),
    "node_mismatch": lambda c: p.encode_frame(node_key("bath"), {**c.event_msg("button", "call"), "n": "bath"}),
    "stale_boot": lambda c: p.encode_frame(c.key, {**c.hb_msg(), "b": c.boot - 1}),
    "replayed_seq": lambda c: p.encode_frame(c.key, c.hb_msg() | {"s": 1}),
}


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
async def test_bad_input_is_rejected_and_only_that_connection_closes(server, reason):
    good = await connected(server, "good")
    bad = await connected(server, "bedside-a", boot=5)
    await bad.send_raw(BAD_INPUTS[reason](bad))
    assert await closed_by_controller(bad)
    assert server.gateway.stats.rejected == {reason: 1}
    await good_node_still_works(server, good)
    assert not any(c["source"]["node"] == "bedside-a" for c in server.controller.snapshot()["calls"])
    await good.close()


async def test_unknown_node_and_hello_required(server):
    good = await connected(server, "good")
    stranger = NodeClient("stranger", bytes(32))
    await stranger.connect(server.endpoints.node_host, server.endpoints.node_port, expect_welcome=False)
    assert await closed_by_controller(stranger)
    impatient = NodeClient("bedside-a", node_key("bedside-a"))
    impatient.reader, impatient.writer = await asyncio.open_connection(server.endpoints.node_host,
                                                                       server.endpoints.node_port)
    await impatient.send(impatient.event_msg("button", "call"))
    assert await closed_by_controller(impatient)
    assert server.gateway.stats.rejected == {"unknown_node": 1, "hello_required": 1}
    await good_node_still_works(server, good)
    await good.close()


async def test_connection_ending_inside_a_frame_is_malformed(server):
    client = await connected(server)
    frame = p.encode_frame(client.key, client.event_msg("button", "call"))
    await client.send_raw(frame[: len(frame) // 2])
    client.writer.write_eof()
    assert await closed_by_controller(client)
    assert server.gateway.stats.rejected == {"malformed_frame": 1}
    assert server.controller.snapshot()["calls"] == []


async def test_replay_rules_survive_a_controller_restart(tmp_path, config, keys):
    db = tmp_path / "room.db"
    async with RoomServer(config, keys, db, api_port=0, node_port=0) as srv:
        client = await connected(srv, boot=3)
        hb = client.hb_msg()
        await client.send(hb)
        await client.recv_ack(hb["s"])
        await client.close()
    async with RoomServer(config, keys, db, api_port=0, node_port=0) as srv:
        old_boot = NodeClient("bedside-a", node_key("bedside-a"), boot=2)
        await old_boot.connect(srv.endpoints.node_host, srv.endpoints.node_port, expect_welcome=False)
        assert await closed_by_controller(old_boot)
        replay = NodeClient("bedside-a", node_key("bedside-a"), boot=3)  # hello with seq 1 again
        await replay.connect(srv.endpoints.node_host, srv.endpoints.node_port, expect_welcome=False)
        assert await closed_by_controller(replay)
        assert srv.gateway.stats.rejected == {"stale_boot": 1, "replayed_seq": 1}


async def test_reconnect_replaces_the_older_connection(server):
    first = await connected(server)
    second = NodeClient("bedside-a", node_key("bedside-a"), boot=1)
    second.seq = 10
    await second.connect(server.endpoints.node_host, server.endpoints.node_port)
    assert await closed_by_controller(first)
    await good_node_still_works(server, second)
    await second.close()


async def test_readings_are_stored_and_shown(server):
    client = await connected(server, "env")
    await client.send(client.reading_msg(1000, temp_mdegc=22150, rh_mpct=45210, co2_ppm=640))
    hb = client.hb_msg()  # acks are in order: once the hb is acked, the reading was handled
    await client.send(hb)
    await client.recv_ack(hb["s"])
    env = server.controller.snapshot()["environment"]
    assert (env["temp_c"]["value"], env["rh_pct"]["value"], env["co2_ppm"]["value"]) == (22.15, 45.21, 640)
    await server.controller._flush_readings()
    assert await server.controller.store.count_readings() == 3
    await client.close()


async def test_store_failure_means_no_ack_and_the_resend_is_stored(server, monkeypatch):
    real_append = server.controller.store.append_group
    failures = []

    async def failing_once(*args, **kwargs):
        failures.append(1)
        if len(failures) == 2:  # the first commit is the hello's node.online; fail the event's
            raise sqlite3.OperationalError("database or disk is full")
        return await real_append(*args, **kwargs)

    monkeypatch.setattr(server.controller.store, "append_group", failing_once)
    client = NodeClient("bedside-a", node_key("bedside-a"))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    ev = client.event_msg("button", "call")
    await client.send(ev)
    # Only the hello's node.online was stored; the event failed: no ack, connection closed.
    assert await closed_by_controller(client)
    assert server.gateway.stats.rejected == {"internal_error": 1}
    again = NodeClient("bedside-a", node_key("bedside-a"))
    again.seq = client.seq
    await again.connect(server.endpoints.node_host, server.endpoints.node_port)
    await again.send_event(again.resend(ev))
    assert [c["source"]["node"] for c in server.controller.snapshot()["calls"]] == ["bedside-a"]
    await again.close()


async def test_a_commit_commands_only_the_nodes_whose_outputs_change(server, monkeypatch):
    """The room's lights and tone are worked out once per commit and only the connections whose
    light (or, when the tone changes, every connection) differ are commanded: a call at one bed
    does not go over every node in the room."""
    from controller.link.gateway import NodeConnection

    shown: list[str] = []
    real_show = NodeConnection.show

    def spy(self, indicator, tone):
        shown.append(self.node)
        real_show(self, indicator, tone)

    monkeypatch.setattr(NodeConnection, "show", spy)
    clients = {n: await connected(server, n) for n in ("bedside-a", "good", "env", "wearable-a")}
    everyone = sorted(clients)

    async def press(node: str, inp: str) -> list[str]:
        shown.clear()
        await asyncio.wait_for(clients[node].send_event(clients[node].event_msg("button", inp)), 5)
        return sorted(shown)  # the sync runs in the commit, before the ack goes out

    # The tone goes from off to medium: every connection is commanded once.
    assert await press("bedside-a", "call") == everyone
    # The same call pressed again changes nothing any node shows.
    assert await press("bedside-a", "call") == []
    # A second call of the same priority: the tone stays, one light changes.
    assert await press("good", "call") == ["good"]
    # A node welcomed again is sent the room by its own sync; the sync after that goes over all.
    await clients["env"].close()
    clients["env"] = await connected(server, "env", boot=2)
    assert await press("wearable-a", "pendant") == everyone
    # Cancelled in the room: every light and the tone go off.
    assert await press("bedside-a", "cancel") == everyone
    for client in clients.values():
        await client.close()
