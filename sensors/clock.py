"""Time for the sensors: a scheduler passed in, like the pin factory.

Debouncing, output patterns, check-ins and the Bluetooth retry loop all run on a *scheduler*:
anything with ``time()``, ``call_later(delay, callback, *args)`` and
``call_soon_threadsafe(callback, *args)``. The running asyncio loop is one, and is the default.
Tests pass a :class:`ManualScheduler` and move its time with :meth:`ManualScheduler.advance`;
nothing waits for real seconds::

    sched = ManualScheduler()
    led = PatternOutput(LED(25, pin_factory=MockFactory()), sched)
    led.play(Blink(0.5, 0.5))
    await sched.advance(1.0)       # the LED went on, off, on again
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Callable, Protocol

# How many loop turns ManualScheduler.advance gives woken coroutines to reach their next await on
# the scheduler. Our coroutines take one or two turns between timers; 20 leaves a wide margin.
_DRAIN_TURNS = 20


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the sensors need of time: asyncio's event loop has exactly these methods."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Cancellable: ...

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> object: ...


async def sleep(scheduler: Scheduler, delay: float) -> None:
    """``asyncio.sleep`` on ``scheduler``'s time."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handle = scheduler.call_later(max(0.0, delay), _wake, future)
    try:
        await future
    finally:
        handle.cancel()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Timer:
    __slots__ = ("when", "order", "callback", "args", "cancelled")

    def __init__(self, when: float, order: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when, self.order, self.callback, self.args = when, order, callback, args
        self.cancelled = False

    def __lt__(self, other: "_Timer") -> bool:
        return (self.when, self.order) < (other.when, other.order)

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A scheduler whose time moves only in :meth:`advance` (the time counterpart of MockFactory).

    Callbacks from other threads run at once: with gpiozero's MockFactory a test drives pins
    from the loop's own thread, and the device reacts before ``drive_low()`` returns.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer(self._now + max(0.0, delay), next(self._order), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        callback(*args)

    @property
    def pending(self) -> int:
        return sum(not t.cancelled for t in self._timers)

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due, in order, each at its own time."""
        end = self._now + seconds
        while True:
            await self._drain()
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0].when > end:
                break
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            timer.callback(*timer.args)
        self._now = end
        await self._drain()

    @staticmethod
    async def _drain() -> None:
        for _ in range(_DRAIN_TURNS):
            await asyncio.sleep(0)
