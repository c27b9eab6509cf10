"""Bluetooth LE sensors (sensors/ble.py): real BTHome v2 advertisement bytes, plain and AES-CCM
encrypted, injected through a bleak scanner backend into the real scanner-to-room path.

The backend is a ``BaseBleakScanner`` subclass that calls the detection callbacks the way bleak's
platform backends do (``create_or_update_device`` + ``call_detection_callbacks``). Time: the
controller's FakeClock (supervision) and a ManualScheduler (packet repeats, retries, watchdog).
"""

from __future__ import annotations

import re

import pytest
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from controller.room.config import OptionError, parse_room
from sensors import WiringError, attach
from sensors.ble import BTHOME_UUID, RETRY_FIRST_S, WATCHDOG_SILENCE_S, parse_options
from sensors.clock import ManualScheduler
from tests.roomsim import RoomSim

PENDANT = "A4:C1:38:5D:6E:01"
THERMO = "A4:C1:38:5D:6E:02"
PIR = "A4:C1:38:5D:6E:03"
STRANGER = "11:22:33:44:55:66"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def bthome(address: str, objects: bytes, *, key: bytes | None = None, counter: int = 1) -> bytes:
    """BTHome v2 service data: device info byte, then the objects, encrypted per the spec when keyed.

    Encryption: AES-CCM with a 4-byte tag; nonce = MAC (6) + UUID 0xFCD2 little-endian (2) +
    device info (1) + counter (4); the payload is followed by the counter and the tag.
    """
    if key is None:
        return bytes([0x40]) + objects       # v2 (bits 5-7 = 2), not encrypted
    info = 0x41                              # v2, encrypted
    ctr = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(address.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + ctr
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return bytes([info]) + sealed[:-4] + ctr + sealed[-4:]


def press(packet_id: int, event: int = 0x01) -> bytes:
    return bytes([0x00, packet_id, 0x3A, event])             # packet id, button event (0x01 press)


def climate(packet_id: int, *, temp_c: float, rh: float, co2: int, batt_pct: int) -> bytes:
    return (bytes([0x00, packet_id, 0x01, batt_pct, 0x02]) + round(temp_c * 100).to_bytes(2, "little", signed=True)
            + b"\x03" + round(rh * 100).to_bytes(2, "little") + b"\x12" + co2.to_bytes(2, "little"))


def motion(packet_id: int, moving: bool, door_open: bool | None = None) -> bytes:
    objects = bytes([0x00, packet_id])
    if door_open is not None:
        objects += bytes([0x1A, int(door_open)])
    return objects + bytes([0x21, int(moving)])


def make_radio(*start_failures: Exception) -> type[BaseBleakScanner]:
    class Radio(BaseBleakScanner):
        """A scanner backend whose adapter the test controls: it fails to start with the queued errors."""

        instances: list["Radio"] = []
        failures = list(start_failures)
        stop_error: Exception | None = None

        def __init__(self, detection_callback, service_uuids, scanning_mode="active", **kwargs):
            super().__init__(detection_callback, service_uuids)
            self.scanning = False
            Radio.instances.append(self)

        async def start(self) -> None:
            if Radio.failures:
                raise Radio.failures.pop(0)
            self.seen_devices = {}
            self.scanning = True

        async def stop(self) -> None:
            self.scanning = False
            if Radio.stop_error is not None:
                raise Radio.stop_error

        @classmethod
        def advertise(cls, address: str, data: bytes, rssi: int = -62) -> None:
            radio = cls.instances[-1]
            assert radio.scanning, "nothing is scanning"
            adv = AdvertisementData(local_name=None, manufacturer_data={}, service_data={BTHOME_UUID: data},
                                    service_uuids=[BTHOME_UUID], tx_power=None, rssi=rssi, platform_data=())
            device = radio.create_or_update_device(address, address, None, None, adv)
            radio.call_detection_callbacks(device, adv)

    return Radio


def room_doc() -> dict:
    return {
        "room": {"id": "4b-12"}, "beds": [{"id": "A"}],
        "nodes": {
            "pendant-a": {"transport": "ble", "bed": "A", "check_in_s": 60, "inputs": {"pendant": "patient_call"},
                          "ble": {"address": PENDANT.lower(), "bindkey": KEY.hex(), "button": "pendant"}},
            "thermo": {"transport": "ble", "check_in_s": 60, "location": "wall",
                       "ble": {"address": THERMO}},
            "pir": {"transport": "ble", "check_in_s": 300, "inputs": {"pir": "room_presence"},
                    "ble": {"address": PIR, "motion": "pir", "door": "bathdoor", "battery": "none"}},
        },
    }


@pytest.fixture
def sched():
    return ManualScheduler()


@pytest.fixture
def radio():
    return make_radio()


@pytest.fixture
async def room(tmp_path, sched, radio):
    async with RoomSim(parse_room(room_doc(), "ble.toml"), tmp_path / "room.db") as sim:
        async with attach(sim.c, ble_backend=radio, scheduler=sched) as devices:
            await sched.advance(0)
            await devices.settle()
            sim.devices, sim.sched = devices, sched
            yield sim


async def heard(room: RoomSim, radio, address: str, data: bytes, after_s: float = 0.1) -> None:
    """One advertisement, everything it causes stored, then ``after_s`` on the scan's clock."""
    radio.advertise(address, data)
    await room.devices.settle()
    await room.c.settle()
    await room.sched.advance(after_s)


# ---------------------------------------------------------------------- options
def test_options_are_checked():
    assert parse_options({"address": PENDANT.lower(), "bindkey": KEY.hex().upper(), "button": "pendant",
                          "button_2": "cancel", "motion": "pir"}) == {
        "address": PENDANT, "bindkey": KEY.hex(), "events": {"button": "pendant", "button_2": "cancel"},
        "binary": {"motion": "pir"}, "readings": True, "battery": "percent", "low_battery_pct": 20,
        "battery_replaced_pct": 60}


@pytest.mark.parametrize("table, path, message", [
    ({}, ("address",), "missing option 'address'"),
    ({"address": "A4C1385D6E01"}, ("address",), "is not a Bluetooth MAC address"),
    ({"address": PENDANT, "bindkey": "abc"}, ("bindkey",), "32 hex digits"),
    ({"address": PENDANT, "buton": "pendant"}, ("buton",), "did you mean 'button'"),
    ({"address": PENDANT, "button_0": "x"}, ("button_0",), "unknown option"),
    ({"address": PENDANT, "motion": ""}, ("motion",), "must not be empty"),
    ({"address": PENDANT, "battery": "volts"}, ("battery",), "did you mean 'voltage'"),
    ({"address": PENDANT, "low_battery_pct": 50, "battery_replaced_pct": 40}, ("battery_replaced_pct",),
     "must be greater than low_battery_pct"),
])
def test_bad_options_name_the_key(table, path, message):
    with pytest.raises(OptionError, match=re.escape(message)) as err:
        parse_options(table)
    assert err.value.path == path


@pytest.mark.parametrize("change, message", [
    (lambda d: d["nodes"]["thermo"].pop("check_in_s"), "nodes.thermo.check_in_s: a ble node needs check_in_s"),
    (lambda d: d["nodes"]["thermo"]["ble"].update(address=PIR), "is also node 'thermo'"),
    (lambda d: d["nodes"]["pendant-a"]["ble"].update(button="call"), "input 'call' has no meaning"),
    (lambda d: d["nodes"]["pir"]["inputs"].update(cord="bath_emergency"), "nodes.pir.inputs.cord: no BTHome field"),
])
async def test_wiring_the_node_options_cannot_see_is_checked_at_attach(tmp_path, sched, change, message):
    doc = room_doc()
    change(doc)
    async with RoomSim(parse_room(doc, "ble.toml"), tmp_path / "room.db") as sim:
        with pytest.raises(WiringError, match=re.escape(message)):
            await attach(sim.c, ble_backend=make_radio(), scheduler=sched).start()


# ---------------------------------------------------------------------- the pendant
async def test_an_encrypted_pendant_press_raises_one_call_however_often_it_is_repeated(room, radio):
    for counter in (1, 2, 3):              # the device repeats packet 7, each advert newly encrypted
        await heard(room, radio, PENDANT, bthome(PENDANT, press(7), key=KEY, counter=counter))
    await heard(room, radio, PENDANT, bthome(PENDANT, press(7), key=KEY, counter=3))   # the same bytes again
    call = room.call("patient_call")
    assert call["source"] == {"node": "pendant-a", "input": "pendant"} and call["bed"] == "A"
    assert call["presses"] == 1 and call["detail"] == {"press": "press"}
    await heard(room, radio, PENDANT, bthome(PENDANT, press(8, 0x04), key=KEY, counter=4))  # a new (long) press
    assert room.call("patient_call")["presses"] == 2
    node = {n["id"]: n for n in room.c.snapshot()["nodes"]}["pendant-a"]
    assert node["online"] and node["fw"] == "BTHome v2 (encrypted)" and node["rssi"] == -62
    assert room.devices.ble_status.rejected == 0


async def test_adverts_the_key_does_not_open_are_refused(room, radio):
    await heard(room, radio, PENDANT, bthome(PENDANT, press(1), key=bytes(16), counter=1))   # wrong key
    await heard(room, radio, PENDANT, bthome(PENDANT, press(2)))                             # plaintext downgrade
    await heard(room, radio, STRANGER, bthome(STRANGER, press(3)))                           # not ours
    assert room.calls() == []
    assert {n["id"]: n["online"] for n in room.c.snapshot()["nodes"]}["pendant-a"] is False
    status = room.devices.ble_status
    assert (status.rejected, status.adverts) == (2, 3)


async def test_a_silent_device_goes_offline_and_comes_back_when_heard(room, radio):
    await heard(room, radio, PENDANT, bthome(PENDANT, bytes([0x00, 1, 0x01, 95]), key=KEY, counter=1))
    room.clock.ms += 180_000                 # 3 missed check-ins of 60 s (+1 s grace): not yet
    assert [r for r in await room.c.tick() if r.kind == "node.offline"] == []
    records = await room.advance(1.001)
    assert [r.data["node"] for r in records if r.kind == "node.offline"] == ["pendant-a"]
    assert room.call("node_offline")["source"]["node"] == "pendant-a"
    await heard(room, radio, PENDANT, bthome(PENDANT, bytes([0x00, 2, 0x01, 95]), key=KEY, counter=2))
    assert "node_offline" not in room.types()  # (the room's other devices, never heard, are alarmed as such)
    assert (await room.log("call.cleared"))[-1].data["by"] == "pendant-a back online"


# ---------------------------------------------------------------------- readings, presence, battery
async def test_climate_readings_reach_the_room_in_api_units(room, radio):
    await heard(room, radio, THERMO, bthome(THERMO, climate(1, temp_c=22.5, rh=48.25, co2=830, batt_pct=88)))
    env = room.c.snapshot()["environment"]
    assert {m: env[m]["value"] for m in ("temp_c", "rh_pct", "co2_ppm", "batt_pct")} == \
        {"temp_c": 22.5, "rh_pct": 48.25, "co2_ppm": 830.0, "batt_pct": 88.0}
    assert env["temp_c"]["node"] == "thermo"
    await heard(room, radio, THERMO, bthome(THERMO, bytes([0x00, 1])))     # a repeat: nothing new
    assert room.c.snapshot()["environment"]["temp_c"]["ts_ms"] == env["temp_c"]["ts_ms"]


async def test_a_low_battery_is_an_alarm_until_a_fresh_one_is_reported(room, radio):
    await heard(room, radio, THERMO, bthome(THERMO, climate(1, temp_c=22, rh=40, co2=600, batt_pct=12)))
    alarm = room.call("low_battery")
    assert alarm["source"] == {"node": "thermo", "input": "battery"}
    await heard(room, radio, THERMO, bthome(THERMO, climate(2, temp_c=22, rh=40, co2=600, batt_pct=40)))
    assert room.types() == ["low_battery"], "recovering a little is not a new battery"
    await heard(room, radio, THERMO, bthome(THERMO, climate(3, temp_c=22, rh=40, co2=600, batt_pct=100)))
    assert room.types() == []


async def test_motion_is_room_presence_and_an_unmapped_door_is_only_logged(room, radio):
    await heard(room, radio, PIR, bthome(PIR, motion(1, True, door_open=True)))
    assert room.c.snapshot()["occupancy"]["state"] == "in_room"
    await heard(room, radio, PIR, bthome(PIR, motion(2, True, door_open=True)))   # no change: no event
    await heard(room, radio, PIR, bthome(PIR, motion(3, False, door_open=False)))
    assert room.c.snapshot()["occupancy"]["state"] == "empty"
    events = [(e.data["src"], e.data["val"], e.data["meaning"]) for e in await room.log("node.event")]
    assert events == [("bathdoor", 1, None), ("pir", 1, "room_presence"), ("bathdoor", 0, None),
                      ("pir", 0, "room_presence")]


# ---------------------------------------------------------------------- adapter trouble
async def test_no_adapter_is_a_system_fault_retried_with_backoff_and_cleared_when_it_works(tmp_path, sched):
    radio = make_radio(BleakError("No Bluetooth adapters found."), BleakError("No Bluetooth adapters found."))
    async with RoomSim(parse_room(room_doc(), "ble.toml"), tmp_path / "room.db") as sim:
        async with attach(sim.c, ble_backend=radio, scheduler=sched) as devices:
            await sched.advance(0)
            await devices.settle()
            status = devices.ble_status
            assert (status.state, status.failures, status.retry_in_s, status.adapter_faults) == \
                ("degraded", 1, RETRY_FIRST_S, 1)
            assert "No Bluetooth adapters found" in status.error
            fault = sim.call("system_fault")
            assert fault["source"]["input"] == "system:bluetooth" and fault["detail"]["devices"] == 3
            await sched.advance(RETRY_FIRST_S)
            assert (devices.ble_status.failures, devices.ble_status.retry_in_s) == (2, 2 * RETRY_FIRST_S)
            await sched.advance(2 * RETRY_FIRST_S - 0.01)
            assert devices.ble_status.state == "degraded"
            await sched.advance(0.01)
            await devices.settle()
            status = devices.ble_status
            assert (status.state, status.error, status.failures, status.adapter_faults) == ("scanning", None, 0, 1)
            assert sim.types() == []
            raised, cleared = await sim.log("call.raised"), await sim.log("call.cleared")
            assert [r.data["type"] for r in raised] == ["system_fault"]
            assert cleared[0].data["by"] == "bluetooth works again"
            radio.advertise(PENDANT, bthome(PENDANT, press(1), key=KEY))     # and the room hears its devices
            await devices.settle()
            assert sim.types() == ["patient_call"]
            assert status.to_json()["state"] == "scanning"


async def test_an_adapter_removed_while_scanning_is_noticed_by_the_watchdog(room, radio, sched):
    assert room.devices.ble_status.state == "scanning"
    radio.advertise(STRANGER, bthome(STRANGER, bytes([0x00, 1])))       # any advertiser keeps it alive
    await sched.advance(WATCHDOG_SILENCE_S - 1)
    assert len(radio.instances) == 1
    radio.failures = [BleakError("adapter 'hci0' not found")]          # the dongle is pulled out
    radio.stop_error = BleakError("org.bluez.Error.NotReady")          # and stopping the dead scan fails
    await sched.advance(1.5)             # 90 s of silence at the next watchdog look: restarted, and it fails
    await room.devices.settle()
    status = room.devices.ble_status
    assert (status.state, status.watchdog_restarts, status.adapter_faults) == ("degraded", 1, 1)
    assert room.call("system_fault")["detail"]["error"] == "BleakError: adapter 'hci0' not found"
    radio.stop_error = None
    await sched.advance(RETRY_FIRST_S)                                   # plugged back in
    await room.devices.settle()
    assert room.devices.ble_status.state == "scanning" and room.types() == []


async def test_a_degraded_bluetooth_subsystem_shows_in_the_api_and_the_metrics(tmp_path, sched):
    import aiohttp

    from controller.runner import RoomServer
    from tests.helpers import keys_for

    config = parse_room(room_doc(), "ble.toml")
    radio = make_radio(BleakError("No Bluetooth adapters found."))
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0,
                          ble_backend=radio, scheduler=sched) as server:
        await sched.advance(0)
        await server.devices.settle()
        token = await server.create_token("facilities", "tech")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/api/v1/gateway") as resp:
                ble = (await resp.json())["devices"]["ble"]
            async with http.get(server.endpoints.api_url + "/metrics") as resp:
                metrics = await resp.text()
            assert (ble["state"], ble["adapter_faults"]) == ("degraded", 1)
            assert "smartroom_ble_up 0.0" in metrics and "smartroom_ble_adapter_faults_total 1.0" in metrics
            await sched.advance(RETRY_FIRST_S)                           # the adapter is back
            await server.devices.settle()
            async with http.get(server.endpoints.api_url + "/metrics") as resp:
                assert "smartroom_ble_up 1.0" in await resp.text()
