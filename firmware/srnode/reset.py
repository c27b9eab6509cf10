# Factory reset by a long press of the node's recessed reset button (pin map "reset"): forget Wi-Fi,
# key and controller, and start again as an unprovisioned node offering Improv.
#
#     asyncio.create_task(FactoryReset(hal.pin_in("reset", True), hal, flash, restart).run())
from micropython import const

# 10 s: far beyond any press meant for something else (a short press authorises Improv over BLE),
# and a button behind a hole cannot be held that long by accident.
FACTORY_RESET_HOLD_MS = const(10000)
# The button is sampled this often: a hold of FACTORY_RESET_HOLD_MS + POLL_MS always resets, one
# shorter than FACTORY_RESET_HOLD_MS never does.
POLL_MS = const(100)


class FactoryReset:
    """pin: active-low input with pull-up; flash: srnode.flashcfg.FlashConfig; restart(): the board's reset."""

    def __init__(self, pin, hal, flash, restart):
        self._pin = pin
        self._hal = hal
        self._flash = flash
        self._restart = restart

    async def run(self):
        hal = self._hal
        down_ms = -1  # when the button was first seen held, or -1
        while True:
            await hal.sleep_ms(POLL_MS)
            now = hal.ticks_ms()
            if self._pin.value():
                down_ms = -1
                continue
            if down_ms < 0:
                down_ms = now
            elif now - down_ms >= FACTORY_RESET_HOLD_MS:
                self._flash.wipe()
                hal.log("factory_reset", "held_ms=%d" % (now - down_ms))
                self._restart()
                return
