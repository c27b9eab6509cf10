"""What the uplink remembers in the room's database: the last cursor the broker acknowledged (per
broker and unit) and the results of the ward commands already carried out (so a command delivered
twice is answered twice but done once).

Its own SQLite connection to the room's database file, on its own thread: WAL lets it write beside
the event store without touching the store's code. Losing the newest mark in a crash only means
resending a few events, which the ward stores once.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..store.sidecar import SidecarDb

SCHEMA = """
CREATE TABLE IF NOT EXISTS ward_uplink (
    broker     TEXT PRIMARY KEY,   -- host:port/site/unit: a new broker or unit gets the whole log again
    acked      INTEGER NOT NULL,   -- the highest log cursor the broker acknowledged (QoS 1 PUBACK)
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ward_commands (
    id     TEXT PRIMARY KEY,
    ts_ms  INTEGER NOT NULL,
    result TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ward_commands_by_time ON ward_commands (ts_ms);
"""
BUSY_TIMEOUT_S = 10.0             # the event store holds its write lock for one transaction at a time
COMMANDS_KEPT_MS = 24 * 3600_000  # a command id is remembered a day; the broker redelivers within seconds


class UplinkMarks(SidecarDb):
    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path, name="smartroom-uplink", schema=SCHEMA, busy_timeout_s=BUSY_TIMEOUT_S)

    async def acked(self, broker: str) -> int:
        row = await self._run(lambda db: db.execute("SELECT acked FROM ward_uplink WHERE broker = ?",
                                                    (broker,)).fetchone())
        return row[0] if row else 0

    async def save_acked(self, broker: str, cursor: int, now_ms: int) -> None:
        """Move the mark forward (never back)."""
        await self._run(lambda db: db.execute(
            "INSERT INTO ward_uplink (broker, acked, updated_ms) VALUES (?, ?, ?) ON CONFLICT(broker) DO UPDATE "
            "SET acked = excluded.acked, updated_ms = excluded.updated_ms WHERE excluded.acked > ward_uplink.acked",
            (broker, cursor, now_ms)))

    async def command_result(self, command_id: str) -> dict[str, Any] | None:
        row = await self._run(lambda db: db.execute("SELECT result FROM ward_commands WHERE id = ?",
                                                    (command_id,)).fetchone())
        return json.loads(row[0]) if row else None

    async def save_command(self, command_id: str, result: dict[str, Any], now_ms: int) -> None:
        def _save(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO ward_commands (id, ts_ms, result) VALUES (?, ?, ?)",
                       (command_id, now_ms, json.dumps(result)))
            db.execute("DELETE FROM ward_commands WHERE ts_ms < ?", (now_ms - COMMANDS_KEPT_MS,))

        await self._run(_save)
