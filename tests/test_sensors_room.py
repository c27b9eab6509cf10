"""The Pi-attached devices together: a wired pull-cord, a BLE pendant and the dome light over the door.

End to end through the real paths: MockFactory pins and injected BTHome advertisements in,
a RoomController deciding and storing, the dome and tone pins out.
"""

from __future__ import annotations

import aiohttp
import pytest
from gpiozero.pins.mock import MockFactory

from controller.room.config import parse_room
from controller.runner import RoomServer
from sensors import attach
from sensors.clock import ManualScheduler
from tests.helpers import keys_for
from tests.roomsim import RoomSim
from tests.test_sensors_ble import KEY, PENDANT, bthome, make_radio, press
from tests.test_sensors_wired import WiredPin, states, trace

RED, WHITE, BLUE, YELLOW, PRESENCE, TONE = 17, 27, 22, 23, 24, 13
CORD, SENSE, CANCEL = 5, 6, 16


def room_doc() -> dict:
    return {
        "room": {"id": "4b-12", "name": "Ward 4B room 12"}, "beds": [{"id": "A"}],
        "nodes": {
            "bath": {"transport": "gpio", "location": "bathroom", "inputs": {"cord": "bath_emergency"},
                     "gpio": {"inputs": {"cord": {"pin": CORD, "supervision": "nc", "sense_pin": SENSE}}}},
            "door": {"transport": "gpio", "location": "door", "tone": True, "inputs": {"cancel": "cancel"},
                     "gpio": {"inputs": {"cancel": CANCEL},
                              "outputs": {"dome": {"red": RED, "white": WHITE, "blue": BLUE, "yellow": YELLOW,
                                                   "presence": PRESENCE}, "tone": TONE}}},
            "pendant-a": {"transport": "ble", "bed": "A", "check_in_s": 60, "inputs": {"pendant": "patient_call"},
                          "ble": {"address": PENDANT, "bindkey": KEY.hex(), "button": "pendant"}},
            "bedside-a": {"bed": "A", "location": "bedside", "inputs": {"call": "patient_call"}},  # a TCP node
        },
    }


@pytest.fixture
def factory():
    f = MockFactory(pin_class=WiredPin)
    f.pin(SENSE).held = False  # the bathroom's cord is plugged in
    yield f
    f.reset()


def dome(factory) -> dict[str, int]:
    return {name: int(factory.pin(pin).state)
            for name, pin in {"red": RED, "white": WHITE, "blue": BLUE, "yellow": YELLOW, "presence": PRESENCE}.items()}


async def test_cord_and_pendant_raise_their_calls_and_the_dome_shows_the_higher(tmp_path, factory):
    sched, radio = ManualScheduler(), make_radio()
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        async with attach(room.c, pin_factory=factory, ble_backend=radio, scheduler=sched) as devices:
            await sched.advance(0)
            radio.advertise(PENDANT, bthome(PENDANT, press(1), key=KEY, counter=1))   # the patient's pendant
            await devices.settle()
            assert room.types() == ["patient_call"]
            assert dome(factory) == {"red": 0, "white": 1, "blue": 0, "yellow": 0, "presence": 0}, "white steady"

            factory.pin(CORD).drive_low()                                          # then the bathroom pull-cord
            await sched.advance(0.03)
            await devices.settle()
            assert room.types() == ["bath_emergency", "patient_call"]
            assert room.call("bath_emergency")["source"] == {"node": "bath", "input": "cord"}
            assert room.call("patient_call")["source"] == {"node": "pendant-a", "input": "pendant"}
            red, tone = factory.pin(RED), factory.pin(TONE)
            red.clear_states()
            tone.clear_states()
            assert await trace(red, sched, 0.25, 8) == [0, 1] * 4, "red fast flashing over white steady"
            assert int(factory.pin(WHITE).state) == 0
            assert states(tone)[:4] == [0, 1, 0, 1], "the high-priority tone"

            factory.pin(CORD).drive_high()
            factory.pin(CANCEL).drive_low()                                        # cancelled in the room
            await sched.advance(0.03)
            await devices.settle()
            assert room.types() == [] and set(dome(factory).values()) == {0}


async def test_with_the_network_down_a_wired_cord_still_raises_the_call_and_lights_the_dome(tmp_path, factory):
    config = parse_room(room_doc(), "room.toml")
    sched = ManualScheduler()
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0,
                          pin_factory=factory, ble_backend=make_radio(), scheduler=sched) as server:
        devices = server.devices  # attached by the room server itself
        await sched.advance(0)
        health = f"{server.endpoints.api_url}/api/v1/health"
        async with aiohttp.ClientSession() as http:
            assert (await http.get(health)).status == 200
            # the network side goes away: every TCP node connection and the API
            await server.gateway.stop()
            api, server._api = server._api, None
            await api.stop()
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(health)

        factory.pin(CORD).drive_low()
        await sched.advance(0.03)
        await devices.settle()
        calls = server.controller.snapshot()["calls"]
        assert [(c["type"], c["source"]["node"]) for c in calls] == [("bath_emergency", "bath")]
        assert len(await server.controller.call_history(0)) == 1, "stored in the room's log"
        red, tone = factory.pin(RED), factory.pin(TONE)
        red.clear_states()
        tone.clear_states()
        assert await trace(red, sched, 0.25, 4) == [0, 1, 0, 1], "red fast flashing"
        assert states(tone)[:4] == [0, 1, 0, 1], "and the high-priority tone in the room"


async def test_the_example_room_in_docs_sensors_md_loads_and_attaches(tmp_path):
    import re
    import tomllib
    from pathlib import Path

    text = re.search(r"```toml\n(.*?)```", (Path(__file__).parents[1] / "docs/sensors.md").read_text(), re.S)[1]
    config = parse_room(tomllib.loads(text), "docs/sensors.md", text=text)
    assert {n: c.transport for n, c in config.nodes.items()} == {
        "bedside-a-wired": "gpio", "bath-wired": "gpio", "door-wired": "gpio", "pendant-a": "ble", "room-climate": "ble"}
    factory, sched, radio = MockFactory(pin_class=WiredPin), ManualScheduler(), make_radio()
    factory.pin(5).held = False                    # the call cord is in its jack
    factory.pin(12).held = False                   # the patient is in bed (pad relay closed)
    async with RoomSim(config, tmp_path / "room.db") as room:
        async with attach(room.c, pin_factory=factory, ble_backend=radio, scheduler=sched) as devices:
            await sched.advance(0)
            await devices.settle()
            assert room.types() == [] and room.c.snapshot()["occupancy"]["state"] == "in_bed"
            factory.pin(12).drive_high()            # out of bed, and bed A is fall-risk
            await sched.advance(1.0)
            await devices.settle()
            assert room.types() == ["bed_exit"]
            assert devices.to_json()["gpio"] == {"nodes": ["bath-wired", "bedside-a-wired", "door-wired"],
                                                 "errors": {}}
            assert devices.to_json()["ble"]["state"] == "scanning"
    factory.reset()


def test_the_pi_pin_map_is_the_pins_the_example_room_uses():
    import re
    import tomllib
    from pathlib import Path

    from sensors.wired import OutputWiring

    root = Path(__file__).parents[1]
    table = re.findall(r"^\| (\d+) \| \d+ \| (in|out) \|", (root / "hardware/pi-room-controller.md").read_text(), re.M)
    text = re.search(r"```toml\n(.*?)```", (root / "docs/sensors.md").read_text(), re.S)[1]
    config = parse_room(tomllib.loads(text), "docs/sensors.md", text=text)
    ins, outs = set(), set()
    for node in config.nodes.values():
        if node.transport != "gpio":
            continue
        for wiring in node.options["inputs"].values():
            ins |= {wiring.pin} | ({wiring.sense_pin} if wiring.sense_pin is not None else set())
        outs |= set(node.options.get("outputs", OutputWiring()).pins())
    assert {int(g) for g, d in table if d == "in"} == ins
    assert {int(g) for g, d in table if d == "out"} == outs
