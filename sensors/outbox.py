"""One ordered queue from the Pi's devices to the room controller.

Pin edges and Bluetooth advertisements arrive in callbacks; what they cause (a call, a presence
change, a check-in) is an ``await controller.local_*()``. The outbox runs those one after another,
in the order they happened, so a bed pad's "occupied" can never overtake its "empty", and a device
is online before its first check-in counts. A send that fails (the SD card is full for a moment)
is retried with backoff, and the sends after it wait: a call is never dropped or reordered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .clock import Scheduler, sleep

log = logging.getLogger("smartroom.sensors")

RETRY_FIRST_S = 0.5   # a store hiccup is usually over by the next fsync
RETRY_MAX_S = 30.0    # retried for as long as it takes, but not in a tight loop
STOP_FLUSH_S = 2.0    # on shutdown, what is queued gets this long to reach the log (same as the API's)

Send = Callable[[], Awaitable[object]]


class Outbox:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._queue: asyncio.Queue[tuple[str, Send]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.retries = 0
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sensors-outbox")

    def put(self, what: str, send: Send) -> None:
        """Queue ``send`` (a coroutine function); ``what`` names it in the log."""
        self._queue.put_nowait((what, send))

    async def settle(self) -> None:
        """Wait until everything queued so far has been sent."""
        await self._queue.join()

    async def stop(self) -> None:
        if self._task is None:
            return
        try:
            async with asyncio.timeout(STOP_FLUSH_S):
                await self._queue.join()
        except TimeoutError:
            log.error("sensors: %d inputs not stored at shutdown", self._queue.qsize())
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            what, send = await self._queue.get()
            try:
                await self._send(what, send)
            finally:
                self._queue.task_done()

    async def _send(self, what: str, send: Send) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await send()
                return
            except ValueError:  # the controller refuses it (a node it does not know): retrying will not help
                self.dropped += 1
                log.exception("sensors: %s refused by the controller", what)
                return
            except Exception:  # the store failed; the input must still reach the log
                self.retries += 1
                log.exception("sensors: %s could not be stored; retrying in %.1f s", what, delay)
                await sleep(self._scheduler, delay)
                delay = min(delay * 2, RETRY_MAX_S)
