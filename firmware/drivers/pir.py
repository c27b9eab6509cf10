# Presence input: a PIR module's push-pull output (e.g. HC-SR501, active high). Both changes
# become `presence` events (val 1 present, 0 absent).
#
#     p = Presence(hal.pin_in("pir", False), hal, "pir", emit)
#     asyncio.create_task(p.run())
from micropython import const

from drivers.button import DebouncedInput

# A PIR output is clean, but a long cable in a hospital room picks up spikes from other gear:
# 50 ms rejects them and is nothing against the module's own seconds-long hold time.
_PIR_SETTLE_MS = const(50)


class Presence(DebouncedInput):
    def __init__(self, pin, clock, name, emit, settle_ms=_PIR_SETTLE_MS):
        super().__init__(pin, clock, name, 1, settle_ms)
        self._emit = emit

    def changed(self, active, at_ms):
        self._emit("presence", self.name, active, at_ms)
