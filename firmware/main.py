# Board entry: MicroPython runs this after boot. Reads /config.json and /pinmaps/<pinmap>.json
# from flash (same config format as the sim, plus "wifi": {"ssid", "password"}). A /config.json
# without "key_hex" is the factory config: the node offers Improv on its USB serial port until
# provisioned (/provision.json, docs/provisioning.md), then runs the link.
import asyncio
import json
import sys
import time

import machine
from micropython import const

import bootsel

# The bundle to run (docs/firmware.md, Updates): chosen before any firmware module is imported.
_FW = bootsel.select("", lambda tag, text: print("@0 %s %s" % (tag, text)))

from hal.board import BoardHal  # noqa: E402  (from the chosen bundle)
from srnode.runtime import Node  # noqa: E402

_WDT_TIMEOUT_MS = const(8000)  # the RP2040's longest; an event loop stuck this long is not coming back
_WDT_FEED_MS = const(2000)
_CRASH_RESET_MS = const(5000)  # time to read the error on the console, and no tight reset loop


async def _feed(wdt):
    while True:
        wdt.feed()
        await asyncio.sleep_ms(_WDT_FEED_MS)


def _crashed(e):
    print("@0 error exc=%s msg=%s" % (type(e).__name__, str(e).replace(" ", "_")))
    sys.print_exception(e)
    time.sleep_ms(_CRASH_RESET_MS)
    machine.reset()


def _provisioned_node(cfg, hal, flash):
    from srnode.adopt import ProvisionedNode
    return ProvisionedNode(cfg, hal, flash, _FW)


async def _run(cfg, hal):
    # any task dying on an exception restarts the node, not only those node.run() awaits
    asyncio.get_event_loop().set_exception_handler(lambda loop, ctx: _crashed(ctx["exception"]))
    asyncio.create_task(_feed(machine.WDT(timeout=_WDT_TIMEOUT_MS)))
    flash = None
    if "key_hex" not in cfg:  # the factory config: provisioned over Improv (docs/provisioning.md)
        from srnode.improv_serial import provisioned_config
        cfg, flash = await provisioned_config(hal, hal, cfg)
        hal.wifi = cfg["wifi"]
    node = Node(cfg, hal, _FW) if flash is None else _provisioned_node(cfg, hal, flash)
    cfg = None
    await node.run()


def _build():
    with open("/config.json") as f:
        cfg = json.load(f)
    with open("/pinmaps/%s.json" % cfg["pinmap"]) as f:
        pinmap = json.load(f)
    return cfg, BoardHal(cfg, pinmap)


try:
    asyncio.run(_run(*_build()))
except Exception as e:  # log, then start over: a nurse-call node must not stay down
    _crashed(e)
