# Identify on a provisioned node (srnode/adopt.py) with the i16b reassurance light: the light flashes
# "identify" (the node's own pattern, which Indicator.set refuses from the controller) for IDENTIFY_MS;
# an indicator command meanwhile is kept and shown afterwards; a bad one is refused, not crashed on.
# Usage: micropython test_adopt_identify.py <empty directory>
import asyncio
import sys

from linkdown import LinkDownHal
from mpcheck import check, done
from srnode.adopt import IDENTIFY_MS, ProvisionedNode
from srnode.flashcfg import FlashConfig, node_config

DIR = sys.argv[1]
BASE = {"hw": "x", "link_plain": True, "inputs": [{"name": "call", "kind": "button", "pin": "call"}],
        "indicator": {"pin": "led"}}
DOC = {"wifi_ssid": "w", "node_id": "bed-a", "key_hex": "00" * 32, "ctl_host": "127.0.0.1", "ctl_port": 9}


async def main():
    hal = LinkDownHal(DIR)
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
