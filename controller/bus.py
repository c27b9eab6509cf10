"""In-process fan-out of stored log records to live subscribers (the API's event stream).

A subscriber that falls too far behind is closed rather than allowed to grow without bound; it
catches up from the durable log when it reconnects with its last cursor, so nothing is lost.

Besides stored records, a subscriber gets :data:`STATUS_CHANGED` when something the log cannot
hold yet changed (a storage failure is shown before it can be stored): the stream tells its
client to look at the room again.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from .store import LogRecord

SUBSCRIBER_QUEUE_LEN = 4096  # ~ minutes of a busy room's events; beyond it, resume from the log


class _StatusChanged:
    def __repr__(self) -> str:
        return "STATUS_CHANGED"


STATUS_CHANGED = _StatusChanged()  # what a subscriber gets when the room's unstored status changed


class Subscription:
    def __init__(self, bus: "EventBus") -> None:
        self._bus = bus
        # Unbounded as a structure, bounded by _offer: the end marker must always fit.
        self._queue: asyncio.Queue[LogRecord | _StatusChanged | None] = asyncio.Queue()
        self._ended = False
        self.lagged = False

    def _offer(self, record: LogRecord | _StatusChanged) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= SUBSCRIBER_QUEUE_LEN:
            self.lagged = True
            self.end()
            return
        self._queue.put_nowait(record)

    def end(self) -> None:
        """Make :meth:`get` return None from now on (the stream ends; its client resumes later)."""
        self._ended = True
        self._queue.put_nowait(None)  # wakes a waiting get()

    async def get(self) -> LogRecord | _StatusChanged | None:
        """The next record (or STATUS_CHANGED), or None when the stream must end (lagged, or shutting down)."""
        if self._ended:
            return None
        record = await self._queue.get()
        return None if self._ended else record

    def get_nowait(self, limit: int) -> list[LogRecord]:
        """Up to ``limit`` records already waiting, without waiting (empty once the stream ended)."""
        out: list[LogRecord] = []
        while len(out) < limit and not self._ended and not self._queue.empty():
            record = self._queue.get_nowait()
            if record is None or self._ended:
                break
            out.append(record)
        return out

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def end_all(self) -> None:
        for sub in list(self._subscribers):
            sub.end()

    def publish(self, records: Iterable[LogRecord]) -> None:
        for record in records:
            for sub in list(self._subscribers):
                sub._offer(record)

    def notify(self) -> None:
        """The room's unstored status changed (e.g. its storage failed): subscribers look again."""
        for sub in list(self._subscribers):
            sub._offer(STATUS_CHANGED)
