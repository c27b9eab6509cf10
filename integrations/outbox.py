"""The integrations' durable state, in the room's own SQLite database: each reader's log cursor
(with what it folded so far) and the outbox of HL7 messages waiting for their ACK.

Messages are written together with the cursor of the log record they came from, in one
transaction: after a crash the reader resumes exactly after the last record whose messages are
safe, and the sender resends whatever was not acknowledged. Its own connection and thread, so the
room's store is untouched; SQLite's WAL lets both write the same file in turn.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from controller.store.sidecar import SidecarDb

BUSY_TIMEOUT_MS = 10_000   # the room's store holds the write lock for one fsync at a time; wait, never fail
DONE_KEEP_MS = 7 * 24 * 3600 * 1000  # acknowledged messages stay a week, for an integrator's questions

SCHEMA = """
CREATE TABLE IF NOT EXISTS integration_cursor (
    name   TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    state  TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hl7_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    peer       TEXT NOT NULL,
    control_id TEXT NOT NULL UNIQUE,
    log_id     INTEGER NOT NULL,
    call_id    TEXT,
    phase      TEXT,
    message    TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    done_ms    INTEGER,
    outcome    TEXT
);
CREATE INDEX IF NOT EXISTS hl7_outbox_pending ON hl7_outbox (peer, done_ms, seq);
"""


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message to queue: the control id makes a resend recognisable as the same message."""

    control_id: str
    log_id: int
    call_id: str | None
    phase: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Queued:
    seq: int
    control_id: str
    log_id: int
    call_id: str | None
    phase: str | None
    message: str
    created_ms: int
    attempts: int


class Outbox(SidecarDb):
    """Open with :meth:`open`, close with :meth:`close`; every method runs on the outbox's thread."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, name="smartroom-outbox", schema=SCHEMA, busy_timeout_s=BUSY_TIMEOUT_MS / 1000)

    # ------------------------------------------------------------------ cursors
    async def cursor(self, name: str) -> tuple[int, dict[str, Any]]:
        """(log cursor, folded state) for the reader ``name``; (0, {}) the first time."""
        def _get(db: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
            row = db.execute("SELECT cursor, state FROM integration_cursor WHERE name = ?", (name,)).fetchone()
            return (row[0], json.loads(row[1])) if row else (0, {})

        return await self._run(_get)

    async def save(self, name: str, cursor: int, state: dict[str, Any] | None = None, *, peer: str = "",
                   messages: Iterable[OutMessage] = (), now_ms: int = 0) -> None:
        """Move ``name``'s cursor (and state) and queue ``messages``, in one durable transaction.

        A message whose control id is already queued is not queued again.
        """
        messages = list(messages)
        state_json = json.dumps(state or {}, separators=(",", ":"))

        def _save(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR IGNORE INTO hl7_outbox (peer, control_id, log_id, call_id, phase, message, created_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(peer, m.control_id, m.log_id, m.call_id, m.phase, m.message, now_ms) for m in messages])
                db.execute("INSERT INTO integration_cursor (name, cursor, state) VALUES (?, ?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET cursor = excluded.cursor, state = excluded.state",
                           (name, cursor, state_json))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(_save)

    # ------------------------------------------------------------------ the outbox
    async def head(self, peer: str) -> Queued | None:
        """The oldest message for ``peer`` not yet acknowledged (messages go out in order)."""
        def _head(db: sqlite3.Connection) -> Queued | None:
            row = db.execute(
                "SELECT seq, control_id, log_id, call_id, phase, message, created_ms, attempts FROM hl7_outbox "
                "WHERE peer = ? AND done_ms IS NULL ORDER BY seq LIMIT 1", (peer,)).fetchone()
            return Queued(*row) if row else None

        return await self._run(_head)

    async def pending(self, peer: str) -> int:
        return await self._run(lambda db: db.execute(
            "SELECT COUNT(*) FROM hl7_outbox WHERE peer = ? AND done_ms IS NULL", (peer,)).fetchone()[0])

    async def attempted(self, seq: int) -> None:
        await self._run(lambda db: db.execute("UPDATE hl7_outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,)))

    async def done(self, seq: int, outcome: str, now_ms: int) -> None:
        """Acknowledged (or refused for good): the message leaves the queue, kept a while as a record."""
        def _done(db: sqlite3.Connection) -> None:
            db.execute("UPDATE hl7_outbox SET done_ms = ?, outcome = ? WHERE seq = ?", (now_ms, outcome, seq))
            db.execute("DELETE FROM hl7_outbox WHERE done_ms IS NOT NULL AND done_ms < ?", (now_ms - DONE_KEEP_MS,))

        await self._run(_done)

    async def outcomes(self, peer: str) -> list[tuple[str, str | None]]:
        """(control id, outcome) of every stored message for ``peer``, oldest first (for tests and support)."""
        return await self._run(lambda db: db.execute(
            "SELECT control_id, outcome FROM hl7_outbox WHERE peer = ? ORDER BY seq", (peer,)).fetchall())
