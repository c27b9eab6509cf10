"""Issue 12, item 1: a node that keeps connecting but cannot deliver is a technical alarm, not
"online", and a flapping connection does not add a log row per reconnect."""

from __future__ import annotations

import asyncio

from controller.link import protocol as p
from controller.link.gateway import CANNOT_DELIVER_SESSIONS
from controller.link.nodeclient import NodeClient
from controller.room.supervision import DROP_GRACE_MS
from controller.sim.nodes import SimNode
from tests.faults.linkfaults import WAIT_S, firmware, room_server, stored, until
from tests.helpers import node_key
from tests.roomsim import FakeClock


def alarms(server, ctype: str = "node_cannot_deliver") -> list[dict]:
    return [c for c in server.controller.snapshot()["calls"] if c["type"] == ctype]


def node_json(server, node: str) -> dict:
    return next(n for n in server.controller.snapshot()["nodes"] if n["id"] == node)


async def refused(client: NodeClient) -> None:
    """The controller closes the connection without a welcome."""
    assert await asyncio.wait_for(client.reader.read(), WAIT_S) == b""
    await client.close()


async def test_a_node_refused_at_every_hello_becomes_a_technical_alarm(tmp_path):
    """Real firmware whose boot counter went back (reflashed, new flash): every hello is stale_boot.
    Its call cannot reach the room, so the room says so, and does not show the node online."""
    async with room_server(tmp_path) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        before = NodeClient("bedside-a", node_key("bedside-a"), boot=5)  # the node as the room last knew it
        await before.connect(host, port)
        await before.close()
        cfg = firmware("bedside-a", port, tmp_path, [{"at_ms": 200, "pin": "call", "press_ms": 100}],
                       inputs=[{"name": "call", "kind": "button", "pin": "call"}])
        async with SimNode(cfg, tmp_path / "nodes") as node:  # a fresh state file: boot 1
            await node.wait_for("event", kind="button", timeout_s=WAIT_S)
            alarm = (await until(lambda: alarms(server), "a cannot-deliver alarm"))[0]
            state = node_json(server, "bedside-a")
        stats = server.gateway.stats
        assert stats.rejected["stale_boot"] >= CANNOT_DELIVER_SESSIONS
        assert stats.undelivered_sessions["bedside-a"] >= CANNOT_DELIVER_SESSIONS
    assert alarm["source"] == {"node": "bedside-a", "input": "link"} and alarm["clears"] == "condition"
    assert alarm["detail"]["reason"] == "stale_boot" and alarm["detail"]["sessions"] == CANNOT_DELIVER_SESSIONS
    assert (state["state"], state["online"]) == ("cannot_deliver", False)
    assert len(stored(tmp_path / "room.db", "node.online")) == 1, "one row: the node as the room knew it"


async def test_the_alarm_comes_at_the_nth_session_and_clears_when_the_node_delivers(tmp_path):
    """A node still on protocol v1 after the controller's upgrade: its hellos are refused as bad
    messages, but their tags prove who sent them, so the refusals count against that node."""
    async with room_server(tmp_path) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        old = NodeClient("bedside-a", node_key("bedside-a"))
        for session in range(1, CANNOT_DELIVER_SESSIONS + 1):
            old.reader, old.writer = await asyncio.open_connection(host, port)
            await old.send(old.hello_msg() | {"v": 1})
            await refused(old)
            await until(lambda: server.gateway.stats.undelivered_sessions["bedside-a"] == session,
                        f"session {session} counted")
            if session < CANNOT_DELIVER_SESSIONS:
                assert alarms(server) == [], f"an alarm after {session} sessions"
        alarm = (await until(lambda: alarms(server), "the alarm at the last session"))[0]
        assert alarm["source"]["node"] == "bedside-a" and alarm["detail"]["reason"] == "bad_message"
        assert server.gateway.stats.rejected == {"bad_message": CANNOT_DELIVER_SESSIONS}
        assert node_json(server, "bedside-a")["state"] == "cannot_deliver"
        # Upgraded: its first stored event shows it delivers again.
        new = NodeClient("bedside-a", node_key("bedside-a"), boot=2)
        await new.connect(host, port)
        assert alarms(server) != [], "a welcome alone proves nothing"
        await new.send_event(new.event_msg("button", "call"))
        assert alarms(server) == [] and node_json(server, "bedside-a")["state"] == "online"
        await new.close()
    cleared = stored(tmp_path / "room.db", "call.cleared")
    assert [d["by"] for d in cleared] == ["bedside-a delivers again (an event was stored)"]


async def test_a_flapping_connection_adds_no_log_row_per_reconnect(tmp_path):
    clock = FakeClock()
    async with room_server(tmp_path, clock) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        node = NodeClient("bath", node_key("bath"))
        for _ in range(10):  # reconnects, each well within the grace
            await node.connect(host, port)
            await node.close()
            await until(lambda: "bath" not in server.gateway.connections, "the controller saw the close")
            clock.ms += DROP_GRACE_MS // 2
        assert [r.kind for r in await server.controller.tick() if r.data.get("node") == "bath"] == []
        clock.ms += DROP_GRACE_MS // 2 + 1  # and now it stays away past the grace
        assert [r.kind for r in await server.controller.tick()] == ["node.offline", "call.raised"]
        await node.connect(host, port)
        await node.close()
    rows = [r["node"] for r in stored(tmp_path / "room.db", "node.online")]
    assert rows == ["bath", "bath"], "one row when it came, one when it came back after going offline"
