"""The gateway's pipeline (controller/link/gateway.py): a node's frames are read and handled while
its earlier events wait for their group commit; each event is acked only after the commit that
stores it, and acks leave in the order the events came. Frames are cut out of the byte stream
however it was split into reads."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.link import protocol as p
from controller.link.gateway import NodeGateway
from controller.link.nodeclient import NodeClient
from controller.service import RoomController
from controller.store import LogRecord, StorageError
from tests.helpers import keys_for, node_key
from tests.roomsim import FakeClock

GUARD_S = 10.0  # a guard only: each step below ends within milliseconds
NODE = "bedside-a"


@pytest.fixture
async def controller(tmp_path, config):
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


class HeldCommits:
    """The store's group commit, held at will: ``log`` tells what was stored (after the real commit
    returned) and what was acked (as the gateway built each ack), in the order it happened."""

    def __init__(self, controller: RoomController, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, int]] = []
        self.groups: list[list[int]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.entered = asyncio.Event()
        real_append, real_ack = controller.store.append_group, p.ack_frame

        async def append_group(ts_ms, group):
            group = list(group)
            self.entered.set()
            await self.open.wait()
            await real_append(ts_ms, group)
            events = [node_event[2] for _, node_event, _ in group if node_event is not None]
            self.groups.append(events)
            self.log += [("stored", e) for e in events]

        def ack_frame(key, sid, seq, acked, event_no=None, origin_boot=None):
            if event_no is not None:
                self.log.append(("acked", event_no))
            return real_ack(key, sid, seq, acked, event_no, origin_boot)

        monkeypatch.setattr(controller.store, "append_group", append_group)
        monkeypatch.setattr(p, "ack_frame", ack_frame)

    def forget(self) -> None:
        self.log.clear()
        self.groups.clear()

    def hold(self) -> None:
        self.open.clear()
        self.entered.clear()

    def release(self) -> None:
        self.open.set()


@pytest.fixture
async def commits(controller, monkeypatch):
    held = HeldCommits(controller, monkeypatch)
    yield held
    held.release()  # (a test that failed holding one must not hold up the controller's stop)


def quiet(client: NodeClient, e: int | None = None) -> dict:
    """An event that changes no state (a sensor reporting it works): stored, acked, nothing else."""
    return client.event_msg("fault", "sht3x", val=0, e=e)


async def _welcomed(gateway: NodeGateway, client: NodeClient) -> None:
    await client.connect("127.0.0.1", gateway.port)
    first = quiet(client)  # the node's first event asks the store for its highest number: the general path
    await client.send_event(first)


async def _welcomed_with_commits_held(gateway: NodeGateway, commits: HeldCommits) -> NodeClient:
    """A node past its first event (the general path), with the next commits held until released."""
    client = NodeClient(NODE, node_key(NODE))
    await _welcomed(gateway, client)
    commits.forget()
    commits.hold()
    return client


async def _acks(client: NodeClient, count: int) -> list[int]:
    out: list[int] = []
    async with asyncio.timeout(GUARD_S):
        while len(out) < count:
            msg = await client.recv()
            if msg["t"] == "ack":
                out.append(msg["e"])
    return out


async def _until(predicate) -> None:
    async with asyncio.timeout(GUARD_S):
        while not predicate():
            await asyncio.sleep(0.005)


def _stored_event_numbers(controller: RoomController) -> list[int]:
    db = sqlite3.connect(controller.store.path)
    try:
        return [e for (e,) in db.execute("SELECT e FROM node_events WHERE node = ? ORDER BY e", (NODE,))]
    finally:
        db.close()


# ---------------------------------------------------------------------- acks: in order, after the commit
async def test_frames_are_handled_while_earlier_events_wait_and_acked_in_order_after_their_commit(
        gateway, controller, commits):
    client = await _welcomed_with_commits_held(gateway, commits)
    first = quiet(client)
    await client.send(first)
    async with asyncio.timeout(GUARD_S):
        await commits.entered.wait()                     # the first event's commit is under way, held
    more = [quiet(client) for _ in range(4)]
    await client.send_raw(b"".join(p.encode_frame(client.key, m) for m in more))
    conn = gateway.connections[NODE]
    await _until(lambda: len(conn._pipeline) == 5)       # read and queued behind the held commit
    assert commits.log == [], "nothing is acked before its commit"
    commits.release()
    assert await _acks(client, 5) == [first["e"]] + [m["e"] for m in more]
    assert commits.groups == [[first["e"]], [m["e"] for m in more]], \
        "the four read while the first was stored went together in the next group"
    for i, (what, e) in enumerate(commits.log):
        if what == "acked":
            assert ("stored", e) in commits.log[:i], f"event {e} acked before the commit that stores it"
    assert gateway.stats.accepted["event"] == 6 and not conn._pipeline
    await client.close()


async def test_a_frame_that_fails_verification_mid_pipeline_is_refused_and_the_ones_before_it_are_acked(
        gateway, controller, commits):
    client = await _welcomed_with_commits_held(gateway, commits)
    good = [quiet(client) for _ in range(3)]
    forged = quiet(client)
    after = quiet(client)
    frames = [p.encode_frame(client.key, m) for m in good]
    frames.append(p.encode_frame(bytes(32), forged))     # the same body, signed with another key
    frames.append(p.encode_frame(client.key, after))
    await client.send_raw(b"".join(frames))
    async with asyncio.timeout(GUARD_S):
        await commits.entered.wait()
    commits.release()
    assert await _acks(client, 3) == [m["e"] for m in good]
    async with asyncio.timeout(GUARD_S):
        assert await client.reader.read() == b"", "the connection is closed at the forged frame"
    assert gateway.stats.rejected == {"bad_mac": 1}
    assert _stored_event_numbers(controller) == [1] + [m["e"] for m in good], \
        "what came before the forged frame is stored; it and what followed it are not"
    assert ("stored", forged["e"]) not in commits.log and ("stored", after["e"]) not in commits.log


async def test_a_connection_closed_mid_pipeline_loses_nothing_and_the_resends_are_duplicates(
        gateway, controller, commits):
    client = await _welcomed_with_commits_held(gateway, commits)
    pending = [quiet(client) for _ in range(4)]
    await client.send_raw(b"".join(p.encode_frame(client.key, m) for m in pending))
    conn = gateway.connections[NODE]
    await _until(lambda: len(conn._pipeline) == 4)
    client.writer.transport.abort()                      # gone, with four events unacked
    commits.release()
    await _until(lambda: NODE not in gateway.connections)
    await _until(lambda: len(_stored_event_numbers(controller)) == 5)
    # The node kept all four (none was acked) and resends them on its next connection: each is
    # acked again as a duplicate, none stored twice.
    await client.connect("127.0.0.1", gateway.port)
    resent = [client.resend(m) for m in pending]
    await client.send_raw(b"".join(p.encode_frame(client.key, m) for m in resent))
    assert await _acks(client, 4) == [m["e"] for m in pending]
    assert _stored_event_numbers(controller) == [1, 2, 3, 4, 5]
    assert gateway.stats.duplicates == 4
    await client.close()


async def test_an_event_the_store_refuses_mid_pipeline_is_not_acked_and_the_others_are(
        gateway, controller, commits, monkeypatch):
    client = await _welcomed_with_commits_held(gateway, commits)
    first = quiet(client)
    await client.send(first)
    async with asyncio.timeout(GUARD_S):
        await commits.entered.wait()
    refused_group = [quiet(client) for _ in range(2)]
    await client.send_raw(b"".join(p.encode_frame(client.key, m) for m in refused_group))
    conn = gateway.connections[NODE]
    await _until(lambda: len(conn._pipeline) == 3)
    real = controller.store.append_group
    calls = []

    async def refuse_the_next(ts_ms, group):
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("disk full")
        await real(ts_ms, group)

    monkeypatch.setattr(controller.store, "append_group", refuse_the_next)
    commits.release()                                    # the first goes on; the pair's group is refused
    await _until(lambda: len(calls) == 1 and not conn._pipeline)
    last = quiet(client)
    await client.send(last)
    assert await _acks(client, 2) == [first["e"], last["e"]], "the refused pair is not acked; the rest are"
    assert gateway.stats.rejected["storage_unavailable"] == 2
    assert NODE in gateway.connections, "a storage failure does not end the node's connection"
    await client.close()


# ---------------------------------------------------------------------- framing
payloads = st.lists(st.binary(min_size=p.MIN_FRAME_BYTES, max_size=120), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(payloads=payloads, cuts=st.lists(st.integers(0, 800), max_size=12))
def test_frames_split_anywhere_come_out_whole_and_in_order(payloads, cuts):
    stream = b"".join(struct.pack(">H", len(x)) + x for x in payloads)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    splitter = p.FrameSplitter()
    out = []
    for a, b in zip(bounds, bounds[1:]):
        out += splitter.feed(stream[a:b])
    assert out == payloads and splitter.partial == 0 and splitter.ended() is None


def test_a_frame_fed_one_byte_at_a_time_comes_out_once_at_its_last_byte():
    frame = p.encode_frame(bytes(32), {"v": 2, "t": "hb"})
    splitter = p.FrameSplitter()
    for i in range(len(frame) - 1):
        assert splitter.feed(frame[i:i + 1]) == []
        assert splitter.partial == i + 1
    assert splitter.feed(frame[-1:]) == [frame[2:]]
    assert splitter.ended() is None


@pytest.mark.parametrize("length, reason", [
    (p.MIN_FRAME_BYTES - 1, "malformed_frame"), (p.MIN_FRAME_BYTES, None),
    (p.MAX_FRAME_BYTES, None), (p.MAX_FRAME_BYTES + 1, "oversized_frame")])
def test_a_length_out_of_bounds_ends_the_stream_after_the_frames_before_it(length, reason):
    good = struct.pack(">H", 40) + bytes(40)
    splitter = p.FrameSplitter()
    out = splitter.feed(good + struct.pack(">H", length) + bytes(length) + good)
    if reason is None:
        assert out == [bytes(40), bytes(length), bytes(40)]
        return
    assert out[0] == bytes(40) and len(out) == 2 and isinstance(out[1], p.ProtocolError)
    assert out[1].reason == reason
    assert splitter.feed(good) == [], "nothing after a bad length is looked at"


def test_where_a_stream_was_cut_is_told():
    frame = p.encode_frame(bytes(32), {"v": 2, "t": "hb"})
    for cut, said in ((0, None), (1, "inside a length prefix"), (2, f"0/{len(frame) - 2} bytes"),
                      (10, f"8/{len(frame) - 2} bytes")):
        splitter = p.FrameSplitter()
        splitter.feed(frame[:cut])
        assert (splitter.ended() is None) if said is None else said in splitter.ended()


# ---------------------------------------------------------------------- the stream's JSON, encoded once
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(record_id=st.integers(0, 2**40), ts_ms=st.integers(0, 2**45), kind=st.text(),
       data=st.dictionaries(st.text(), json_values, max_size=4), encoded=st.booleans())
def test_a_records_json_text_is_its_json_encoded(record_id, ts_ms, kind, data, encoded):
    from controller.store.events import data_json

    record = LogRecord(record_id, ts_ms, kind, data, data_json(data) if encoded else None)
    assert record.json_text() == json.dumps(record.to_json(), separators=(",", ":"))
    assert record == LogRecord(record_id, ts_ms, kind, data), "the encoded data is not part of its value"


# ---------------------------------------------------------------------- a group's rows, one statement a table
@settings(max_examples=60, deadline=None)
@given(datas=st.lists(st.dictionaries(st.text(), json_values, max_size=4), min_size=1, max_size=6),
       kinds=st.lists(st.text(min_size=1), min_size=6, max_size=6),
       marks=st.lists(st.tuples(st.sampled_from(["a", "b", "c\"d"]), st.integers(1, 2**31 - 1),
                                st.integers(1, 2**31 - 1)), max_size=5))
def test_a_group_is_stored_as_given_text_for_text(tmp_path_factory, datas, kinds, marks):
    from controller.store import SeqMark, Store
    from controller.store.events import data_json

    async def run() -> None:
        store = Store(tmp_path_factory.mktemp("store") / "room.db")
        await store.open()
        try:
            await store.save_mark(SeqMark("a", 5, 100))
            first = store.reserve_ids(len(datas))
            records = [LogRecord(first + i, 7, kinds[i], d, data_json(d) if i % 2 else None)
                       for i, d in enumerate(datas)]
            group = [([r], ("n", 1, r.id), SeqMark(*marks[i]) if i < len(marks) else None)
                     for i, r in enumerate(records)]
            await store.append_group(7, group)
            assert await store.read_log(0, 100) == records
            db = sqlite3.connect(store.path)
            try:
                assert [t for (t,) in db.execute("SELECT data FROM log ORDER BY id")] == [data_json(d) for d in datas]
                assert list(db.execute("SELECT node, boot, e, log_id FROM node_events ORDER BY e")) == \
                    [("n", 1, r.id, r.id) for r in records]
            finally:
                db.close()
            want = {"a": (5, 100)}
            for node, boot, seq in marks[:len(records)]:
                if node not in want or (boot, seq) > want[node]:
                    want[node] = (boot, seq)
            assert {n: (m.boot, m.max_seq) for n, m in (await store.load_marks()).items()} == want
        finally:
            await store.close()

    asyncio.run(run())
