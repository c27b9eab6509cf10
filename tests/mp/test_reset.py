# Factory reset: a hold of FACTORY_RESET_HOLD_MS + POLL_MS always wipes the flash config and restarts;
# one shorter than FACTORY_RESET_HOLD_MS never does; a release in between starts the count again.
import asyncio
import os
import sys

from mpcheck import FakeClock, check, done
from srnode.flashcfg import FlashConfig, node_config, provisioned
from srnode.reset import FACTORY_RESET_HOLD_MS, POLL_MS, FactoryReset

check("ten seconds", FACTORY_RESET_HOLD_MS == 10000 and POLL_MS == 100)


class Pin:
    def __init__(self):
        self.level = 1

    def value(self):
        return self.level


class Hal(FakeClock):
    def __init__(self):
        super().__init__()
        self.restarts = 0

    def restart(self):
        self.restarts += 1


class Flash:
    def __init__(self):
        self.wiped = 0

    def wipe(self):
        self.wiped += 1


async def hold(press_at, hold_ms, total_ms):
    hal, pin, flash = Hal(), Pin(), Flash()
    task = asyncio.create_task(FactoryReset(pin, hal, flash, hal.restart).run())
    await hal.advance(press_at)
    pin.level = 0
    await hal.advance(hold_ms)
    pin.level = 1
    await hal.advance(total_ms - press_at - hold_ms)
    task.cancel()
    return hal, flash


for press_at in (0, 37, 99):
    hal, flash = asyncio.run(hold(press_at, FACTORY_RESET_HOLD_MS - 1, 12000 + press_at))
    check("just under the hold (press at %d): nothing" % press_at, flash.wiped == 0 and hal.restarts == 0)
    hal, flash = asyncio.run(hold(press_at, FACTORY_RESET_HOLD_MS + POLL_MS, 12000 + press_at))
    check("hold + one poll (press at %d): reset" % press_at, flash.wiped == 1 and hal.restarts == 1,
          (flash.wiped, hal.restarts))
    check("logged", [t for t in hal.logged if t[1] == "factory_reset"] != [])


async def interrupted():
    hal, pin, flash = Hal(), Pin(), Flash()
    task = asyncio.create_task(FactoryReset(pin, hal, flash, hal.restart).run())
    pin.level = 0
    await hal.advance(6000)
    pin.level = 1          # let go for a moment
    await hal.advance(300)
    pin.level = 0
    await hal.advance(6000)
    task.cancel()
    return flash


check("two holds of 6 s are not one of 12 s", asyncio.run(interrupted()).wiped == 0)

# the flash config: atomic writes, provisioned only with every field, wiped to factory state
d = sys.argv[1] + "/flash"  # a fresh directory from the test runner
fc = FlashConfig(d)
check("empty flash: not provisioned", fc.load() == {} and not provisioned(fc.load()))
fc.update({"node_id": "bed-a", "key_hex": "00" * 32, "ctl_host": "h", "ctl_port": 7700})
check("trust without Wi-Fi: not provisioned", not provisioned(fc.load()))
fc.update({"wifi_ssid": "ward", "wifi_password": "pw", "ctl_fp": "ab" * 32})
check("no certificate: not provisioned (a unix or rp2 build could not pin)", not provisioned(fc.load()))
fc.update({"ctl_cert": "cd" * 240})
check("trust, certificate and Wi-Fi: provisioned", provisioned(fc.load()))
cfg = node_config({"hw": "x", "inputs": []}, fc.update({"setup": {"hb_ms": 5000}}))
check("node config from flash", cfg["controller"] == {"host": "h", "port": 7700} and cfg["ctl_fp"] == "ab" * 32
      and cfg["ctl_cert"] == "cd" * 240
      and cfg["wifi"]["ssid"] == "ward" and cfg["hb_ms"] == 5000 and cfg["hw"] == "x", cfg)
fc.wipe()
check("wiped: factory state", fc.load() == {})
fc.wipe()
check("wiping twice is fine", fc.load() == {})
with open(d + "/provision.json", "w") as f:
    f.write("{not json")
check("a torn file reads as unprovisioned", fc.load() == {})

done()
