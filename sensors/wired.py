"""Wired devices on the room controller's own GPIO: call inputs in, dome light, tone and reassurance out.

A room file node with ``transport = "gpio"`` is a set of contacts and lamps wired to the Pi
(hardware/pi-room-controller.md). Its ``[nodes.<id>.gpio]`` table says which pin is what::

    [nodes.bedside-a-wired]
    transport = "gpio"
    bed = "A"
    indicator = true
    inputs = { call = "patient_call", pad = "bed_occupancy" }   # input name -> meaning, as for any node

    [nodes.bedside-a-wired.gpio.inputs]
    call = { pin = 4, supervision = "nc", sense_pin = 5 }  # call cord: button on 4, plug loop on 5
    pad = { pin = 12, bounce_ms = 1000 }                     # bed pad controller's relay, closed = in bed

    [nodes.bedside-a-wired.gpio.outputs]
    reassurance = 25

    [nodes.door]
    transport = "gpio"
    tone = true
    inputs = { cancel = "cancel", presence = "staff_presence" }

    [nodes.door.gpio.inputs]
    cancel = { pin = 16 }
    presence = { pin = 26 }

    [nodes.door.gpio.outputs]
    dome = { red = 17, white = 27, blue = 22, yellow = 23, presence = 24 }
    tone = 13

Inputs are debounced on the settled level (a change counts once the contact has held still for
``bounce_ms``), report to the controller in order through the outbox, and a supervised call
cord reports "cord removed" (fault 4) and "plugged in again" (fault 0). Outputs follow
``controller.outputs()`` on every change of the room, so the dome over the door keeps showing the
room's calls with the network down: nothing between a wired pull-cord and the dome leaves the Pi.

Every device takes ``pin_factory`` like gpiozero's own (None: gpiozero's default, lgpio on a Pi 5)
and a ``scheduler`` for time (sensors/clock.py)::

    >>> from gpiozero.pins.mock import MockFactory
    >>> from sensors.clock import ManualScheduler
    >>> cord = SettledInput(5, scheduler=ManualScheduler(), pin_factory=MockFactory())
    >>> cord.when_changed = lambda active: print("pulled" if active else "let go")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from controller.room.config import NodeConfig, OptionError

from . import _options as opt
from .clock import Cancellable, Scheduler
from .errors import WiringError
from .meanings import input_event
from .outbox import Outbox
from .patterns import DOME_PATTERNS, INDICATOR_PATTERNS, OFF, STEADY, TONE_PATTERNS, PatternOutput

if TYPE_CHECKING:
    from controller.room import RoomOutputs
    from controller.service import RoomController

log = logging.getLogger("smartroom.sensors.wired")

# Contact bounce of a push button or pull-cord switch lasts up to ~10 ms; 30 ms rides it out with
# margin and is far below what a person notices (~100 ms). The firmware's buttons use the same.
DEFAULT_BOUNCE_MS = 30
# A cord plug wiggled in its socket makes and breaks its contact for a while; "removed" counts
# after a quarter second of steady open contact, so the alarm does not flap on a wiggle.
CORD_SETTLE_MS = 250
FAULT_CORD_REMOVED = 4   # controller/room/supervision.py's fault code for a pulled-out call cord
FAULT_CLEARED = 0

FIRMWARE = "smartroom-gpio 1"
HARDWARE = "raspberry-pi"

# BCM numbers on the 40-pin header. GPIO 0/1 are the HAT ID EEPROM's I2C bus.
PIN_RANGE = (2, 27)
PULLS = ("up", "down", "none")
SUPERVISION = ("none", "nc", "eol")
DOME_COLOURS = ("red", "white", "blue", "yellow", "orange")  # controller/room/calls.py CALL_TYPES' dome colours
# A dome without a lamp of some colour shows it on the nearest one it has: a code call on the
# red lamp (still fast flashing), staff assist and technical alarms on amber or yellow.
COLOUR_FALLBACK: Mapping[str, tuple[str, ...]] = {"blue": ("red",), "orange": ("yellow",), "yellow": ("orange",)}
_REQUIRED_LAMPS = ("red", "white", "presence")
KeyPathText = tuple[str | int, ...]


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class InputWiring:
    pin: int
    pull: str = "up"            # the Pi's internal resistor: up, down or none (an external one)
    active_high: bool = False   # the level that means pressed / occupied
    bounce_ms: int = DEFAULT_BOUNCE_MS
    supervision: str = "none"   # none | nc (cord-present contact) | eol (end-of-line resistor + comparator)
    sense_pin: int | None = None  # the supervision signal: high = cord removed (pulled up, contact to GND)


@dataclass(frozen=True, slots=True)
class OutputPin:
    pin: int
    active_high: bool = True    # false for a low-side relay board that switches on a low level


@dataclass(frozen=True, slots=True)
class DomeWiring:
    lamps: Mapping[str, OutputPin]  # call colour -> lamp
    presence: OutputPin             # the green staff-presence lamp


@dataclass(frozen=True, slots=True)
class OutputWiring:
    dome: DomeWiring | None = None
    tone: OutputPin | None = None
    reassurance: OutputPin | None = None

    def pins(self) -> list[int]:
        found = [self.tone, self.reassurance]
        if self.dome is not None:
            found += [*self.dome.lamps.values(), self.dome.presence]
        return [p.pin for p in found if p is not None]


def parse_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``[nodes.<id>.gpio]`` table: ``{"inputs": {name: InputWiring}, "outputs": OutputWiring}``.

    Raises ``OptionError(path, message)``; the room loader adds the file, line and node.
    """
    opt.only(table, (), ("inputs", "outputs"))
    if not table:
        raise OptionError((), "a gpio node needs 'inputs' or 'outputs' (which pins are wired to what)")
    inputs = {name: _parse_input(spec, ("inputs", name))
              for name, spec in opt.typed(table.get("inputs", {}), ("inputs",), dict).items()}
    outputs = _parse_outputs(opt.typed(table.get("outputs", {}), ("outputs",), dict))
    used: dict[int, KeyPathText] = {}
    for name, wiring in inputs.items():
        _claim(used, wiring.pin, ("inputs", name, "pin"))
        if wiring.sense_pin is not None:
            _claim(used, wiring.sense_pin, ("inputs", name, "sense_pin"))
    for pin in outputs.pins():
        _claim(used, pin, ("outputs",))
    return {"inputs": MappingProxyType(inputs), "outputs": outputs}


def _claim(used: dict[int, KeyPathText], pin: int, path: KeyPathText) -> None:
    if pin in used:
        raise OptionError(path, f"GPIO {pin} is already used by {'.'.join(map(str, used[pin]))}")
    used[pin] = path


def _pin(value: Any, path: KeyPathText) -> int:
    pin = opt.typed(value, path, int)
    lo, hi = PIN_RANGE
    if not lo <= pin <= hi:
        raise OptionError(path, f"GPIO {pin} is not usable: allowed {lo} to {hi} (BCM numbers; 0 and 1 "
                                "belong to the HAT ID EEPROM)")
    return pin


def _parse_input(spec: Any, path: KeyPathText) -> InputWiring:
    if isinstance(spec, int) and not isinstance(spec, bool):
        return InputWiring(_pin(spec, path))  # `call = 5`: a contact to GND with the internal pull-up
    spec = opt.typed(spec, path, dict)
    opt.only(spec, path, ("pin", "pull", "active", "bounce_ms", "supervision", "sense_pin"))
    if "pin" not in spec:
        raise OptionError(path + ("pin",), "missing option 'pin'")
    pull = opt.choice(spec, path, "pull", PULLS, "up")
    active = opt.choice(spec, path, "active", ("low", "high"), None)
    if active is None:
        if pull == "none":
            raise OptionError(path + ("active",), "with pull = \"none\", say which level is active: \"low\" or \"high\"")
        active = "low" if pull == "up" else "high"
    supervision = opt.choice(spec, path, "supervision", SUPERVISION, "none")
    sense_pin = None
    if supervision == "none" and "sense_pin" in spec:
        raise OptionError(path + ("sense_pin",), "sense_pin needs supervision = \"nc\" or \"eol\"")
    if supervision != "none":
        if "sense_pin" not in spec:
            raise OptionError(path + ("sense_pin",), f"supervision = \"{supervision}\" needs sense_pin "
                                                     "(the pin that reads whether the cord is plugged in)")
        sense_pin = _pin(spec["sense_pin"], path + ("sense_pin",))
    return InputWiring(
        pin=_pin(spec["pin"], path + ("pin",)), pull=pull, active_high=active == "high",
        bounce_ms=opt.integer(spec, path, "bounce_ms", DEFAULT_BOUNCE_MS, 0, 1000),
        supervision=supervision, sense_pin=sense_pin)


def _output_pin(value: Any, path: KeyPathText) -> OutputPin:
    if isinstance(value, dict):
        opt.only(value, path, ("pin", "active_high"))
        if "pin" not in value:
            raise OptionError(path + ("pin",), "missing option 'pin'")
        active_high = opt.typed(value.get("active_high", True), path + ("active_high",), bool)
        return OutputPin(_pin(value["pin"], path + ("pin",)), active_high)
    return OutputPin(_pin(value, path))


def _parse_outputs(table: Mapping[str, Any]) -> OutputWiring:
    path = ("outputs",)
    opt.only(table, path, ("dome", "tone", "reassurance"))
    dome = None
    if "dome" in table:
        dpath = path + ("dome",)
        spec = opt.typed(table["dome"], dpath, dict)
        opt.only(spec, dpath, (*DOME_COLOURS, "presence"))
        for key in _REQUIRED_LAMPS:
            if key not in spec:
                raise OptionError(dpath + (key,), f"a dome light needs a '{key}' lamp (needs red, white, presence "
                                                  "and yellow or orange)")
        if "yellow" not in spec and "orange" not in spec:
            raise OptionError(dpath, "a dome light needs a 'yellow' or an 'orange' lamp for staff assist and "
                                     "technical alarms")
        lamps = {c: _output_pin(spec[c], dpath + (c,)) for c in DOME_COLOURS if c in spec}
        dome = DomeWiring(MappingProxyType(lamps), _output_pin(spec["presence"], dpath + ("presence",)))
    return OutputWiring(
        dome=dome,
        tone=_output_pin(table["tone"], path + ("tone",)) if "tone" in table else None,
        reassurance=_output_pin(table["reassurance"], path + ("reassurance",)) if "reassurance" in table else None)


# --------------------------------------------------------------------------- devices


class SettledInput:
    """A digital input whose new level counts once it has held still for ``settle_s``.

    Unlike a leading-edge debounce, a spike shorter than ``settle_s`` (a long cord picking up a
    lift motor, a bouncing contact) is never reported; a real press is reported ``settle_s``
    after its last bounce. ``when_changed(active)`` runs on the scheduler's thread.

    Wiring: a call button or pull-cord between the GPIO and GND with the internal pull-up
    (``pull="up"``, active low, the default); a PIR or bed-pad module that drives its output
    high (``pull="down"``, active high); an external pull resistor (``pull="none"`` and say the
    active level). A normally-closed contact to GND with the pull-up is ``active_high=True``.
    """

    def __init__(self, pin: int, *, pull: str = "up", active_high: bool | None = None,
                 settle_s: float = DEFAULT_BOUNCE_MS / 1000, scheduler: Scheduler, pin_factory: Any = None) -> None:
        from gpiozero import DigitalInputDevice

        if active_high is None:
            if pull == "none":
                raise ValueError("pull='none' needs active_high")
            active_high = pull == "down"
        pull_up = {"up": True, "down": False, "none": None}[pull]
        self.device = DigitalInputDevice(pin, pull_up=pull_up, active_state=active_high if pull_up is None else None,
                                         bounce_time=None, pin_factory=pin_factory)
        # gpiozero ties the active level to the pull (up: active low); invert for a normally-closed contact
        self._invert = pull_up is not None and active_high == pull_up
        self._scheduler = scheduler
        self._settle_s = settle_s
        self._timer: Cancellable | None = None
        self.active = self.is_active
        self.when_changed: Callable[[bool], None] | None = None
        self.device.when_activated = self._edge
        self.device.when_deactivated = self._edge

    @property
    def is_active(self) -> bool:
        """The level now, settled or not."""
        return bool(self.device.is_active) != self._invert

    def _edge(self) -> None:
        # gpiozero calls this on its own thread (lgpio's callback thread on a Pi)
        self._scheduler.call_soon_threadsafe(self._restart)

    def _restart(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._scheduler.call_later(self._settle_s, self._settled)

    def _settled(self) -> None:
        self._timer = None
        active = self.is_active
        if active != self.active:
            self.active = active
            if self.when_changed is not None:
                self.when_changed(active)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.device.close()


class DomeLight:
    """The corridor dome light: one lamp per call colour, flashing per priority, and the presence lamp.

    ``show("red", "fast", presence=True)`` flashes the red lamp at 2 Hz, puts the others out and
    lights the green presence lamp. A colour the dome has no lamp for is shown on its fallback
    (:data:`COLOUR_FALLBACK`).
    """

    def __init__(self, wiring: DomeWiring, *, scheduler: Scheduler, pin_factory: Any = None) -> None:
        from gpiozero import LED

        self.wiring = wiring
        self.lamps: dict[str, PatternOutput] = {}
        try:
            for colour, p in wiring.lamps.items():
                self.lamps[colour] = PatternOutput(LED(p.pin, active_high=p.active_high, pin_factory=pin_factory),
                                                   scheduler)
            p = wiring.presence
            self.presence = PatternOutput(LED(p.pin, active_high=p.active_high, pin_factory=pin_factory), scheduler)
        except Exception:
            for lamp in self.lamps.values():
                lamp.close()
            raise

    def lamp_for(self, colour: str) -> str | None:
        if colour == "off":
            return None
        for candidate in (colour, *COLOUR_FALLBACK.get(colour, ()), "red"):
            if candidate in self.lamps:
                return candidate
        return None

    def show(self, colour: str, pattern: str, presence: bool) -> None:
        lit = self.lamp_for(colour)
        for name, lamp in self.lamps.items():
            if name != lit:
                lamp.play(OFF)
        if lit is not None:
            self.lamps[lit].play(DOME_PATTERNS.get(pattern, STEADY))
        self.presence.play(STEADY if presence else OFF)

    def close(self) -> None:
        for lamp in (*self.lamps.values(), self.presence):
            lamp.close()


# --------------------------------------------------------------------------- one gpio node


class WiredNode:
    """The wired devices of one ``transport = "gpio"`` node, reporting to and following the room."""

    def __init__(self, controller: "RoomController", node: NodeConfig, *, outbox: Outbox, scheduler: Scheduler,
                 pin_factory: Any = None) -> None:
        self.controller = controller
        self.node = node
        self.inputs: Mapping[str, InputWiring] = node.options.get("inputs", {})
        self.wiring: OutputWiring = node.options.get("outputs", OutputWiring())
        self._outbox = outbox
        self._scheduler = scheduler
        self._pin_factory = pin_factory
        self.devices: dict[str, SettledInput] = {}
        self.cords: dict[str, SettledInput] = {}
        self.dome: DomeLight | None = None
        self.tone: PatternOutput | None = None
        self.reassurance: PatternOutput | None = None
        self._check_in: Cancellable | None = None
        self._open = False

    @property
    def check_in_s(self) -> float:
        """How often the node tells the controller it is alive: its own interval, or the heartbeat."""
        return (self.node.check_in_ms or self.controller.config.heartbeat_ms) / 1000

    def open(self) -> None:
        """Claim the pins; on failure nothing stays claimed and the error is raised."""
        try:
            self._open_devices()
        except BaseException:
            self.close()
            raise
        self._open = True
        self.controller.on_outputs_changed(self._follow_room)
        self._follow_room()

    def _open_devices(self) -> None:
        from gpiozero import LED, Buzzer

        sched, factory = self._scheduler, self._pin_factory
        for name, w in self.inputs.items():
            device = SettledInput(w.pin, pull=w.pull, active_high=w.active_high, settle_s=w.bounce_ms / 1000,
                                  scheduler=sched, pin_factory=factory)
            self.devices[name] = device
            device.when_changed = partial(self._input_changed, name)
            if w.sense_pin is not None:
                cord = SettledInput(w.sense_pin, pull="up", active_high=True, settle_s=CORD_SETTLE_MS / 1000,
                                    scheduler=sched, pin_factory=factory)
                self.cords[name] = cord
                cord.when_changed = partial(self._cord_changed, name)
        if self.wiring.dome is not None:
            self.dome = DomeLight(self.wiring.dome, scheduler=sched, pin_factory=factory)
        if (p := self.wiring.tone) is not None:
            self.tone = PatternOutput(Buzzer(p.pin, active_high=p.active_high, pin_factory=factory), sched)
        if (p := self.wiring.reassurance) is not None:
            self.reassurance = PatternOutput(LED(p.pin, active_high=p.active_high, pin_factory=factory), sched)

    def report_start(self) -> None:
        """Tell the room the node works and what its inputs show now (a cord pulled while we were down)."""
        from controller.room import CALL_INPUTS

        node = self.node.id
        caps = tuple(sorted({"button"} | ({"dome"} if self.dome else set()) | ({"tone"} if self.tone else set())
                            | ({"indicator"} if self.reassurance else set())))
        self._send("online", lambda: self.controller.local_online(node, FIRMWARE, HARDWARE, caps))
        for name, cord in self.cords.items():
            self._cord_changed(name, cord.active)
        for name, device in self.devices.items():
            meaning = self.node.inputs.get(name)
            if meaning in CALL_INPUTS and device.active:
                # a latching pull-cord still pulled: the call may have been made while we were down
                self._send(f"{name} active at start",
                           lambda n=name: self.controller.local_event(node, "button", n, 1, {"active_at_start": 1}))
            elif input_event(meaning, True) == ("presence", 1):
                self._input_changed(name, device.active)
        self._schedule_check_in()

    def _send(self, what: str, send: Callable[[], Any]) -> None:
        self._outbox.put(f"{self.node.id}: {what}", send)

    def _input_changed(self, name: str, active: bool) -> None:
        event = input_event(self.node.inputs.get(name), active)
        if event is not None:
            kind, val = event
            self._send(f"{name} {kind}={val}", lambda: self.controller.local_event(self.node.id, kind, name, val))

    def _cord_changed(self, name: str, removed: bool) -> None:
        val = FAULT_CORD_REMOVED if removed else FAULT_CLEARED
        detail = {"supervision": self.inputs[name].supervision}
        self._send(f"{name} cord {'removed' if removed else 'in'}",
                   lambda: self.controller.local_event(self.node.id, "fault", name, val, detail))

    def _schedule_check_in(self) -> None:
        self._check_in = self._scheduler.call_later(self.check_in_s, self._checked_in)

    def _checked_in(self) -> None:
        if not self._open:
            return
        try:
            for device in (*self.devices.values(), *self.cords.values()):
                device.is_active  # the GPIO chip still answers
        except Exception:  # lgpio errors are not GPIOZeroErrors; any failure means no check-in
            log.exception("%s: GPIO read failed; not checking in (the room will show the node offline)",
                          self.node.id)
        else:
            self._send("check-in", self._seen)
        self._schedule_check_in()

    async def _seen(self) -> None:
        self.controller.local_seen(self.node.id)

    def _follow_room(self) -> None:
        if not self._open:
            return  # closed: the controller keeps its listeners, we stop listening
        try:
            self.show(self.controller.outputs())
        except Exception:  # a broken lamp driver must not break the commit that called us
            log.exception("%s: could not update the outputs", self.node.id)

    def show(self, outputs: "RoomOutputs") -> None:
        if self.dome is not None:
            self.dome.show(outputs.dome_colour, outputs.dome_pattern, outputs.presence)
        if self.tone is not None:
            self.tone.play(TONE_PATTERNS.get(outputs.tone, TONE_PATTERNS["high"]))
        if self.reassurance is not None:
            state = dict(outputs.indicators).get(self.node.id, "off")
            self.reassurance.play(INDICATOR_PATTERNS.get(state, OFF))

    def close(self) -> None:
        self._open = False
        if self._check_in is not None:
            self._check_in.cancel()
        for part in (*self.devices.values(), *self.cords.values(), self.dome, self.tone, self.reassurance):
            if part is not None:
                part.close()
        self.devices, self.cords = {}, {}
        self.dome = self.tone = self.reassurance = None


def check_wiring(nodes: Mapping[str, NodeConfig]) -> None:
    """What one node's options cannot see: meanings, the node's flags, pins shared between nodes."""
    used: dict[int, str] = {}
    for node in nodes.values():
        inputs: Mapping[str, InputWiring] = node.options.get("inputs", {})
        outputs: OutputWiring = node.options.get("outputs", OutputWiring())
        where = f"nodes.{node.id}"
        for name in inputs:
            if name not in node.inputs:
                raise WiringError(f"{where}.gpio.inputs.{name}: the node's 'inputs' gives '{name}' no meaning "
                                  f"(e.g. inputs = {{ {name} = \"patient_call\" }} under [{where}])")
        for name in node.inputs:
            if name not in inputs:
                raise WiringError(f"{where}.inputs.{name}: no pin for this input under [{where}.gpio.inputs]")
        if outputs.tone is not None and not node.tone:
            raise WiringError(f"{where}.gpio.outputs.tone: a tone output needs tone = true on the node")
        if outputs.reassurance is not None and not node.indicator:
            raise WiringError(f"{where}.gpio.outputs.reassurance: a reassurance light needs indicator = true on the node")
        pins = [w.pin for w in inputs.values()] + [w.sense_pin for w in inputs.values() if w.sense_pin is not None]
        for pin in pins + outputs.pins():
            if pin in used and used[pin] != node.id:
                raise WiringError(f"{where}.gpio: GPIO {pin} is also wired to node '{used[pin]}'")
            used[pin] = node.id
