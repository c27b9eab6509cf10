# Board backend: ESP32-S3 or Pico W running MicroPython, same interface as hal/sim.py.
# Pin numbers come from a pin map (hardware/pinmaps/*.json, copied to /pinmaps/ on flash).
import asyncio
import errno
import json
import os
import random
import sys
import time

import machine
import micropython
import network
from micropython import const

_WIFI_TIMEOUT_MS = const(15000)  # association + DHCP on a busy hospital WLAN can take seconds
_WIFI_POLL_MS = const(100)
_STATE_PATH = "/state.json"


class BoardHal:
    """cfg: the node config ("wifi": {"ssid", "password"} is used here); pinmap: parsed pin map."""

    def __init__(self, cfg, pinmap):
        self._pinmap = pinmap
        self.wifi = cfg.get("wifi")  # {"ssid", "password"}: from provisioning (main.py) or the config
        self.flash_dir = ""           # littlefs root
        self._wlan = network.WLAN(network.STA_IF)
        self._i2c = {}
        self._vbat = None
        if pinmap.get("vbat"):
            self._vbat = machine.ADC(machine.Pin(pinmap["vbat"]["adc_pin"]))
        self._last_ms = time.ticks_ms()
        self._up_ms = 0

    # --- time. ticks_ms() is uptime: time.ticks_ms() wraps (2^30 ms on 32-bit ports), so it is
    # accumulated here; the heartbeat calls it every few seconds, far inside half a wrap.
    def ticks_ms(self):
        now = time.ticks_ms()
        self._up_ms += time.ticks_diff(now, self._last_ms)
        self._last_ms = now
        return self._up_ms

    def ticks_diff(self, a, b):
        return a - b

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(ms)

    async def wait_for_ms(self, coro, timeout_ms):
        return await asyncio.wait_for_ms(coro, timeout_ms)

    # --- pins, buses
    def _num(self, name):
        return self._pinmap["pins"][name]

    def irq_flag(self):
        return asyncio.ThreadSafeFlag()  # set() is safe from a hard IRQ handler

    def pin_in(self, name, pull_up):
        return machine.Pin(self._num(name), machine.Pin.IN, machine.Pin.PULL_UP if pull_up else None)

    def pin_out(self, name):
        return machine.Pin(self._num(name), machine.Pin.OUT, value=0)

    def i2c(self, bus):
        if bus not in self._i2c:
            c = self._pinmap["i2c%d" % bus]
            self._i2c[bus] = machine.I2C(bus, scl=machine.Pin(c["scl"]), sda=machine.Pin(c["sda"]),
                                         freq=c.get("freq", 100000))
        return self._i2c[bus]

    def uart(self, bus, baudrate):
        c = self._pinmap["uart%d" % bus]
        return machine.UART(bus, baudrate=baudrate, tx=machine.Pin(c["tx"]), rx=machine.Pin(c["rx"]),
                            timeout=0)

    # --- network, power, randomness
    async def _wifi_up(self):
        wlan = self._wlan
        if wlan.isconnected():
            return
        wlan.active(True)
        wlan.connect(self.wifi["ssid"], self.wifi.get("password"))
        waited_ms = 0
        while not wlan.isconnected():
            if waited_ms >= _WIFI_TIMEOUT_MS:
                wlan.disconnect()
                raise OSError(errno.ETIMEDOUT)
            await asyncio.sleep_ms(_WIFI_POLL_MS)
            waited_ms += _WIFI_POLL_MS

    async def wifi_connect(self, ssid, password):
        """Improv's test of new credentials: True once associated with an address."""
        self.wifi = {"ssid": ssid, "password": password}
        if self._wlan.isconnected():
            self._wlan.disconnect()  # test the new credentials, not the network it is on
        try:
            await self._wifi_up()
            return True
        except OSError:
            return False

    async def wifi_scan(self):
        wlan = self._wlan
        wlan.active(True)
        # scan() blocks for ~2 s; only an unprovisioned node does it, with nothing else to run
        return [(n[0].decode(), n[3], n[4] != 0) for n in wlan.scan()]

    def console_reader(self):
        # USB serial, the REPL's port. Improv's RPC type byte is 0x03, which the REPL reads as
        # Ctrl-C: switch that off while the port carries packets (a reset restores it).
        micropython.kbd_intr(-1)
        return asyncio.StreamReader(sys.stdin.buffer)

    def console_write(self, data):
        sys.stdout.buffer.write(data)

    def restart(self):
        machine.reset()

    async def open_connection(self, host, port, *tls):
        await self._wifi_up()
        return await asyncio.open_connection(host, port, *tls)  # tls: (SSLContext, name) or ()

    def rssi(self):
        try:
            return self._wlan.status("rssi") if self._wlan.isconnected() else None
        except (OSError, ValueError):
            return None

    def battery_mv(self):
        # Battery through a resistor divider into an ADC1 pin ("vbat": {"adc_pin", "divider"}).
        if self._vbat is None:
            return None
        adc = self._vbat
        mv = adc.read_uv() // 1000 if hasattr(adc, "read_uv") else adc.read_u16() * 3300 // 65535
        return mv * self._pinmap["vbat"].get("divider", 1)

    def rand_below(self, n):
        return random.getrandbits(30) % n if n > 0 else 0  # seeded from the hardware RNG at boot

    # --- persistent state in flash (littlefs)
    def flash_path(self, name):
        return "/" + name

    def load_state(self):
        try:
            with open(_STATE_PATH) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def save_state(self, state):
        with open(_STATE_PATH + ".tmp", "w") as f:
            json.dump(state, f)
        os.rename(_STATE_PATH + ".tmp", _STATE_PATH)  # atomic on littlefs: old or new, never half

    # --- updates (srnode/ota.py): bundles are staged in /fw on the flash filesystem
    board = "esp32s3" if sys.platform == "esp32" else "rp2-pico-w"  # controller/ota/bundle.py BOARDS
    flash = ""

    def ota(self):
        return self

    def reset(self):
        machine.reset()

    def cut(self, step):
        pass  # the simulator's power-cut points; a board loses power by itself

    def log(self, tag, text=""):
        print("@%d %s %s" % (self.ticks_ms(), tag, text) if text else "@%d %s" % (self.ticks_ms(), tag))
