# The firmware's Improv BLE service (srnode/improv_ble.py) behind the simulated `bluetooth` module,
# driven over stdin/stdout by a fake bleak backend (tests/test_provisioning_ble.py): one JSON
# request per line in, the notifications it caused and one answer per line out.
#
#     micropython ble_bridge.py FLASH_DIR
#     -> {"op": "connect"} | {"op": "encrypt"} | {"op": "press"} | {"op": "disconnect"}
#        {"op": "read", "uuid": U} | {"op": "write", "uuid": U, "hex": H}
#     <- {"notify": U, "hex": H} ... then {"ok": true, "hex": H?} or {"error": "..."}
import asyncio
import json
import sys
import time

import bluetooth

from srnode.flashcfg import FlashConfig
from srnode.improv_ble import ImprovBle
from srnode.improv_serial import Provisioning

_CONN = 1


class Hal:
    def ticks_ms(self):
        return time.ticks_ms()

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(ms)

    def log(self, tag, text=""):
        sys.stderr.write("@%d %s %s\n" % (time.ticks_ms(), tag, text))


class Io:
    flash_dir = sys.argv[1]

    async def wifi_connect(self, ssid, password):
        return (ssid, password) == ("ward-4b", "correct horse")

    async def wifi_scan(self):
        return [("ward-4b", -52, True)]

    def console_write(self, data):
        pass  # this node is provisioned over BLE only


def out(doc):
    sys.stdout.write(json.dumps(doc) + "\n")


async def main():
    hal = Hal()
    ble = bluetooth.BLE()
    prov = Provisioning(hal, Io(), FlashConfig(Io.flash_dir), "esp32s3-devkitc-1")
    dev = ImprovBle(ble, prov, hal, lambda: hal.log("identify"), "srnode-esp32s3")
    asyncio.create_task(dev.run())
    uuids = {}
    for _, chars in ble.services:
        for uuid, flags, h in chars:
            uuids[h] = uuid.value
    reader = asyncio.StreamReader(sys.stdin.buffer)
    while True:
        line = await reader.readline()
        if not line:
            return
        req = json.loads(line)
        op = req["op"]
        seen = len(ble.notified)
        value = None
        if op == "connect":
            ble.connect(_CONN)
        elif op == "disconnect":
            ble.disconnect(_CONN)
        elif op == "encrypt":
            ble.encrypt(_CONN)
        elif op == "press":
            dev.press()
        elif op == "read":
            value = ble.values[ble.handle_of(req["uuid"])]
        elif op == "write":
            ble.write(_CONN, req["uuid"], bytes.fromhex(req["hex"]))
        for _ in range(20):  # let the service's task take it (Wi-Fi here answers at once)
            await asyncio.sleep_ms(1)
        for conn, h, data in ble.notified[seen:]:
            out({"notify": uuids[h], "hex": data.hex()})
        out({"ok": True, "hex": value.hex() if value is not None else None})


asyncio.run(main())
