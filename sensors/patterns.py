"""On/off patterns for the room's lamps and sounders, played on a scheduler.

The numbers are the room's visual and audible alarm language (IEC 60601-1-8 shapes, without its
melodies). They are the same as the nodes' firmware (``firmware/drivers/tone.py`` and
``indicator.py``), so a patient hears and sees the same thing from a wired bedside unit as from
a sensor node; ``tests/test_sensors_wired.py`` checks that the two stay equal.

Why not gpiozero's own ``LED.blink()``: it runs one thread per output on wall-clock time, which a
test can only watch by sleeping, and the dome's colours must switch as one. :class:`PatternOutput`
drives a gpiozero device (``LED``, ``Buzzer``, any ``OutputDevice``) with ``on()``/``off()`` from
the scheduler's timers instead: the asyncio loop on the Pi, a ManualScheduler in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from .clock import Cancellable, Scheduler


@dataclass(frozen=True, slots=True)
class Blink:
    """``on_s`` on, then ``off_s`` off, repeated. ``off_s == 0`` is steady on; ``on_s == 0`` is off."""

    on_s: float
    off_s: float

    @property
    def steady(self) -> bool:
        return self.on_s > 0 and self.off_s == 0

    @property
    def dark(self) -> bool:
        return self.on_s == 0


OFF = Blink(0.0, 0.0)
STEADY = Blink(1.0, 0.0)

# Corridor dome light (RoomOutputs.dome_pattern). IEC 60601-1-8 visual alarm signals: high
# priority flashes at 1.4-2.8 Hz, medium at 0.4-0.8 Hz, both with a 20-60 % duty cycle; low is steady.
DOME_FAST = Blink(0.25, 0.25)   # 2 Hz, 50 %
DOME_SLOW = Blink(1.0, 1.0)     # 0.5 Hz, 50 %
DOME_PATTERNS: Mapping[str, Blink] = {"off": OFF, "steady": STEADY, "slow": DOME_SLOW, "fast": DOME_FAST}

# In-room tone (RoomOutputs.tone): firmware/drivers/tone.py's TONE_PATTERNS. The higher the
# priority, the faster the pulses: high 3 Hz bursts, medium every 1.5 s, low once every 5 s.
TONE_PATTERNS: Mapping[str, Blink] = {
    "off": OFF,
    "high": Blink(0.150, 0.150),
    "medium": Blink(0.250, 1.250),
    "low": Blink(0.250, 4.750),
}

# Reassurance light at the bedside (RoomOutputs.indicators): firmware/drivers/indicator.py.
# "received": a 1 Hz blink, the call reached the station; "acknowledged": steady, a nurse is coming.
INDICATOR_PATTERNS: Mapping[str, Blink] = {"off": OFF, "received": Blink(0.5, 0.5), "acknowledged": STEADY}


class Switchable(Protocol):
    """What PatternOutput needs of a gpiozero output device."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...


class PatternOutput:
    """Plays one :class:`Blink` on an output device; :meth:`play` switches at once.

    Playing the pattern that is already playing changes nothing, so a room update that leaves
    the dome's colour alone does not restart its flash phase.
    """

    def __init__(self, device: Switchable, scheduler: Scheduler) -> None:
        self.device = device
        self._scheduler = scheduler
        self._timer: Cancellable | None = None
        self.blink = OFF
        device.off()

    def play(self, blink: Blink) -> None:
        if blink == self.blink:
            return
        self.blink = blink
        self._cancel()
        if blink.dark:
            self.device.off()
        else:
            self._on()

    def _on(self) -> None:
        self.device.on()
        if not self.blink.steady:
            self._timer = self._scheduler.call_later(self.blink.on_s, self._off)

    def _off(self) -> None:
        self.device.off()
        self._timer = self._scheduler.call_later(self.blink.off_s, self._on)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._cancel()
        self.device.close()
