"""Wired inputs and outputs on the Pi's GPIO (sensors/wired.py), on gpiozero's MockFactory.

Pins are driven like contacts (``drive_low()`` = a switch to GND closes) and lamps are checked by
their recorded state histories; time moves only by ``ManualScheduler.advance``. Calls go through a
real RoomController (tests/roomsim.py) built from a room file whose nodes use transport "gpio".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from controller.room.config import ConfigError, OptionError, load_room, parse_room
from sensors import WiringError, attach
from sensors.clock import ManualScheduler
from sensors.patterns import DOME_PATTERNS, INDICATOR_PATTERNS, TONE_PATTERNS, Blink, PatternOutput
from sensors.wired import InputWiring, OutputPin, SettledInput, parse_options
from tests.roomsim import RoomSim

ROOT = Path(__file__).resolve().parent.parent


class WiredPin(MockPin):
    """A mock pin with something on it: ``held = False`` is a closed contact to GND (it stays low
    against the pull-up), ``held = True`` a module driving it high; None follows the pull."""

    held: bool | None = None

    def _set_pull(self, value):
        super()._set_pull(value)
        if self.held is not None:
            (self.drive_high if self.held else self.drive_low)()


def room_doc() -> dict:
    return {
        "room": {"id": "4b-12"}, "beds": [{"id": "A"}],
        "nodes": {
            "bedside": {"transport": "gpio", "bed": "A", "indicator": True,
                        "inputs": {"call": "patient_call", "pad": "bed_occupancy"},
                        "gpio": {"inputs": {"call": 4, "pad": {"pin": 12, "pull": "down", "bounce_ms": 100}},
                                 "outputs": {"reassurance": 25}}},
            "bath": {"transport": "gpio", "location": "bathroom", "inputs": {"cord": "bath_emergency"},
                     "gpio": {"inputs": {"cord": {"pin": 5, "supervision": "nc", "sense_pin": 6}}}},
            "door": {"transport": "gpio", "tone": True, "inputs": {"cancel": "cancel", "presence": "staff_presence"},
                     "gpio": {"inputs": {"cancel": 16, "presence": 26},
                              "outputs": {"dome": {"red": 17, "white": 27, "blue": 22, "yellow": 23, "presence": 24},
                                          "tone": 13}}},
        },
    }


@pytest.fixture
def factory():
    f = MockFactory(pin_class=WiredPin)
    f.pin(6).held = False  # the bathroom cord is plugged in: its cord-present contact holds GPIO 6 low
    yield f
    f.reset()


@pytest.fixture
def sched():
    return ManualScheduler()


@pytest.fixture
async def room(tmp_path, factory, sched):
    async with RoomSim(parse_room(room_doc(), "wired.toml"), tmp_path / "room.db") as sim:
        async with attach(sim.c, pin_factory=factory, scheduler=sched) as devices:
            await devices.settle()
            sim.devices = devices
            yield sim


async def settle(room: RoomSim, sched: ManualScheduler, seconds: float = 0.5) -> None:
    await sched.advance(seconds)
    await room.devices.settle()


def states(pin) -> list[int]:
    """A mock pin's history as 0/1, without its initial entry."""
    return [int(s.state) for s in pin.states[1:]]


def trace(pin, sched: ManualScheduler, step_s: float, steps: int):
    """The pin's level sampled every ``step_s`` (a coroutine: await it)."""
    async def run() -> list[int]:
        out = []
        for _ in range(steps):
            await sched.advance(step_s)
            out.append(int(pin.state))
        return out
    return run()


# ---------------------------------------------------------------------- options
def test_options_are_checked_into_frozen_wiring():
    options = parse_options({
        "inputs": {"call": 4, "pir": {"pin": 12, "pull": "down", "bounce_ms": 100},
                   "cord": {"pin": 5, "supervision": "eol", "sense_pin": 6}, "nc": {"pin": 7, "active": "high"}},
        "outputs": {"dome": {"red": 17, "white": 27, "orange": 22, "presence": 24},
                    "tone": {"pin": 18, "active_high": False}, "reassurance": 25}})
    inputs = options["inputs"]
    assert inputs["call"] == InputWiring(4)
    assert inputs["pir"] == InputWiring(12, pull="down", active_high=True, bounce_ms=100)
    assert inputs["cord"] == InputWiring(5, supervision="eol", sense_pin=6)
    assert inputs["nc"].active_high and inputs["nc"].pull == "up"
    outputs = options["outputs"]
    assert outputs.tone == OutputPin(18, active_high=False) and outputs.reassurance == OutputPin(25)
    assert sorted(outputs.dome.lamps) == ["orange", "red", "white"] and outputs.dome.presence == OutputPin(24)


@pytest.mark.parametrize("table, path, message", [
    ({}, (), "needs 'inputs' or 'outputs'"),
    ({"input": {}}, ("input",), "did you mean 'inputs'"),
    ({"inputs": {"call": {"pin": 1}}}, ("inputs", "call", "pin"), "GPIO 1 is not usable"),
    ({"inputs": {"call": {"pin": 28}}}, ("inputs", "call", "pin"), "allowed 2 to 27"),
    ({"inputs": {"call": {"pn": 4}}}, ("inputs", "call", "pn"), "did you mean 'pin'"),
    ({"inputs": {"call": {"pin": 4, "pull": "none"}}}, ("inputs", "call", "active"), "say which level"),
    ({"inputs": {"call": {"pin": 4, "pull": "upp"}}}, ("inputs", "call", "pull"), "did you mean 'up'"),
    ({"inputs": {"call": {"pin": 4, "bounce_ms": 5000}}}, ("inputs", "call", "bounce_ms"), "0 to 1000"),
    ({"inputs": {"call": {"pin": 4, "supervision": "nc"}}}, ("inputs", "call", "sense_pin"), "needs sense_pin"),
    ({"inputs": {"call": {"pin": 4, "sense_pin": 6}}}, ("inputs", "call", "sense_pin"), "needs supervision"),
    ({"inputs": {"a": 4, "b": 4}}, ("inputs", "b", "pin"), "already used by inputs.a.pin"),
    ({"inputs": {"a": 4}, "outputs": {"tone": 4}}, ("outputs",), "GPIO 4 is already used"),
    ({"outputs": {"dome": {"red": 17, "white": 27, "presence": 24}}}, ("outputs", "dome"), "'yellow' or an 'orange'"),
    ({"outputs": {"dome": {"red": 17, "yellow": 27, "presence": 24}}}, ("outputs", "dome", "white"), "'white' lamp"),
    ({"outputs": {"dome": {"red": 17, "white": 27, "yellow": 23, "presence": 24, "green": 5}}},
     ("outputs", "dome", "green"), "unknown option"),
    ({"outputs": {"tone": True}}, ("outputs", "tone"), "expected an integer"),
])
def test_bad_options_name_the_key(table, path, message):
    with pytest.raises(OptionError, match=re.escape(message)) as err:
        parse_options(table)
    assert err.value.path == path


def test_option_errors_reach_the_room_file_with_line_and_key(tmp_path):
    path = tmp_path / "room.toml"
    path.write_text('[room]\nid = "r"\n[nodes.bath]\ntransport = "gpio"\ninputs = { cord = "bath_emergency" }\n'
                    '[nodes.bath.gpio.inputs]\ncord = { pin = 5, supervision = "nc" }\n')
    with pytest.raises(ConfigError, match=r"room.toml:7: nodes.bath.gpio.inputs.cord.sense_pin: "
                                          r'supervision = "nc" needs sense_pin'):
        load_room(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["nodes"]["bath"]["inputs"].pop("cord"), "nodes.bath.gpio.inputs.cord: the node's 'inputs' gives"),
    (lambda d: d["nodes"]["bath"]["inputs"].update(pir="bath_presence"), "nodes.bath.inputs.pir: no pin"),
    (lambda d: d["nodes"]["door"].pop("tone"), "outputs.tone: a tone output needs tone = true"),
    (lambda d: d["nodes"]["bedside"].pop("indicator"), "reassurance light needs indicator = true"),
    (lambda d: d["nodes"]["door"]["gpio"]["inputs"].update(cancel=5), "GPIO 5 is also wired to node 'bath'"),
])
async def test_wiring_the_node_options_cannot_see_is_checked_before_any_pin(tmp_path, factory, sched, change,
                                                                              message):
    doc = room_doc()
    change(doc)
    async with RoomSim(parse_room(doc, "wired.toml"), tmp_path / "room.db") as sim:
        with pytest.raises(WiringError, match=re.escape(message)):
            await attach(sim.c, pin_factory=factory, scheduler=sched).start()
    assert all(pin.function == "input" and pin.when_changed is None for pin in factory.pins.values())


# ---------------------------------------------------------------------- debouncing
async def test_a_bouncing_press_is_one_change_after_it_settles_and_a_glitch_is_none(factory, sched):
    changes = []
    button = SettledInput(4, settle_s=0.03, scheduler=sched, pin_factory=factory)
    button.when_changed = changes.append
    pin = factory.pin(4)
    pin.drive_low(); await sched.advance(0.005)    # contact bounce for 10 ms ...
    pin.drive_high(); await sched.advance(0.003)
    pin.drive_low(); await sched.advance(0.029)    # ... then closed: not yet 30 ms since the last edge
    assert changes == []
    await sched.advance(0.001)
    assert changes == [True]
    pin.drive_high(); await sched.advance(0.05)
    assert changes == [True, False]
    pin.drive_low(); await sched.advance(0.01); pin.drive_high()   # a 10 ms spike on a long cord
    await sched.advance(1)
    assert changes == [True, False], "a glitch shorter than the settle time is not an input"
    button.close()


async def test_pull_cord_raises_a_bath_emergency_once_however_it_bounces(room, factory, sched):
    cord = factory.pin(5)
    for _ in range(3):
        cord.drive_low(); await sched.advance(0.002); cord.drive_high(); await sched.advance(0.002)
    cord.drive_low()
    await settle(room, sched)
    call = room.call("bath_emergency")
    assert call["source"] == {"node": "bath", "input": "cord"} and call["presses"] == 1
    cord.drive_high()                              # let go: no event for a release
    await settle(room, sched)
    assert room.call("bath_emergency")["presses"] == 1
    events = [r.data for r in await room.log("node.event") if r.data["node"] == "bath" and r.data["kind"] == "button"]
    assert [(e["src"], e["val"]) for e in events] == [("cord", 1)]


async def test_bed_pad_reports_both_edges_as_presence(room, factory, sched):
    pad = factory.pin(12)                          # a pad module driving high while occupied (pull-down)
    pad.drive_high()
    await settle(room, sched)
    assert room.c.snapshot()["occupancy"]["state"] == "in_bed"
    pad.drive_low()
    await settle(room, sched)
    assert room.c.snapshot()["occupancy"]["state"] == "empty"
    assert [r.data["present"] for r in await room.log("presence.changed")] == [True, False]


# ---------------------------------------------------------------------- cord supervision
async def test_cord_removed_raises_a_technical_alarm_and_plugging_it_back_clears_it(room, factory, sched):
    sense = factory.pin(6)
    sense.drive_high()                             # the plug is pulled out: its contact opens
    await sched.advance(0.2)                       # a wiggle shorter than 250 ms is not a removal
    sense.drive_low(); sense.drive_high()
    await settle(room, sched, 0.3)
    alarm = room.call("cord_removed")
    assert alarm["source"] == {"node": "bath", "input": "cord:cord"} and alarm["priority"] == "low"
    dome = [factory.pin(p) for p in (17, 27, 22, 23)]
    assert [int(p.state) for p in dome] == [0, 0, 0, 1], "yellow steady: a technical alarm"
    sense.drive_low()                              # plugged in again
    await settle(room, sched)
    assert room.types() == []
    cleared = (await room.log("call.cleared"))[-1].data
    assert cleared["by"] == "bath/cord: cord plugged in again" and cleared["how"] == "resolved"
    assert int(factory.pin(23).state) == 0


async def test_a_cord_missing_and_a_cord_pulled_before_start_are_reported_at_start(tmp_path, sched):
    factory = MockFactory(pin_class=WiredPin)
    factory.pin(5).held = False                    # a latching pull-cord left pulled while the controller was down
    doc = room_doc()
    async with RoomSim(parse_room(doc, "wired.toml"), tmp_path / "room.db") as sim:
        async with attach(sim.c, pin_factory=factory, scheduler=sched) as devices:   # GPIO 6 floats high: no cord
            await devices.settle()
            assert sorted(sim.types()) == ["bath_emergency", "cord_removed"]
            assert sim.call("bath_emergency")["detail"] == {"active_at_start": 1}
            assert {n["id"]: n["online"] for n in sim.c.snapshot()["nodes"]} == \
                {"bath": True, "bedside": True, "door": True}
    factory.reset()


# ---------------------------------------------------------------------- cancel, presence, reassurance
async def test_in_room_cancel_clears_the_emergency_and_the_dome_goes_dark(room, factory, sched):
    factory.pin(5).drive_low()
    await settle(room, sched)
    factory.pin(5).drive_high()
    factory.pin(26).drive_low()                   # staff presence: recorded, but a bath emergency stays
    await settle(room, sched)
    assert room.call("bath_emergency")["state"] == "present" and int(factory.pin(24).state) == 1
    factory.pin(26).drive_high()
    factory.pin(16).drive_low()                   # the in-room cancel
    await settle(room, sched)
    assert room.types() == []
    assert [int(factory.pin(p).state) for p in (17, 27, 22, 23)] == [0, 0, 0, 0]
    assert int(factory.pin(13).state) == 0, "no call, no tone"


async def test_reassurance_light_blinks_received_then_steady_acknowledged_then_off(room, factory, sched):
    led = factory.pin(25)
    factory.pin(4).drive_low()
    await settle(room, sched, 0.03)                # the press settles; the light comes on at once
    assert await trace(led, sched, 0.25, 8) == [1, 0, 0, 1, 1, 0, 0, 1], "received: 1 Hz blink (500/500 ms)"
    await room.c.acknowledge(room.call("patient_call")["id"], "Nurse Kim")
    assert await trace(led, sched, 0.25, 6) == [1] * 6, "acknowledged: steady"
    await room.c.clear(room.call("patient_call")["id"], "Nurse Kim")
    assert int(led.state) == 0
    assert sched.pending == 3, "nothing blinks: only the three nodes' check-in timers are left"


# ---------------------------------------------------------------------- dome and tone patterns
async def test_dome_and_tone_follow_the_highest_call_with_its_pattern(room, factory, sched):
    red, white, yellow, presence, tone = (factory.pin(p) for p in (17, 27, 23, 24, 13))
    factory.pin(4).drive_low()                     # patient call: white steady, medium tone
    await settle(room, sched, 0.03)
    for p in (red, white, tone):
        p.clear_states()
    assert await trace(white, sched, 0.25, 8) == [1] * 8
    assert states(tone) == [0, 1, 0], "medium: 250 ms on (from the call), 1250 ms off, on again, off"
    factory.pin(5).drive_low()                     # bath emergency on top: red fast, high tone
    await settle(room, sched, 0.03)
    assert int(white.state) == 0
    red.clear_states(); tone.clear_states()
    assert await trace(red, sched, 0.25, 8) == [0, 1, 0, 1, 0, 1, 0, 1], "fast: 2 Hz (250/250 ms)"
    assert states(tone) == [0, 1] * 6 + [0], "high: 150/150 ms bursts"
    await room.c.silence_tone("Nurse Kim")
    assert int(tone.state) == 0
    red.clear_states()
    await sched.advance(2.0)
    assert len(states(red)) == 8, "silencing the tone never changes the light"
    assert int(presence.state) == 0


def test_patterns_are_the_firmwares_numbers():
    tone_src = (ROOT / "firmware/drivers/tone.py").read_text()
    ms = {name: int(v) for name, v in re.findall(r"^_(\w+)_MS = const\((\d+)\)", tone_src, re.M)}
    for level in ("high", "medium", "low"):
        blink = TONE_PATTERNS[level]
        assert (round(blink.on_s * 1000), round(blink.off_s * 1000)) == \
            (ms[f"{level.upper()}_ON"], ms[f"{level.upper()}_OFF"])
    ind_src = (ROOT / "firmware/drivers/indicator.py").read_text()
    # the firmware writes its indicator times as numbers in the table (each const name costs its heap)
    on_ms, off_ms = map(int, re.search(r'\("received", (\d+), (\d+)\)', ind_src).groups())
    assert INDICATOR_PATTERNS["received"] == Blink(on_ms / 1000, off_ms / 1000)
    # IEC 60601-1-8 visual signals: high 1.4-2.8 Hz, medium 0.4-0.8 Hz, 20-60 % duty
    for name, (lo_hz, hi_hz) in {"fast": (1.4, 2.8), "slow": (0.4, 0.8)}.items():
        blink = DOME_PATTERNS[name]
        period = blink.on_s + blink.off_s
        assert lo_hz <= 1 / period <= hi_hz and 0.2 <= blink.on_s / period <= 0.6


async def test_pattern_output_keeps_its_phase_when_told_the_same_pattern(factory, sched):
    from gpiozero import LED

    lamp = PatternOutput(LED(17, pin_factory=factory), sched)
    pin = factory.pin(17)
    lamp.play(DOME_PATTERNS["slow"])
    await sched.advance(0.5)
    lamp.play(DOME_PATTERNS["slow"])               # a room update that leaves the dome alone
    await sched.advance(0.6)
    assert states(pin) == [1, 0]                   # went off at 1.0 s, not restarted at 0.5 s
    lamp.play(DOME_PATTERNS["off"])
    assert int(pin.state) == 0 and sched.pending == 0
    lamp.close()


async def test_a_dome_without_a_blue_lamp_shows_a_code_call_on_red(tmp_path, factory, sched):
    doc = room_doc()
    doc["nodes"]["door"]["gpio"]["outputs"]["dome"].pop("blue")
    doc["nodes"]["door"]["inputs"]["code"] = "code_call"
    doc["nodes"]["door"]["gpio"]["inputs"]["code"] = 21
    async with RoomSim(parse_room(doc, "wired.toml"), tmp_path / "room.db") as sim:
        async with attach(sim.c, pin_factory=factory, scheduler=sched) as devices:
            factory.pin(21).drive_low()
            await sched.advance(0.03)
            await devices.settle()
            assert sim.types() == ["code_call"]
            red = factory.pin(17)
            red.clear_states()
            assert await trace(red, sched, 0.25, 4) == [0, 1, 0, 1]


# ---------------------------------------------------------------------- supervision of the node itself
async def test_the_wired_node_checks_in_so_the_room_never_sees_it_offline(room, sched):
    for _ in range(60):
        room.clock.ms += 1000
        await sched.advance(1.0)
        await room.devices.settle()
        await room.c.tick()
    assert [r for r in await room.log("node.offline")] == []


async def test_gpio_that_cannot_be_opened_is_a_system_fault_and_the_room_runs_on(tmp_path, sched):
    from gpiozero.exc import BadPinFactory

    class NoGpio(MockFactory):
        def pin(self, name, pin_class=None, **kwargs):
            raise BadPinFactory("Unable to load any default pin factory!")

    async with RoomSim(parse_room(room_doc(), "wired.toml"), tmp_path / "room.db") as sim:
        async with attach(sim.c, pin_factory=NoGpio(), scheduler=sched) as devices:
            await devices.settle()
            fault = sim.call("system_fault")
            assert fault["source"]["input"] == "system:gpio"
            assert fault["detail"]["nodes"] == ["bath", "bedside", "door"]
            assert "BadPinFactory" in fault["detail"]["error"] and devices.gpio_errors.keys() == {"bath", "bedside", "door"}
