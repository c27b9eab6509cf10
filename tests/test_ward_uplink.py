"""The room's uplink to a real Mosquitto: every stored event with its cursor, retained state and
status with a last will, the acknowledged cursor kept across restarts and outages, the room working
without the broker, ward commands carried out under the room's rules, credentials and ACLs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from controller.room.config import ConfigError, parse_room
from controller.runner import RoomServer
from controller.uplink.client import MqttClient, PublishRefused
from controller.uplink.uplink import UplinkError
from controller.uplink.wire import Topics
from tests.helpers import keys_for, write_room_files
from tests.test_system import free_port
from tests.wardkit import (SITE, UNIT, WardListener, broker, press, room_password, ward_room,  # noqa: F401
                           ward_room_doc)

DEADLINE_S = 10.0


async def eventually(predicate, timeout_s: float = DEADLINE_S, what: str = "condition") -> None:
    """Poll an observable condition until it holds, with a deadline."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


def cursors(listener: WardListener, room: str) -> list[int]:
    return [m.payload["cursor"] for m in listener.of("event", room)]


async def test_every_stored_event_goes_out_in_order_with_retained_state_and_status(broker, tmp_path):
    config = ward_room("4b-12", broker, tmp_path)
    async with WardListener(broker) as ward, \
            RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
        online = await ward.wait_for("status", lambda p: p["status"] == "online")
        assert online.payload["api_url"] == server.endpoints.api_url
        await press(server, "bedside-a", "call")
        await press(server, "bath", "cord")
        log = await server.controller.events_after(0, 1000)
        await eventually(lambda: cursors(ward, "4b-12")[-1:] == [log[-1].id])
        assert cursors(ward, "4b-12") == [r.id for r in log]  # every record, in cursor order, once
        assert [m.payload["kind"] for m in ward.of("event")] == [r.kind for r in log]
        state = await ward.wait_for("state", lambda p: p["state"]["cursor"] == log[-1].id)
        assert {c["type"] for c in state.payload["state"]["calls"]} == {"patient_call", "bath_emergency"}
        await eventually(lambda: server.uplink.acked == log[-1].id)

    # A late subscriber gets the retained state and status: the ward rebuilds its room grid from them.
    async with WardListener(broker) as late:
        state = await late.wait_for("state", room="4b-12")
        status = await late.wait_for("status", room="4b-12")
        assert state.retain and status.retain
        assert state.payload["state"]["cursor"] == log[-1].id
        assert (status.payload["status"], status.payload["reason"]) == ("offline", "stopped")


async def test_the_acknowledged_cursor_survives_a_restart_and_an_outage(broker, tmp_path):
    config = ward_room("4b-12", broker, tmp_path)
    db = tmp_path / "room.db"
    async with RoomServer(config, keys_for(config), db, api_port=0, node_port=0) as server:
        await press(server, "bedside-a", "call")
        last = server.controller.room.cursor
        await eventually(lambda: server.uplink.acked == last)
    # Restarted: nothing already acknowledged is published again.
    async with WardListener(broker) as ward, \
            RoomServer(config, keys_for(config), db, api_port=0, node_port=0) as server:
        assert server.uplink.acked == last
        await press(server, "bath", "cord")
        new_last = server.controller.room.cursor
        await eventually(lambda: cursors(ward, "4b-12")[-1:] == [new_last])
        assert cursors(ward, "4b-12") == list(range(last + 1, new_last + 1))

        # The broker dies; the room goes on by itself: the call is raised, the dome light follows.
        await broker.kill()
        await press(server, "wearable-a", "pendant")
        calls = server.controller.room.calls
        assert any(c.type == "patient_call" and c.node == "wearable-a" for c in calls.values())
        assert server.controller.outputs().dome_colour != "off"
        during = server.controller.room.cursor
        assert server.uplink.acked == new_last  # nothing could be acknowledged

        published = server.uplink.stats.events_published
        await broker.start()  # same port, no persistence: a new, empty broker
        await eventually(lambda: server.uplink.acked == during, timeout_s=20)
        # Exactly the events the broker had not acknowledged went out again, and the state after them.
        assert server.uplink.stats.events_published - published == during - new_last
        async with WardListener(broker) as late:
            await late.wait_for("state", lambda p: p["state"]["cursor"] == during)
            await late.wait_for("status", lambda p: p["status"] == "online")
    assert await _saved_mark(db) == during


async def _saved_mark(db) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT acked FROM ward_uplink").fetchone()[0]


async def test_ward_commands_run_under_the_rooms_rules_answered_and_audited(broker, tmp_path):
    config = ward_room("4b-12", broker, tmp_path)
    async with WardListener(broker) as ward, \
            RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
        await ward.wait_for("status", lambda p: p["status"] == "online")
        await press(server, "bedside-a", "call")
        await press(server, "bath", "cord")
        calls = {c.type: c.id for c in server.controller.room.calls.values()}

        await ward.command("4b-12", {"id": "cmd-1", "action": "ack", "call_id": calls["patient_call"],
                                     "by": "Nurse Kim", "ts_ms": 1})
        res = await ward.wait_for("result", lambda p: p["id"] == "cmd-1")
        assert (res.payload["ok"], res.payload["status"]) == (True, 200)
        assert res.payload["result"]["acknowledged_by"] == "Nurse Kim"
        assert server.controller.room.calls[calls["patient_call"]].acknowledged_by == "Nurse Kim"

        # An emergency is cancelled at the bedside only: the room refuses, with its reason.
        await ward.command("4b-12", {"id": "cmd-2", "action": "clear", "call_id": calls["bath_emergency"],
                                     "by": "Nurse Kim", "ts_ms": 2})
        res = await ward.wait_for("result", lambda p: p["id"] == "cmd-2")
        assert (res.payload["ok"], res.payload["status"], res.payload["code"]) == (False, 409, "cancel_at_origin")
        assert "in the room" in res.payload["message"] or "origin" in res.payload["message"]
        assert calls["bath_emergency"] in server.controller.room.calls

        # Delivered twice (QoS 1 may): answered twice, done once.
        await ward.command("4b-12", {"id": "cmd-3", "action": "silence", "by": "Nurse Ada", "ts_ms": 3})
        await ward.command("4b-12", {"id": "cmd-3", "action": "silence", "by": "Nurse Ada", "ts_ms": 3})
        await eventually(lambda: len([m for m in ward.of("result") if m.payload["id"] == "cmd-3"]) == 2)
        log = await server.controller.events_after(0, 1000)
        assert sum(1 for r in log if r.kind == "tone.silenced") == 1
        assert server.uplink.stats.commands_repeated == 1

        await ward.command("4b-12", {"id": "cmd-4", "action": "fall_risk", "bed": "A", "enabled": True,
                                     "by": "Nurse Ada", "ts_ms": 4})
        res = await ward.wait_for("result", lambda p: p["id"] == "cmd-4")
        assert res.payload["result"] == {"bed": "A", "fall_risk": True}
        await ward.command("4b-12", {"id": "cmd-5", "action": "ack", "call_id": "c-none", "by": "Nurse Ada",
                                     "ts_ms": 5})
        assert (await ward.wait_for("result", lambda p: p["id"] == "cmd-5")).payload["status"] == 404

        # Malformed commands: counted, nothing done, no crash.
        await ward.command("4b-12", {"id": "cmd-6", "action": "reboot", "by": "x", "ts_ms": 6})
        await ward.command("4b-12", {"id": "cmd-7", "action": "ack", "by": "x", "ts_ms": 7})  # no call id
        await eventually(lambda: server.uplink.stats.commands_rejected["malformed"] == 2)

        audit = await server.controller.store.read_audit(0, 100)
        mqtt = sorted((a.actor, a.action, a.status) for a in audit if a.role == "ward")
        assert mqtt == sorted([("Nurse Kim", "MQTT ack", 200), ("Nurse Kim", "MQTT clear", 409),
                               ("Nurse Ada", "MQTT silence", 200), ("Nurse Ada", "MQTT fall_risk", 200),
                               ("Nurse Ada", "MQTT ack", 404)])
        assert server.uplink.stats.commands == {"ok": 3, "cancel_at_origin": 1, "call_not_found": 1}


async def test_a_room_database_that_fails_under_the_uplink_is_loud_and_the_uplink_goes_on(broker, tmp_path, caplog):
    """The uplink's marks share the room's database, which can be locked for long (a loaded SD card)
    or fail. Found under load: one `database is locked` while saving the acknowledged cursor ended
    the uplink's task for good, and the ward heard nothing more from a room that went on working."""
    import sqlite3

    config = ward_room("4b-12", broker, tmp_path)
    async with WardListener(broker) as ward, \
            RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
        await ward.wait_for("status", lambda p: p["status"] == "online")
        marks, uplink = server.uplink.marks, server.uplink
        failing = {"save_acked", "command_result"}
        for name in list(failing):
            real = getattr(marks, name)

            async def flaky(*args, _real=real, _name=name):
                if _name in failing:
                    raise sqlite3.OperationalError("database is locked")
                return await _real(*args)

            setattr(marks, name, flaky)
        await press(server, "bedside-a", "call")
        first = server.controller.room.cursor
        await eventually(lambda: cursors(ward, "4b-12")[-1:] == [first])
        assert uplink.stats.storage_errors >= 1 and "database is locked" in uplink.stats.last_error
        assert "could not keep the acknowledged cursor" in caplog.text
        await press(server, "bath", "cord")  # the uplink goes on: the next events go out too
        second = server.controller.room.cursor
        await eventually(lambda: cursors(ward, "4b-12")[-1:] == [second])
        assert uplink.stats.connects == 1, "the session went on, not reconnected"
        # A command whose earlier result cannot be looked up is not carried out: 503, and the ward is told.
        call = next(c.id for c in server.controller.room.calls.values() if c.type == "patient_call")
        await ward.command("4b-12", {"id": "cmd-1", "action": "ack", "call_id": call, "by": "Nurse Kim", "ts_ms": 1})
        res = await ward.wait_for("result", lambda p: p["id"] == "cmd-1")
        assert (res.payload["ok"], res.payload["status"], res.payload["code"]) == (False, 503, "storage_unavailable")
        assert server.controller.room.calls[call].acknowledged_by is None
        # The database works again: the same command is carried out, and the cursor is kept.
        failing.clear()
        await ward.command("4b-12", {"id": "cmd-1", "action": "ack", "call_id": call, "by": "Nurse Kim", "ts_ms": 1})
        await eventually(lambda: len([m for m in ward.of("result") if m.payload["id"] == "cmd-1"]) == 2)
        assert server.controller.room.calls[call].acknowledged_by == "Nurse Kim"
        last = server.controller.room.cursor
        await eventually(lambda: uplink.acked == last)
        await press(server, "wearable-a", "pendant")
        final = server.controller.room.cursor
        await eventually(lambda: uplink.acked == final)
    assert await _saved_mark(tmp_path / "room.db") == final
    assert uplink.stats.storage_errors >= 2


async def test_wrong_credentials_are_refused_and_counted_and_the_room_still_works(broker, tmp_path):
    config = ward_room("4b-12", broker, tmp_path, password="not-the-password")
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
        await eventually(lambda: server.uplink.stats.connect_refused["not_authorized"] >= 1)
        assert not server.uplink.connected.is_set()
        await press(server, "bedside-a", "call")
        assert len(server.controller.room.calls) == 1
        token = await server.create_token("facilities", "facilities")
        import aiohttp

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                http.get(server.endpoints.api_url + "/metrics") as resp:
            text = await resp.text()
        assert 'smartroom_ward_uplink_refusals_total{reason="connect_not_authorized"}' in text
        assert "smartroom_ward_uplink_connected 0.0" in text


async def test_the_acl_keeps_a_room_to_its_own_topics_and_commands_to_the_ward(broker, tmp_path):
    own, other = Topics(SITE, UNIT, "4b-12"), Topics(SITE, UNIT, "4b-14")
    async with WardListener(broker) as ward, \
            MqttClient(broker.host, broker.port, username="4b-12", password=room_password("4b-12"),
                       protocol=aiomqtt.ProtocolVersion.V5) as room:
        await room.publish_checked(own.event, b'{"v":1}')  # its own topic: accepted
        for topic in (other.event, other.state, own.cmd, other.cmd):  # another room's, or a command
            with pytest.raises(PublishRefused, match="Not authorized"):
                await room.publish_checked(topic, b'{"v":1}')
        await ward.wait_for("event", room="4b-12")
        assert ward.of("event", "4b-14") == [] and ward.of("state", "4b-14") == []


def test_the_ward_section_is_checked(tmp_path):
    class B:
        host, port = "127.0.0.1", 1883

    doc = ward_room_doc("4b-12", B, tmp_path)
    config = parse_room(doc, "r.toml")
    assert (config.ward.site, config.ward.unit, config.ward.keepalive_s, config.ward.port) == (SITE, UNIT, 6, 1883)
    for key, value, message in (("site", "4b/x", "site '4b/x' must be"), ("keepalive_s", 1, "out of range"),
                                ("keepalive_s", 301, "out of range"), ("port", 0, "out of range"),
                                ("brokr", "x", "unknown key 'brokr'")):
        bad = ward_room_doc("4b-12", B, tmp_path)
        bad["ward"][key] = value
        with pytest.raises(ConfigError, match=message):
            parse_room(bad, "r.toml")
    for edge in (2, 300):
        ok = ward_room_doc("4b-12", B, tmp_path)
        ok["ward"]["keepalive_s"] = edge
        assert parse_room(ok, "r.toml").ward.keepalive_s == edge
    tls = ward_room_doc("4b-12", B, tmp_path)
    del tls["ward"]["port"]
    tls["ward"]["tls"] = True
    assert parse_room(tls, "r.toml").ward.port == 8883
    bad_room = ward_room_doc("4b 12", B, tmp_path)
    with pytest.raises(ConfigError, match="room id '4b 12'"):
        parse_room(bad_room, "r.toml")
    del bad_room["ward"]
    assert parse_room(bad_room, "r.toml").ward is None  # without [ward], any room id is fine


async def test_an_unreadable_password_file_stops_the_room_from_starting(tmp_path):
    class B:
        host, port = "127.0.0.1", 1883

    doc = ward_room_doc("4b-12", B, tmp_path)
    doc["ward"]["password_file"] = str(tmp_path / "missing")
    config = parse_room(doc, "r.toml")
    server = RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0)
    with pytest.raises(UplinkError, match="password_file"):
        await server.start()
    await server.stop()


WARD_ALARM_S = 10.0  # the bound: a dead room is an alarm on the ward within 10 s


def _spawn_room(tmp: Path, broker, room: str, keepalive_s: int):
    secret = tmp / "ward.password"
    secret.write_text(room_password(room))
    extra = (f'[ward]\nhost = "{broker.host}"\nport = {broker.port}\nsite = "{SITE}"\nunit = "{UNIT}"\n'
             f'password_file = "ward.password"\nkeepalive_s = {keepalive_s}\n')
    room_file, keys = write_room_files(tmp, room, extra)
    exe = Path(sys.executable).with_name("smartroom")
    return asyncio.create_subprocess_exec(
        str(exe), "run", "--config", str(room_file), "--keys", str(keys), "--db", str(tmp / "room.db"),
        "--api-port", str(free_port()), "--node-port", str(free_port()), "--no-tls", "--no-advertise",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_a_dead_or_frozen_room_controller_is_offline_on_the_ward_within_10_s(broker, tmp_path, how):
    """SIGKILL closes the room's connection: the broker sends its last will at once. SIGSTOP leaves
    the connection open but silent, as a cut cable or a hung Pi does: the broker gives up after
    1.5 x keepalive (2 s here, the room file's smallest; 6 s by default, so 9 s)."""
    async with WardListener(broker) as ward:
        proc = await _spawn_room(tmp_path, broker, "4b-12", keepalive_s=2)
        try:
            await ward.wait_for("status", lambda p: p["status"] == "online", room="4b-12", timeout_s=30)
            mark = len(ward.messages)
            t0 = time.monotonic()
            proc.send_signal(getattr(signal, how))
            offline = await ward.wait_for("status", lambda p: p["status"] == "offline", room="4b-12",
                                          timeout_s=WARD_ALARM_S, start=mark)
            assert time.monotonic() - t0 < WARD_ALARM_S
            assert offline.payload["reason"] == "connection lost"
        finally:
            if how == "SIGSTOP":
                proc.send_signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
