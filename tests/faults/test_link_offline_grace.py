"""Issue 12, item 7: a dropped connection is a signal. A node whose connection ends and does not come
back within DROP_GRACE_MS is offline then, well inside the 30 s goal (heartbeat silence, 31 s, stays
the backstop). Time is the room's fake clock: nothing here waits for the grace to pass."""

from __future__ import annotations

from controller.link.nodeclient import NodeClient
from controller.room.supervision import DROP_GRACE_MS
from controller.sim.nodes import SimNode
from tests.faults.linkfaults import WAIT_S, firmware, room_server, stored, until
from tests.helpers import node_key
from tests.roomsim import FakeClock

BEDSIDE = {"inputs": [{"name": "call", "kind": "button", "pin": "call"}]}


def offline_rows(records, node: str) -> list[str]:
    return [r.data["reason"] for r in records if r.kind == "node.offline" and r.data["node"] == node]


async def test_a_node_whose_connection_drops_is_offline_after_the_grace(tmp_path):
    clock = FakeClock()
    async with room_server(tmp_path, clock) as server:
        room = server.controller.room
        port = server.endpoints.node_port
        node = SimNode(firmware("bedside-a", port, tmp_path, [], **BEDSIDE), tmp_path / "nodes")
        await node.start()
        await until(lambda: room.nodes["bedside-a"].online and "bedside-a" in server.gateway.connections,
                    "the node online")
        await node.stop()  # the node dies; the kernel closes its end of the connection
        await until(lambda: "bedside-a" not in server.gateway.connections, "the controller saw the drop")
        lost_ms = clock.ms
        assert room.nodes["bedside-a"].connection_lost_ms == lost_ms

        clock.ms = lost_ms + DROP_GRACE_MS - 1
        assert offline_rows(await server.controller.tick(), "bedside-a") == []
        clock.ms = lost_ms + DROP_GRACE_MS  # at the grace: still given the benefit of the doubt
        assert offline_rows(await server.controller.tick(), "bedside-a") == []
        assert server.controller.room.next_due_ms(clock.ms, server.controller.offline_after_ms) == \
            lost_ms + DROP_GRACE_MS + 1, "the timer task would wake just past the grace"
        clock.ms += 1
        records = await server.controller.tick()
        assert offline_rows(records, "bedside-a") == [f"connection lost, not back within {DROP_GRACE_MS // 1000} s"]
        alarm = [c for c in server.controller.snapshot()["calls"] if c["type"] == "node_offline"]
        assert [c["source"]["node"] for c in alarm] == ["bedside-a"]
        assert DROP_GRACE_MS < server.controller.offline_after_ms < 30_000 + 1_000 + 1, \
            "the grace is well inside the heartbeat backstop"

        # The node comes back (a new boot): online, the alarm clears.
        async with SimNode(firmware("bedside-a", port, tmp_path, [], **BEDSIDE), tmp_path / "nodes"):
            await until(lambda: room.nodes["bedside-a"].online, "the node back online", timeout_s=WAIT_S)
            assert [c for c in server.controller.snapshot()["calls"] if c["type"] == "node_offline"] == []


async def test_a_node_back_within_the_grace_is_never_offline(tmp_path):
    clock = FakeClock()
    async with room_server(tmp_path, clock) as server:
        room = server.controller.room
        port = server.endpoints.node_port
        async with SimNode(firmware("bath", port, tmp_path, [], inputs=[]), tmp_path / "nodes"):
            await until(lambda: "bath" in server.gateway.connections, "the node connected")
            first = server.gateway.connections["bath"]
            first.writer.close()  # the connection breaks (say, a Wi-Fi roam); the node reconnects at once
            await until(lambda: server.gateway.connections.get("bath") not in (None, first), "the node reconnected",
                        timeout_s=WAIT_S)
            assert room.nodes["bath"].connection_lost_ms is None
            clock.ms += DROP_GRACE_MS + 1
            assert offline_rows(await server.controller.tick(), "bath") == []
        # The node process ended: now its connection is gone for good.
        await until(lambda: "bath" not in server.gateway.connections, "the controller saw the drop")
        clock.ms += DROP_GRACE_MS + 1
        records = await server.controller.tick()
        assert offline_rows(records, "bath") == [f"connection lost, not back within {DROP_GRACE_MS // 1000} s"]
        assert room.nodes["bath"].online is False
    assert [r["node"] for r in stored(tmp_path / "room.db", "node.online")] == ["bath"], "no row for the reconnect"


async def test_heartbeat_silence_is_still_the_backstop_for_a_connection_that_stays_open(tmp_path):
    """A path that dies without TCP noticing (power cut at the access point): the connection stays,
    the heartbeats stop, and the node is offline after three missed heartbeats as before."""
    clock = FakeClock()
    async with room_server(tmp_path, clock) as server:
        client = NodeClient("env", node_key("env"))
        await client.connect(server.endpoints.node_host, server.endpoints.node_port)
        clock.ms += server.controller.offline_after_ms
        assert offline_rows(await server.controller.tick(), "env") == []
        clock.ms += 1
        assert offline_rows(await server.controller.tick(), "env") == ["missed 3 heartbeats"]
        await client.close()
