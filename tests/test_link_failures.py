"""The node gateway when things go wrong on its side of the link, in process: a node that stops
reading is dropped after the write timeout (a transport whose buffer never drains, not a wait for
the kernel's buffers to fill); every internal or storage failure is counted, the second as well as
the first; stop() returns only once every connection's handler has finished its clean-up."""

from __future__ import annotations

import asyncio

import pytest

from controller.link import gateway as gw
from controller.link import protocol as p
from controller.link.gateway import NodeGateway
from controller.link.nodeclient import NodeClient
from controller.model import NodeEvent
from controller.service import RoomController
from controller.store import StorageError
from tests.helpers import fed_link, keys_for, node_key, room_config
from tests.roomsim import FakeClock

GUARD_S = 10.0  # a guard only: each step below ends within milliseconds


@pytest.fixture
async def controller(tmp_path):
    config = room_config()
    ctl = RoomController(config, keys_for(config), tmp_path / "room.db", clock=FakeClock(), timers=False)
    await ctl.start()
    yield ctl
    await ctl.stop()


@pytest.fixture
async def gateway(controller):
    gate = NodeGateway(controller)
    gate.port = await gate.start("127.0.0.1", 0)
    yield gate
    await gate.stop()


async def _connected(gateway, node: str = "bedside-a", boot: int = 1) -> NodeClient:
    client = NodeClient(node, node_key(node), boot=boot)
    await client.connect("127.0.0.1", gateway.port)
    return client


async def _until_closed(client: NodeClient) -> None:
    async with asyncio.timeout(GUARD_S):
        while await client.reader.read(1024):
            pass


# ---------------------------------------------------------------------- a node that stops reading
class StuckWriter:
    """A transport that takes the first ``drains_before_stuck`` drains, then never drains again: what
    a node that stopped reading looks like once the kernel's buffers are full. What it was given
    since its last drain is its write buffer; closing it ends its reader, as a real transport does."""

    def __init__(self, drains_before_stuck: int, reader=None) -> None:
        self.frames: list[bytes] = []
        self.left = drains_before_stuck
        self.pending = 0
        self.closed = False
        self.never = asyncio.Event()
        self.reader = reader
        self.transport = self

    def get_extra_info(self, name: str):
        return ("10.0.0.9", 5000) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return self.pending

    def write(self, data: bytes) -> None:
        self.frames.append(data)
        self.pending += len(data)

    async def drain(self) -> None:
        self.left -= 1
        if self.left < 0:
            await self.never.wait()
        self.pending = 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        if self.reader is not None:
            self.reader.connection_lost(None)


def _hello_reader(client: NodeClient):
    return fed_link(p.encode_frame(client.key, client.hello_msg()))   # and then nothing: the node waits


async def test_a_send_past_the_high_mark_to_a_node_that_stopped_reading_drops_it_after_the_write_timeout(
        controller, monkeypatch):
    monkeypatch.setattr(gw, "WRITE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(gw, "WRITE_BUFFER_HIGH", 0)       # every send waits for the node to take it
    gate = NodeGateway(controller)
    client = NodeClient("bedside-a", node_key("bedside-a"))
    reader = _hello_reader(client)
    reader.data_received(p.encode_frame(client.key, client.hb_msg()))    # its heartbeat's ack will not be taken
    writer = StuckWriter(drains_before_stuck=1, reader=reader)       # the welcome is taken, nothing after
    async with asyncio.timeout(GUARD_S):
        await gate._accept(reader, writer, encrypted=False)
    assert writer.closed
    kinds = [p.decode_frame(client.key, f)["t"] for f in writer.frames]
    assert kinds[0] == "welcome" and kinds[-1] == "ack"
    assert gate.connections == {}
    assert controller.room.nodes["bedside-a"].connection_lost_ms == controller.clock(), \
        "the room starts the node's offline grace"
    assert gate.stats.rejected == {}, "a slow node is not a protocol error"


async def test_commands_piling_up_past_the_limit_close_a_node_that_stopped_reading(controller, monkeypatch):
    """Outputs are written without waiting (one slow node must not hold up the others' lights); a node
    whose unsent commands pass WRITE_BUFFER_MAX is closed, and it ends like any lost connection."""
    gate = NodeGateway(controller)
    client = NodeClient("bedside-a", node_key("bedside-a"))
    reader = _hello_reader(client)
    writer = StuckWriter(drains_before_stuck=0, reader=reader)
    welcome_bytes = len(p.encode_frame(client.key, p.welcome(1, 1, 10_000, 0)))
    monkeypatch.setattr(gw, "WRITE_BUFFER_MAX", welcome_bytes + 10)   # the welcome fits; welcome + a command does not
    async with asyncio.timeout(GUARD_S):
        await gate._accept(reader, writer, encrypted=False)
    assert writer.closed
    kinds = [p.decode_frame(client.key, f)["t"] for f in writer.frames]
    assert kinds[0] == "welcome" and kinds[1:] and set(kinds[1:]) == {"cmd"}, \
        "the outputs after the welcome were written, then the node was closed"
    assert gate.connections == {}
    assert controller.room.nodes["bedside-a"].connection_lost_ms == controller.clock()
    assert gate.stats.rejected == {}


async def test_commands_under_the_limit_do_not_close_the_node(controller, monkeypatch):
    gate = NodeGateway(controller)
    client = NodeClient("bedside-a", node_key("bedside-a"))
    reader = _hello_reader(client)
    writer = StuckWriter(drains_before_stuck=0, reader=reader)
    monkeypatch.setattr(gw, "WRITE_BUFFER_MAX", 10_000)
    handler = asyncio.create_task(gate._accept(reader, writer, encrypted=False))
    async with asyncio.timeout(GUARD_S):
        while len(writer.frames) < 2:
            await asyncio.sleep(0.01)
    assert not writer.closed and "bedside-a" in gate.connections
    handler.cancel()
    await asyncio.gather(handler, return_exceptions=True)


async def test_a_send_waits_for_the_write_timeout_and_no_longer(controller, monkeypatch):
    monkeypatch.setattr(gw, "WRITE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(gw, "WRITE_BUFFER_HIGH", 0)
    conn = gw.NodeConnection(NodeGateway(controller), fed_link(), StuckWriter(drains_before_stuck=0))
    async with asyncio.timeout(GUARD_S):
        with pytest.raises(TimeoutError):
            await conn.send_ack(7)
    assert conn.out_seq == 1


async def test_a_send_under_the_high_mark_does_not_wait(controller, monkeypatch):
    monkeypatch.setattr(gw, "WRITE_TIMEOUT_S", 60)
    writer = StuckWriter(drains_before_stuck=0)
    conn = gw.NodeConnection(NodeGateway(controller), fed_link(), writer)
    async with asyncio.timeout(GUARD_S):
        await conn.send_ack(7)                              # a stuck drain would hold it 60 s
    assert len(writer.frames) == 1 and writer.pending < gw.WRITE_BUFFER_HIGH


# ---------------------------------------------------------------------- failures on the controller's side
async def _sessions(gateway, count: int, then, first_boot: int = 1) -> None:
    """``count`` sessions of bedside-a, a new boot each (so each hello is new), each ending in ``then``."""
    for boot in range(first_boot, first_boot + count):
        client = await _connected(gateway, boot=boot)
        await then(client)
        await _until_closed(client)
    async with asyncio.timeout(GUARD_S):
        while gateway.connections:
            await asyncio.sleep(0.01)


async def _send_event(client: NodeClient) -> None:
    await client.send(client.event_msg("button", "call"))


async def _send_second_hello(client: NodeClient) -> None:
    await client.send(client.hello_msg())


async def test_each_internal_error_is_counted_and_the_third_in_a_row_is_an_alarm(gateway, controller, monkeypatch):
    async def broken(ev):
        raise RuntimeError("a bug")

    working = controller.node_event
    monkeypatch.setattr(controller, "node_event", broken)
    await _sessions(gateway, 2, _send_event)
    assert gateway.stats.rejected == {"internal_error": 2}
    assert gateway.stats.undelivered_sessions == {"bedside-a": 2}, "each session ended refused, nothing delivered"
    assert [c["type"] for c in controller.snapshot()["calls"]] == []
    await _sessions(gateway, 1, _send_event, first_boot=3)
    async with asyncio.timeout(GUARD_S):                   # stored as the third session's handler ends
        while not controller.snapshot()["calls"]:
            await asyncio.sleep(0.01)
    [alarm] = controller.snapshot()["calls"]
    assert (alarm["type"], alarm["detail"]) == ("node_cannot_deliver", {"sessions": 3, "reason": "internal_error"})
    # A fourth session gets in, but the node's heartbeat saying "nothing waiting" does not clear the
    # alarm while its sessions keep failing: only a stored event does.
    client = await _connected(gateway, boot=4)
    for _ in range(2):                                     # the second ack follows the first's handling
        hb = client.hb_msg()
        await client.send(hb)
        await client.recv_ack(hb["s"])
    assert [c["type"] for c in controller.snapshot()["calls"]] == ["node_cannot_deliver"]
    monkeypatch.setattr(controller, "node_event", working)                  # the bug is fixed: an event is stored
    ev = client.event_msg("button", "call")
    await client.send(ev)
    await client.recv_ack(ev["s"])
    cleared = [r.data for r in await controller.events_after(0, 1000) if r.kind == "call.cleared"]
    assert cleared == [{"call_id": alarm["id"], "by": "bedside-a delivers again (an event was stored)",
                        "how": "resolved", "at_ms": controller.clock()}]
    await client.close()


async def test_each_protocol_rejection_is_counted_against_the_node_that_proved_itself(gateway):
    await _sessions(gateway, 2, _send_second_hello)
    assert gateway.stats.rejected == {"bad_message": 2}
    assert gateway.stats.undelivered_sessions == {"bedside-a": 2}


async def test_each_event_the_store_refuses_is_counted_and_the_link_stays_up(gateway, controller, monkeypatch):
    async def full(ts_ms, group):
        raise StorageError("disk full")

    monkeypatch.setattr(controller.store, "append_group", full)
    client = await _connected(gateway)  # (the first event is asked of the store; the second takes the fast path)
    for _ in range(2):
        await client.send(client.event_msg("button", "call"))
    hb = client.hb_msg()
    await client.send(hb)
    async with asyncio.timeout(GUARD_S):
        msg = await client.recv()
        while msg["t"] != "ack":
            msg = await client.recv()
    assert msg["a"] == hb["s"], "the refused events were not acked; the heartbeat after them is"
    assert gateway.stats.rejected == {"storage_unavailable": 2}
    assert gateway.stats.accepted["event"] == 0
    await client.close()


async def test_each_session_ended_by_an_unreadable_store_is_counted(gateway, controller, monkeypatch):
    async def unreadable(ev):
        raise StorageError("I/O error")

    monkeypatch.setattr(controller, "is_duplicate", unreadable)
    for boot in (1, 2):                                          # a new boot each time: its hello is new
        client = await _connected(gateway, boot=boot)
        await client.send(client.event_msg("button", "call"))
        await _until_closed(client)
    async with asyncio.timeout(GUARD_S):
        while gateway.connections:
            await asyncio.sleep(0.01)
    assert gateway.stats.rejected == {"storage_unavailable": 2}
    assert gateway.stats.undelivered_sessions == {}, "the storage alarm says it; the node is not to blame"


# ---------------------------------------------------------------------- stopping
async def test_stop_returns_after_every_connection_has_cleaned_up(gateway, controller):
    clients = [await _connected(gateway, node) for node in ("bedside-a", "bath")]
    async with asyncio.timeout(GUARD_S):
        while len(gateway.connections) < 2:
            await asyncio.sleep(0.01)
    await gateway.stop()
    assert gateway.connections == {}
    now = controller.clock()
    assert {n: controller.room.nodes[n].connection_lost_ms for n in ("bedside-a", "bath")} == \
        {"bedside-a": now, "bath": now}
    for client in clients:
        await _until_closed(client)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", gateway.port)


async def test_stop_ends_a_handler_stuck_on_a_node_that_stopped_reading(controller, monkeypatch):
    monkeypatch.setattr(gw, "WRITE_TIMEOUT_S", 60)        # far longer than the guard: only stop() ends it
    monkeypatch.setattr(gw, "WRITE_BUFFER_HIGH", 0)
    gate = NodeGateway(controller)
    await gate.start("127.0.0.1", 0)
    client = NodeClient("bedside-a", node_key("bedside-a"))
    reader = _hello_reader(client)
    writer = StuckWriter(drains_before_stuck=0, reader=reader)
    handler = asyncio.create_task(gate._accept(reader, writer, encrypted=False))
    async with asyncio.timeout(GUARD_S):
        while not writer.frames:                                        # the welcome is stuck in drain
            await asyncio.sleep(0.01)
        await gate.stop()                                               # returns, cancelling it, and raises nothing
    assert handler.done() and writer.closed and gate.connections == {}


async def test_a_refused_first_frame_counts_against_the_node_only_if_its_tag_proves_it(gateway):
    async def old_version(client: NodeClient) -> None:
        await client.send({**client.hello_msg(), "v": 1})                 # another protocol version, our key

    async def forged(client: NodeClient) -> None:
        await client.send_raw(p.encode_frame(bytes(32), {**client.hello_msg(), "v": 1}))   # not bedside-a's key

    async def raw_sessions(then, count: int) -> None:
        for _ in range(count):
            client = NodeClient("bedside-a", node_key("bedside-a"))
            client.reader, client.writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            await then(client)
            await _until_closed(client)

    await raw_sessions(forged, 2)
    assert gateway.stats.rejected == {"bad_message": 2}
    assert gateway.stats.undelivered_sessions == {}, "nobody proved who sent them"
    await raw_sessions(old_version, 2)
    assert gateway.stats.rejected == {"bad_message": 4}
    assert gateway.stats.undelivered_sessions == {"bedside-a": 2}


async def test_the_gateway_listens_on_the_address_it_is_given(gateway):
    assert [sock.getsockname()[0] for sock in gateway._server.sockets] == ["127.0.0.1"]


async def test_a_connections_end_says_how_it_ended():
    with pytest.raises(gw._ConnectionEnded, match=r"^closed by peer$"):
        await fed_link(eof=True).next_frame()
    silent = fed_link()
    silent.set_deadline(0.01)
    with pytest.raises(gw._ConnectionEnded, match=r"^silent for 0\.0 s$"):
        await silent.next_frame()
