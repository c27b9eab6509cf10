"""A SQLite connection of its own, on its own thread, for a part that keeps a few tables beside the
event store (the uplink's marks, the integrations' outbox, the ward console's store).

WAL lets such a connection write beside the event store without touching the store's code; every
call runs on the one worker thread, so the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class SidecarDb:
    """Open with :meth:`open`, close with :meth:`close`; :meth:`_run` runs a function on the thread.

    ``synchronous`` is the connection's SQLite setting (``FULL``: every commit reaches the disk;
    ``NORMAL``: only what :meth:`_run` marks ``durable`` does); ``busy_timeout_s`` is how long a
    write waits for another connection's transaction."""

    def __init__(self, path: Path, *, name: str, schema: str, busy_timeout_s: float,
                 synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self._name = name
        self._schema = schema
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        def call() -> T:
            assert self._db is not None, f"{self._name} is not open"
            if not durable or self._synchronous == "FULL":
                return fn(self._db)
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                return fn(self._db)
            finally:
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _prepare(self, db: sqlite3.Connection) -> None:
        """More set-up on the fresh connection, after the schema (a subclass's hook)."""

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=self._busy_timeout_s)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(self._schema)
            self._prepare(db)
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, _open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._executor.shutdown(wait=True)
