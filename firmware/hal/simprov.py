# The sim's side of provisioning and adoption, loaded only on a node set up over Improv: the Wi-Fi it
# can "see" (sim.networks: [[ssid, rssi, secured, password], ...]), the console (the process's
# stdin/stdout, a pty in the tests), the flash (sim.state_dir) and a reset (exit 3 to the runner).
import asyncio
import json
import sys
from micropython import const

_ASSOCIATE_MS = const(500)  # a simulated association takes about what a real one does on a quiet AP
_RESTART_EXIT = const(3)    # sim_main's exit code for "a board would reset now"


class SimProvisioning:
    def __init__(self, hal, cfg, state_dir):
        self._hal = hal
        self._networks = cfg.get("sim", {}).get("networks", ())
        self.flash_dir = state_dir  # provisioning's file lives beside the state file

    async def wifi_connect(self, ssid, password):
        await self._hal.sleep_ms(_ASSOCIATE_MS)
        for net in self._networks:
            if net[0] == ssid and (not net[2] or net[3] == password):
                return True
        return False

    async def wifi_scan(self):
        await self._hal.sleep_ms(_ASSOCIATE_MS)
        return [(n[0], n[1], bool(n[2])) for n in self._networks]

    def console_reader(self):
        return asyncio.StreamReader(sys.stdin.buffer)

    def console_write(self, data):
        sys.stdout.buffer.write(data)

    def restart(self):
        self._hal.log("restart")
        sys.exit(_RESTART_EXIT)


async def provisioned_node(hal, path, fw=None):
    """sim_main's boot of a config without a key: Improv until provisioned, then the node."""
    from srnode.adopt import ProvisionedNode
    from srnode.improv_serial import provisioned_config
    with open(path) as f:
        cfg = json.load(f)
    cfg, flash = await provisioned_config(hal, SimProvisioning(hal, cfg, hal._state_dir), cfg)
    return ProvisionedNode(cfg, hal, flash, fw)
