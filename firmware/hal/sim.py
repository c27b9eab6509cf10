# Simulated board for the MicroPython unix port: same interface as hal/board.py.
#
# Node time runs `speed` times faster than real time (speed 60: a simulated minute per real
# second). All time the firmware sees comes from ticks_ms() and every wait goes through
# sleep_ms() / wait_for_ms(), so the node behaves the same at any speed. I2C and UART parts are
# the register-level models of simdev.py (SHT3x, MH-Z19B), simaccel.py (LIS3DH) and
# simadxl345.py (ADXL345), loaded only when the config fits them; scenario.py drives pins and
# parts from a scenario file.
import asyncio
import json
import os
import random
import time
from micropython import const

_ENODEV = const(19)             # what machine.UART construction raises for a bus with no part
_RSSI_DBM = const(-58)          # a typical indoor link a few metres from the access point
_STATE_FILE = "/state.json"
# The host can stop the process for a while (CPU steal on a busy VM: 300 ms seen), which at
# speed 60 would be 18 s of node time passing at once: presses released before the debounce
# task ever ran, spurious timeouts. A task (started by the first sleep) reads the clock every
# _KEEP_MS of real time, so a longer gap between two reads is a stall: node time stands still.
_KEEP_MS = const(1)
_STALL_US = const(5000)


class SimPin:
    """machine.Pin subset. Inputs: value(), irq(); the scenario calls drive() to change the
    level, which fires the IRQ like the GPIO block. Outputs: value(v) logs every change."""

    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, hal, name, level, output=False):
        self._hal = hal
        self.name = name
        self.idle = level       # what the pull resistor holds when nothing drives an input
        self._level = level
        self._output = output
        self._handler = None
        self._trigger = 0

    def value(self, v=None):
        if v is None:
            return self._level
        if self._output and (1 if v else 0) != self._level:
            self._level = 1 if v else 0
            self._hal.log("pin", "name=%s value=%d" % (self.name, self._level))

    def irq(self, handler=None, trigger=3):
        self._handler = handler
        self._trigger = trigger

    def drive(self, level):
        if level != self._level:
            self._level = level
            if self._handler is not None and self._trigger & (self.IRQ_RISING if level else self.IRQ_FALLING):
                self._handler(self)


class SimFlag:
    """asyncio.ThreadSafeFlag semantics (wait() clears it) on an asyncio.Event. On the unix port
    a task waiting on a ThreadSafeFlag makes the event loop poll every millisecond (select cannot
    block on a non-fd object), which would throttle a sped-up node; the sim's "interrupts" run
    in the event loop's own thread, so an Event is safe here."""

    def __init__(self):
        self._ev = asyncio.Event()

    def set(self):
        self._ev.set()

    async def wait(self):
        await self._ev.wait()
        self._ev.clear()


class SimHal:
    """The unix-port board. cfg is the whole node config: its "sim" section sets speed, seed,
    state_dir and batt_mv; its i2c / uart / accel sections say which parts are fitted.
    pinmap (hardware/pinmaps/*.json), when given, must name every pin the firmware claims."""

    def __init__(self, cfg, pinmap=None):
        sim = cfg.get("sim", {})
        self.speed_milli = int(float(sim.get("speed", 1)) * 1000 + 0.5)
        if self.speed_milli <= 0:
            raise ValueError("sim speed must be > 0")
        self._t0_us = time.ticks_us()   # real time of node time 0, moved on by host stalls
        self._seen_us = self._t0_us     # real time of the last clock read
        self._keeper = None
        self._state_dir = sim.get("state_dir", ".")
        self._batt_mv = sim.get("batt_mv")
        self._pins = pinmap["pins"] if pinmap else None
        random.seed(sim.get("seed", 1))
        self.pins = {}
        self.parts = []         # every simulated part, for the scenario to address by kind
        self._i2c = {}
        self._uarts = {}
        for spec in cfg.get("i2c", ()):
            if spec["part"] == "sht3x":
                from hal.simdev import Sht3x
                self._attach(spec, 0x44, Sht3x(self))
        acc = cfg.get("accel")
        if acc:
            part = acc.get("part", "lis3dh")
            if part == "lis3dh":
                from hal.simaccel import Lis3dh
                self._attach(acc, 0x18, Lis3dh(self))
            elif part == "adxl345":
                from hal.simadxl345 import Adxl345
                self._attach(acc, 0x53, Adxl345(self))
            else:
                raise ValueError("unknown accel part " + part)
        for spec in cfg.get("uart", ()):
            if spec["part"] == "mhz19b":
                from hal.simdev import Mhz19b
                dev = self._uarts[spec.get("bus", 1)] = Mhz19b()
                self.parts.append(dev)

    def _attach(self, spec, default_addr, dev):
        self.i2c(spec.get("bus", 0)).devices[spec.get("addr", default_addr)] = dev
        self.parts.append(dev)

    # --- time: node milliseconds, `speed` times the wall clock while the host lets us run
    def ticks_ms(self):
        now = time.ticks_us()
        gap_us = time.ticks_diff(now, self._seen_us)
        if gap_us > _STALL_US:
            self._t0_us += gap_us - _KEEP_MS * 1000
        self._seen_us = now
        return time.ticks_diff(now, self._t0_us) * self.speed_milli // 1000000

    async def _keep_time(self):
        while True:
            self.ticks_ms()
            await asyncio.sleep_ms(_KEEP_MS)

    def _keep(self):
        # Without a clock read every _KEEP_MS, any idle wait would look like a stall.
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_time())

    def ticks_diff(self, a, b):
        return a - b

    def _real_ms(self, node_ms):
        return (node_ms * 1000 + self.speed_milli - 1) // self.speed_milli  # rounded up

    async def sleep_ms(self, ms):
        # asyncio wakes on whole real milliseconds and can end a sleep up to 1 real ms early,
        # which at speed 60 is 60 node ms: sleep again until the node time has been reached.
        self._keep()
        target_ms = self.ticks_ms() + ms
        await asyncio.sleep_ms(self._real_ms(ms) if ms > 0 else 0)
        left_ms = target_ms - self.ticks_ms()
        while left_ms > 0:
            await asyncio.sleep_ms(self._real_ms(left_ms))
            left_ms = target_ms - self.ticks_ms()

    async def sleep_brief_ms(self, ms):
        # Contact bounce. When ms of node time is below the host's 1 ms timer granularity, the
        # toggles happen at once, without yielding: as for a real switch, they are all over
        # before the debounce task runs (a yield per toggle would let a host stall land in the
        # middle of the bounce and stretch it to hundreds of node ms).
        real_ms = ms * 1000 // self.speed_milli
        if real_ms:
            await asyncio.sleep_ms(real_ms)

    async def wait_for_ms(self, coro, timeout_ms):
        self._keep()
        return await asyncio.wait_for_ms(coro, self._real_ms(timeout_ms))

    # --- pins, buses
    def _pin(self, name, level, output):
        if self._pins is not None and name not in self._pins:
            raise ValueError("pin %s is not in the pin map" % name)
        pin = self.pins.get(name)
        if pin is None:
            pin = self.pins[name] = SimPin(self, name, level, output)
        return pin

    def irq_flag(self):
        return SimFlag()

    def pin_in(self, name, pull_up):
        return self._pin(name, 1 if pull_up else 0, False)

    def pin_out(self, name):
        return self._pin(name, 0, True)

    def scenario_pin(self, name):
        # A pin the scenario drives; one the firmware never claimed floats low.
        return self.pins.get(name) or self._pin(name, 0, False)

    def i2c(self, bus):
        if bus not in self._i2c:
            from hal.simdev import SimI2C
            self._i2c[bus] = SimI2C()
        return self._i2c[bus]

    def uart(self, bus, baudrate):
        if bus not in self._uarts:
            raise OSError(_ENODEV)
        return self._uarts[bus]

    # --- network, power, randomness
    async def open_connection(self, host, port, *tls):
        # tls: (SSLContext, server name) from srnode/tlspin.py; the handshake runs on the first write
        return await asyncio.open_connection(host, port, *tls)

    def rssi(self):
        return _RSSI_DBM - random.getrandbits(2)

    def battery_mv(self):
        return self._batt_mv

    def rand_below(self, n):
        return random.getrandbits(30) % n if n > 0 else 0

    # --- persistent state (the board keeps it in flash; here a directory is the flash)
    def flash_path(self, name):
        path = ""
        for d in self._state_dir.split("/"):  # mkdir -p
            path += d + "/"
            if d:
                try:
                    os.mkdir(path)
                except OSError:
                    pass
        return path + name

    def load_state(self):
        try:
            with open(self._state_dir + _STATE_FILE) as f:
                return json.load(f)
        except OSError:
            return {}

    def save_state(self, state):
        self.flash_path("")
        path = self._state_dir + _STATE_FILE
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.rename(path + ".tmp", path)  # atomic: a crash leaves the old file or the new one

    # --- updates (srnode/ota.py): their own module, so a node that is not updating interns none of its names
    def ota(self):
        from hal import simota
        return simota.start(self, self._state_dir)

    # --- the log contract (docs/firmware.md): one line, `@<node_ms> <tag> key=value ...`
    def log(self, tag, text=""):
        print("@%d %s %s" % (self.ticks_ms(), tag, text) if text else "@%d %s" % (self.ticks_ms(), tag))
