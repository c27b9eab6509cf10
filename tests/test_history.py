"""Readings history (controller/store/history.py) on SQLite with the store's schema, and its API handler
(room_api/readings.py) on a small aiohttp app with a stub controller."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from types import SimpleNamespace

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.store import history as history_mod
from controller.store import events as store_mod
from controller.store.history import (DAY_MS, Bucket, HistoryError, ReadingsHistory, Retention, ensure_schema,
                                maintain_all, maintain_chunk, query)
from controller.store import Store
from room_api.app import CONTROLLER, error_middleware
from room_api.readings import HISTORY, add_routes, default_step, parse_step
from tests.helpers import room_config

T0 = 1_795_996_800_000  # 2026-11-30T00:00:00Z, a multiple of a day
MIN = 60_000
HOUR = 3_600_000
RET = Retention(raw_days=1, rollup_days=10, rollup_s=300)
P = RET.period_ms


@pytest.fixture
def db():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(store_mod.SCHEMA)
    ensure_schema(conn)
    yield conn
    conn.close()


def insert(db: sqlite3.Connection, rows: list[tuple[int, str, str, float]]) -> None:
    db.executemany("INSERT INTO readings (ts_ms, node, measure, value) VALUES (?, ?, ?, ?)", rows)


def count(db: sqlite3.Connection, table: str, where: str = "1") -> int:
    return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0]


def stats(buckets) -> list[tuple[int, int, float, float, float]]:
    return [(b.start_ms, b.n, b.min, b.max, round(b.mean, 9)) for b in buckets]


# --------------------------------------------------------------------------- buckets


def test_buckets_align_to_the_step_and_hold_count_min_max_mean(db):
    insert(db, [(T0 + 5_000, "env", "temp_c", 21.0), (T0 + 65_000, "env", "temp_c", 23.0),
                (T0 + 119_999, "env", "temp_c", 22.0), (T0 + 120_000, "env", "temp_c", 25.5),
                (T0 + 130_000, "bath", "temp_c", 30.0), (T0 + 65_000, "env", "rh_pct", 50.0)])
    series = query(db, "temp_c", T0 + 30_000, T0 + 121_000, 60_000, retention=RET)
    # from/to widen to whole buckets: [T0, T0 + 3 min)
    assert (series.from_ms, series.to_ms, series.step_ms, series.source) == (T0, T0 + 180_000, 60_000, "raw")
    assert series.buckets == (Bucket(T0, 1, 21.0, 21.0, 21.0), Bucket(T0 + 60_000, 2, 22.0, 23.0, 22.5),
                              Bucket(T0 + 120_000, 2, 25.5, 30.0, 27.75))
    only_env = query(db, "temp_c", T0, T0 + 180_000, 60_000, node="env", retention=RET)
    assert only_env.buckets[-1] == Bucket(T0 + 120_000, 1, 25.5, 25.5, 25.5)
    assert only_env.node == "env"
    assert query(db, "temp_c", T0, T0 + 180_000, 60_000, node="nobody", retention=RET).buckets == ()


def test_bucket_json():
    assert Bucket(T0, 2, 1.5, 2.5, 2.0).to_json() == {"start_ms": T0, "n": 2, "min": 1.5, "max": 2.5, "mean": 2.0}


def test_too_many_buckets_empty_range_and_zero_step_are_refused(db):
    with pytest.raises(HistoryError, match="5001 buckets"):
        query(db, "temp_c", T0, T0 + 5001 * 1000, 1000)
    query(db, "temp_c", T0, T0 + 5000 * 1000, 1000)  # exactly the limit is fine
    with pytest.raises(HistoryError, match="before"):
        query(db, "temp_c", T0, T0, 1000)
    with pytest.raises(HistoryError, match="at least 1 ms"):
        query(db, "temp_c", T0, T0 + 1000, 0)


# --------------------------------------------------------------------------- rollups and retention


def readings(rng: random.Random, start: int, end: int, every_ms: int) -> list[tuple[int, str, str, float]]:
    rows = []
    for t in range(start, end, every_ms):
        rows.append((t + rng.randrange(every_ms), "env", "temp_c", round(rng.uniform(18, 26), 3)))
        rows.append((t + rng.randrange(every_ms), "bath", "temp_c", round(rng.uniform(18, 26), 3)))
        rows.append((t, "env", "co2_ppm", float(rng.randrange(400, 1500))))
    return rows


def test_rollup_keeps_count_min_max_and_mean(db):
    rng = random.Random(5)
    insert(db, readings(rng, T0, T0 + 3 * DAY_MS, 10_000))
    now = T0 + 3 * DAY_MS
    before = {(m, node): query(db, m, T0, now, step, node=node, retention=RET)
              for m in ("temp_c", "co2_ppm") for node in (None, "env") for step in (P, HOUR)}

    report = maintain_all(db, now, RET)

    assert report.rolled_up == 3 * (2 * DAY_MS // 10_000)  # two days of three series rolled up
    assert count(db, "readings", f"ts_ms < {now - DAY_MS}") == 0
    assert count(db, "readings") == 3 * (DAY_MS // 10_000)
    # one rollup row per (measure, node, period): 2 days of 5-minute periods, 3 series
    assert count(db, "readings_rollup") == 3 * 2 * DAY_MS // P
    for (measure, node), old in before.items():
        new = query(db, measure, T0, now, old.step_ms, node=node, retention=RET)
        assert new.source == "mixed" and old.source == "raw"
        assert stats(new.buckets) == stats(old.buckets)


def test_retention_deletes_what_is_due_and_nothing_else(db):
    now = T0 + 20 * DAY_MS + 7 * MIN  # not on a period boundary
    raw_cut = T0 + 19 * DAY_MS + 5 * MIN  # now - 1 day, floored to the 5-minute period
    keep_cut = T0 + 10 * DAY_MS + 5 * MIN  # now - 10 days, floored
    insert(db, [(keep_cut - 1, "env", "temp_c", 1.0),  # older than the rollup retention: deleted unrolled
                (keep_cut, "env", "temp_c", 2.0),  # rolled up, kept
                (raw_cut - 1, "env", "temp_c", 3.0),  # rolled up, kept
                (raw_cut, "env", "temp_c", 4.0),  # stays raw
                (now, "env", "temp_c", 5.0)])
    db.executemany("INSERT INTO readings_rollup VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [("rh_pct", keep_cut - P, "env", 1, 40.0, 40.0, 40.0),  # expired
                    ("rh_pct", keep_cut, "env", 1, 41.0, 41.0, 41.0)])  # kept
    db.execute("INSERT INTO log (ts_ms, kind, data) VALUES (?, 'call.raised', '{}')", (T0,))

    report = maintain_all(db, now, RET)

    assert (report.raw_expired, report.rolled_up, report.rollups_expired) == (1, 2, 1)
    assert db.execute("SELECT ts_ms, value FROM readings ORDER BY ts_ms").fetchall() == [(raw_cut, 4.0), (now, 5.0)]
    assert db.execute("SELECT measure, start_ms, n, vmin, vmax, vsum FROM readings_rollup ORDER BY measure, start_ms"
                      ).fetchall() == [("rh_pct", keep_cut, 1, 41.0, 41.0, 41.0),
                                       ("temp_c", keep_cut, 1, 2.0, 2.0, 2.0),
                                       ("temp_c", raw_cut - P, 1, 3.0, 3.0, 3.0)]
    assert count(db, "log") == 1
    assert maintain_chunk(db, now, RET).done  # nothing left
    assert maintain_all(db, now, RET).transactions == 0


def test_maintain_works_in_bounded_chunks(db):
    insert(db, [(T0 + i * 1000, "env", "temp_c", float(i % 10)) for i in range(25_000)])
    insert(db, [(T0 + i * 1000, "env", "co2_ppm", 600.0) for i in range(4_000)])
    now = T0 + 5 * DAY_MS
    moved = []
    while not (step := maintain_chunk(db, now, RET, limit=10_000)).done:
        before = count(db, "readings")
        assert step.transactions == 1
        moved.append(step.rolled_up)
        assert before == 29_000 - sum(moved)
    assert moved == [4_000, 10_000, 10_000, 5_000]  # measures in order, each in chunks of at most 10,000
    assert count(db, "readings") == 0
    assert db.execute("SELECT SUM(n), SUM(vsum) FROM readings_rollup WHERE measure = 'temp_c'").fetchone() == (
        25_000, float(sum(i % 10 for i in range(25_000))))
    # chunk boundaries fell inside periods: those periods were merged into, not duplicated
    assert count(db, "readings_rollup", "measure = 'temp_c'") == -(-25_000_000 // P)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * DAY_MS - 1), st.sampled_from(["a", "b"]),
                          st.integers(-40_000, 60_000)), min_size=1, max_size=300),
       st.integers(1, 50), st.sampled_from([P, HOUR, DAY_MS]))
def test_any_readings_give_the_same_buckets_raw_or_rolled_up(rows, limit, step):
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(store_mod.SCHEMA)
    ensure_schema(conn)
    insert(conn, [(T0 + t, node, "temp_c", v / 1000) for t, node, v in rows])
    now = T0 + 3 * DAY_MS
    before = query(conn, "temp_c", T0, now, step, retention=RET)
    maintain_all(conn, now, RET, limit=limit)
    after = query(conn, "temp_c", T0, now, step, retention=RET)
    assert [(b.start_ms, b.n, b.min, b.max) for b in after.buckets] == \
        [(b.start_ms, b.n, b.min, b.max) for b in before.buckets]
    assert [b.mean for b in after.buckets] == pytest.approx([b.mean for b in before.buckets], rel=1e-9, abs=1e-9)


def test_a_bucket_across_raw_and_rollups_weights_the_mean_by_count(db):
    now = T0 + 2 * DAY_MS + 30 * MIN
    cut = now - DAY_MS  # half past midnight: the hour from midnight is half rolled up, half raw
    insert(db, [(cut - 30 * MIN + i * MIN, "env", "temp_c", 0.0) for i in range(30)])
    insert(db, [(cut + 10 * MIN, "env", "temp_c", 100.0), (cut + 20 * MIN, "env", "temp_c", 50.0)])
    maintain_all(db, now, RET)
    assert count(db, "readings") == 2 and count(db, "readings_rollup") == 6
    series = query(db, "temp_c", cut - 30 * MIN, cut + 30 * MIN, HOUR, retention=RET)
    assert series.source == "mixed"
    assert series.buckets == (Bucket(T0 + DAY_MS, 32, 0.0, 100.0, 150.0 / 32),)


def test_step_is_rounded_up_to_the_rollup_period_only_where_rollups_are(db):
    now = T0 + 3 * DAY_MS
    insert(db, [(T0 + i * 10_000, "env", "temp_c", 20.0) for i in range(3 * DAY_MS // 10_000)])
    maintain_all(db, now, RET)
    old = query(db, "temp_c", T0, T0 + HOUR, 60_000, retention=RET)
    assert (old.step_ms, old.requested_step_ms, old.step_rounded, old.source) == (P, 60_000, True, "rollup")
    assert [b.n for b in old.buckets] == [30] * 12
    recent = query(db, "temp_c", now - HOUR, now, 60_000, retention=RET)
    assert (recent.step_ms, recent.step_rounded, recent.source) == (60_000, False, "raw")
    assert [b.n for b in recent.buckets] == [6] * 60
    # a step that is already a multiple of the period is kept; 7 min is not, so becomes 10 min
    assert query(db, "temp_c", T0, now, 2 * P, retention=RET).step_ms == 2 * P
    assert query(db, "temp_c", T0, now, 7 * MIN, retention=RET).step_ms == 10 * MIN
    # a raw-only range next to the rollups: widening a 7-minute step would reach a rollup, so it is rounded too
    edge = query(db, "temp_c", now - DAY_MS, now - DAY_MS + 7 * MIN, 7 * MIN, retention=RET)
    assert edge.step_ms == 10 * MIN


def test_a_late_reading_merges_into_its_rollup(db):
    now = T0 + 3 * DAY_MS
    insert(db, [(T0 + MIN, "env", "temp_c", 20.0)])
    maintain_all(db, now, RET)
    insert(db, [(T0 + 2 * MIN, "env", "temp_c", 24.0)])  # the clock had stepped back
    maintain_all(db, now, RET)
    assert db.execute("SELECT start_ms, n, vmin, vmax, vsum FROM readings_rollup").fetchall() == [
        (T0, 2, 20.0, 24.0, 44.0)]


def test_the_rollup_period_is_fixed_by_the_first_maintenance(db):
    insert(db, [(T0 + i * MIN, "env", "temp_c", 20.0) for i in range(60)])
    maintain_all(db, T0 + 5 * DAY_MS, RET)
    per_minute = Retention(raw_days=1, rollup_days=10, rollup_s=60)
    insert(db, [(T0 + HOUR + i * MIN, "env", "temp_c", 20.0) for i in range(60)])
    maintain_all(db, T0 + 5 * DAY_MS, per_minute)
    assert count(db, "readings_rollup") == 24  # still 5-minute rows
    assert query(db, "temp_c", T0, T0 + 2 * HOUR, MIN, retention=per_minute).step_ms == P


def test_retention_is_validated():
    assert Retention() == Retention(raw_days=7, rollup_days=400, rollup_s=300)
    for bad in ({"raw_days": 0}, {"raw_days": 10, "rollup_days": 5}, {"rollup_s": 7}, {"rollup_s": 0},
                {"rollup_s": 60.5}):
        with pytest.raises(ValueError):
            Retention(**bad)


# --------------------------------------------------------------------------- the async facade on a real store


@pytest.fixture
async def store(tmp_path):
    st_ = Store(tmp_path / "room.db")
    await st_.open()
    await st_._run(ensure_schema)
    yield st_
    await st_.close()


async def test_maintenance_lets_the_store_write_between_chunks(store):
    rows = [(T0 + i * 1000, "env", "temp_c", 21.0) for i in range(50_000)]
    await store.add_readings(rows)
    history = ReadingsHistory(store, RET, chunk_rows=1000)
    maintaining = asyncio.create_task(history.maintain(T0 + 5 * DAY_MS))
    await asyncio.sleep(0)
    await store.add_readings([(T0 + 5 * DAY_MS, "env", "temp_c", 22.0)])
    assert not maintaining.done()  # the write went in between two maintenance transactions
    report = await maintaining
    assert (report.rolled_up, report.transactions) == (50_000, 50)
    series = await history.query("temp_c", T0, T0 + 5 * DAY_MS + 1, DAY_MS)
    assert series.source == "mixed"
    assert sum(b.n for b in series.buckets) == 50_001


async def test_facade_query_refuses_like_the_function(store):
    history = ReadingsHistory(store, RET)
    with pytest.raises(HistoryError):
        await history.query("temp_c", T0, T0 + DAY_MS, 1)


def test_a_query_reads_one_snapshot_while_maintenance_commits(tmp_path):
    path = tmp_path / "room.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.executescript(store_mod.SCHEMA)
    ensure_schema(writer)
    insert(writer, [(T0 + i * MIN, "env", "temp_c", 20.0) for i in range(600)])
    reader = sqlite3.connect(path)

    def maintain_meanwhile(sql: str) -> None:  # a chunk commits just as the reader reads raw readings
        if "FROM readings " in sql and "GROUP BY" in sql:
            maintain_all(writer, T0 + 5 * DAY_MS, RET)

    reader.set_trace_callback(maintain_meanwhile)
    series = query(reader, "temp_c", T0, T0 + DAY_MS, DAY_MS, retention=RET)
    assert count(writer, "readings") == 0  # everything moved while the query ran
    assert (series.source, [b.n for b in series.buckets]) == ("raw", [600])  # counted once, as it was
    reader.set_trace_callback(None)
    assert [b.n for b in query(reader, "temp_c", T0, T0 + DAY_MS, DAY_MS, retention=RET).buckets] == [600]
    reader.close()
    writer.close()


async def test_a_query_that_runs_too_long_is_stopped(store, monkeypatch):
    await store.add_readings([(T0 + i * 1000, "env", "temp_c", 21.0) for i in range(1000)])
    monkeypatch.setattr(history_mod, "QUERY_MAX_S", 0.0)
    monkeypatch.setattr(history_mod, "_PROGRESS_OPS", 1)
    with pytest.raises(HistoryError, match="query stopped after 0 s"):
        await ReadingsHistory(store, RET).query("temp_c", T0, T0 + DAY_MS, HOUR)


# --------------------------------------------------------------------------- GET /api/v1/readings

NOW = T0 + 3 * DAY_MS


@pytest.fixture
async def api(store, aiohttp_client):
    rows = [(T0 + i * 10_000, "env", "temp_c", 21.0 + (i % 6)) for i in range(3 * DAY_MS // 10_000)]
    rows += [(T0 + i * MIN, node, "batt_v", 3.9) for i in range(3 * 1440) for node in ("env", "bath")]
    await store.add_readings(rows)
    history = ReadingsHistory(store, RET)
    await history.maintain(NOW)
    app = web.Application(middlewares=[error_middleware])
    app[CONTROLLER] = SimpleNamespace(config=room_config(), clock=lambda: NOW)
    app[HISTORY] = history
    add_routes(app, HISTORY)
    return await aiohttp_client(app)


@pytest.mark.parametrize("params, message", [
    ("", "'measure' is required"),
    ("measure=temp", "unknown measure 'temp'"),
    ("measure=temp_c&step=5x", "'step' must be whole seconds"),
    ("measure=temp_c&step=0", "from 1 s"),
    ("measure=temp_c&step=-60", "'step' must be whole seconds"),
    ("measure=temp_c&from=yesterday", "'from': invalid time 'yesterday'"),
    ("measure=temp_c&to=2026-13-01", "'to': invalid time"),
    ("measure=temp_c&from=2026-12-02&to=2026-12-01", "'from' must be before 'to'"),
    ("measure=temp_c&from=2026-12-02&to=2026-12-03&step=1", "86400 buckets of 1 s: at most 5000"),
    ("measure=temp_c&node=" + "n" * 65, "'node' must be a node id"),
    ("measure=temp_c&to=99999999999999999999999", "'to' must be from 1970 to 9999"),
    ("measure=temp_c&from=1969-12-31", "'from' must be from 1970 to 9999"),
])
async def test_bad_parameters_are_400s_in_the_api_shape(api, params, message):
    resp = await api.get("/api/v1/readings?" + params)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["status"], error["code"]) == (400, "bad_parameter")
    assert message in error["message"]


async def test_readings_answer_with_buckets_source_and_limits(api):
    resp = await api.get("/api/v1/readings?measure=temp_c&from=2026-11-30T00:00:00Z&to=2026-11-30T01:00:00Z&step=20m")
    assert resp.status == 200
    body = await resp.json()
    assert body == {"measure": "temp_c", "node": None, "from_ms": T0, "to_ms": T0 + HOUR, "step_ms": 20 * MIN,
                    "requested_step_ms": 20 * MIN, "step_rounded": False, "source": "rollup",
                    "buckets": [{"start_ms": T0 + k * 20 * MIN, "n": 120, "min": 21.0, "max": 26.0, "mean": 23.5}
                                for k in range(3)],
                    "limits": {"low": 21.0, "high": 24.0}}


async def test_readings_default_step_node_filter_and_rounding(api):
    # no from/to/step: the last day in at most 500 buckets; here the 5-minute step
    body = await (await api.get("/api/v1/readings?measure=temp_c")).json()
    assert (body["to_ms"] - body["from_ms"], body["step_ms"], body["source"]) == (DAY_MS + P, P, "raw")
    assert len(body["buckets"]) <= 500
    # 60 s over rolled-up days: rounded up to the 5-minute period, and said so
    body = await (await api.get(f"/api/v1/readings?measure=batt_v&node=bath&from={T0}&to={T0 + HOUR}&step=60"
                                )).json()
    assert (body["step_ms"], body["requested_step_ms"], body["step_rounded"]) == (P, MIN, True)
    assert [b["n"] for b in body["buckets"]] == [5] * 12
    assert body["limits"] == {"low": 3.45, "high": None}
    # both nodes without the filter; a range across the raw/rollup boundary is mixed
    body = await (await api.get(f"/api/v1/readings?measure=batt_v&from={T0}&to={NOW}&step=1d")).json()
    assert body["source"] == "mixed" and [b["n"] for b in body["buckets"]] == [2 * 1440] * 3
    body = await (await api.get("/api/v1/readings?measure=pressure_pa&step=1h")).json()
    assert (body["buckets"], body["limits"]) == ([], {"low": None, "high": None})


async def test_an_app_with_a_route_table_needs_only_the_default_key(store, aiohttp_client):
    from room_api.readings import get_readings

    app = web.Application(middlewares=[error_middleware])
    app[CONTROLLER] = SimpleNamespace(config=room_config(), clock=lambda: NOW)
    app[HISTORY] = ReadingsHistory(store, RET)
    app.router.add_get("/api/v1/readings", get_readings)
    client = await aiohttp_client(app)
    resp = await client.get("/api/v1/readings?measure=rh_pct")
    assert resp.status == 200
    assert (await resp.json())["limits"] == {"low": None, "high": 60.0}


def test_step_parameter_and_default_step():
    assert [parse_step(s) for s in ("300", "30s", "5m", "1h", "1d", " 2H ")] == [
        300_000, 30_000, 300_000, HOUR, DAY_MS, 2 * HOUR]
    for bad in ("", "1.5", "5min", "0s", "367d", "1w"):
        with pytest.raises(ValueError):
            parse_step(bad)
    assert default_step(DAY_MS) == 300_000  # 172.8 s wanted -> 5 min, 288 buckets
    assert default_step(HOUR) == 10_000
    assert default_step(400 * DAY_MS) == DAY_MS
    assert default_step(1000 * DAY_MS) == 2 * DAY_MS
    for span in (1, 999, HOUR, 7 * DAY_MS, 30 * DAY_MS, 366 * DAY_MS):
        assert -(-span // default_step(span)) <= 500
