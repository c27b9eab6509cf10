"""Beyond one ward: the ward broker bridges its unit's topics to a hospital broker (Mosquitto
bridge, as docs/ward.md configures it); a hospital-wide console on the hospital broker sees the
room's events, state and status, and its commands reach the room back through the bridge."""

from __future__ import annotations

import asyncio

from controller.runner import RoomServer
from tests.helpers import keys_for
from tests.test_system import free_port
from tests.test_ward_uplink import eventually
from tests.wardkit import SITE, UNIT, broker_users, press, ward_config, ward_room
from ward.broker import Bridge, BridgeUser, Mosquitto, WardUser
from ward.server import WardServer


async def test_two_bridged_brokers_carry_a_room_to_the_hospital_console_and_commands_back(tmp_path):
    hospital = Mosquitto(tmp_path / "hospital", free_port(), users=[
        BridgeUser("bridge-4b", "bridge-secret", SITE, UNIT), WardUser("hospital", "hospital-secret", SITE, "+")])
    await hospital.start()
    ward_broker = Mosquitto(tmp_path / "ward", free_port(), users=broker_users(), bridges=[
        Bridge("hospital", hospital.host, hospital.port, "bridge-4b", "bridge-secret", SITE, UNIT)])
    await ward_broker.start()
    try:
        config = ward_room("4b-12", ward_broker, tmp_path)
        async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as room:
            token = await room.create_token("integration", "hospital")
            (tmp_path / "h").mkdir()
            hosp_config, _ = ward_config(hospital, tmp_path / "h", {"4b-12": token}, rooms=("4b-12",),
                                         username="hospital", password="hospital-secret", unit="+")
            async with WardServer(hosp_config, tmp_path / "hospital.db", http_port=0) as console:
                await eventually(lambda: console.console.rooms.get("4b-12") is not None
                                 and console.console.rooms["4b-12"].status == "online", timeout_s=20)
                await press(room, "bath", "cord")
                await eventually(lambda: len(console.console.calls()) == 1, timeout_s=20)
                [call] = console.console.calls()
                assert call["type"] == "bath_emergency" and call["room"] == "4b-12"

                async def stored() -> list[int]:
                    return await console.console.store.room_event_cursors("4b-12")

                async with asyncio.timeout(20):
                    while await stored() != [r.id for r in await room.controller.events_after(0, 1000)]:
                        await asyncio.sleep(0.05)

                # A command from the hospital console crosses both brokers to the room and back.
                result = await console.console.command("4b-12", "ack", "Nurse Ada (night site manager)",
                                                       call_id=call["id"])
                assert result.ok
                assert room.controller.room.calls[call["id"]].acknowledged_by == "Nurse Ada (night site manager)"
            # The room's last will crosses the bridge too: stopped cleanly here, so "stopped".
        async with WardServer(hosp_config, tmp_path / "hospital.db", http_port=0) as console:
            await eventually(lambda: console.console.rooms["4b-12"].status == "offline", timeout_s=20)
    finally:
        await ward_broker.stop()
        await hospital.stop()
