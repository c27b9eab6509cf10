# Helpers for the MicroPython test scripts in this folder (run by tests/test_firmware_units.py):
# check() prints `FAIL name detail` for a failed check, done() the `N passed, N failed` summary.
# FakeClock is a HAL clock on virtual time: advance() fires due sleeps, so the scripts test
# timing (debounce, sensor waits) deterministically, without real time.
import asyncio
import sys

_counts = [0, 0]


def check(name, ok, detail=""):
    if ok:
        _counts[0] += 1
    else:
        _counts[1] += 1
        print("FAIL", name, detail)


def done():
    print("%d passed, %d failed" % (_counts[0], _counts[1]))
    sys.exit(1 if _counts[1] else 0)


class FakeClock:
    """ticks_ms / sleep_ms / log of a HAL, on virtual time that only advance() moves."""

    def __init__(self):
        self.now = 0
        self.logged = []
        self._sleepers = []  # [deadline_ms, Event]

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b

    async def sleep_ms(self, ms):
        ev = asyncio.Event()
        self._sleepers.append([self.now + ms, ev])
        await ev.wait()

    def irq_flag(self):
        from hal.sim import SimFlag
        return SimFlag()

    def log(self, tag, text=""):
        self.logged.append((self.now, tag, text))

    async def _settle(self):
        for _ in range(4):  # let woken tasks run up to their next await
            await asyncio.sleep_ms(0)

    async def advance(self, ms):
        """Moves time forward 1 ms at a time, waking every sleep that falls due."""
        await self._settle()
        for _ in range(ms):
            self.now += 1
            for s in [s for s in self._sleepers if s[0] <= self.now]:
                self._sleepers.remove(s)
                s[1].set()
            await self._settle()

    async def run(self, coro, limit_ms=10000):
        """Runs coro on virtual time; returns ("ok", value) or ("raised", exception)."""
        out = []

        async def wrap():
            try:
                out.append(("ok", await coro))
            except Exception as e:  # handed back to the test to check
                out.append(("raised", e))

        asyncio.create_task(wrap())
        waited = 0
        while not out and waited < limit_ms:
            await self.advance(1)
            waited += 1
        return out[0] if out else ("timeout", None)
