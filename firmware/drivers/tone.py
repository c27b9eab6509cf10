# Buzzer (an active buzzer on a digital pin) playing alarm-priority patterns.
#
#     t = Tone(hal.pin_out("buzzer"), hal); asyncio.create_task(t.run()); t.set("high")
from micropython import const

from drivers.indicator import PatternOutput

# Shaped after IEC 60601-1-8 priorities without its melodies: the higher the priority, the
# faster the pulses. High 3 Hz, medium every 1.5 s, low once every 5 s.
_HIGH_ON_MS = const(150)
_HIGH_OFF_MS = const(150)
_MEDIUM_ON_MS = const(250)
_MEDIUM_OFF_MS = const(1250)
_LOW_ON_MS = const(250)
_LOW_OFF_MS = const(4750)

TONE_PATTERNS = (("off", 0, 0), ("high", _HIGH_ON_MS, _HIGH_OFF_MS),
                 ("medium", _MEDIUM_ON_MS, _MEDIUM_OFF_MS), ("low", _LOW_ON_MS, _LOW_OFF_MS))


class Tone(PatternOutput):
    def __init__(self, pin, clock):
        super().__init__(pin, clock, "tone", TONE_PATTERNS)
