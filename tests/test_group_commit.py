"""The event path at speed: group commit (one transaction for inputs that arrive together, each
answered only after it, all failing together), output commands only where they change, one timer
per frame, and the fixed-shape fast paths agreeing with the general ones."""

from __future__ import annotations

import asyncio
import sqlite3
import struct

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.link import gateway as gw
from controller.link import protocol as p
from controller.link.nodeclient import NodeClient
from controller.model import Heartbeat, Hello, NodeEvent
from controller.room import CallNotFound, Room
from controller.room.supervision import DROP_GRACE_MS
from controller.service import RoomController
from tests.helpers import fed_link, keys_for, node_key, room_config, sse_events
from tests.roomsim import FakeClock

BURST = 30


@pytest.fixture
async def controller(tmp_path, config):
    c = RoomController(config, keys_for(config), tmp_path / "room.db", clock=FakeClock(), timers=False)
    await c.start()
    yield c
    await c.stop()


def counting_groups(controller, fail: bool = False) -> list[list]:
    """Wrap the store's group commit: record each group's (node, boot, e) keys, optionally fail it."""
    real = controller.store.append_group
    groups: list[list] = []

    async def append_group(ts_ms, group):
        group = list(group)
        groups.append([node_event for _, node_event, _ in group])
        if fail:
            raise sqlite3.OperationalError("database or disk is full")
        await real(ts_ms, group)

    controller.store.append_group = append_group
    return groups


def button(node: str, seq: int, src: str = "call", e: int | None = None) -> NodeEvent:
    """A press in frame ``seq``; its event number is ``e`` (a resend's new frame keeps it), else ``seq``."""
    return NodeEvent(node, 1, seq, seq if e is None else e, "button", src, 1, 0)


def quiet(node: str, seq: int) -> NodeEvent:
    """An event that changes no state: a sensor reporting it works, with no fault of it active."""
    return NodeEvent(node, 1, seq, seq, "fault", "sht3x", 0, 0)


async def test_events_arriving_together_share_one_transaction_and_return_after_it(controller, tmp_path):
    groups = counting_groups(controller)
    returned: list[int] = []
    durable_when_returned: list[bool] = []

    async def one(seq: int) -> None:
        await controller.node_event(quiet("good", seq))
        db = sqlite3.connect(tmp_path / "room.db")  # a second reader sees it: it was committed first
        durable_when_returned.append(db.execute("SELECT 1 FROM node_events WHERE e = ?", (seq,)).fetchone()
                                     is not None)
        db.close()
        returned.append(seq)

    await asyncio.gather(*(one(seq) for seq in range(1, BURST + 1)))
    assert len(groups) == 1 and len(groups[0]) == BURST
    assert all(durable_when_returned) and sorted(returned) == list(range(1, BURST + 1))
    stored = await controller.events_after(0, 1000)
    assert [r.data["seq"] for r in stored] == list(range(1, BURST + 1))
    assert [r.id for r in stored] == list(range(1, BURST + 1)) and controller.cursor == BURST


async def test_each_input_of_a_group_is_decided_on_the_state_the_ones_before_it_left(controller):
    counting_groups(controller)
    first, second = await asyncio.gather(controller.node_event(button("bedside-a", 1)),
                                         controller.node_event(button("bedside-a", 2)))
    assert [r.kind for r in first] == ["node.event", "call.raised"]
    assert [r.kind for r in second] == ["node.event", "call.repeated"]
    assert second[1].data == {"call_id": first[1].data["call_id"], "presses": 2, "at_ms": second[1].ts_ms}


async def test_a_refusal_in_a_group_is_that_inputs_answer_alone(controller):
    groups = counting_groups(controller)
    refused, stored = await asyncio.gather(controller.acknowledge("c-none", "Nurse Kim"),
                                           controller.node_event(button("bath", 1, "cord")),
                                           return_exceptions=True)
    assert isinstance(refused, CallNotFound)
    assert [r.kind for r in stored] == ["node.event", "call.raised"] and len(groups) == 1


async def test_a_failed_group_fails_every_input_in_it_and_nothing_of_it_is_kept(controller):
    await controller.node_event(button("bedside-a", 1))  # a call before the failure stays
    await controller.node_heartbeat(Heartbeat("bedside-a", 1, 2, 0, 0, 50_000, 0, -61, 3900))
    before_cursor, before_calls = controller.cursor, dict(controller.room.calls)
    sub = controller.subscribe()
    counting_groups(controller, fail=True)
    results = await asyncio.gather(*(controller.node_event(button("bath", seq, "cord")) for seq in range(1, 6)),
                                   controller.node_event(button("bedside-a", 3)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    # none of it was published, stored, or kept in the room (it was decided and applied ahead of the store)
    assert sub.get_nowait(100) == []
    assert controller.cursor == before_cursor and controller.room.cursor == before_cursor
    assert controller.room.calls.keys() == before_calls.keys()
    assert next(iter(controller.room.calls.values())).presses == 1
    assert controller.room.nodes["bedside-a"].rssi == -61  # what heartbeats set survives the rebuild
    assert not await controller.is_duplicate(button("bath", 1, "cord"))

    del controller.store.append_group  # the store works again: the resend is stored
    records = await controller.node_event(button("bath", 1, "cord"))
    assert [r.kind for r in records] == ["node.event", "call.raised"]
    assert records[0].id > before_cursor + 7  # ids a reader may have seen in the failed group are not reused
    assert [r.id for r in sub.get_nowait(100)] == [r.id for r in records]
    sub.close()


async def test_a_failed_group_keeps_what_the_log_does_not_hold(controller):
    """The rebuild after a failed group keeps a dropped connection's time (the node still goes
    offline after the grace) and when supervision started (never-connected alarms still come)."""
    await controller.node_hello(Hello("bath", 1, 1, "fw", "hw", ("button",), 10_000, 7), "peer")
    controller.node_connection_lost("bath")
    lost_ms, started_ms = controller.room.nodes["bath"].connection_lost_ms, controller.room.started_ms
    assert lost_ms is not None and started_ms is not None
    counting_groups(controller, fail=True)
    with pytest.raises(sqlite3.OperationalError):
        await controller.node_event(button("bedside-a", 1))
    assert controller.room.nodes["bath"].connection_lost_ms == lost_ms
    assert controller.room.started_ms == started_ms
    del controller.store.append_group
    controller.clock.ms += DROP_GRACE_MS + 1
    await controller.tick()
    assert not controller.room.nodes["bath"].online
    assert any(c.type == "node_offline" and c.node == "bath" for c in controller.room.calls.values())


async def test_a_resend_while_the_original_is_in_flight_is_stored_once(controller):
    groups = counting_groups(controller)
    ev = button("bedside-a", 1)
    assert not await controller.is_duplicate(ev)  # as the gateway asks: the boot's highest stored e is now known
    first = asyncio.ensure_future(controller.node_event(ev))
    await asyncio.sleep(0)  # the original is queued, not yet stored
    assert not first.done()
    resend = button("bedside-a", 2, e=1)  # on a new connection, in a new frame: the same event
    duplicate, again = await asyncio.gather(controller.is_duplicate(resend), controller.node_event(resend))
    assert duplicate is True and again == await first
    assert sum(len(g) for g in groups) == 1
    assert len(await controller.events_after(0, 100)) == 2  # node.event + call.raised, once


async def test_heartbeat_marks_ride_with_the_group_commit(controller):
    groups = counting_groups(controller)
    await asyncio.gather(controller.node_event(quiet("good", 1)),
                         controller.node_heartbeat(Heartbeat("bath", 1, 9, 0, 0, 50_000, 0)))
    assert len(groups) == 1
    assert (await controller.store.load_marks())["bath"].max_seq == 9


# ------------------------------------------------------------------ outputs
async def _connected(server, node: str) -> NodeClient:
    client = NodeClient(node, node_key(node))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    return client


async def _until_ack(client: NodeClient) -> list[tuple[str, str]]:
    """Commands received before the ack of a heartbeat sent now (frames arrive in order)."""
    hb = client.hb_msg()
    await client.send(hb)
    cmds = []
    while (msg := await asyncio.wait_for(client.recv(), 5))["t"] != "ack" or msg["a"] != hb["s"]:
        if msg["t"] == "cmd":
            cmds.append((msg["c"], msg["p"]))
    return cmds


async def test_output_commands_go_only_to_nodes_whose_light_or_tone_changes(server):
    bedside, bath, good = [await _connected(server, n) for n in ("bedside-a", "bath", "good")]
    for client in (bedside, bath, good):  # the state on connecting
        await _until_ack(client)
    tasks_before = len(asyncio.all_tasks())
    ev = bath.event_msg("button", "cord")
    await bath.send(ev)
    assert ("indicator", "received") in await _until_ack(bath)
    assert len(asyncio.all_tasks()) == tasks_before  # no task per connection per commit
    assert await _until_ack(bedside) == [("tone", "high")]  # the bedside unit sounds the tone
    assert await _until_ack(good) == []  # its light and tone did not change: nothing sent
    works = good.event_msg("fault", "sht3x", 0)  # a sensor reporting it works changes no state
    await good.send(works)
    await good.recv_ack(works["s"])
    assert await _until_ack(bedside) == [] and await _until_ack(bath) == []
    for client in (bedside, bath, good):
        await client.close()


def test_indicators_in_one_pass_agree_with_each_nodes_own():
    from tests.test_checkpoints import BUTTONS, play

    for n in range(1, len(BUTTONS)):
        room, _ = play([("press", b) for b in BUTTONS[:n]] + [("ack", 0), ("presence", ("door", "pir"), True)])
        lights = room.indicators()
        for node in room.config.nodes:
            assert lights.get(node, "off") == room.indicator_for(node)


# ------------------------------------------------------------------ framing
async def _read(data: bytes, eof: bool, timeout_s: float = 0.05) -> bytes:
    link = fed_link(data, eof=eof)
    link.set_deadline(timeout_s)
    return await link.next_frame()


async def test_read_frame_one_deadline_per_frame():
    frame = p.encode_frame(bytes(32), {"v": 1, "t": "hb"})
    assert await _read(frame, eof=False) == frame[2:]
    with pytest.raises(gw._ConnectionEnded, match="silent"):
        await _read(b"", eof=False)
    with pytest.raises(gw._ConnectionEnded, match="closed"):
        await _read(b"", eof=True)
    with pytest.raises(p.ProtocolError, match="length prefix"):
        await _read(frame[:1], eof=True)
    with pytest.raises(p.ProtocolError, match="not completed in time"):
        await _read(frame[:10], eof=False)
    with pytest.raises(p.ProtocolError, match="8/"):
        await _read(frame[:10], eof=True)
    with pytest.raises(p.ProtocolError) as info:
        await _read(struct.pack(">H", p.MAX_FRAME_BYTES + 1), eof=False)
    assert info.value.reason == "oversized_frame"


# ------------------------------------------------------------------ fast paths agree with the general ones
ints = st.one_of(st.integers(-(2**33), 2**33), st.sampled_from([0, 1, -1, p.INT_MAX, p.INT_MAX + 1, p.INT_MIN,
                                                                   p.INT_MIN - 1]))
scalars = st.one_of(ints, st.booleans(), st.none(), st.floats(allow_nan=False), st.text(max_size=6),
                    st.sampled_from(["button", "fall", "bedside-a", "a\"b", "x\n"]))
int_maps = st.dictionaries(st.text(max_size=4) | st.sampled_from(["temp_mdegc", "a\\b"]), ints | scalars, max_size=3)


def _outcome(obj):
    try:
        return p.parse_node_message(obj)
    except p.ProtocolError as exc:
        return exc.reason


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["reading", "event"]),
       v=st.sampled_from([p.PROTOCOL_VERSION] * 3 + [p.PROTOCOL_VERSION - 1, True]),
       node=st.sampled_from(["env", "bedside-a", "Bad", ""]) | scalars, boot=ints | scalars, seq=ints, e=ints | scalars,
       at_ms=ints | scalars, m=int_maps | scalars, k=st.sampled_from(list(p.EVENT_KINDS)) | scalars,
       src=st.sampled_from(["call", "aux"]) | scalars, val=ints | scalars, x=st.none() | int_maps | scalars)
def test_fixed_shape_paths_decide_as_the_general_path(kind, v, node, boot, seq, e, at_ms, m, k, src, val, x):
    if kind == "reading":
        obj = {"v": v, "t": "reading", "n": node, "b": boot, "s": seq, "at_ms": at_ms, "m": m}
    else:
        obj = {"v": v, "t": "event", "n": node, "b": boot, "s": seq, "e": e, "k": k, "src": src, "val": val,
               "at_ms": at_ms}
        if x is not None:
            obj["x"] = x
    fast = _outcome(obj)
    general = _outcome({**obj, "zz": 0})  # another shape: the general path
    assert fast == general
    assert type(fast) is type(general)


@given(sid=ints, seq=ints, acked=ints, event_no=st.none() | ints)
def test_direct_ack_encoding_is_the_canonical_one(sid, seq, acked, event_no):
    key = bytes(range(32))
    try:
        expected = p.encode_frame(key, p.ack(sid, seq, acked, event_no))
    except p.ProtocolError as exc:
        with pytest.raises(p.ProtocolError, match=exc.reason):
            p.ack_frame(key, sid, seq, acked, event_no)
        return
    assert p.ack_frame(key, sid, seq, acked, event_no) == expected


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.sampled_from([("press", ("bath", "cord")), ("fault", "env", 2), ("fault", "env", 0),
                                       ("reading", "env", "batt_v", 3.0), ("reading", "env", "temp_c", 30.0),
                                       ("reading", "env", "temp_c", 22.0), ("reading", "env", "co2_ppm", 5.0),
                                       ("reading", "env", "batt_v", 4.1), ("time", 61), ("time", 601)]),
                      max_size=12),
       node=st.sampled_from(["env", "bath", "stranger"]),
       measure=st.sampled_from(["temp_c", "rh_pct", "co2_ppm", "batt_v", "noise_db", "pressure_pa", "lux"]),
       value=st.floats(allow_nan=True) | st.sampled_from([21.0, 24.0, 3.45, 3.9, 6.0, 1100.0, 250.0]))
def test_a_reading_said_not_to_matter_decides_nothing(steps, node, measure, value):
    from tests.test_checkpoints import play

    room, _ = play(steps)
    if not room.reading_matters(node, measure, value):
        assert room.decide_reading(node, measure, value, 10**13) == []


def test_quiet_readings_take_the_quiet_path():
    room = Room(room_config())
    assert not room.reading_matters("env", "temp_c", 22.5)
    assert room.reading_matters("env", "temp_c", 24.01)  # over the patient room's 24 °C
    assert room.reading_matters("env", "batt_v", 3.44)  # under the low-battery level
    assert room.reading_matters("env", "lux", 300.0)  # no band known: decided in full


# ------------------------------------------------------------------ the stream
async def test_a_burst_committed_together_reaches_the_stream_whole_and_in_order(server):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.tokens['nurse']}"}) as http:
        async with http.get(server.endpoints.api_url + "/api/v1/events/stream") as resp:
            stream = sse_events(resp)
            start = server.controller.cursor
            await asyncio.gather(*(server.controller.node_event(quiet("good", seq))
                                   for seq in range(1, BURST + 1)))
            got = []
            async for event_id, event in stream:
                got.append((event_id, event["data"]["seq"]))
                if len(got) == BURST:
                    break
    assert got == [(start + i, i) for i in range(1, BURST + 1)]


async def test_latest_readings_are_found_per_measure(controller):
    await controller.store.add_readings([(1, "env", "temp_c", 21.0), (3, "env", "temp_c", 22.0),
                                         (2, "env", "temp_c", 23.0), (5, "bath", "rh_pct", 40.0)])
    assert await controller.store.latest_readings() == {"temp_c": (3, "env", 22.0), "rh_pct": (5, "bath", 40.0)}


async def test_the_live_streams_batched_writes_show_each_role_its_own_view(server):
    """Records sent live (several in one write) hide the patient from facilities, as the backlog does."""
    from tests.test_privacy import _admit_and_call, _names_jane

    async def until_call(resp) -> list[dict]:
        events = []
        async for _, event in sse_events(resp):
            events.append(event)
            if event["kind"] == "call.raised":
                return events

    async with aiohttp.ClientSession(server.endpoints.api_url) as http:
        fac, nurse = [await http.get("/api/v1/events/stream",  # live: what is stored from now on
                                     headers={"Authorization": f"Bearer {server.tokens[role]}"})
                      for role in ("facilities", "nurse")]
        await _admit_and_call(server)
        seen = {"facilities": await until_call(fac), "nurse": await until_call(nurse)}
        fac.close()
        nurse.close()
    assert [e["kind"] for e in seen["facilities"]] == [e["kind"] for e in seen["nurse"]] \
        == ["bed.patient", "node.event", "call.raised"]
    assert not _names_jane(seen["facilities"]) and _names_jane(seen["nurse"])


async def test_a_failing_outputs_listener_does_not_stop_the_others_or_the_commit(controller, caplog):
    """An outputs listener that raises (a bug in one sink) is logged; the next listener still runs,
    the event is stored and answered, and the next group commits as well."""
    seen: list[int] = []

    def broken() -> None:
        raise RuntimeError("a bug in one sink")

    controller.on_outputs_changed(broken)
    controller.on_outputs_changed(lambda: seen.append(controller.cursor))
    records = await controller.node_event(NodeEvent("bedside-a", 1, 2, 1, "button", "call", 1, 0, {}))
    assert records and seen == [records[-1].id]
    assert "an outputs listener failed" in caplog.text
    more = await controller.node_event(NodeEvent("bath", 1, 2, 1, "button", "cord", 1, 0, {}))
    assert more and seen[-1] == more[-1].id
