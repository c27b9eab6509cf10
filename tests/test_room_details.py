"""Details the other tests let slip (found by mutation testing, docs/testing.md): what the refusals
say, whose "I'm OK" counts, the timer task's next deadline, nodes the room file does not name, the
builders of the controller's own frames, and the sequence mark of a heartbeat across a restart."""

from __future__ import annotations

import asyncio

import pytest

from controller.link import protocol as p
from controller.link.gateway import NodeConnection, NodeGateway
from controller.link.nodeclient import NodeClient
from controller.model import Heartbeat
from controller.room import CallAlreadyAcknowledged, CallNotFound, CancelAtOrigin, ClearsItself, UnknownBed
from controller.room.config import parse_room
from controller.runner import RoomServer
from controller.service import RoomController
from tests.helpers import fed_link, keys_for, node_key, room_config
from tests.roomsim import RULES_DOC, RoomSim, rules_config
from tests.test_protocol_vectors import VECTORS


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


# ---------------------------------------------------------------------- what refusals say (the API shows it)
async def test_refusals_name_the_call_the_nurse_and_what_to_do(room):
    with pytest.raises(CallNotFound, match=r"^no active call with id 'nope'$"):
        await room.c.acknowledge("nope", "Nurse Kim")
    await room.press("bath", "cord")
    bath = room.call("bath_emergency")
    await room.c.acknowledge(bath["id"], "Nurse Kim")
    with pytest.raises(CallAlreadyAcknowledged) as acked:
        await room.c.acknowledge(bath["id"], "Nurse Lee")
    assert acked.value.message == f"call '{bath['id']}' was already acknowledged by Nurse Kim at {room.clock.ms}"
    with pytest.raises(CancelAtOrigin) as refused:
        await room.c.clear(bath["id"], "Nurse Lee")
    # docs/call-model.md quotes this sentence
    assert refused.value.message == ("a bathroom emergency call is cancelled only at its point of origin: "
                                     "press the cancel button in the room")
    await room.event("env", "fault", "sht3x", 2)
    with pytest.raises(ClearsItself) as itself:
        await room.c.clear(room.call("sensor_fault")["id"], "Tech Ana")
    assert itself.value.message == "a sensor fault alarm clears itself when the sensor reports plausible values again"
    with pytest.raises(UnknownBed, match=r"^no bed 'Z' in room 4b-12 \(beds: A, B\)$"):
        await room.c.set_fall_risk("Z", True, "Nurse Kim")


def test_protocol_errors_carry_reason_and_detail():
    with pytest.raises(p.ProtocolError) as info:
        p.verify_tag(bytes(32), b"{}", bytes(32))
    assert (str(info.value), info.value.reason, info.value.detail) == ("bad_mac: tag does not verify", "bad_mac",
                                                                        "tag does not verify")


# ---------------------------------------------------------------------- whose "I'm OK" and "never mind" count
def _two_bed_room():
    doc = {**RULES_DOC, "nodes": {**RULES_DOC["nodes"],
                                  "ok-a": {"bed": "A", "inputs": {"ok": "im_ok", "cancel": "patient_cancel"}},
                                  "ok-b": {"bed": "B", "inputs": {"ok": "im_ok", "cancel": "patient_cancel"}},
                                  "wearable-b": {"bed": "B", "inputs": {"pendant": "patient_call"}},
                                  "loose": {"inputs": {"ok": "im_ok", "cancel": "patient_cancel"}}}}
    return parse_room(doc, "two-beds.toml")


@pytest.mark.parametrize("who, clears", [("ok-a", True), ("ok-b", False), ("loose", False)])
async def test_im_ok_counts_from_the_fallen_patients_bed_only(tmp_path, who, clears):
    async with RoomSim(_two_bed_room(), tmp_path / "room.db") as room:
        await room.press("door", "code")                     # listed above the fall: the search goes on
        await room.event("wearable-a", "fall", "accel")      # bed A's wearable
        await room.advance(10)
        await room.press(who, "ok")
        assert ("fall" not in room.types()) == clears
        assert "code_call" in room.types(), "I'm OK touches fall calls only"


async def test_never_mind_takes_back_the_own_beds_routine_calls_only(tmp_path):
    async with RoomSim(_two_bed_room(), tmp_path / "room.db") as room:
        await room.press("wearable-a", "pendant")            # bed A
        await room.press("wearable-b", "pendant")            # bed B
        await room.press("bath", "cord")                     # no bed: an emergency anyway
        await room.advance(3)
        await room.press("ok-a", "cancel")
        assert [(c["type"], c["bed"]) for c in room.calls()] == [("bath_emergency", None), ("patient_call", "B")]
        [cleared] = await room.log("call.cleared")
        assert (cleared.data["how"], cleared.data["by"], cleared.data["at_ms"]) == \
            ("patient_cancel", "patient cancelled (ok-a/cancel)", room.clock.ms)
        await room.press("loose", "cancel")                  # a node of no bed takes back nothing of others
        assert len(room.calls()) == 2


async def test_a_bed_pad_repeating_its_level_changes_nothing(room):
    await room.presence("bedside-a", "pad", True)
    await room.presence("bedside-a", "pad", True)
    await room.presence("bedside-a", "pad", False)
    await room.presence("bedside-a", "pad", False)
    assert [r.data["present"] for r in await room.log("presence.changed")] == [True, False]


# ---------------------------------------------------------------------- the timer task's next deadline
OFFLINE_AFTER_MS = 31_000  # 3 x 10 s heartbeats + 1 s (docs/protocol.md §3)


def _next(room: RoomSim) -> int | None:
    return room.c.room.next_due_ms(room.clock.ms, OFFLINE_AFTER_MS)


async def test_next_deadline_is_the_earliest_of_each_kind(room):
    t0 = room.clock.ms
    first_check_in = RULES_DOC["supervision"]["first_check_in_s"] * 1000
    assert _next(room) == t0 + first_check_in + 1, "an idle room: only its nodes' first check-in is due"
    await room.presence("bath", "pir", True)
    assert _next(room) == t0 + 1_200_000                               # bathroom dwell, 20 min
    await room.reading("env", temp_mdegc=25_000)
    assert _next(room) == t0 + 600_000                                 # environment, 10 min
    await room.hello("door")
    assert _next(room) == t0 + OFFLINE_AFTER_MS + 1                    # offline once silent for more than 31 s
    await room.press("bedside-a", "call")
    call = room.call("patient_call")
    await room.c.acknowledge(call["id"], "Nurse Kim")
    await room.heartbeat("door")
    await room.advance(20)
    await room.heartbeat("door")                                       # door now due at t0 + 51.001 s
    await room.c.silence_tone("Nurse Kim")
    assert _next(room) == room.clock.ms + 31_001
    await room.press("bath", "cord")                                   # high: escalates in 30 s
    assert _next(room) == room.clock.ms + 30_000
    await room.advance(30)                                             # escalated: next level in 30 s
    assert _next(room) == room.clock.ms + 1_001                        # ... but door falls silent first
    await room.hello("door")
    assert _next(room) == room.clock.ms + 30_000


async def test_a_silence_ending_is_a_deadline_the_timer_task_wakes_for(room):
    await room.press("bedside-a", "call")
    await room.c.acknowledge(room.call("patient_call")["id"], "Nurse Kim")   # reminder in 180 s
    await room.c.silence_tone("Nurse Kim")
    assert _next(room) == room.clock.ms + 120_000
    await room.advance(120)
    assert _next(room) == room.clock.ms + 60_000


async def test_a_node_on_its_own_check_in_interval_is_due_on_it(tmp_path, monkeypatch):
    from tests.test_room_rules import _local_config

    async with RoomSim(_local_config(monkeypatch), tmp_path / "room.db") as room:
        await room.c.local_online("wired", "gpio 1", "pi")               # checks in every 60 s
        assert _next(room) == room.clock.ms + 3 * 60_000 + 1_000 + 1
        await room.advance(181.001)
        assert room.types() == ["node_offline"]
        assert _next(room) == room.clock.ms + 120_000, "an offline node adds no deadline; its alarm does"


# ---------------------------------------------------------------------- supervision details
async def test_offline_is_decided_once_and_never_for_an_unknown_or_offline_node(room):
    now = room.clock.ms
    assert room.c.room.decide_offline("stranger", "gone", now) == []
    assert room.c.room.decide_offline("bath", "gone", now) == [], "never online"
    await room.hello("bath")
    [offline, raised] = room.c.room.decide_offline("bath", "connection lost", now)
    assert (offline.kind, offline.data) == ("node.offline", {"node": "bath", "reason": "connection lost", "at_ms": now})
    assert (raised.kind, raised.data["detail"]) == ("call.raised", {"reason": "connection lost"})


async def test_a_keyed_node_missing_from_the_room_file_is_still_tracked(room):
    room.c.room.note_heartbeat(Heartbeat("spare-7", 1, 2, 0, 0, 1000, 0, -70, 3700), room.clock.ms)
    room.c.room._apply_offline({"node": "spare-8", "at_ms": room.clock.ms})
    nodes = {n["id"]: n for n in room.c.snapshot()["nodes"]}
    assert (nodes["spare-7"]["batt_mv"], nodes["spare-7"]["last_seen_ms"]) == (3700, room.clock.ms)
    assert nodes["spare-8"]["online"] is False


async def test_a_controller_fault_is_its_own_alarm_and_says_what_came_back(room):
    await room.c.system_fault("bluetooth", True, {"error": "no adapter"})
    await room.c.system_fault("modem", True, {"error": "gone"})
    assert sorted(c["source"]["input"] for c in room.calls()) == ["system:bluetooth", "system:modem"]
    await room.c.system_fault("bluetooth", False)
    [cleared] = await room.log("call.cleared")
    assert (cleared.data["by"], cleared.data["how"]) == ("bluetooth works again", "resolved")


# ---------------------------------------------------------------------- the link
def test_the_controllers_frames_are_the_vectors():
    objs = {c["name"]: c["obj"] for c in VECTORS["valid"]}
    assert p.welcome(123456789, 1, 10_000, 1719999999) == objs["welcome"]
    assert p.welcome(1, 1, 10_000, 2**31 + 5)["time_ms"] == 5, "time_ms is the wall clock modulo 2^31"
    assert p.ack(123456789, 2, 7, 2) == objs["ack-event"]
    assert p.ack(123456789, 3, 8) == objs["ack-heartbeat"]
    assert p.command(123456789, 3, "indicator", p="acknowledged") == objs["cmd-indicator"]
    assert p.command(5, 4, "config", hb_ms=5000) == objs["cmd-config"]
    for name, pattern in (("indicator", "blinking"), ("tone", "loud")):
        with pytest.raises(ValueError):
            p.command(1, 1, name, p=pattern)


async def test_the_idle_limit_is_three_heartbeats_and_the_grace(tmp_path):
    config = room_config(heartbeat_ms=10_000)
    controller = RoomController(config, keys_for(config), tmp_path / "room.db", timers=False)

    class Writer:
        def get_extra_info(self, name):
            return ("10.0.0.7", 40000)

    for grace_s, expected_s in ((1.0, 31.0), (2.5, 32.5)):
        conn = NodeConnection(NodeGateway(controller, idle_grace_s=grace_s), fed_link(), Writer())
        assert (conn.idle_timeout_s(), conn.peer) == (expected_s, "10.0.0.7:40000")


async def test_a_heartbeats_sequence_mark_survives_a_restart(tmp_path, config, keys):
    db = tmp_path / "room.db"
    async with RoomServer(config, keys, db, api_port=0, node_port=0) as srv:
        client = NodeClient("bedside-a", node_key("bedside-a"), boot=2)
        await client.connect(srv.endpoints.node_host, srv.endpoints.node_port)
        client.seq = 40
        hb = client.hb_msg()                                  # s = 41, above the hello's 1
        await client.send(hb)
        await client.recv_ack(hb["s"])
        await client.close()
    async with RoomServer(config, keys, db, api_port=0, node_port=0) as srv:
        replay = NodeClient("bedside-a", node_key("bedside-a"), boot=2)
        replay.seq = 40                                       # a hello with the heartbeat's seq
        await replay.connect(srv.endpoints.node_host, srv.endpoints.node_port, expect_welcome=False)
        assert await replay.reader.read() == b""
        assert srv.gateway.stats.rejected == {"replayed_seq": 1}


@pytest.mark.parametrize("change, detail", [
    (lambda m: m.pop("n"), "missing field 'n'"),
    (lambda m: m.update(caps=[1]), "caps must be a list of strings"),
    (lambda m: m.update(nonce=-1), "field 'nonce'=-1 out of range"),
    (lambda m: m.update(fw=1.5), "$.fw: float is not allowed on the wire"),
])
def test_a_bad_hello_is_a_bad_message_that_says_why(change, detail):
    hello = {"v": p.PROTOCOL_VERSION, "t": "hello", "n": "bedside-a", "b": 1, "s": 1, "fw": "1", "hw": "x", "caps": [],
             "hb_ms": 10_000, "nonce": 7}
    change(hello)
    with pytest.raises(p.ProtocolError) as info:
        p.parse_node_message(hello)
    assert (info.value.reason, info.value.detail) == ("bad_message", detail)


def test_a_heartbeat_carries_its_radio_battery_and_inputs():
    case = next(c for c in VECTORS["valid"] if c["name"] == "heartbeat")
    hb = p.parse_node_message(case["obj"])
    assert (hb.rssi, hb.batt_mv, dict(hb.state), hb.heap, hb.up_ms) == (-61, 3710, {"call": 0, "pir": 1}, 40960, 10000)
    with pytest.raises(p.ProtocolError) as info:
        p.parse_node_message({**case["obj"], "state": {"call": "on"}})
    assert (info.value.reason, info.value.detail) == ("bad_message", "field 'state' must map names to integers")


def test_a_frame_shorter_than_its_length_says_so():
    case = next(c for c in VECTORS["invalid"] if c["name"] == "length-mismatch")
    frame = bytes.fromhex(case["frame_hex"])
    said = int.from_bytes(frame[:2], "big")          # the vector's own length prefix, not the code's reading
    assert said != len(frame) - 2
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(bytes(32), frame)
    assert info.value.detail == f"length says {said}, frame has {len(frame) - 2}"


async def test_the_gateway_counts_what_it_accepts_and_refuses(server):
    client = NodeClient("bedside-a", node_key("bedside-a"))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    await client.send(client.hb_msg())
    await client.send(client.reading_msg(0, temp_mdegc=22_000))
    ev = client.event_msg("button", "call")
    again = client.resend(ev)                                 # the same event (same e) in a new frame
    for msg in (ev, again):
        await client.send(msg)
    await client.recv_ack(ev["s"])
    await client.recv_ack(again["s"])
    await client.send({**client.hello_msg()})                                       # a second hello
    await _until_closed(client)
    assert server.gateway.stats.to_json() == {
        "accepted": {"hello": 1, "hb": 1, "reading": 1, "event": 1}, "rejected": {"bad_message": 1},
        "duplicates": 1, "connections": 1, "readings_dropped": {}, "undelivered_sessions": {},
        "transport": {"plain": 1}}


async def test_a_cold_room_alarm_names_its_low_bound(room):
    await room.reading("env", temp_mdegc=20_000)
    await room.advance(600)
    [excursion] = await room.log("environment.excursion")
    assert (excursion.data["bound"], excursion.data["limit"]) == ("low", 21.0)
    detail = room.call("environment")["detail"]
    assert (detail["bound"], detail["limit"], detail["value"]) == ("low", 21.0, 20.0)


async def test_a_node_back_online_clears_its_alarm_as_resolved(room):
    await room.hello("bath")
    await room.advance(31.001)
    await room.hello("bath")
    [cleared] = await room.log("call.cleared")
    assert (cleared.data["how"], cleared.data["by"]) == ("resolved", "bath back online")


@pytest.mark.parametrize("raw, reason", [(b"\x00", "malformed_frame"), (b"\xff\xff", "oversized_frame"),
                                         (b"\x80\x00", "oversized_frame")])
async def test_a_broken_length_prefix_is_rejected_with_its_reason(server, raw, reason):
    client = NodeClient("bedside-a", node_key("bedside-a"))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    await client.send_raw(raw)
    client.writer.write_eof()
    await _until_closed(client)
    assert server.gateway.stats.rejected == {reason: 1}


async def _until_closed(client: NodeClient) -> None:
    async with asyncio.timeout(10):           # a guard: the gateway closes at once
        while await client.reader.read(1024):
            pass


async def test_a_closed_connection_leaves_the_gateway(server):
    client = NodeClient("bedside-a", node_key("bedside-a"))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    await client.recv()                       # the first command comes after the node is attached
    assert list(server.gateway.connections) == ["bedside-a"]
    await client.close()
    async with asyncio.timeout(10):           # a guard: the gateway notices the close at once
        while server.gateway.connections:
            await asyncio.sleep(0.01)
    assert server.gateway.stats.connections == 1
