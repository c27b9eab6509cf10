# Identify on a provisioned node (srnode/adopt.py) with the i16b reassurance light: the light flashes
# "identify" (the node's own pattern, which Indicator.set refuses from the controller) for IDENTIFY_MS;
# an indicator command meanwhile is kept and shown afterwards; a bad one is refused, not crashed on.
# Usage: micropython test_adopt_identify.py <empty directory>
import asyncio
import json
import sys

from hal.sim import SimPin
from mpcheck import FakeClock, check, done
from srnode.adopt import IDENTIFY_MS, ProvisionedNode
from srnode.flashcfg import FlashConfig, node_config

DIR = sys.argv[1]
BASE = {"hw": "x", "link_plain": True, "inputs": [{"name": "call", "kind": "button", "pin": "call"}],
        "indicator": {"pin": "led"}}
DOC = {"wifi_ssid": "w", "node_id": "bed-a", "key_hex": "00" * 32, "ctl_host": "127.0.0.1", "ctl_port": 9}


class Hal(FakeClock):
    def __init__(self):
        super().__init__()
        self.pins = {}

    async def wait_for_ms(self, coro, timeout_ms):
        return await coro

    def pin_in(self, name, pull_up):
        self.pins[name] = SimPin(self, name, 1 if pull_up else 0)
        return self.pins[name]

    def pin_out(self, name):
        self.pins[name] = SimPin(self, name, 0, True)
        return self.pins[name]

    async def open_connection(self, host, port):
        raise OSError(111)  # no controller: the link stays down

    def rssi(self):
        return None

    def battery_mv(self):
        return None

    def rand_below(self, n):
        return 0

    def load_state(self):
        try:
            with open(DIR + "/state.json") as f:
                return json.load(f)
        except OSError:
            return {}

    def save_state(self, state):
        with open(DIR + "/state.json", "w") as f:
            json.dump(state, f)

    def flash_path(self, name):
        return DIR + "/" + name


async def main():
    hal = Hal()
    node = ProvisionedNode(node_config(BASE, DOC), hal, FlashConfig(DIR))
    led = node.indicator
    asyncio.create_task(node.run())
    await hal.advance(100)
    node.on_cmd({"c": "identify"})
    check("identify: the light flashes", led.pattern == "identify", led.pattern)
    node.on_cmd({"c": "indicator", "p": "received"})
    check("an indicator command meanwhile is kept", led.pattern == "identify" and led.p == "received", led.p)
    node.on_cmd({"c": "indicator", "p": "undelivered"})
    node.on_cmd({"c": "indicator", "p": "disco"})
    check("bad patterns refused, identify goes on", led.pattern == "identify" and led.p == "received"
          and len([1 for t, tag, text in hal.logged if tag == "reject"]) == 2)
    await hal.advance(IDENTIFY_MS - 100)
    check("just before the end: still identify", led.pattern == "identify", led.pattern)
    await hal.advance(200)
    check("then what the controller commanded", led.pattern == "received", led.pattern)


asyncio.run(main())
done()
