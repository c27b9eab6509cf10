# Plays a scenario file on the simulated board, on the node's own clock.
#
# {"steps": [step, ...], "end_ms": optional}. A step has "at_ms" and one or more actions:
#   {"pin": "call", "press_ms": 300, "bounce": true}  drive active, release press_ms later
#   {"pin": "pir", "level": 1}                        set a level
#   {"sht3x": {"temp_c": 22.1, "rh_pct": 45.0, "fault": "none" | "crc" | "silent"}}
#   {"co2_ppm": 650} or {"mhz19b": {"co2_ppm": 650, "fault": ...}}
#   {"accel": "still" | "walk" | "fall"} or {"accel_mg": [[x, y, z], ...], "rate_hz": 50}
#   {"accel": {"trace": "falls/side.csv", "rate_hz": 50}}  a recorded trace (hal/simtrace.py);
#                                                     a relative path is from the scenario's folder
#   {"lis3dh": {"fault": "silent" | "none"}} or {"adxl345": {...}}
# plus optionally "every_ms" (repeat) and "until_ms" (no repeat after it).
# Every press, release and level change logs `edge pin=.. level=.. wall_us=..` just before it.
import asyncio
import json
import time
from micropython import const

_BOUNCE_TOGGLES = const(3)  # a press or release chatters 2-4 times, 1-3 ms each
_PARTS = ("sht3x", "mhz19b", "lis3dh", "adxl345")
_ACCELS = ("lis3dh", "adxl345")  # hal/simaccel.py: they play the accel / accel_mg steps
_TRACES = ("still", "walk", "fall")  # hal/simaccel.py
_ACTIONS = ("pin", "co2_ppm", "accel", "accel_mg") + _PARTS


def load(path):
    with open(path) as f:
        doc = json.load(f)
    for step in doc["steps"]:
        if "at_ms" not in step or not any(k in step for k in _ACTIONS):
            raise ValueError("scenario step needs at_ms and an action: %r" % step)
        if "pin" in step and "press_ms" not in step and "level" not in step:
            raise ValueError("pin step needs press_ms or level: %r" % step)
        acc = step.get("accel", "still")
        if isinstance(acc, dict):
            _trace_file(path, acc, step)
        elif acc not in _TRACES:
            raise ValueError("unknown accel trace: %r" % step)
    return doc


def _trace_file(scenario_path, acc, step):
    # Resolves the trace's path against the scenario's folder and fails now, not mid-run, when
    # the file cannot be opened.
    if "trace" not in acc or acc.get("rate_hz", 50) <= 0:
        raise ValueError("accel trace step needs trace and a rate_hz > 0: %r" % step)
    if not acc["trace"].startswith("/") and "/" in scenario_path:
        acc["trace"] = scenario_path.rsplit("/", 1)[0] + "/" + acc["trace"]
    open(acc["trace"]).close()


async def play(hal, doc):
    """Runs the steps; True once end_ms is reached, False if there is no end_ms."""
    end_ms = doc.get("end_ms")
    steps = doc["steps"]
    due = [s["at_ms"] for s in steps]   # next time of each step, -1 when done
    while True:
        i = -1
        for j in range(len(due)):
            if due[j] >= 0 and (end_ms is None or due[j] < end_ms) and (i < 0 or due[j] < due[i]):
                i = j
        if i < 0:
            break
        if due[i] > hal.ticks_ms():
            await hal.sleep_ms(due[i] - hal.ticks_ms())
        step = steps[i]
        _apply(hal, step)
        nxt = due[i] + step["every_ms"] if step.get("every_ms") else -1
        due[i] = -1 if nxt > step.get("until_ms", nxt) else nxt
    if end_ms is None:
        return False
    if end_ms > hal.ticks_ms():
        await hal.sleep_ms(end_ms - hal.ticks_ms())
    return True


def _apply(hal, step):
    if "pin" in step:
        pin = hal.scenario_pin(step["pin"])
        if "press_ms" in step:
            asyncio.create_task(_press(hal, pin, step["press_ms"], step.get("bounce")))
        else:
            _edge(hal, pin, step["level"])
    for dev in hal.parts:
        if dev.kind in step:
            dev.set(step[dev.kind])
        if dev.kind == "mhz19b" and "co2_ppm" in step:
            dev.co2_ppm = step["co2_ppm"]
        if dev.kind in _ACCELS and ("accel" in step or "accel_mg" in step):
            dev.set_trace(step)


def _edge(hal, pin, level):
    hal.log("edge", "pin=%s level=%d wall_us=%d" % (pin.name, level, time.time_ns() // 1000))
    pin.drive(level)


async def _press(hal, pin, press_ms, bounce):
    for level in (1 - pin.idle, pin.idle):
        _edge(hal, pin, level)
        if bounce:
            # the spring opens and closes the contact a few times within milliseconds
            for _ in range(2 + hal.rand_below(_BOUNCE_TOGGLES)):
                await hal.sleep_brief_ms(1 + hal.rand_below(3))
                pin.drive(1 - level)
                await hal.sleep_brief_ms(1)
                pin.drive(level)
        if level != pin.idle:
            # Held for press_ms from here. The yield first lets the input's task (woken by the
            # edge) start its debounce wait, so a host stall cannot release the button before
            # the node has looked at it: on the node clock the press still lasts press_ms.
            await asyncio.sleep_ms(0)
            await hal.sleep_ms(press_ms)
