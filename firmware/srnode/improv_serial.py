# Improv over the node's USB serial port: what an unprovisioned node runs at boot.
#
#     cfg, flash = await provisioned_config(hal, io, factory_cfg)   # provisioned: returns; else Improv, then restart
#
# Bytes come from io.console_reader() (the REPL's stdin on a board, the pty's on the unix port) and
# packets go out through io.console_write(); log lines share the port, as on ESPHome, and the client
# skips them. improv.py holds the protocol; here only the bytes move.
import asyncio
from micropython import const

from srnode import FW_VERSION
from srnode.flashcfg import provisioned

_FW_NAME = "srnode"
improv = None  # srnode/improv.py, loaded by Provisioning: a provisioned boot never needs its names


class Provisioning:
    def __init__(self, hal, io, flash, hw):
        global improv
        from srnode import improv

        self._hal = hal
        self._io = io  # the BoardHal, or hal/simprov.py: wifi_connect, wifi_scan, console_reader, console_write
        self._flash = flash
        self._hw = hw
        self._done = asyncio.Event()
        self.device = improv.Improv(self, self._send)

    def _send(self, pkt):
        self._io.console_write(pkt + b"\n")  # the newline keeps a terminal on the port readable

    # --- what improv.Improv asks of the board
    def info(self):
        doc = self._flash.load()
        return (_FW_NAME, FW_VERSION, self._hw, doc.get("node_id") or "srnode-" + self._hw)

    async def connect(self, ssid, password):
        return await self._io.wifi_connect(ssid, password)

    async def scan(self):
        return await self._io.wifi_scan()

    def store(self, fields):
        doc = self._flash.update(fields)
        self._hal.log("improv", "stored " + ",".join(sorted(fields)))  # names only: never the key
        if provisioned(doc):
            self._done.set()

    def trusted(self):
        doc = self._flash.load()
        return bool(doc.get("node_id") and doc.get("key_hex"))

    def _ble(self, button):
        if button is None:
            return None
        try:
            import bluetooth
        except ImportError:
            return None  # a board (or the unix port) without Bluetooth: serial only
        from srnode.improv_ble import ImprovBle
        return ImprovBle(bluetooth.BLE(), self, self._hal, lambda: None, "srnode-" + self._hw)

    async def _presses(self, pin, ble):
        # a press is a high-to-low edge seen by a 50 ms poll: far shorter than any finger
        was = 1
        while True:
            await self._hal.sleep_ms(50)
            now = pin.value()
            if was and not now:
                ble.press()
            was = now

    # --- the loop
    async def _read(self):
        reader = self._io.console_reader()
        dec = improv.Decoder()
        while True:
            b = await reader.read(1)  # a blocking port hands over what it has one byte at a time
            if not b:
                await self._hal.sleep_ms(100)  # the host side closed the port; wait for the next one
                continue
            for ptype, data in dec.feed(b):
                await self.device.handle(ptype, data)
                if self.device.state == improv.STATE_PROVISIONED:
                    self._done.set()

    async def run(self, button=None):
        """button: the reset button's pin; with Bluetooth on the board, a press authorises Improv BLE."""
        self._hal.log("improv", "waiting hw=%s" % self._hw)
        self._send(improv.packet(improv.TYPE_STATE, bytes((self.device.state,))))
        tasks = [asyncio.create_task(self._read())]
        ble = self._ble(button)
        if ble is not None:
            tasks += [asyncio.create_task(ble.run()), asyncio.create_task(self._presses(button, ble))]
        await self._done.wait()
        for t in tasks:
            t.cancel()
        self._hal.log("improv", "provisioned")
        return self._flash.load()


# Between the last Improv reply and the reset: the USB CDC (or the pty) hands the reply to the
# host in well under this, and nothing waits on the node meanwhile.
_FLUSH_MS = const(200)


async def provisioned_config(hal, io, cfg):
    """Boot: the node's config from flash, after offering Improv until it is provisioned. -> (cfg, flash)
    io: Wi-Fi, console, flash_dir and restart() (the BoardHal itself; hal/simprov.py on unix).
    Once provisioned, the board restarts: the node then boots clean, with what it needs (TLS, the
    link, adoption) in a heap and a name pool that Improv's code and Bluetooth have not used
    (docs/firmware.md, "Heap"); both would not fit together on a 64 KB heap."""
    from srnode.flashcfg import FlashConfig, node_config
    flash = FlashConfig(io.flash_dir, io.restart)
    prov = flash.load()
    if not provisioned(prov):
        button = hal.pin_in(cfg["reset"]["pin"], True) if cfg.get("reset") else None
        await Provisioning(hal, io, flash, cfg.get("hw", "unknown")).run(button)
        await hal.sleep_ms(_FLUSH_MS)
        io.restart()
    return node_config(cfg, prov), flash
