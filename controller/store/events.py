"""Durable storage: the room's append-only event log, node sequence marks and readings (SQLite, WAL).

Every write runs on one dedicated thread, so SQLite's fsync never blocks the event loop and writes
are serialised. ``synchronous=FULL`` in WAL mode makes a commit durable when it returns: the
gateway acks a node's event only after :meth:`Store.append_group` (one transaction, one fsync, for
every input that arrived together) has returned. ``checkpoints`` holds snapshots of the room's
state, so a start replays only the log after the newest one.

A write that fails for the storage's sake (disk full, I/O error, read-only file system) raises
:class:`StorageError`; listeners hear of every such failure and of the first write that works
again, so the service can raise and clear its storage alarm. The database file and its WAL are
created owner-only (controller/security/files.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ..security import tokens
from ..security.files import owner_only_database
from . import history

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS node_events (
    node   TEXT NOT NULL,
    boot   INTEGER NOT NULL,
    e      INTEGER NOT NULL,
    log_id INTEGER NOT NULL REFERENCES log(id),
    PRIMARY KEY (node, boot, e)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_seq (
    node    TEXT PRIMARY KEY,
    boot    INTEGER NOT NULL,
    max_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    ts_ms   INTEGER NOT NULL,
    node    TEXT NOT NULL,
    measure TEXT NOT NULL,
    value   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_measure ON readings (measure, ts_ms);
CREATE INDEX IF NOT EXISTS log_by_time ON log (ts_ms);
CREATE TABLE IF NOT EXISTS checkpoints (
    cursor  INTEGER PRIMARY KEY,  -- the last log id folded into the state
    ts_ms   INTEGER NOT NULL,
    key     TEXT NOT NULL,        -- what the state is valid for (format and room configuration)
    state   TEXT NOT NULL         -- the room's state as JSON
);
"""
CHECKPOINTS_KEPT = 2  # the newest, and one before it in case the newest cannot be read


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A room event about to be written: what happened, and its data."""

    kind: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A stored room event; ``id`` is the cursor the API and the event stream page by.

    ``data_json``, when given, is ``data`` as the log stores it (:func:`data_json`): encoded once
    for the store and the live stream alike. It is not part of the record's value."""

    id: int
    ts_ms: int
    kind: str
    data: Mapping[str, Any]
    data_json: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ts_ms": self.ts_ms, "kind": self.kind, "data": dict(self.data)}

    def json_text(self) -> str:
        """``to_json()`` as compact JSON, the data encoded once (the event stream's ``data:``)."""
        data = self.data_json if self.data_json is not None else data_json(self.data)
        return '{"id":%d,"ts_ms":%d,"kind":%s,"data":%s}' % (self.id, self.ts_ms, _json_str(self.kind), data)


def data_json(data: Mapping[str, Any]) -> str:
    """A record's data as the log stores it: compact JSON (``json.dumps(data, separators=(",", ":"))``)."""
    return _COMPACT(data)


_COMPACT = json.JSONEncoder(separators=(",", ":")).encode  # (json.dumps would build an encoder per call)


def _json_str(text: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006 (a few dozen kinds, each once)
    out = _cache.get(text)
    if out is None:
        out = json.dumps(text)
        if len(_cache) < 256:
            _cache[text] = out
    return out


@dataclass(frozen=True, slots=True)
class SeqMark:
    node: str
    boot: int
    max_seq: int


# One input's share of a group commit: its records, its (node, boot, e) if a node's event, its mark.
GroupItem = tuple[list[LogRecord], "tuple[str, int, int] | None", "SeqMark | None"]


class StorageError(Exception):
    """The database cannot be written or read (disk full, I/O error, read-only): not a bug, a fault."""


def _is_storage_fault(exc: BaseException) -> bool:
    """Disk full, I/O errors, a read-only or corrupt file: the storage, not our SQL. (IntegrityError
    and ProgrammingError are DatabaseError subclasses too, and they are bugs or refusals.)"""
    return isinstance(exc, (OSError, sqlite3.OperationalError)) or type(exc) is sqlite3.DatabaseError


class Store:
    """SQLite event store. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smartroom-store")
        self._db: sqlite3.Connection | None = None
        self._next_id = 1  # the next log id to hand out (reserve_ids): ids are given before the write
        self.failing: StorageError | None = None   # the last write failed; None once one works again
        # Called with each failed write's error, and with None on the first write that works after one.
        self.health_listeners: list[Callable[[StorageError | None], None]] = []

    # -- thread plumbing -------------------------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._db is not None, "store is not open"
        try:
            return fn(self._db)
        except Exception as exc:
            if _is_storage_fault(exc):
                raise StorageError(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A write: its outcome is the storage's health (reads may work on a full disk)."""
        try:
            result = await self._run(fn)
        except StorageError as exc:
            self._health(exc)
            raise
        if self.failing is not None:
            self._health(None)
        return result

    def _health(self, error: StorageError | None) -> None:
        self.failing = error
        for listener in list(self.health_listeners):
            listener(error)

    def free_bytes(self) -> int:
        """Space left for the database on its file system (what an unprivileged writer may use)."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            owner_only_database(self.path)  # before SQLite creates the WAL: it copies the file's mode
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            _migrate_node_events(db)
            db.executescript(SCHEMA)
            tokens.ensure_schema(db)
            history.ensure_schema(db)
            return db

        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._executor, _open)
        self._next_id = await self.last_log_id() + 1

    def reserve_ids(self, n: int) -> int:
        """The first of ``n`` log ids for records about to be written. An id is never handed out
        twice, also when its write fails (a reader may have seen it), so the log may have gaps."""
        first = self._next_id
        self._next_id += n
        return first

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._executor.shutdown(wait=True)

    # -- writes ----------------------------------------------------------------------------
    async def append(
        self,
        ts_ms: int,
        entries: Iterable[LogEntry],
        *,
        node_event: tuple[str, int, int] | None = None,
        seq_mark: SeqMark | None = None,
    ) -> list[LogRecord]:
        """Append ``entries`` in one transaction; durable when this returns.

        ``node_event`` (node, boot, e) is recorded against the first entry so a resent event is
        recognised as a duplicate; ``seq_mark`` moves the node's accepted-sequence mark.
        """
        entries = list(entries)
        first = self.reserve_ids(len(entries))
        records = [LogRecord(first + i, ts_ms, e.kind, e.data) for i, e in enumerate(entries)]

        def _append(db: sqlite3.Connection) -> list[LogRecord]:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO log (id, ts_ms, kind, data) VALUES (?, ?, ?, ?)",
                               [(r.id, ts_ms, r.kind, json.dumps(r.data, separators=(",", ":"))) for r in records])
                if node_event is not None:
                    db.execute(
                        "INSERT INTO node_events (node, boot, e, log_id) VALUES (?, ?, ?, ?)",
                        (*node_event, records[0].id),
                    )
                if seq_mark is not None:
                    _upsert_mark(db, seq_mark)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return records

        return await self._write(_append)

    async def append_group(self, ts_ms: int, group: Iterable[GroupItem]) -> None:
        """Store the records of several inputs in one transaction with one fsync; durable when this
        returns, and if it raises, nothing of the group is stored.

        The records' ids are given (the service numbers them as it decides); each input's
        ``node_event`` (node, boot, e) is recorded against its first record, so a resent event is
        recognised as a duplicate; ``seq_mark`` moves its node's accepted-sequence mark.
        """
        log_rows: list[tuple[int, str, str]] = []
        event_rows: list[tuple[str, int, int, int]] = []
        marks: dict[str, SeqMark] = {}
        for records, node_event, seq_mark in group:
            for r in records:
                log_rows.append((r.id, r.kind, r.data_json if r.data_json is not None else data_json(r.data)))
            if node_event is not None:
                event_rows.append((*node_event, records[0].id))
            if seq_mark is not None:
                old = marks.get(seq_mark.node)
                if old is None or (seq_mark.boot, seq_mark.max_seq) > (old.boot, old.max_seq):
                    marks[seq_mark.node] = seq_mark
        # Each table's rows go in one statement (a JSON array, unpacked by SQLite): the store's thread
        # then takes the interpreter's lock a few times per group, not a few times per row.
        mark_rows = [(m.node, m.boot, m.max_seq) for m in marks.values()]
        log_json, events_json, marks_json = _COMPACT(log_rows), _COMPACT(event_rows), _COMPACT(mark_rows)

        def _append(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                _insert_rows(db, _INSERT_LOG_ROWS, _INSERT_LOG_ROW, log_rows, log_json, ts_ms)
                _insert_rows(db, _INSERT_EVENT_ROWS, _INSERT_EVENT_ROW, event_rows, events_json)
                _insert_rows(db, _UPSERT_MARK_ROWS, _UPSERT_MARK, mark_rows, marks_json)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

        await self._write(_append)

    async def save_checkpoint(self, cursor: int, ts_ms: int, key: str, state: str) -> None:
        """Keep ``state`` (the room folded up to log id ``cursor``) and drop all but the newest few."""

        def _save(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO checkpoints (cursor, ts_ms, key, state) VALUES (?, ?, ?, ?)",
                           (cursor, ts_ms, key, state))
                db.execute("DELETE FROM checkpoints WHERE cursor NOT IN "
                           "(SELECT cursor FROM checkpoints ORDER BY cursor DESC LIMIT ?)", (CHECKPOINTS_KEPT,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

        await self._write(_save)

    async def checkpoints(self, key: str) -> list[tuple[int, str]]:
        """(cursor, state) of the checkpoints valid for ``key``, newest first; none beyond the log's end."""

        def _read(db: sqlite3.Connection) -> list[tuple[int, str]]:
            return db.execute(
                "SELECT cursor, state FROM checkpoints WHERE key = ? AND cursor <= "
                "(SELECT COALESCE(MAX(id), 0) FROM log) ORDER BY cursor DESC", (key,)).fetchall()

        return await self._run(_read)

    async def add_readings(self, rows: list[tuple[int, str, str, float]], marks: Iterable[SeqMark] = ()) -> None:
        """Store readings (ts_ms, node, measure, value) and sequence marks in one transaction."""
        marks = list(marks)

        def _add(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                _insert_readings(db, rows)
                _upsert_marks(db, marks)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

        await self._write(_add)

    async def save_mark(self, mark: SeqMark) -> None:
        await self._write(lambda db: _upsert_mark(db, mark))

    # -- reads -----------------------------------------------------------------------------
    async def has_node_event(self, node: str, boot: int, event_no: int) -> bool:
        def _has(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM node_events WHERE node = ? AND boot = ? AND e = ?", (node, boot, event_no)
            ).fetchone()
            return row is not None

        return await self._run(_has)

    async def max_event_no(self, node: str, boot: int) -> int:
        """The highest event number stored from this node's boot (0: none)."""
        return await self._run(lambda db: db.execute(
            "SELECT COALESCE(MAX(e), 0) FROM node_events WHERE node = ? AND boot = ?", (node, boot)).fetchone()[0])

    async def read_log(self, after: int = 0, limit: int = 100) -> list[LogRecord]:
        def _read(db: sqlite3.Connection) -> list[LogRecord]:
            rows = db.execute(
                "SELECT id, ts_ms, kind, data FROM log WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
            return [LogRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

        return await self._run(_read)

    async def read_kinds(self, prefix: str, from_ms: int) -> list[LogRecord]:
        """Records whose kind starts with ``prefix`` (e.g. ``"call."``), stored at or after ``from_ms``."""

        def _read(db: sqlite3.Connection) -> list[LogRecord]:
            rows = db.execute(
                "SELECT id, ts_ms, kind, data FROM log WHERE ts_ms >= ? AND kind >= ? AND kind < ? ORDER BY id",
                (from_ms, prefix, prefix + "\uffff")).fetchall()
            return [LogRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

        return await self._run(_read)

    # -- tokens and audit (controller/security/tokens.py does the work on this thread) ------------
    async def find_token(self, secret: str) -> tokens.Principal | None:
        return await self._run(lambda db: tokens.find(db, secret))

    async def create_token(self, role: str, name: str, now_ms: int) -> tuple[tokens.TokenInfo, str]:
        return await self._write(lambda db: tokens.create(db, role, name, now_ms))

    async def revoke_token(self, name_or_id: str, now_ms: int) -> tokens.TokenInfo:
        return await self._write(lambda db: tokens.revoke(db, name_or_id, now_ms))

    async def list_tokens(self) -> list[tokens.TokenInfo]:
        return await self._run(tokens.list_tokens)

    async def audit(self, entry: tokens.AuditEntry) -> None:
        await self._write(lambda db: tokens.audit(db, entry))

    async def read_audit(self, after_ts_ms: int, limit: int) -> list[tokens.AuditEntry]:
        return await self._run(lambda db: tokens.read_audit(db, after_ts_ms, limit))

    async def last_log_id(self) -> int:
        return await self._run(lambda db: db.execute("SELECT COALESCE(MAX(id), 0) FROM log").fetchone()[0])

    async def load_marks(self) -> dict[str, SeqMark]:
        def _load(db: sqlite3.Connection) -> dict[str, SeqMark]:
            rows = db.execute("SELECT node, boot, max_seq FROM node_seq").fetchall()
            return {r[0]: SeqMark(r[0], r[1], r[2]) for r in rows}

        return await self._run(_load)

    async def latest_readings(self) -> dict[str, tuple[int, str, float]]:
        """Newest value per measure: measure -> (ts_ms, node, value)."""

        def _latest(db: sqlite3.Connection) -> dict[str, tuple[int, str, float]]:
            latest = {}
            for measure in history.measures(db, "readings"):  # index seeks: fast however many rows
                row = db.execute("SELECT ts_ms, node, value FROM readings WHERE measure = ? "
                                 "ORDER BY ts_ms DESC LIMIT 1", (measure,)).fetchone()
                latest[measure] = (row[0], row[1], row[2])
            return latest

        return await self._run(_latest)

    async def count_readings(self) -> int:
        return await self._run(lambda db: db.execute("SELECT COUNT(*) FROM readings").fetchone()[0])


READINGS_PER_STATEMENT = 4096  # rows bound to one INSERT, at most (4 parameters each)


@functools.lru_cache(maxsize=None)
def _readings_insert(rows: int) -> str:
    return "INSERT INTO readings (ts_ms, node, measure, value) VALUES " + ",".join(("(?,?,?,?)",) * rows)


def _insert_readings(db: sqlite3.Connection, rows: list[tuple[int, str, str, float]]) -> None:
    """Insert readings thousands of rows to a statement, not one (``executemany``): this thread
    takes the GIL once a statement to bind its parameters, then SQLite inserts them all while the
    event loop runs. Each time this thread wants the GIL back from a busy event loop (a readings
    flood) it may wait the interpreter's switch interval (5 ms): a row a statement stored ~20k
    rows/s that way, 4096 a statement ~180k (README, Performance). The rows are cut into full
    statements and the rest into halves, quarters, ... so only a few statement shapes are ever
    prepared; SQLite's limit on parameters (32766, or 999 in old builds) is respected."""
    size = min(READINGS_PER_STATEMENT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4)
    size = 1 << (size.bit_length() - 1)  # a power of two: the halves below are whole
    start = 0
    while size:
        sql = _readings_insert(size)
        while len(rows) - start >= size:
            db.execute(sql, list(chain.from_iterable(rows[start:start + size])))
            start += size
        size //= 2


def _migrate_node_events(db: sqlite3.Connection) -> None:
    """A database from protocol v1 keyed node events by their frame seq; v2 by the event number.

    The column is renamed in place: a v1 row's seq was that event's number in its boot, and a node
    running v2 firmware has rebooted since (a new boot), so old and new keys never meet.
    """
    columns = [row[1] for row in db.execute("PRAGMA table_info(node_events)")]
    if "seq" in columns:
        db.execute("ALTER TABLE node_events RENAME COLUMN seq TO e")


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is left of a failed transaction; SQLite has already done so after e.g. a full disk,
    and a second ROLLBACK would hide the first error behind 'no transaction is active'."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _upsert_marks(db: sqlite3.Connection, marks: Iterable[SeqMark]) -> None:
    """Several nodes' marks in one statement (readings batches carry one per node that sent; a
    statement each would take the GIL back each time, see _insert_readings). A node named twice
    keeps its highest mark."""
    newest: dict[str, SeqMark] = {}
    for mark in marks:
        old = newest.get(mark.node)
        if old is None or (mark.boot, mark.max_seq) > (old.boot, old.max_seq):
            newest[mark.node] = mark
    items = list(newest.values())
    per_statement = max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 3)
    for start in range(0, len(items), per_statement):
        chunk = items[start:start + per_statement]
        db.execute(
            "INSERT INTO node_seq (node, boot, max_seq) VALUES " + ",".join(("(?,?,?)",) * len(chunk)) +
            " ON CONFLICT(node) DO UPDATE SET boot = excluded.boot, max_seq = excluded.max_seq "
            "WHERE excluded.boot > node_seq.boot OR "
            "(excluded.boot = node_seq.boot AND excluded.max_seq > node_seq.max_seq)",
            [v for m in chunk for v in (m.node, m.boot, m.max_seq)])


def _insert_rows(db: sqlite3.Connection, many_sql: str, one_sql: str, rows: list[tuple[Any, ...]], rows_json: str,
                 *lead: Any) -> None:
    """``rows`` (``rows_json``: them as a JSON array) in one statement; one by one if a string in
    them holds a NUL, where SQLite's text from JSON would end."""
    if not rows:
        return
    if "\\u0000" not in rows_json:
        db.execute(many_sql, (*lead, rows_json))
    else:
        db.executemany(one_sql, [(*lead, *row) for row in rows])


_INSERT_LOG_ROW = "INSERT INTO log (ts_ms, id, kind, data) VALUES (?, ?, ?, ?)"
_INSERT_LOG_ROWS = ("INSERT INTO log (id, ts_ms, kind, data) "
                    "SELECT value->>0, ?1, value->>1, value->>2 FROM json_each(?2)")
_INSERT_EVENT_ROW = "INSERT INTO node_events (node, boot, e, log_id) VALUES (?, ?, ?, ?)"
_INSERT_EVENT_ROWS = ("INSERT INTO node_events (node, boot, e, log_id) "
                      "SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?)")
_UPSERT_MARK_ROWS = ("INSERT INTO node_seq (node, boot, max_seq) "
                     "SELECT value->>0, value->>1, value->>2 FROM json_each(?) WHERE true "
                     "ON CONFLICT(node) DO UPDATE SET boot = excluded.boot, max_seq = excluded.max_seq "
                     "WHERE excluded.boot > node_seq.boot OR "
                     "(excluded.boot = node_seq.boot AND excluded.max_seq > node_seq.max_seq)")
_UPSERT_MARK = ("INSERT INTO node_seq (node, boot, max_seq) VALUES (?, ?, ?) "
                "ON CONFLICT(node) DO UPDATE SET boot = excluded.boot, max_seq = excluded.max_seq "
                "WHERE excluded.boot > node_seq.boot OR "
                "(excluded.boot = node_seq.boot AND excluded.max_seq > node_seq.max_seq)")


def _upsert_mark(db: sqlite3.Connection, mark: SeqMark) -> None:
    db.execute(_UPSERT_MARK, (mark.node, mark.boot, mark.max_seq))
