# Debounced inputs (drivers/button.py, drivers/pir.py) against simulated pins on virtual time.
import asyncio

from drivers.button import Button
from drivers.pir import Presence
from hal.sim import SimPin
from mpcheck import FakeClock, check, done


async def chatter(clock, pin, settled, toggles_ms):
    # contact bounce: the pin leaves `settled` for each listed time, 1 ms back between them
    for ms in toggles_ms:
        pin.drive(1 - settled)
        await clock.advance(ms)
        pin.drive(settled)
        await clock.advance(1)


async def main():
    clock = FakeClock()
    events = []

    def emit(kind, src, val, at_ms):
        events.append((kind, src, val, at_ms))

    call_pin = SimPin(clock, "call", 1)
    call = Button(call_pin, clock, "call", emit)
    pir_pin = SimPin(clock, "pir", 0)
    pir = Presence(pir_pin, clock, "pir", emit)
    asyncio.create_task(call.run())
    asyncio.create_task(pir.run())
    await clock.advance(10)

    # a press with contact bounce on both edges: one event, stamped with the first edge
    clock_at_press = clock.now
    call_pin.drive(0)
    await clock.advance(2)
    await chatter(clock, call_pin, 0, (1, 3, 2))
    await clock.advance(300)
    check("bounced press: one event", events == [("button", "call", 1, clock_at_press)], events)
    check("bounced press: level is active", call.active == 1)
    call_pin.drive(1)
    await chatter(clock, call_pin, 1, (2, 1, 3))
    await clock.advance(200)
    check("release: no event", len(events) == 1, events)
    check("release: level is inactive", call.active == 0)

    # glitches shorter than the debounce time: no event
    for glitch_ms in (1, 5, 20):
        events.clear()
        call_pin.drive(0)
        await clock.advance(glitch_ms)
        call_pin.drive(1)
        await clock.advance(200)
        check("glitch %d ms: no event" % glitch_ms, events == [], events)

    # contacts chattering for longer than the debounce time still make one event
    events.clear()
    call_pin.drive(0)
    await chatter(clock, call_pin, 0, (2,) * 25)
    await clock.advance(200)
    check("75 ms of chatter: one event", len(events) == 1, events)
    call_pin.drive(1)
    await clock.advance(200)

    # a late bounce, then one exactly when a sample-once debouncer would read the pin: a debouncer
    # that trusts one sample per wake-up would see the release and then a second press
    events.clear()
    call_pin.drive(0)
    await clock.advance(40)
    await chatter(clock, call_pin, 0, (1,))    # away 40-41
    await clock.advance(27)
    await chatter(clock, call_pin, 0, (3,))    # away 69-72, across the 30 ms after 41
    await clock.advance(300)
    check("bounce at the sample time: one event", len(events) == 1, events)
    call_pin.drive(1)
    await clock.advance(200)

    # two separate presses: two events
    events.clear()
    for _ in range(2):
        call_pin.drive(0)
        await clock.advance(150)
        call_pin.drive(1)
        await clock.advance(150)
    check("two presses: two events", len(events) == 2, events)

    # presence: both changes are events; a 30 ms spike is not
    events.clear()
    pir_pin.drive(1)
    await clock.advance(30)
    pir_pin.drive(0)
    await clock.advance(300)
    check("pir spike: no event", events == [], events)
    pir_pin.drive(1)
    await clock.advance(300)
    pir_pin.drive(0)
    await clock.advance(300)
    check("presence on/off: two events", [(e[0], e[2]) for e in events] == [("presence", 1), ("presence", 0)],
          events)


asyncio.run(main())
done()
