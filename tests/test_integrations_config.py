"""The room file's [integrations] section: checked at load, errors name file, line and key; `smartroom
run` starts what it configures (controller/runner.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from controller.model import NodeEvent
from controller.room.config import ConfigError, load_room
from controller.runner import RoomServer
from integrations.config import DEFAULT_LOOPBACK, Integrations
from tests.helpers import keys_for
from tests.hl7peer import AlarmManager, MllpClient, fields, until

ROOM = """\
[room]
id = "4b-12"
[[beds]]
id = "A"
[[beds]]
id = "B"
[nodes.bedside-a]
bed = "A"
inputs = { call = "patient_call" }
"""


def load(tmp_path: Path, integrations: str) -> Integrations:
    (tmp_path / "hook.secret").write_text("s3cret-s3cret-s3cret\n")
    path = tmp_path / "room.toml"
    path.write_text(ROOM + textwrap.dedent(integrations).replace("SECRET", str(tmp_path / "hook.secret")))
    return load_room(path).integrations


def error(tmp_path: Path, integrations: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, integrations)
    return str(info.value)


def test_a_room_without_the_section_has_no_integrations(tmp_path):
    assert load(tmp_path, "") is None


def test_a_full_section_loads(tmp_path):
    opts = load(tmp_path, """
        [integrations]
        facility = "GENHOSP"
        equipment_id = "01:23:45:67:89:ab:cd:ef"
        point_of_care = "4B"
        hl7_room = "412"
        hl7_beds = { A = "1", B = "2" }
        [integrations.alarm_manager]
        host = "am.hospital.example"
        port = 2575
        fault_after_s = 20
        [integrations.mllp]
        host = "0.0.0.0"
        port = 2576
        allow = ["10.1.2.0/24", "10.1.3.7"]
        [[integrations.webhooks]]
        url = "https://pager.example/hook"
        secret_file = "SECRET"
        events = ["call.", "bed.patient"]
    """)
    assert opts.equipment_id == "0123456789ABCDEF"
    assert opts.their_bed("A") == "1" and opts.our_bed("2", ("A", "B")) == "B"
    assert opts.alarm_manager.host == "am.hospital.example" and opts.alarm_manager.fault_after_s == 20
    assert opts.mllp.allow == ("10.1.2.0/24", "10.1.3.7") and opts.mllp.port == 2576
    hook = opts.webhooks[0]
    assert hook.secret == b"s3cret-s3cret-s3cret" and hook.name == "pager.example"
    assert hook.wants("call.raised") and hook.wants("bed.patient") and not hook.wants("node.event")


@pytest.mark.parametrize("line, expected", [("", 60.0), ("heartbeat_s = 1\n", 1.0), ("heartbeat_s = 3600\n", 3600.0)])
def test_the_heartbeat_period_defaults_to_a_minute_and_takes_its_edges(tmp_path, line, expected):
    opts = load(tmp_path, f"[integrations.alarm_manager]\nhost = \"am\"\n{line}")
    assert opts.alarm_manager.heartbeat_s == expected


def test_the_listener_defaults_to_loopback_only(tmp_path):
    assert load(tmp_path, "[integrations.mllp]\n").mllp.allow == DEFAULT_LOOPBACK


@pytest.mark.parametrize("text, line, key, says", [
    ("[integrations]\nfacilty = \"X\"\n", 11, "integrations.facilty", "unknown key 'facilty'"),
    ("[integrations.alarm_manager]\nport = 2575\n", 10, "integrations.alarm_manager.host", "missing key 'host'"),
    ("[integrations.alarm_manager]\nhost = \"am\"\nport = 70000\n", 12, "integrations.alarm_manager.port",
     "70000 is out of range"),
    ("[integrations.alarm_manager]\nhost = \"am\"\nack_timeout_s = 0\n", 12,
     "integrations.alarm_manager.ack_timeout_s", "out of range"),
    ("[integrations.alarm_manager]\nhost = \"am\"\nheartbeat_s = 0.99\n", 12,
     "integrations.alarm_manager.heartbeat_s", "out of range"),
    ("[integrations.alarm_manager]\nhost = \"am\"\nheartbeat_s = 3601\n", 12,
     "integrations.alarm_manager.heartbeat_s", "out of range"),
    ("[integrations.mllp]\nallow = [\"10.1.2.0/24\", \"ward 4\"]\n", 11, "integrations.mllp.allow[1]",
     "'ward 4' is not an address or network"),
    ("[integrations]\nequipment_id = \"12345\"\n", 11, "integrations.equipment_id", "16 hex digits"),
    ("[integrations]\nhl7_beds = { C = \"3\" }\n", 11, "integrations.hl7_beds.C", "'C' is not a bed of this room"),
    ("[integrations]\npoint_of_care = \"4B^X\"\n", 11, "integrations.point_of_care", "no HL7 delimiters"),
    ("[[integrations.webhooks]]\nurl = \"ftp://x\"\nsecret_file = \"SECRET\"\n", 11,
     "integrations.webhooks[0].url", "not an http:// or https:// URL"),
    ("[[integrations.webhooks]]\nurl = \"https://x\"\nsecret_file = \"/nonexistent/s\"\n", 12,
     "integrations.webhooks[0].secret_file", "no such file"),
    ("[integrations.mllp.tls]\nca = \"SECRET\"\n", 10, "integrations.mllp.tls.cert", "needs its own certificate"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, key, says):
    message = error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'room.toml'}:{line}: {key}: "), message
    assert says in message


async def test_smartroom_run_starts_the_configured_integrations(tmp_path):
    am = AlarmManager()
    await am.start()
    config = load_room_with(tmp_path, f"""
        [integrations]
        hl7_room = "412"
        [integrations.alarm_manager]
        host = "127.0.0.1"
        port = {am.port}
        retry_first_s = 0.01
        retry_max_s = 0.05
        [integrations.mllp]
        port = 0
    """)
    try:
        async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
            client = await MllpClient.connect(server.integrations.listener.port)
            ack = await client.send("MSH|^~\\&|EPIC|H|SR|4B|2026||ADT^A01^ADT_A01|A-1|P|2.5\r"
                                    "PID|1||MRN-1||Doe^Jane\rPV1|1|I|^412^A")
            await client.close()
            assert fields(ack, "MSA")[1] == "AA"
            assert server.controller.room.patients["A"]["id"] == "MRN-1"
            await server.controller.node_event(NodeEvent("bedside-a", 1, 1, 1, "button", "call", 1, 0))
            await until(lambda: len(am.received) == 1, "the call at the alarm manager")
        assert am.received[0].valid and fields(am.received[0].text, "PID")[3].startswith("MRN-1^")
    finally:
        await am.stop()


def load_room_with(tmp_path: Path, integrations: str):
    path = tmp_path / "room.toml"
    path.write_text(ROOM + textwrap.dedent(integrations))
    return load_room(path)


async def test_the_api_shows_the_integrations_counters(tmp_path):
    import aiohttp

    config = load_room_with(tmp_path, "[integrations]\nhl7_room = \"412\"\n[integrations.mllp]\nport = 0\n")
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
        token = await server.create_token("integration", "engine")
        client = await MllpClient.connect(server.integrations.listener.port)
        await client.send("not HL7")
        await client.close()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/api/v1/integrations") as resp:
                body = await resp.json()
    assert body["configured"] is True and body["alarm_manager"] is None
    assert body["mllp_listener"]["messages"] == {"unparseable": 1}
    assert body["admissions"]["refused"] == {"100": 1}
