"""Disk use of the readings history: bytes a room writes per day, raw and rolled up, and the size
its database settles at with the default retention (controller/store/history.py, docs/history.md).

    .venv/bin/python bench/history_disk.py [--days 14] [--env-every-s 10] [--batt-nodes 6] [--smoke]

A sped-up simulation in a temporary SQLite file with the store's schema and pragmas. Assumed room
(worst case of today's firmware, which sends climate every 30 s by default): one climate node sends
temp_c, rh_pct, co2_ppm and noise_db every 10 s, and each of 6 nodes sends batt_v every 60 s;
values are quantised as on the wire (m°C, m%RH, ppm, c-dB, mV).

1. Fast-forward: the rollups of the ``rollup_days`` before the simulation are written directly, in
   the order maintenance writes them (day by day, measure by measure, oldest first).
2. Simulation: ``--days`` days of raw readings, inserted an hour at a time, with maintenance
   (``maintain_chunk`` until done, at most 10,000 rows a transaction) at the end of every day
   (``--maintain-every-h 1``: every hour, as the controller runs it). Both
   expiries are then active, so the file size printed at the end is the steady state.
3. Write volume: one day stored in batches of ``--flush-s`` (the controller's 0.1 s means a
   transaction per message at these rates); WAL frames counted between manual checkpoints.
Bytes per day come from SQLite's dbstat (table plus its indexes, whole pages); MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.store import events  # noqa: E402
from controller.store.history import (DAY_MS, MAINTAIN_CHUNK_ROWS, Retention, ensure_schema,  # noqa: E402
                                maintain_chunk, query)

T0 = 1_795_996_800_000  # 2026-11-30T00:00:00Z: the simulation's first day
HOUR_MS = 3_600_000
ENV_NODE = "env"
DEFAULTS = Retention()
BATT_NODES = ("bedside-a", "bath", "env", "wearable-a", "door", "bedside-b")


class Room:
    """Readings of one room as the controller stores them (API names, values as on the wire / divisor)."""

    def __init__(self, env_every_s: int, batt_nodes: int, batt_every_s: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.env_every_ms = env_every_s * 1000
        self.batt_every_ms = batt_every_s * 1000
        self.batt_nodes = BATT_NODES[:batt_nodes] if batt_nodes <= len(BATT_NODES) else \
            tuple(f"node-{i}" for i in range(batt_nodes))
        self.temp_m, self.rh_m, self.co2, self.noise_c = 22500, 45000, 600, 3800
        self.batt_mv = {n: 4100 for n in self.batt_nodes}
        # node clocks are independent: each node's battery reading comes at its own second
        self.batt_offset_ms = {n: (150 + i * 7_000) % self.batt_every_ms for i, n in enumerate(self.batt_nodes)}

    def walk(self, v: int, step: int, lo: int, hi: int) -> int:
        return min(hi, max(lo, v + self.rng.randint(-step, step)))

    def rows(self, t0: int, t1: int) -> list[tuple[int, str, str, float]]:
        out = []
        for t in range(t0 - t0 % self.env_every_ms, t1, self.env_every_ms):
            if t < t0:
                continue
            self.temp_m = self.walk(self.temp_m, 20, 19000, 27000)
            self.rh_m = self.walk(self.rh_m, 150, 20000, 70000)
            self.co2 = self.walk(self.co2, 8, 400, 2000)
            self.noise_c = self.walk(self.noise_c, 120, 2500, 7000)
            out += [(t, ENV_NODE, "temp_c", self.temp_m / 1000), (t, ENV_NODE, "rh_pct", self.rh_m / 1000),
                    (t, ENV_NODE, "co2_ppm", float(self.co2)), (t, ENV_NODE, "noise_db", self.noise_c / 100)]
        for t in range(t0 - t0 % self.batt_every_ms, t1, self.batt_every_ms):
            if t < t0:
                continue
            for node in self.batt_nodes:
                self.batt_mv[node] = self.walk(self.batt_mv[node], 2, 3300, 4200)
                out.append((t + self.batt_offset_ms[node], node, "batt_v", self.batt_mv[node] / 1000))
        return out

    def series(self) -> list[tuple[str, str, int]]:
        """(measure, node, ms between readings) for every series the room writes."""
        return [(m, ENV_NODE, self.env_every_ms) for m in ("temp_c", "rh_pct", "co2_ppm", "noise_db")] + \
            [("batt_v", n, self.batt_every_ms) for n in self.batt_nodes]


def table_bytes(db: sqlite3.Connection) -> dict[str, int]:
    """Bytes of whole pages per table, indexes counted with their table."""
    owner = {"readings_by_measure": "readings", "log_by_time": "log"}
    out: dict[str, int] = {}
    for name, pgsize in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
        name = owner.get(name, name)
        if name.startswith("sqlite_autoindex_"):
            name = name.removeprefix("sqlite_autoindex_").rsplit("_", 1)[0]
        out[name] = out.get(name, 0) + pgsize
    return out


def fast_forward(db: sqlite3.Connection, room: Room, retention: Retention, first_ms: int, days: int) -> int:
    """Rollups for ``days`` days before ``first_ms``, written as maintenance writes them; rows written."""
    period = retention.period_ms
    rng = random.Random(2)
    n_rows = 0
    for d in range(days, 0, -1):
        day0 = first_ms - d * DAY_MS
        db.execute("BEGIN")
        for measure, node_group in _by_measure(room.series()).items():
            rows = []
            for start in range(day0, day0 + DAY_MS, period):
                for node, every_ms in node_group:
                    per = max(1, period // every_ms)
                    base = rng.uniform(20, 25) if measure != "batt_v" else rng.uniform(3.6, 4.1)
                    lo, hi = round(base - rng.uniform(0, 0.2), 3), round(base + rng.uniform(0, 0.2), 3)
                    rows.append((measure, start, node, per, lo, hi, round(base, 3) * per))
            db.executemany("INSERT INTO readings_rollup (measure, start_ms, node, n, vmin, vmax, vsum) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            n_rows += len(rows)
        db.execute("COMMIT")
    return n_rows


def _by_measure(series: list[tuple[str, str, int]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for measure, node, per in series:
        out.setdefault(measure, []).append((node, per))
    return out


def wal_volume(room: Room, flush_ms: int, days: int = 1) -> tuple[int, int, int]:
    """Readings stored as the controller stores them: a transaction per ``flush_ms`` window that
    holds messages (with their nodes' sequence marks). (transactions, WAL frames, page size)."""
    messages: list[tuple[int, str, list[tuple[int, str, str, float]]]] = []
    for rows in (room.rows(T0 + h * HOUR_MS, T0 + (h + 1) * HOUR_MS) for h in range(days * 24)):
        by_message: dict[tuple[int, str], list[tuple[int, str, str, float]]] = {}
        for row in rows:
            by_message.setdefault((row[0], row[1]), []).append(row)
        messages += [(t, node, rows) for (t, node), rows in by_message.items()]
    messages.sort(key=lambda m: m[0])
    batches: dict[int, list[tuple[int, str, list[tuple[int, str, str, float]]]]] = {}
    for message in messages:
        batches.setdefault(message[0] // flush_ms, []).append(message)
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "wal.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA wal_autocheckpoint=0")  # count every frame; checkpoint by hand below
        db.executescript(events.SCHEMA)
        ensure_schema(db)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = Path(tmp) / "wal.db-wal"
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        frames = 0
        for i, batch in enumerate(batches.values(), 1):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO readings (ts_ms, node, measure, value) VALUES (?, ?, ?, ?)",
                           [row for _t, _node, rows in batch for row in rows])
            for _t, node, _rows in batch:
                events._upsert_mark(db, events.SeqMark(node, 1, i))
            db.execute("COMMIT")
            if i % 1000 == 0 or i == len(batches):
                frames += (_size(wal) - 32) // (page_size + 24)  # WAL header, then a header and a page a frame
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
    return len(batches), frames, page_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=14, help="simulated days of raw readings (default 14)")
    ap.add_argument("--env-every-s", type=int, default=10, help="climate reading period, s (firmware default 30)")
    ap.add_argument("--batt-nodes", type=int, default=6)
    ap.add_argument("--batt-every-s", type=int, default=60)
    ap.add_argument("--raw-days", type=float, default=DEFAULTS.raw_days)
    ap.add_argument("--rollup-days", type=float, default=DEFAULTS.rollup_days)
    ap.add_argument("--rollup-s", type=int, default=DEFAULTS.rollup_s)
    ap.add_argument("--maintain-every-h", type=int, default=24, help="hours between maintenance runs (default 24)")
    ap.add_argument("--flush-s", type=float, nargs="+", default=[0.1, 10, 60],
                    help="reading batch periods to measure write volume for (the controller's is 0.1)")
    ap.add_argument("--no-fast-forward", action="store_true", help="start from an empty database")
    ap.add_argument("--smoke", action="store_true", help="2 days, 1 day raw, no fast-forward: checks this script works")
    args = ap.parse_args(argv)
    if args.smoke:
        args.days, args.raw_days, args.rollup_days, args.no_fast_forward, args.flush_s = 2, 1.0, 2.0, True, [60.0]
    retention = Retention(args.raw_days, args.rollup_days, args.rollup_s)
    room = Room(args.env_every_s, args.batt_nodes, args.batt_every_s)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "room.db"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # the controller uses FULL; sizes are the same, the bench faster
        db.executescript(events.SCHEMA)
        ensure_schema(db)

        ff_days = 0 if args.no_fast_forward else int(retention.rollup_days)
        ff_rows = fast_forward(db, room, retention, T0, ff_days) if ff_days else 0

        raw_rows = 0
        chunk_s: list[float] = []
        sizes: list[tuple[int, int]] = []  # (day, main file bytes) after each day's maintenance
        wal_peak = 0
        for hour in range(args.days * 24):
            t = T0 + hour * HOUR_MS
            rows = room.rows(t, t + HOUR_MS)
            db.execute("BEGIN")
            db.executemany("INSERT INTO readings (ts_ms, node, measure, value) VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            raw_rows += len(rows)
            if (hour + 1) % args.maintain_every_h:
                continue
            while True:
                t_chunk = time.perf_counter()
                report = maintain_chunk(db, t + HOUR_MS, retention)
                chunk_s.append(time.perf_counter() - t_chunk)
                wal_peak = max(wal_peak, _size(path.with_name("room.db-wal")))
                if report.done:
                    break
            if (hour + 1) % 24 == 0:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes.append(((hour + 1) // 24, path.stat().st_size))

        tables = table_bytes(db)
        raw_n = db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        roll_n = db.execute("SELECT COUNT(*) FROM readings_rollup").fetchone()[0]
        raw_span_ms = db.execute("SELECT MAX(ts_ms) - MIN(ts_ms) FROM readings").fetchone()[0] or 0
        roll_span_ms = db.execute("SELECT MAX(start_ms) - MIN(start_ms) FROM readings_rollup").fetchone()[0] or 0
        raw_days_held = raw_span_ms / DAY_MS
        roll_days_held = (roll_span_ms + retention.period_ms) / DAY_MS
        free_bytes = db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]

        end = T0 + args.days * DAY_MS
        q_times = {}
        for label, measure, span_days, step_ms in (("1 day of temp_c, 1-min buckets", "temp_c", 1, 60_000),
                                                   ("7 days of temp_c, 10-min buckets", "temp_c", 7, 600_000),
                                                   ("400 days of batt_v (6 nodes), 1-day buckets", "batt_v",
                                                    400, DAY_MS)):
            t_q = time.perf_counter()
            series = query(db, measure, end - span_days * DAY_MS, end, step_ms, retention=retention)
            q_times[label] = (time.perf_counter() - t_q, len(series.buckets), series.source)
        db.close()
        file_bytes = path.stat().st_size

    raw_per_day = tables.get("readings", 0) / raw_days_held if raw_days_held else 0
    roll_per_day = tables.get("readings_rollup", 0) / roll_days_held if roll_days_held else 0
    rows_per_day = raw_rows / args.days
    mb = 1e6
    print(f"room: 4 climate measures every {args.env_every_s} s from 1 node, batt_v every {args.batt_every_s} s "
          f"from {args.batt_nodes} nodes -> {rows_per_day:,.0f} readings/day")
    print(f"retention: raw {retention.raw_days:g} days, rollups of {retention.rollup_s} s for "
          f"{retention.rollup_days:g} days; maintenance every {args.maintain_every_h} h, "
          f"<= {MAINTAIN_CHUNK_ROWS:,} rows a transaction")
    print(f"simulated: {args.days} days of raw readings after {ff_days} fast-forwarded days of rollups "
          f"({ff_rows:,} rows)")
    print()
    print(f"raw readings:  {raw_n:>10,} rows over {raw_days_held:6.2f} days = {raw_per_day / mb:6.2f} MB/day "
          f"({tables.get('readings', 0) / max(raw_n, 1):.1f} B/row incl. index)")
    print(f"rollups:       {roll_n:>10,} rows over {roll_days_held:6.2f} days = {roll_per_day / mb:6.2f} MB/day "
          f"({tables.get('readings_rollup', 0) / max(roll_n, 1):.1f} B/row)")
    roll_days = retention.rollup_days - retention.raw_days  # rollups cover [now - rollup_days, now - raw_days)
    raw_held = retention.raw_days + args.maintain_every_h / 24  # readings wait up to one interval for maintenance
    predicted = raw_per_day * raw_held + roll_per_day * roll_days
    print(f"predicted steady state: raw x {raw_held:.3g} days + rollups x {roll_days:g} days "
          f"= {predicted / mb:,.0f} MB")
    print(f"database file at the end: {file_bytes / mb:,.0f} MB ({free_bytes / mb:.1f} MB of it free pages, reused "
          f"by later inserts); WAL peak during maintenance {wal_peak / mb:.1f} MB")
    if len(sizes) >= 4:
        tail = [s for d, s in sizes if d > retention.raw_days + 1] or [sizes[-1][1]]
        print(f"file size over the last {len(tail)} days (both expiries active): "
              f"{min(tail) / mb:,.1f} .. {max(tail) / mb:,.1f} MB")
    chunk_s.sort()
    print(f"maintenance transactions: {len(chunk_s)}, longest {chunk_s[-1] * 1000:.0f} ms, "
          f"median {chunk_s[len(chunk_s) // 2] * 1000:.1f} ms (this machine)")
    for label, (secs, nb, source) in q_times.items():
        print(f"query {label}: {secs * 1000:.0f} ms, {nb} buckets, {source}")
    print("SD card writes for a day of readings (checkpoints copy at most as much again into the database file):")
    for flush_s in args.flush_s:
        n_tx, frames, page_size = wal_volume(room, round(flush_s * 1000))
        wal_bytes = frames * (page_size + 24)
        print(f"  batches of {flush_s:g} s: {n_tx:>6,} transactions, {frames / n_tx:4.1f} pages of {page_size} B "
              f"each: {wal_bytes / mb:5.0f} MB/day to the WAL, {wal_bytes / max(raw_per_day, 1):3.0f}x the data")
    print(f"bench ran {time.perf_counter() - started:.0f} s")
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
