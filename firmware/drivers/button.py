# Debounced digital inputs: the IRQ only raises a flag; a task confirms the level once the
# contacts have settled. Used for call buttons here and for presence inputs in pir.py.
#
# Wiring (call button): one side of the switch to the GPIO, the other to GND; the internal
# pull-up holds the pin high, a press pulls it low (active-low):
#
#     hal = ...; b = Button(hal.pin_in("call", True), hal, "call", emit)
#     asyncio.create_task(b.run())     # emit("button", "call", 1, at_ms) once per press
from micropython import const

# Contact bounce of a push button or pull-cord switch lasts up to ~10 ms; 30 ms rides it out
# with margin and is still far below what a person notices (~100 ms).
_BUTTON_DEBOUNCE_MS = const(30)


class DebouncedInput:
    """One digital input. `active` is the confirmed logical level (1 = active)."""

    def __init__(self, pin, clock, name, active_level, debounce_ms):
        self._pin = pin
        self._clock = clock
        self.name = name
        self._active_level = active_level
        self._debounce_ms = debounce_ms
        self._flag = clock.irq_flag()  # asyncio.ThreadSafeFlag on a board
        self._quiet = True
        self.active = 1 if pin.value() == active_level else 0
        pin.irq(self._on_edge, pin.IRQ_FALLING | pin.IRQ_RISING)

    def _on_edge(self, _pin):
        # interrupt context: set flags, nothing else
        self._quiet = False
        self._flag.set()

    async def run(self):
        while True:
            await self._flag.wait()
            edge_ms = self._clock.ticks_ms()
            # Trust the level only after a whole debounce period without edges: however long
            # the contacts chatter, they are read once, after they have settled.
            while True:
                self._quiet = True
                await self._clock.sleep_ms(self._debounce_ms)
                if self._quiet:
                    break
            active = 1 if self._pin.value() == self._active_level else 0
            if active != self.active:
                self.active = active
                self.changed(active, edge_ms)

    def changed(self, active, at_ms):
        pass


class Button(DebouncedInput):
    """A call input (button, pull-cord, pendant): one `button` event per press, none on release.
    A glitch shorter than the debounce time makes no event."""

    def __init__(self, pin, clock, name, emit, debounce_ms=_BUTTON_DEBOUNCE_MS):
        super().__init__(pin, clock, name, 0, debounce_ms)
        self._emit = emit

    def changed(self, active, at_ms):
        if active:
            self._emit("button", self.name, 1, at_ms)
