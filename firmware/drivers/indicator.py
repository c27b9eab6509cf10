# Output patterns on a digital pin, and the reassurance light built on them.
#
# Reassurance light (IEC 60601-1-8 / nurse-call practice): off; "received" = slow blink, the
# call reached the station; "acknowledged" = steady on, a nurse is coming.
#
#     led = Indicator(hal.pin_out("led"), hal)
#     asyncio.create_task(led.run()); led.set("received")
import asyncio
from micropython import const

# 1 Hz: slow enough to read as "waiting" rather than an alarm, and clearly not steady.
_BLINK_ON_MS = const(500)
_BLINK_OFF_MS = const(500)

# (name, on_ms, off_ms): on_ms 0 = off, off_ms 0 = steady on
INDICATOR_PATTERNS = (("off", 0, 0), ("received", _BLINK_ON_MS, _BLINK_OFF_MS), ("acknowledged", 1, 0))


class PatternOutput:
    """Plays one named on/off pattern on an output pin; set() switches at once."""

    def __init__(self, pin, clock, kind, patterns):
        self._pin = pin
        self._clock = clock
        self.kind = kind
        self._patterns = patterns
        self._on_ms = 0
        self._off_ms = 0
        self.pattern = patterns[0][0]
        self._changed = asyncio.Event()
        pin.value(0)

    def set(self, name):
        for p in self._patterns:
            if p[0] == name:
                break
        else:
            raise ValueError("unknown %s pattern %s" % (self.kind, name))
        if name == self.pattern:
            return
        self.pattern, self._on_ms, self._off_ms = p
        self._clock.log(self.kind, "pattern=" + name)
        self._pin.value(1 if self._on_ms else 0)  # steady states take effect now
        self._changed.set()

    def _blinking(self, name):
        return self.pattern == name and self._on_ms and self._off_ms

    async def run(self):
        while True:
            name = self.pattern
            if not self._blinking(name):
                self._changed.clear()
                await self._changed.wait()
                continue
            self._pin.value(1)
            await self._clock.sleep_ms(self._on_ms)
            if not self._blinking(name):
                continue  # set() already drove the pin for the new pattern
            self._pin.value(0)
            await self._clock.sleep_ms(self._off_ms)


class Indicator(PatternOutput):
    def __init__(self, pin, clock):
        super().__init__(pin, clock, "indicator", INDICATOR_PATTERNS)
