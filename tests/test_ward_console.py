"""The ward console against a real Mosquitto and real rooms: every call of the unit in priority
order, each room event stored once in cursor order through broker kills, console restarts and a room
cut off, gaps filled from the room's API, commands under the room's rules, escalation to people."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from controller.runner import RoomServer
from tests.helpers import keys_for
from tests.test_system import free_port
from tests.test_ward_uplink import WARD_ALARM_S, _spawn_room, eventually
from tests.wardkit import ROOMS, Cutter, broker, press, ward_config, ward_room  # noqa: F401
from ward.server import WardServer


@contextlib.asynccontextmanager
async def rooms_and_ward(broker, tmp_path, *, rooms=ROOMS, backfill=True, broker_port: dict | None = None):
    """Running rooms on the broker and a ward console with an integration token per room."""
    servers = {}
    stack = contextlib.AsyncExitStack()
    async with stack:
        for room in rooms:
            class At:  # where this room reaches the broker (maybe through a Cutter)
                host, port = broker.host, (broker_port or {}).get(room, broker.port)
            (tmp_path / room).mkdir()
            config = ward_room(room, At, tmp_path / room)
            servers[room] = await stack.enter_async_context(
                RoomServer(config, keys_for(config), tmp_path / room / "room.db", api_port=0, node_port=0))
        tokens = {room: await s.create_token("integration", "ward 4B") for room, s in servers.items()}
        config, _ = ward_config(broker, tmp_path, tokens if backfill else None, rooms=rooms)
        ward = await stack.enter_async_context(WardServer(config, tmp_path / "ward.db", http_port=0))
        yield servers, ward


async def stored_cursors(ward: WardServer, room: str) -> list[int]:
    return await ward.console.store.room_event_cursors(room)


async def room_cursors(server: RoomServer) -> list[int]:
    return [r.id for r in await server.controller.events_after(0, 100_000)]


async def all_stored(ward: WardServer, servers: dict) -> bool:
    for room, server in servers.items():
        if await stored_cursors(ward, room) != await room_cursors(server):
            return False
    return True


async def until_all_stored(ward, servers, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await all_stored(ward, servers):
            await asyncio.sleep(0.05)


async def test_the_ward_shows_every_call_of_the_unit_in_priority_order(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        await eventually(lambda: all(ward.console.rooms.get(r) and ward.console.rooms[r].status == "online"
                                     for r in ROOMS))
        await press(servers["4b-12"], "bedside-a", "call")
        await press(servers["4b-14"], "bath", "cord")
        await press(servers["4b-14"], "wearable-a", "pendant")
        await until_all_stored(ward, servers)
        await eventually(lambda: len(ward.console.calls()) == 3)
        calls = ward.console.calls()
        assert [(c["room"], c["type"]) for c in calls] == [
            ("4b-14", "bath_emergency"), ("4b-12", "patient_call"), ("4b-14", "patient_call")]
        view = ward.console.ward_view()
        grid = {r["room"]: r for r in view["rooms"]}
        assert grid["4b-14"]["dome"]["colour"] == servers["4b-14"].controller.outputs().dome_colour
        assert grid["4b-12"]["status"] == "online" and view["alarms"] == []
        # The ward's log holds each room event once, in each room's cursor order.
        for room, server in servers.items():
            assert await stored_cursors(ward, room) == await room_cursors(server)
        assert ward.console.stats.duplicates == 0


async def _raise_steadily(servers, stop: asyncio.Event) -> int:
    """Calls and cancels in every room, one round per 100 ms, until ``stop``."""
    n = 0
    while not stop.is_set():
        for server in servers.values():
            await press(server, "bedside-a", "call")
            await press(server, "bedside-a", "cancel")
        n += 1
        await asyncio.sleep(0.1)  # the pace of the traffic, not a wait for a result
    return n


async def test_broker_sigkilled_mid_stream_and_restarted_loses_and_duplicates_nothing(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        await eventually(lambda: ward.console.connected.is_set())
        stop = asyncio.Event()
        traffic = asyncio.create_task(_raise_steadily(servers, stop))
        await eventually(lambda: ward.console.stats.events_stored > 20)
        await broker.kill()      # SIGKILL: no persistence, everything in flight in the broker is gone
        at_kill = {room: s.controller.room.cursor for room, s in servers.items()}
        await asyncio.sleep(0.5)  # the rooms keep raising calls while it is down (traffic, not a wait)
        assert all(s.controller.room.cursor > at_kill[room] for room, s in servers.items())
        await broker.start()
        await eventually(lambda: ward.console.connected.is_set(), timeout_s=20)
        await asyncio.sleep(0.5)  # and while everyone reconnects
        stop.set()
        rounds = await traffic
        assert rounds >= 5
        await until_all_stored(ward, servers, timeout_s=30)
        for room, server in servers.items():
            stored = await stored_cursors(ward, room)
            assert stored == await room_cursors(server)  # every event, once, in the room's order
        assert ward.console.gaps == {}


def _spawn_ward(tmp: Path, port: int):
    exe = Path(sys.executable).with_name("smartroom")
    return asyncio.create_subprocess_exec(str(exe), "ward", "--config", str(tmp / "ward.toml"), "--db",
                                          str(tmp / "ward.db"), "--http-port", str(port),
                                          stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)


async def _ward_token(tmp: Path, role: str, name: str) -> str:
    exe = Path(sys.executable).with_name("smartroom")
    proc = await asyncio.create_subprocess_exec(str(exe), "ward", "token", "create", "--db", str(tmp / "ward.db"),
                                                "--role", role, "--name", name, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().strip().splitlines()[-1]


async def _ward_log(http: aiohttp.ClientSession, url: str) -> list[dict]:
    events, after = [], 0
    while True:
        async with http.get(f"{url}/api/v1/events", params={"after": after, "limit": 1000}) as resp:
            assert resp.status == 200
            page = await resp.json()
        events += page["events"]
        after = page["next"]
        if not page["more"]:
            return events


async def test_the_ward_console_sigkilled_and_restarted_rebuilds_and_misses_nothing(broker, tmp_path):
    from tests.wardkit import toml_text

    servers = {}
    async with contextlib.AsyncExitStack() as stack:
        for room in ROOMS:
            (tmp_path / room).mkdir()
            config = ward_room(room, broker, tmp_path / room)
            servers[room] = await stack.enter_async_context(
                RoomServer(config, keys_for(config), tmp_path / room / "room.db", api_port=0, node_port=0))
        tokens = {room: await s.create_token("integration", "ward 4B") for room, s in servers.items()}
        _, doc = ward_config(broker, tmp_path, tokens)
        (tmp_path / "ward.toml").write_text(toml_text(doc))
        token = await _ward_token(tmp_path, "charge", "Nurse Lee")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = await _spawn_ward(tmp_path, port)
        try:
            assert b"ward page" in await asyncio.wait_for(proc.stdout.readline(), 20)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                async def ward_view() -> dict:
                    async with http.get(f"{url}/api/v1/ward") as resp:
                        assert resp.status == 200
                        return await resp.json()

                async def until(predicate, timeout_s=20.0) -> dict:
                    async with asyncio.timeout(timeout_s):
                        while not predicate(view := await ward_view()):
                            await asyncio.sleep(0.05)
                        return view

                await until(lambda v: v["broker"] == "connected" and all(r["status"] == "online" for r in v["rooms"]))
                await press(servers["4b-12"], "bedside-a", "call")
                await until(lambda v: len(v["calls"]) == 1)

                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                # While the console is dead the rooms go on: a bathroom emergency and a second call.
                await press(servers["4b-14"], "bath", "cord")
                await press(servers["4b-12"], "wearable-a", "pendant")
                proc = await _spawn_ward(tmp_path, port)
                assert b"ward page" in await asyncio.wait_for(proc.stdout.readline(), 20)
                view = await until(lambda v: len(v["calls"]) == 3)
                assert [c["type"] for c in view["calls"]] == ["bath_emergency", "patient_call", "patient_call"]

                async def complete() -> bool:
                    log = await _ward_log(http, url)
                    for room, server in servers.items():
                        stored = [e["data"]["cursor"] for e in log if e["data"].get("room") == room
                                  and not e["kind"].startswith("ward.")]
                        if stored != await room_cursors(server):
                            return False
                    return True

                async with asyncio.timeout(20):
                    while not await complete():
                        await asyncio.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


async def test_a_room_cut_off_from_the_broker_delivers_its_backlog_once_in_order(broker, tmp_path):
    cutter = Cutter(broker.host, broker.port)
    port = await cutter.start()
    try:
        async with rooms_and_ward(broker, tmp_path, broker_port={"4b-12": port}) as (servers, ward):
            room = servers["4b-12"]
            await eventually(lambda: ward.console.rooms.get("4b-12") is not None
                             and ward.console.rooms["4b-12"].status == "online")
            await press(room, "bedside-a", "call")
            await until_all_stored(ward, servers)
            before = ward.console.stats.events_stored
            cutter.cut_off()
            # The broker sees the room go at once (connection reset): a technical alarm on the ward.
            await eventually(lambda: any(a["type"] == "room_offline" and a["room"] == "4b-12"
                                         for a in ward.console.alarms()))
            for node, src in (("bath", "cord"), ("wearable-a", "pendant"), ("bedside-a", "cancel"),
                              ("bedside-a", "call"), ("env", "cancel")):
                await press(room, node, src)  # raised, stored and signalled in the room while cut off
            backlog = [r.id for r in await room.controller.events_after(0, 1000)][-20:]
            assert ward.console.stats.events_stored == before  # nothing of it reached the ward yet
            cutter.restore()
            await until_all_stored(ward, servers, timeout_s=30)  # the uplink's back-off is at most 15 s
            assert await stored_cursors(ward, "4b-12") == await room_cursors(room)  # once each, in order
            assert ward.console.stats.backfilled == 0  # it came over MQTT, not from the API
            assert backlog[-1] == (await stored_cursors(ward, "4b-12"))[-1]
            await eventually(lambda: ward.console.alarms() == [])
    finally:
        await cutter.stop()


async def test_a_killed_room_controller_is_a_ward_alarm_within_10_s(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path, rooms=("4b-14",)) as (servers, ward):
        (tmp_path / "w2").mkdir()
        config, _ = ward_config(broker, tmp_path / "w2", rooms=("4b-12", "4b-14"))
        ward.console.config = config  # 4b-12 is expected on this ward
        assert [a["type"] for a in ward.console.alarms() if a["room"] == "4b-12"] == ["room_never_seen"]
        proc = await _spawn_room(tmp_path / "w2", broker, "4b-12", keepalive_s=6)
        try:
            await eventually(lambda: not [a for a in ward.console.alarms() if a["room"] == "4b-12"], timeout_s=30)
            t0 = asyncio.get_running_loop().time()
            proc.send_signal(signal.SIGKILL)
            await eventually(lambda: [a["type"] for a in ward.console.alarms() if a["room"] == "4b-12"]
                             == ["room_offline"], timeout_s=WARD_ALARM_S)
            assert asyncio.get_running_loop().time() - t0 < WARD_ALARM_S
            [alarm] = [a for a in ward.console.alarms() if a["room"] == "4b-12"]
            assert "connection lost" in alarm["text"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _post(http, url: str, body: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    async with http.request(method, url, json=body if body is not None else {}) as resp:
        return resp.status, await resp.json()


async def test_commands_from_the_ward_are_done_by_the_room_under_its_rules(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        nurse = await ward.create_token("nurse", "Nurse Kim")
        await eventually(lambda: all(ward.console.rooms.get(r) and ward.console.rooms[r].status == "online"
                                     for r in ROOMS))
        room = servers["4b-12"]
        await press(room, "bedside-a", "call")
        await press(room, "bath", "cord")
        await eventually(lambda: len(ward.console.calls()) == 2)
        ids = {c["type"]: c["id"] for c in ward.console.calls()}
        api = f"{ward.url}/api/v1/rooms/4b-12"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {nurse}"}) as http:
            status, body = await _post(http, f"{api}/calls/{ids['patient_call']}/ack")
            assert status == 200 and body["result"]["acknowledged_by"] == "Nurse Kim"
            assert room.controller.room.calls[ids["patient_call"]].acknowledged_by == "Nurse Kim"
            status, body = await _post(http, f"{api}/calls/{ids['bath_emergency']}/clear", {"by": "Nurse Kim"})
            assert (status, body["error"]["code"]) == (409, "cancel_at_origin")
            assert "cancel" in body["error"]["message"].lower()
            assert ids["bath_emergency"] in room.controller.room.calls
            status, body = await _post(http, f"{api}/silence")
            assert status == 200 and body["result"]["tone"]["silenced"] is True
            status, body = await _post(http, f"{api}/beds/A/fall-risk", {"enabled": True}, "PUT")
            assert status == 200 and room.controller.room.fall_risk["A"] is True
            status, body = await _post(http, f"{ward.url}/api/v1/rooms/9z-99/silence")
            assert (status, body["error"]["code"]) == (404, "room_not_found")
            async with http.put(f"{ward.url}/api/v1/assignments", json={"shift": "x", "charge": "y"}) as resp:
                assert resp.status == 403  # a nurse does not set the shift
        # Both sides keep the record: the room's audit (role "ward", the acting person) and the ward's.
        room_audit = [(a.actor, a.action, a.status) for a in await room.controller.store.read_audit(0, 100)
                      if a.role == "ward"]
        assert sorted(room_audit) == sorted([("Nurse Kim", "MQTT ack", 200), ("Nurse Kim", "MQTT clear", 409),
                                             ("Nurse Kim", "MQTT silence", 200), ("Nurse Kim", "MQTT fall_risk", 200)])
        commands = await ward.console.store.commands(10)
        assert sorted((c["action"], c["result"]["code"]) for c in commands) == sorted(
            [("ack", "ok"), ("clear", "cancel_at_origin"), ("silence", "ok"), ("fall_risk", "ok")])
        ward_audit = [(a.actor, a.status) for a in await ward.console.store.read_audit(0, 100)]
        assert ("Nurse Kim", 409) in ward_audit and ("Nurse Kim", 403) in ward_audit

        # A room that is offline: the command is refused at once, not left hanging.
        await room.uplink.stop()
        await eventually(lambda: ward.console.rooms["4b-12"].status == "offline")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {nurse}"}) as http:
            status, body = await _post(http, f"{api}/silence")
        assert (status, body["error"]["code"]) == (503, "room_offline")


async def test_escalation_reaches_people_primary_then_charge_then_all_staff(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        await ward.console.set_shift("day", "Nurse Lee", ["Nurse Ada", "Nurse Bo"],
                                     {"4b-12": {"A": "Nurse Kim"}, "4b-14": {"*": "Nurse Ada"}}, "Nurse Lee")
        await eventually(lambda: all(ward.console.rooms.get(r) and ward.console.rooms[r].status == "online"
                                     for r in ROOMS))
        await press(servers["4b-12"], "bedside-a", "call")
        await eventually(lambda: len(ward.console.calls()) == 1)
        [call] = ward.console.calls()
        me = ward.console.staff_view
        assert [c["id"] for c in me("Nurse Kim")["calls"]] == [call["id"]]  # bed A is hers
        assert me("Nurse Lee")["calls"] == [] and me("Nurse Ada")["calls"] == []

        await ward.console.decline("4b-12", call["id"], "Nurse Kim")  # busy: it moves on to the charge nurse
        assert [c["reach"]["to"] for c in me("Nurse Lee")["calls"]] == ["charge nurse"]
        assert me("Nurse Ada")["calls"] == []
        await ward.console.decline("4b-12", call["id"], "Nurse Bo")  # not reached yet: noted, nothing moves
        assert me("Nurse Ada")["calls"] == []
        await ward.console.decline("4b-12", call["id"], "Nurse Lee")  # and on to all staff
        assert [c["reach"]["to"] for c in me("Nurse Ada")["calls"]] == ["all staff"]
        assert me("Nurse Ada")["calls"][0]["declined"] == ["Nurse Kim", "Nurse Bo", "Nurse Lee"]

        result = await ward.console.accept("4b-12", call["id"], "Nurse Ada")
        assert result["ok"]
        await eventually(lambda: ward.console.calls()[0]["acknowledged_by"] == "Nurse Ada")
        assert servers["4b-12"].controller.room.calls[call["id"]].acknowledged_by == "Nurse Ada"

        # Unanswered, the room's own escalation moves a call on: the room's level counts too.
        await press(servers["4b-14"], "bedside-a", "call")
        await eventually(lambda: len(ward.console.calls()) == 2)
        other = next(c for c in ward.console.calls() if c["room"] == "4b-14")
        assert other["reach"]["to"] == "primary nurse" and other["reach"]["people"] == ["Nurse Ada"]


async def test_the_unit_report_counts_response_times_per_room_priority_and_nurse(broker, tmp_path):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        await eventually(lambda: all(ward.console.rooms.get(r) and ward.console.rooms[r].status == "online"
                                     for r in ROOMS))
        await press(servers["4b-12"], "bedside-a", "call")
        await press(servers["4b-14"], "bath", "cord")
        await eventually(lambda: len(ward.console.calls()) == 2)
        for call in ward.console.calls():
            res = await ward.console.command(call["room"], "ack", "Nurse Kim", call_id=call["id"])
            assert res.ok
        await until_all_stored(ward, servers)
        report = await ward.console.report(0, ward.console.clock() + 1)
        assert report["total"]["calls"] == 2
        assert set(report["rooms"]) == {"4b-12", "4b-14"}
        assert set(report["priorities"]) == {"high", "medium"}
        assert report["nurses"]["Nurse Kim"]["calls"] == 2
        assert report["nurses"]["Nurse Kim"]["to_ack_s"]["median"] is not None
        empty = await ward.console.report(0, 1)
        assert empty["total"]["calls"] == 0


async def test_wrong_ward_credentials_and_bad_messages_are_refused_and_counted(broker, tmp_path):
    from controller.uplink.client import MqttClient
    from controller.uplink.wire import Topics
    from tests.wardkit import SITE, UNIT, room_password
    import aiomqtt

    async with rooms_and_ward(broker, tmp_path, rooms=("4b-12",)) as (servers, ward):
        await eventually(lambda: ward.console.rooms.get("4b-12") is not None)
        # A room's own account may write its event topic; what it writes must still make sense.
        async with MqttClient(broker.host, broker.port, username="4b-12", password=room_password("4b-12"),
                              protocol=aiomqtt.ProtocolVersion.V5) as fake:
            topics = Topics(SITE, UNIT, "4b-12")
            for payload in (b"not json", b'{"v":1,"room":"4b-14","cursor":1,"ts_ms":1,"kind":"x","data":{}}',
                            b'{"v":2}', b'{"v":1,"room":"4b-12","cursor":0,"ts_ms":1,"kind":"x","data":{}}'):
                await fake.publish_checked(topics.event, payload)
            await fake.publish_checked(topics.status, b'{"v":1,"room":"4b-12","status":"asleep"}')
        await eventually(lambda: ward.console.stats.rejected["event"] == 4 and ward.console.stats.rejected["status"] == 1)
        await press(servers["4b-12"], "bedside-a", "call")  # and the ward carries on
        await until_all_stored(ward, servers)
        assert ward.console.rooms["4b-12"].status == "online"

    (tmp_path / "bad").mkdir()
    config, _ = ward_config(broker, tmp_path / "bad", password="wrong")
    async with WardServer(config, tmp_path / "bad" / "ward.db", http_port=0) as ward:
        await eventually(lambda: ward.console.stats.connect_refused["not_authorized"] >= 1)
        assert not ward.console.connected.is_set()
        admin = await ward.create_token("admin", "admin")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
            async with http.get(f"{ward.url}/metrics") as resp:
                text = await resp.text()
        assert 'smartroom_ward_broker_refusals_total{reason="not_authorized"}' in text
        assert "smartroom_ward_broker_connected 0.0" in text
        assert 'smartroom_ward_rooms{status="never_seen"} 2.0' in text


async def test_rooms_reach_the_broker_over_tls_with_the_hospitals_certificate(tmp_path):
    from controller.security.tls import load_or_create
    from tests.wardkit import broker_users
    from ward.broker import Mosquitto

    tls = load_or_create(tmp_path / "broker-cert.pem", tmp_path / "broker-key.pem", ["127.0.0.1", "localhost"])
    mq = Mosquitto(tmp_path / "broker", free_port(), users=broker_users(), certfile=tls.cert_path,
                   keyfile=tls.key_path)
    await mq.start()
    try:
        config = ward_room("4b-12", mq, tmp_path, tls=True, ca_file=str(tls.cert_path))
        async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as room:
            await eventually(lambda: room.uplink.connected.is_set())
            await press(room, "bedside-a", "call")
            await eventually(lambda: room.uplink.acked == room.controller.room.cursor)
        # Without the hospital CA the room refuses the broker's certificate: it never connects.
        (tmp_path / "2").mkdir()
        other = load_or_create(tmp_path / "2" / "c.pem", tmp_path / "2" / "k.pem", ["127.0.0.1"])
        config = ward_room("4b-12", mq, tmp_path / "2", tls=True, ca_file=str(other.cert_path))
        async with RoomServer(config, keys_for(config), tmp_path / "2" / "room.db", api_port=0, node_port=0) as room:
            await eventually(lambda: room.uplink.stats.link_errors >= 2, timeout_s=10)
            assert "CERTIFICATE_VERIFY_FAILED" in room.uplink.stats.last_error
            assert room.uplink.stats.connects == 0 and not room.uplink.connected.is_set()
    finally:
        await mq.stop()


async def test_the_api_description_covers_every_route_and_roles_are_enforced(broker, tmp_path):
    from ward.web import app as ward_app
    from ward.web.openapi import build, described

    spec = build(ward_app.ROUTES)
    assert described(spec) == {(r.method, r.path) for r in ward_app.ROUTES}
    async with rooms_and_ward(broker, tmp_path, rooms=("4b-12",)) as (servers, ward):
        nurse = await ward.create_token("nurse", "Nurse Kim")
        admin = await ward.create_token("admin", "admin")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ward.url}/api/v1/openapi.json") as resp:
                assert resp.status == 200 and (await resp.json())["info"]["title"] == "smartroom ward console"
            async with http.get(f"{ward.url}/api/v1/ward") as resp:
                assert resp.status == 401
            for token, path, status in ((nurse, "/api/v1/ward", 200), (nurse, "/api/v1/me", 200),
                                        (nurse, "/metrics", 403), (nurse, "/api/v1/reports/response-times", 403),
                                        (admin, "/api/v1/me", 403), (admin, "/api/v1/audit", 200),
                                        (admin, "/api/v1/reports/response-times?from=x", 400)):
                async with http.get(ward.url + path, headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == status, (path, await resp.text())
            async with http.get(f"{ward.url}/api/v1/events/stream", headers={
                    "Authorization": f"Bearer {nurse}", "Last-Event-ID": "0"}) as resp:
                assert resp.status == 200
                first = await asyncio.wait_for(resp.content.readline(), 5)
                assert first.startswith(b"id: 1") or first.startswith(b"id:1")
