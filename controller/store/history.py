"""Readings history: raw readings for days, rollups for a year, bounded disk use.

The controller writes every reading into ``readings`` (:mod:`controller.store`). :func:`maintain_chunk`
moves raw readings older than ``Retention.raw_days`` into ``readings_rollup``: one row per
(measure, node, rollup period) with count, min, max and sum. Rollups older than
``Retention.rollup_days`` are deleted. Each call does one transaction of at most ``limit`` rows, so
the store thread, which also stores the nurse-call events, is never held for long.

A reading is in exactly one of the two tables at any commit: a chunk deletes the raw rows it rolls
up in the same transaction. :func:`query` therefore reads both tables over the whole range and adds
them up; there is no boundary to track and nothing is counted twice, even while maintenance is
half done. Means are merged through sums and counts, so a bucket's mean is the same whether its
readings are raw, rolled up, or some of each.

Every function here takes a ``sqlite3.Connection``; :class:`ReadingsHistory` runs maintenance on
the store's thread and queries on a read-only connection of their own (WAL lets them read while the
store writes), so a year-long chart never delays an event's commit and ack::

    history = ReadingsHistory(controller.store, Retention(raw_days=7))
    await history.maintain(controller.clock())                  # hourly
    series = await history.query("temp_c", t0, t1, 300_000)     # 5-minute buckets
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, TypeVar

T = TypeVar("T")


class Database(Protocol):
    """What the history needs of :class:`~controller.store.events.Store`: its file and its DB thread."""

    path: Path

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]: ...

log = logging.getLogger("smartroom.history")

DAY_MS = 86_400_000
# One maintenance transaction touches at most this many rows: tens of ms on a desktop SSD, a few
# hundred ms at worst on a Pi's SD card, which a reading batch or an event waits behind at most once.
MAINTAIN_CHUNK_ROWS = 10_000
# A chart is at most a few thousand pixels wide; more buckets than this is a mistake, not a chart.
MAX_BUCKETS = 5000
# A query that runs longer than this is stopped. The heaviest default one, 400 days of six nodes'
# battery rollups (0.7 M rows), takes 0.4 s on a desktop, a few seconds on a Pi; anything slower is
# a misconfiguration (e.g. one-second rollups) and should not occupy a thread.
QUERY_MAX_S = 10.0
_PROGRESS_OPS = 20_000  # SQLite VM steps between deadline checks (well under 10 ms)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings_rollup (
    measure  TEXT NOT NULL,
    start_ms INTEGER NOT NULL,   -- a multiple of the rollup period
    node     TEXT NOT NULL,
    n        INTEGER NOT NULL,
    vmin     REAL NOT NULL,
    vmax     REAL NOT NULL,
    vsum     REAL NOT NULL,      -- mean = vsum / n; sums and counts merge exactly
    PRIMARY KEY (measure, start_ms, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class HistoryError(ValueError):
    """A history query that cannot be answered as asked; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long readings are kept: raw for ``raw_days``, then rolled up into periods of
    ``rollup_s`` seconds kept until ``rollup_days`` after the reading.

    Five-minute rollups by default (measured with ``bench/history_disk.py``, docs/history.md): a
    room's database settles at about 90 MB instead of about 370 MB with one-minute rollups, and a
    year-long chart reads 5 times fewer rows. Minute detail stays in the raw week, where incidents
    are reviewed; every bucket keeps its min and max, so a short excursion still shows its extreme.
    """

    raw_days: float = 7
    rollup_days: float = 400
    rollup_s: int = 300

    def __post_init__(self) -> None:
        if not self.raw_days > 0:
            raise ValueError(f"raw_days must be > 0, got {self.raw_days}")
        if not self.rollup_days >= self.raw_days:
            raise ValueError(f"rollup_days ({self.rollup_days}) must be at least raw_days ({self.raw_days})")
        # A day is a whole number of periods, so day-sized steps never need rounding.
        if not (isinstance(self.rollup_s, int) and 1 <= self.rollup_s <= 86400 and 86400 % self.rollup_s == 0):
            raise ValueError(f"rollup_s must be a whole number of seconds dividing a day, got {self.rollup_s}")

    @property
    def period_ms(self) -> int:
        return self.rollup_s * 1000


@dataclass(frozen=True, slots=True)
class Bucket:
    """The readings in [start_ms, start_ms + step): how many, lowest, highest, mean."""

    start_ms: int
    n: int
    min: float
    max: float
    mean: float

    def to_json(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "n": self.n, "min": self.min, "max": self.max, "mean": self.mean}


@dataclass(frozen=True, slots=True)
class Series:
    """A query's answer. ``from_ms``/``to_ms`` are the range actually covered (widened to whole
    buckets); ``step_ms`` is the step actually used, rounded up from ``requested_step_ms`` to a
    multiple of the rollup period when the range holds rolled-up readings. Empty buckets are left
    out. ``source`` says where the readings came from: "raw", "rollup" or "mixed"."""

    measure: str
    node: str | None
    from_ms: int
    to_ms: int
    step_ms: int
    requested_step_ms: int
    source: str
    buckets: tuple[Bucket, ...]

    @property
    def step_rounded(self) -> bool:
        return self.step_ms != self.requested_step_ms

    def to_json(self) -> dict[str, Any]:
        return {"measure": self.measure, "node": self.node, "from_ms": self.from_ms, "to_ms": self.to_ms,
                "step_ms": self.step_ms, "requested_step_ms": self.requested_step_ms,
                "step_rounded": self.step_rounded, "source": self.source,
                "buckets": [b.to_json() for b in self.buckets]}


@dataclass(slots=True)
class MaintainReport:
    """What maintenance did: raw rows rolled up, raw rows deleted without a rollup (older than the
    rollup retention), rollup rows deleted, and in how many transactions."""

    rolled_up: int = 0
    raw_expired: int = 0
    rollups_expired: int = 0
    transactions: int = 0
    done: bool = field(default=True, repr=False)

    def add(self, other: MaintainReport) -> None:
        self.rolled_up += other.rolled_up
        self.raw_expired += other.raw_expired
        self.rollups_expired += other.rollups_expired
        self.transactions += other.transactions
        self.done = other.done


# --------------------------------------------------------------------------- schema


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create the history tables (idempotent); called when the store opens."""
    db.executescript(SCHEMA)


def rollup_period_ms(db: sqlite3.Connection, wanted_ms: int, *, record: bool = False) -> int:
    """The rollup period of this database: the first one ever used, so existing rollups stay aligned
    if the configured period changes (changing it needs an empty ``readings_rollup``)."""
    row = db.execute("SELECT value FROM history_meta WHERE key = 'rollup_ms'").fetchone()
    if row is not None:
        return int(row[0])
    if record:
        db.execute("INSERT OR IGNORE INTO history_meta (key, value) VALUES ('rollup_ms', ?)", (wanted_ms,))
    return wanted_ms


# --------------------------------------------------------------------------- maintenance


def _floor(t: int, step: int) -> int:
    return t // step * step


def measures(db: sqlite3.Connection, table: str) -> list[str]:
    """Distinct measures in ``table``, by skipping along its (measure, time) index."""
    rows = db.execute(
        f"WITH RECURSIVE m(x) AS (SELECT MIN(measure) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN(measure) FROM {table} WHERE measure > x) FROM m WHERE x IS NOT NULL) "
        "SELECT x FROM m WHERE x IS NOT NULL").fetchall()
    return [r[0] for r in rows]


def _any_before(db: sqlite3.Connection, table: str, column: str, measure: str, before_ms: int) -> bool:
    row = db.execute(f"SELECT 1 FROM {table} WHERE measure = ? AND {column} < ? LIMIT 1",
                     (measure, before_ms)).fetchone()
    return row is not None


def _transaction(db: sqlite3.Connection, *statements: tuple[str, dict[str, Any]]) -> int:
    """Run ``statements`` in one transaction; the row count of the last one."""
    db.execute("BEGIN IMMEDIATE")
    try:
        count = 0
        for sql, params in statements:
            count = db.execute(sql, params).rowcount
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk); keep the first error
            db.execute("ROLLBACK")
        raise
    return count


_OLDEST_RAW = "SELECT rowid FROM readings WHERE measure = :m AND ts_ms < :cut ORDER BY ts_ms, rowid LIMIT :n"
_DELETE_RAW = f"DELETE FROM readings WHERE rowid IN ({_OLDEST_RAW})"
_ROLL_UP = (
    "INSERT INTO readings_rollup (measure, start_ms, node, n, vmin, vmax, vsum) "
    "SELECT :m, ts_ms / :p * :p AS start, node, COUNT(*), MIN(value), MAX(value), SUM(value) FROM "
    "(SELECT ts_ms, node, value FROM readings WHERE measure = :m AND ts_ms < :cut ORDER BY ts_ms, rowid LIMIT :n) "
    "GROUP BY start, node "
    # A period already rolled up (a chunk ended inside it, or a reading arrived late) is merged into.
    "ON CONFLICT (measure, start_ms, node) DO UPDATE SET n = n + excluded.n, vmin = min(vmin, excluded.vmin), "
    "vmax = max(vmax, excluded.vmax), vsum = vsum + excluded.vsum")
_DELETE_ROLLUPS = (
    "DELETE FROM readings_rollup WHERE measure = :m AND (start_ms, node) IN "
    "(SELECT start_ms, node FROM readings_rollup WHERE measure = :m AND start_ms < :cut "
    "ORDER BY start_ms, node LIMIT :n)")


def maintain_chunk(db: sqlite3.Connection, now_ms: int, retention: Retention = Retention(),
                   limit: int = MAINTAIN_CHUNK_ROWS) -> MaintainReport:
    """Do the oldest pending piece of maintenance in one transaction of at most ``limit`` rows.

    In order: delete raw readings already older than the rollup retention (after a long downtime or
    a clock jump; rolling them up would be wasted work), roll up raw readings older than the raw
    retention (whole periods only), delete rollups older than the rollup retention. ``done`` is
    True when nothing is left to do as of ``now_ms``.
    """
    period = rollup_period_ms(db, retention.period_ms, record=True)
    raw_cut = _floor(now_ms - round(retention.raw_days * DAY_MS), period)
    keep_cut = _floor(now_ms - round(retention.rollup_days * DAY_MS), period)
    for measure in measures(db, "readings"):
        params = {"m": measure, "cut": keep_cut, "n": limit, "p": period}
        if _any_before(db, "readings", "ts_ms", measure, keep_cut):
            n = _transaction(db, (_DELETE_RAW, params))
            return MaintainReport(raw_expired=n, transactions=1, done=False)
        if _any_before(db, "readings", "ts_ms", measure, raw_cut):
            params["cut"] = raw_cut
            n = _transaction(db, (_ROLL_UP, params), (_DELETE_RAW, params))
            return MaintainReport(rolled_up=n, transactions=1, done=False)
    for measure in measures(db, "readings_rollup"):
        if _any_before(db, "readings_rollup", "start_ms", measure, keep_cut):
            n = _transaction(db, (_DELETE_ROLLUPS, {"m": measure, "cut": keep_cut, "n": limit}))
            return MaintainReport(rollups_expired=n, transactions=1, done=False)
    return MaintainReport(done=True)


def maintain_all(db: sqlite3.Connection, now_ms: int, retention: Retention = Retention(),
                 limit: int = MAINTAIN_CHUNK_ROWS) -> MaintainReport:
    """All pending maintenance, chunk by chunk, on this thread (tools and benchmarks)."""
    report = MaintainReport()
    while True:
        step = maintain_chunk(db, now_ms, retention, limit)
        report.add(step)
        if step.done:
            return report


# --------------------------------------------------------------------------- queries


def query(db: sqlite3.Connection, measure: str, from_ms: int, to_ms: int, step_ms: int, *,
          node: str | None = None, retention: Retention = Retention(),
          max_buckets: int = MAX_BUCKETS) -> Series:
    """``measure``'s readings in [from_ms, to_ms) as buckets of ``step_ms`` aligned to multiples of
    the step since the epoch, raw and rolled-up readings merged.

    The range is widened to whole buckets. Where the range holds rollups, the step is rounded up to a
    multiple of the rollup period (a rollup row cannot be split between buckets). Raises
    :class:`HistoryError` for an empty range, a step below 1 ms or more than ``max_buckets`` buckets.
    """
    if step_ms < 1:
        raise HistoryError(f"step must be at least 1 ms, got {step_ms}")
    if to_ms <= from_ms:
        raise HistoryError("'from' must be before 'to'")
    # One read transaction: every SELECT sees the same snapshot, so a maintenance chunk committed
    # between them cannot show its readings in both tables, or in neither.
    own = not db.in_transaction
    if own:
        db.execute("BEGIN")
    try:
        return _query(db, measure, from_ms, to_ms, step_ms, node, retention, max_buckets)
    finally:
        if own and db.in_transaction:  # an interrupted statement may have ended it already
            db.execute("COMMIT")


def _query(db: sqlite3.Connection, measure: str, from_ms: int, to_ms: int, step_ms: int, node: str | None,
           retention: Retention, max_buckets: int) -> Series:
    period = rollup_period_ms(db, retention.period_ms)
    node_sql = " AND node = :node" if node is not None else ""
    params: dict[str, Any] = {"m": measure, "node": node}

    step = step_ms
    lo, hi = _floor(from_ms, step), -(-to_ms // step) * step
    touches = db.execute(  # a rollup period overlapping [lo, hi)
        f"SELECT 1 FROM readings_rollup WHERE measure = :m AND start_ms > :lo AND start_ms < :hi{node_sql} LIMIT 1",
        {**params, "lo": lo - period, "hi": hi}).fetchone() is not None
    if touches and step % period:
        step = -(-step // period) * period
        lo, hi = _floor(from_ms, step), -(-to_ms // step) * step
    count = (hi - lo) // step
    if count > max_buckets:
        raise HistoryError(f"{count} buckets of {step / 1000:g} s: at most "
                           f"{max_buckets}; use a larger step or a shorter range")

    params.update(lo=lo, hi=hi, step=step)
    merged: dict[int, list[float]] = {}
    raw = db.execute(
        "SELECT ts_ms / :step * :step AS b, COUNT(*), MIN(value), MAX(value), SUM(value) FROM readings "
        f"WHERE measure = :m AND ts_ms >= :lo AND ts_ms < :hi{node_sql} GROUP BY b", params).fetchall()
    rolled = db.execute(
        "SELECT start_ms / :step * :step AS b, SUM(n), MIN(vmin), MAX(vmax), SUM(vsum) FROM readings_rollup "
        f"WHERE measure = :m AND start_ms >= :lo AND start_ms < :hi{node_sql} GROUP BY b", params).fetchall()
    for b, n, vmin, vmax, vsum in (*raw, *rolled):
        acc = merged.get(b)
        if acc is None:
            merged[b] = [n, vmin, vmax, vsum]
        else:
            acc[0] += n
            acc[1] = min(acc[1], vmin)
            acc[2] = max(acc[2], vmax)
            acc[3] += vsum
    buckets = tuple(Bucket(b, int(n), vmin, vmax, vsum / n) for b, (n, vmin, vmax, vsum) in sorted(merged.items()))
    source = "mixed" if raw and rolled else "rollup" if rolled else "raw"
    return Series(measure, node, lo, hi, step, step_ms, source, buckets)


# --------------------------------------------------------------------------- the async facade


class ReadingsHistory:
    """Queries and maintenance of a :class:`~controller.store.Store`'s readings.

    Maintenance runs on the store's thread, one bounded transaction per round trip, so reading
    batches and events queued meanwhile go in between. Queries open a read-only connection in a
    worker thread and are stopped after :data:`QUERY_MAX_S`.
    """

    def __init__(self, store: Database, retention: Retention = Retention(), *,
                 chunk_rows: int = MAINTAIN_CHUNK_ROWS) -> None:
        self.store = store
        self.retention = retention
        self.chunk_rows = chunk_rows
        self._warned = False

    async def maintain(self, now_ms: int) -> MaintainReport:
        """Roll up and expire what is due at ``now_ms``; call it every hour or so."""
        wanted = self.retention.period_ms
        period = await self.store._run(lambda db: rollup_period_ms(db, wanted, record=True))
        if period != wanted and not self._warned:
            self._warned = True
            log.warning("readings history: this database rolls up by %d s, not the configured %d s; "
                        "the rollup period cannot change once rollups exist", period // 1000, wanted // 1000)
        report = MaintainReport()
        while True:
            step = await self.store._run(lambda db: maintain_chunk(db, now_ms, self.retention, self.chunk_rows))
            report.add(step)
            if step.done:
                return report

    async def query(self, measure: str, from_ms: int, to_ms: int, step_ms: int,
                    node: str | None = None) -> Series:
        def _query() -> Series:
            uri = self.store.path.resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, timeout=QUERY_MAX_S)
            deadline = time.monotonic() + QUERY_MAX_S
            db.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_OPS)
            try:
                return query(db, measure, from_ms, to_ms, step_ms, node=node, retention=self.retention)
            except sqlite3.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise HistoryError(f"query stopped after {QUERY_MAX_S:g} s; use a shorter range, "
                                       "a larger step or a node filter") from exc
                raise
            finally:
                db.close()

        return await asyncio.to_thread(_query)

