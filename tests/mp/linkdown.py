# hal/sim.py's interface on virtual time (mpcheck.FakeClock) with no controller: every connect is
# refused at once, so the link stays down; pins are SimPins, the flash a directory.
import json

from hal.sim import SimPin
from mpcheck import FakeClock


class LinkDownHal(FakeClock):
    def __init__(self, d):
        super().__init__()
        self.dir = d
        self.pins = {}
        self.connects = 0

    async def wait_for_ms(self, coro, timeout_ms):
        return await coro

    def pin_in(self, name, pull_up):
        self.pins[name] = SimPin(self, name, 1 if pull_up else 0)
        return self.pins[name]

    def pin_out(self, name):
        self.pins[name] = SimPin(self, name, 0, True)
        return self.pins[name]

    async def open_connection(self, host, port):
        self.connects += 1
        raise OSError(111)  # ECONNREFUSED: the link is down

    def rssi(self):
        return None

    def battery_mv(self):
        return None

    def rand_below(self, n):
        return 0

    def load_state(self):
        try:
            with open(self.dir + "/state.json") as f:
                return json.load(f)
        except OSError:
            return {}

    def save_state(self, state):
        with open(self.dir + "/state.json", "w") as f:
            json.dump(state, f)

    def flash_path(self, name):
        return self.dir + "/" + name
