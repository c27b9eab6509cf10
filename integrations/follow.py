"""Follow the room's event log from a cursor, like the API's event stream: the bus says what is new,
the log fills any gap (a lagged subscription, records stored before the subscription existed)."""

from __future__ import annotations

from typing import Awaitable, Callable

from controller.service import RoomController
from controller.store import LogRecord

LOG_BATCH = 500  # records read per catch-up query


async def follow_log(controller: RoomController, cursor: Callable[[], int],
                     take: Callable[[list[LogRecord]], Awaitable[None]], batch: int = LOG_BATCH) -> None:
    """Call ``take`` with every record after ``cursor()``, in order, forever; ``take`` moves the cursor.

    Subscribes before reading the log, so nothing stored meanwhile is missed; ids at or below the
    cursor are skipped, so nothing is taken twice.
    """
    sub = controller.subscribe()
    try:
        while True:
            records = await controller.events_after(cursor(), batch)
            if records:
                await take(records)
                continue
            while True:
                record = await sub.get()
                if record is None:  # lagged (or the API is shutting down): read on from the log
                    sub.close()
                    sub = controller.subscribe()
                    break
                if record.id <= cursor():
                    continue
                if record.id > cursor() + 1:
                    break  # a gap: the log has it
                await take([record])
    finally:
        sub.close()
