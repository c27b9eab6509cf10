"""The event store on its own, in process: a failed transaction leaves nothing behind and the next
write works; a full database (SQLite's page limit, as a full disk answers) is a StorageError each
time it happens and health comes back with the next write; marks only move forward; reads page and
filter at their exact edges; the token and audit tables behind the API's auth."""

from __future__ import annotations

import sqlite3

import pytest

from controller.security.tokens import AuditEntry, Principal, TokenError
from controller.store import LogEntry, LogRecord, SeqMark, StorageError, Store
from controller.store.events import READINGS_PER_STATEMENT


@pytest.fixture
async def store(tmp_path):
    st = Store(tmp_path / "room.db")
    await st.open()
    yield st
    await st.close()


async def _sql(store: Store, sql: str) -> list[tuple]:
    return await store._run(lambda db: db.execute(sql).fetchall())


# ---------------------------------------------------------------------- readings batches
# Readings go in many rows to a statement (READINGS_PER_STATEMENT, then halves of it for the rest):
# every row of a batch is stored once, in order, whatever the batch's size around those edges.
@pytest.mark.parametrize("n", [0, 1, 2, 3, 127, 128, 129, READINGS_PER_STATEMENT - 1, READINGS_PER_STATEMENT,
                               READINGS_PER_STATEMENT + 1, 2 * READINGS_PER_STATEMENT - 1,
                               2 * READINGS_PER_STATEMENT, 3 * READINGS_PER_STATEMENT + 77])
async def test_every_reading_of_a_batch_is_stored_once_in_order(store, n):
    rows = [(1000 + i, f"node-{i % 7}", ("temp_c", "rh_pct", "co2_ppm")[i % 3], i / 8) for i in range(n)]
    await store.add_readings(rows, [SeqMark("env", 1, 5)])
    assert await _sql(store, "SELECT ts_ms, node, measure, value FROM readings ORDER BY rowid") == rows
    assert await store.load_marks() == {"env": SeqMark("env", 1, 5)}


@pytest.mark.parametrize("n", [0, 1, 249, 250, 251, 1000])
async def test_readings_stay_within_an_old_sqlites_999_parameters(store, n):
    await store._run(lambda db: db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    rows = [(1000 + i, "env", "temp_c", i / 4) for i in range(n)]
    await store.add_readings(rows)
    assert await _sql(store, "SELECT ts_ms, node, measure, value FROM readings ORDER BY rowid") == rows


# ---------------------------------------------------------------------- failed transactions
async def test_a_failed_readings_batch_stores_none_of_it_and_the_next_batch_goes_in(store):
    good, bad = (1000, "env", "temp_c", 21.5), (1001, "env", "temp_c", None)   # value is NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_readings([good, bad], [SeqMark("env", 1, 9)])
    assert await store.count_readings() == 0, "the batch's first row was rolled back with the rest"
    assert await store.load_marks() == {}, "the batch's mark was rolled back with its rows"
    await store.add_readings([good, (1002, "env", "rh_pct", 40.0)], [SeqMark("env", 1, 10)])
    assert await store.count_readings() == 2
    assert await store.latest_readings() == {"temp_c": (1000, "env", 21.5), "rh_pct": (1002, "env", 40.0)}
    assert await store.load_marks() == {"env": SeqMark("env", 1, 10)}
    assert store.failing is None, "a refused row is our bug, not the storage's health"


async def test_a_failed_append_stores_none_of_its_entries_and_the_next_append_works(store):
    [first] = await store.append(5, [LogEntry("call.raised", {"n": 1})], node_event=("bath", 1, 1))
    with pytest.raises(sqlite3.IntegrityError):        # the same node event again: refused by its key
        await store.append(6, [LogEntry("node.event", {}), LogEntry("call.raised", {})], node_event=("bath", 1, 1),
                           seq_mark=SeqMark("bath", 1, 3))
    assert await store.read_log() == [first]
    assert await store.load_marks() == {}
    [after] = await store.append(7, [LogEntry("call.cleared", {"n": 2})], seq_mark=SeqMark("bath", 1, 4))
    # the failed write's two ids are never handed out again (a reader may have seen them): a gap
    assert after.to_json() == {"id": first.id + 3, "ts_ms": 7, "kind": "call.cleared", "data": {"n": 2}}
    assert await store.load_marks() == {"bath": SeqMark("bath", 1, 4)}


async def test_an_entry_that_is_not_json_leaves_nothing_behind(store):
    with pytest.raises(TypeError):
        await store.append(1, [LogEntry("ok", {}), LogEntry("bad", {"x": object()})])
    assert (await store.read_log(), await store.last_log_id()) == ([], 0)
    [rec] = await store.append(2, [LogEntry("ok", {})])
    assert rec.id == 3, "the failed write's ids (1, 2) are not reused"


async def test_every_failed_write_is_heard_and_the_first_good_one_ends_the_fault(store):
    heard: list[StorageError | None] = []
    store.health_listeners.append(heard.append)
    [[pages]] = await _sql(store, "PRAGMA page_count")
    await _sql(store, f"PRAGMA max_page_count={pages}")      # the database may not grow: a full disk to SQLite
    big = {"blob": "x" * 20_000}
    for _ in range(2):
        with pytest.raises(StorageError, match=r"^OperationalError: database or disk is full$"):
            await store.append(1, [LogEntry("big", big)])
    assert len(heard) == 2 and all(isinstance(e, StorageError) for e in heard)
    assert store.failing is heard[-1]
    with pytest.raises(StorageError):
        await store.add_readings([(1, "env", "temp_c", 21.0)] * 2000)
    assert len(heard) == 3
    await _sql(store, "PRAGMA max_page_count=1073741823")
    await store.append(2, [LogEntry("big", big)])
    await store.append(3, [LogEntry("small", {})])
    assert heard[3:] == [None], "health is announced once, by the first write that works again"
    assert store.failing is None
    assert [r.kind for r in await store.read_log()] == ["big", "small"]


async def test_a_read_failing_on_storage_is_a_storage_error_but_not_a_health_change(store):
    heard: list[StorageError | None] = []
    store.health_listeners.append(heard.append)

    def broken(db):
        raise OSError(5, "Input/output error")

    def corrupt(db):
        raise sqlite3.DatabaseError("database disk image is malformed")

    with pytest.raises(StorageError, match=r"^OSError: \[Errno 5\] Input/output error$"):
        await store._run(broken)
    with pytest.raises(StorageError, match=r"^DatabaseError: database disk image is malformed$"):
        await store._run(corrupt)
    with pytest.raises(sqlite3.ProgrammingError):           # our bug, passed on as it is
        await store._run(lambda db: db.execute("SELECT ?", ()))
    assert heard == [] and store.failing is None


# ---------------------------------------------------------------------- sequence marks
async def test_a_mark_moves_only_forward_and_a_new_boot_starts_it_again(store):
    for mark in (SeqMark("door", 2, 10), SeqMark("door", 2, 9), SeqMark("door", 2, 10), SeqMark("door", 1, 99)):
        await store.save_mark(mark)
    await store.save_mark(SeqMark("bath", 1, 1))
    assert await store.load_marks() == {"door": SeqMark("door", 2, 10), "bath": SeqMark("bath", 1, 1)}
    await store.save_mark(SeqMark("door", 2, 11))
    assert (await store.load_marks())["door"] == SeqMark("door", 2, 11)
    await store.save_mark(SeqMark("door", 3, 1))
    assert (await store.load_marks())["door"] == SeqMark("door", 3, 1)


async def test_node_events_are_known_per_node_boot_and_number(store):
    await store.append(1, [LogEntry("node.event", {})], node_event=("bath", 2, 7))
    await store.append(1, [LogEntry("node.event", {})], node_event=("bath", 2, 3))
    await store.append(1, [LogEntry("node.event", {})], node_event=("door", 2, 50))
    assert await store.has_node_event("bath", 2, 7)
    assert not await store.has_node_event("bath", 1, 7)
    assert not await store.has_node_event("bath", 2, 8)
    assert not await store.has_node_event("door", 2, 7)
    assert (await store.max_event_no("bath", 2), await store.max_event_no("bath", 1),
            await store.max_event_no("door", 2), await store.max_event_no("wall", 1)) == (7, 0, 50, 0)


# ---------------------------------------------------------------------- reads at their edges
async def test_the_log_pages_after_a_cursor_up_to_a_limit(store):
    records = [(await store.append(10 * i, [LogEntry(f"k{i}", {"i": i})]))[0] for i in range(1, 6)]
    assert [r.id for r in records] == [1, 2, 3, 4, 5]
    assert await store.read_log(after=2, limit=2) == records[2:4]
    assert await store.read_log(after=4) == records[4:]
    assert await store.read_log(after=5) == []
    assert await store.read_log() == records
    assert records[0].data == {"i": 1} and await store.last_log_id() == 5


async def test_kinds_are_read_by_prefix_from_a_time_inclusive(store):
    kinds = ["call.raised", "call", "call.cleared", "calls", "node.event", "call.raised", "cal"]
    for i, kind in enumerate(kinds):
        await store.append(1000 + i, [LogEntry(kind, {"i": i})])
    found = await store.read_kinds("call.", 1002)
    assert [(r.kind, r.ts_ms, r.data) for r in found] == [("call.cleared", 1002, {"i": 2}),
                                                          ("call.raised", 1005, {"i": 5})]
    assert [r.id for r in await store.read_kinds("call.", 0)] == [1, 3, 6]


async def test_the_latest_reading_of_each_measure(store):
    await store.add_readings([(1, "env", "temp_c", 20.0), (3, "door", "temp_c", 22.0), (2, "env", "temp_c", 21.0),
                              (2, "env", "co2_ppm", 600.0)])
    assert await store.latest_readings() == {"temp_c": (3, "door", 22.0), "co2_ppm": (2, "env", 600.0)}
    assert await store.count_readings() == 4


def test_a_record_in_json_has_its_id_time_kind_and_a_copy_of_its_data():
    data = {"a": 1}
    out = LogRecord(4, 99, "call.raised", data).to_json()
    assert out == {"id": 4, "ts_ms": 99, "kind": "call.raised", "data": {"a": 1}}
    out["data"]["a"] = 2
    assert data == {"a": 1}


# ---------------------------------------------------------------------- tokens and audit
async def test_tokens_are_created_found_listed_and_revoked(store):
    info, secret = await store.create_token("nurse", "Nurse Kim", 100)
    other, _ = await store.create_token("facilities", "Tech Ana", 101)
    assert (info.name, info.role, info.created_ms, info.revoked_ms) == ("Nurse Kim", "nurse", 100, None)
    assert await store.find_token(secret) == Principal(info.id, "Nurse Kim", "nurse")
    assert await store.find_token(secret + "x") is None
    assert await store.list_tokens() == [info, other]
    revoked = await store.revoke_token("Nurse Kim", 200)
    assert (revoked.id, revoked.revoked_ms) == (info.id, 200)
    assert await store.find_token(secret) is None
    assert await store.list_tokens() == [other]
    with pytest.raises(TokenError):
        await store.revoke_token("Nurse Kim", 201)
    assert (await store.revoke_token(str(other.id), 202)).name == "Tech Ana"


async def test_the_audit_log_reads_newest_first_from_a_time(store):
    entries = [AuditEntry(ts, "Nurse Kim", "nurse", "POST /calls/x/ack", "x", 200, "10.0.0.2") for ts in (5, 6, 7)]
    for entry in entries:
        await store.audit(entry)
    assert await store.read_audit(6, 10) == [entries[2], entries[1]]
    assert await store.read_audit(0, 1) == [entries[2]]


# ---------------------------------------------------------------------- opening
async def test_a_protocol_v1_database_keeps_its_node_events_under_the_new_column(tmp_path):
    path = tmp_path / "room.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, "
                     "kind TEXT NOT NULL, data TEXT NOT NULL);"
                     "CREATE TABLE node_events (node TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, "
                     "log_id INTEGER NOT NULL, PRIMARY KEY (node, boot, seq)) WITHOUT ROWID;"
                     "INSERT INTO log (ts_ms, kind, data) VALUES (1, 'node.event', '{}');"
                     "INSERT INTO node_events VALUES ('bath', 1, 12, 1);")
    db.close()
    store = Store(path)
    await store.open()
    try:
        assert await store.has_node_event("bath", 1, 12)
        assert await store.max_event_no("bath", 1) == 12
        assert [r[1] for r in await _sql(store, "PRAGMA table_info(node_events)")] == ["node", "boot", "e", "log_id"]
        assert [(r.id, r.kind, r.data) for r in await store.read_log()] == [(1, "node.event", {})]
    finally:
        await store.close()


async def test_the_log_is_durable_on_commit_and_written_ahead(store):
    assert await _sql(store, "PRAGMA journal_mode") == [("wal",)]
    assert await _sql(store, "PRAGMA synchronous") == [(2,)]          # FULL
    assert await _sql(store, "PRAGMA foreign_keys") == [(1,)]
    with pytest.raises(sqlite3.IntegrityError):                       # node_events.log_id must name a log row
        await store._run(lambda db: db.execute("INSERT INTO node_events VALUES ('x', 1, 1, 999)"))


async def test_a_readings_batch_moves_each_nodes_mark_forward_only(store):
    await store.add_readings([], [SeqMark("a", 2, 50), SeqMark("b", 1, 10)])
    # a: an older boot and a lower seq of its boot are ignored, a higher one taken (also given twice);
    # b: a new boot starts it again; c: new
    await store.add_readings([(1, "a", "temp_c", 20.0)],
                             [SeqMark("a", 1, 99), SeqMark("a", 2, 49), SeqMark("a", 2, 60), SeqMark("a", 2, 55),
                              SeqMark("b", 2, 1), SeqMark("c", 1, 3)])
    assert await store.load_marks() == {"a": SeqMark("a", 2, 60), "b": SeqMark("b", 2, 1), "c": SeqMark("c", 1, 3)}


async def test_marks_of_more_nodes_than_one_statement_binds_are_all_kept(store):
    await store._run(lambda db: db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    marks = [SeqMark(f"n{i}", 1, i + 1) for i in range(700)]  # 2100 parameters: three statements
    await store.add_readings([], marks)
    assert await store.load_marks() == {m.node: m for m in marks}
