# The simulated board's side of an update (srnode/ota.py): its flash is the node's state folder,
# a reset ends the process with RESET_EXIT for whoever runs it to start it again (as a board boots
# again), and SMARTROOM_CUT_AT=<step> freezes the node at that step of an update so that a test
# can kill it there: a power cut at exactly that point (docs/firmware.md, Updates).
import os
import time

RESET_EXIT = 3  # controller/sim/nodes.py and the tests start a node that exits with it again


def start(hal, flash):
    return SimOta(hal, flash)


class SimOta:
    board = "unix"  # controller/ota/bundle.py BOARDS

    def __init__(self, hal, flash):
        self._hal = hal
        self.flash = flash
        self._cut_at = os.getenv("SMARTROOM_CUT_AT")

    def reset(self):
        self._hal.log("reset")
        raise SystemExit(RESET_EXIT)

    def cut(self, step):
        if step == self._cut_at:
            self._hal.log("cut", "step=" + step)
            while True:  # frozen, not exiting: the test kills the process, as a power cut would
                time.sleep_ms(1000)
