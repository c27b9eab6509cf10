"""The sidecar connection the uplink, the outbox and the ward store share: its durability setting,
per call and per connection, and its thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from controller.store.sidecar import SidecarDb

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER);"
FULL, NORMAL = 2, 1  # PRAGMA synchronous answers


def _sync(db) -> int:
    return db.execute("PRAGMA synchronous").fetchone()[0]


def test_normal_connection_writes_durably_only_when_asked(tmp_path):
    async def main():
        db = SidecarDb(tmp_path / "a.db", name="t-normal", schema=SCHEMA, busy_timeout_s=1, synchronous="NORMAL")
        await db.open()
        try:
            assert await db._run(_sync) == NORMAL
            assert await db._run(_sync, durable=True) == FULL
            assert await db._run(_sync) == NORMAL  # put back after the durable call
        finally:
            await db.close()

    asyncio.run(main())


def test_full_connection_is_durable_for_every_call(tmp_path):
    async def main():
        db = SidecarDb(tmp_path / "b.db", name="t-full", schema=SCHEMA, busy_timeout_s=1)
        await db.open()
        try:
            assert await db._run(_sync) == FULL
            assert await db._run(_sync, durable=True) == FULL
            assert await db._run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
            names = await db._run(lambda c: threading.current_thread().name)
            assert names.startswith("t-full")
        finally:
            await db.close()

    asyncio.run(main())


def test_schema_and_hook_run_on_open_and_parent_folder_is_made(tmp_path):
    seen = []

    class Hooked(SidecarDb):
        def _prepare(self, db):
            seen.append(db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall())

    async def main():
        db = Hooked(tmp_path / "sub" / "c.db", name="t-hook", schema=SCHEMA, busy_timeout_s=1)
        await db.open()
        await db.close()

    asyncio.run(main())
    assert seen == [[("t",)]]
    assert (tmp_path / "sub" / "c.db").exists()


def test_bad_setting_and_use_before_open_are_refused(tmp_path):
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        SidecarDb(tmp_path / "d.db", name="t", schema=SCHEMA, busy_timeout_s=1, synchronous="OFF")

    async def main():
        db = SidecarDb(tmp_path / "e.db", name="t-closed", schema=SCHEMA, busy_timeout_s=1)
        with pytest.raises(AssertionError, match="t-closed is not open"):
            await db._run(_sync)
        db._executor.shutdown()

    asyncio.run(main())
