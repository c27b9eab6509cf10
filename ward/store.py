"""The ward console's own SQLite store (WAL, one writer thread, like the room's).

``log`` is the ward's record and the source of its live stream: every room event received, once
(unique by room + cursor: a resent event is recognised and counted, not stored again), and the
ward's own happenings (room online/offline, routing to people, commands and their results,
assignments). ``rooms`` holds each room's latest status and state; ``shifts``/``assignments`` who
covers which room and bed; ``routes`` each call's escalation among people; ``commands`` every
command sent and its answer; ``firmware_rollouts`` the ward's rollouts (ward/firmware.py). Tokens and the audit log use the room's token code with the ward's roles.

Durability: the rooms hold the record; the ward's copy of their events, states and statuses heals
from them (a room's retained state names its cursor, and a gap is read back from the room's API).
So those writes commit without an fsync (``synchronous=NORMAL`` in WAL mode: safe against a crash
of the console, not of the machine), which keeps a burst from 300 rooms from queueing behind the
disk. What only the ward knows (the shift, routes, commands, ward rollouts, tokens, the audit log) is written with
``synchronous=FULL``: durable when the call returns.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from controller.security import tokens
from controller.store import LogRecord
from controller.store.sidecar import SidecarDb


SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms  INTEGER NOT NULL,          -- when the ward stored it
    room   TEXT,
    cursor INTEGER,                   -- the room's log cursor (room events only)
    at_ms  INTEGER,                   -- the room's own time of the event
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS log_room_cursor ON log (room, cursor) WHERE cursor IS NOT NULL;
CREATE INDEX IF NOT EXISTS log_by_kind ON log (kind, at_ms);
CREATE TABLE IF NOT EXISTS rooms (
    room        TEXT PRIMARY KEY,
    site        TEXT NOT NULL,
    unit        TEXT NOT NULL,
    name        TEXT,
    status      TEXT,
    reason      TEXT,
    status_ms   INTEGER,
    api_url     TEXT,
    fingerprint TEXT,
    state       TEXT,
    state_cursor INTEGER NOT NULL DEFAULT 0,
    state_ms    INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shifts (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL,
    charge   TEXT NOT NULL,
    staff    TEXT NOT NULL,           -- JSON list: everyone on the shift
    set_by   TEXT NOT NULL,
    set_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    shift  INTEGER NOT NULL REFERENCES shifts(id),
    room   TEXT NOT NULL,
    bed    TEXT NOT NULL,             -- '*': every bed of the room
    nurse  TEXT NOT NULL,
    PRIMARY KEY (shift, room, bed)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS routes (
    room        TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    level       INTEGER NOT NULL,     -- 0 primary nurse, 1 charge nurse, 2 all staff
    declined    TEXT NOT NULL,        -- JSON list of names
    accepted_by TEXT,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (room, call_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commands (
    id        TEXT PRIMARY KEY,
    room      TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    by        TEXT NOT NULL,
    sent_ms   INTEGER NOT NULL,
    result    TEXT,
    result_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS firmware_rollouts (
    id         INTEGER PRIMARY KEY,
    state      TEXT NOT NULL,        -- running, held, done, stopped
    doc        TEXT NOT NULL,        -- ward/firmware.py WardRollout.to_json(): the plan and how far each room got
    updated_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class RoomRow:
    room: str
    site: str
    unit: str
    name: str | None
    status: str | None
    reason: str | None
    status_ms: int | None
    api_url: str | None
    fingerprint: str | None
    state: dict[str, Any] | None
    state_cursor: int
    state_ms: int | None


@dataclass(frozen=True, slots=True)
class Shift:
    id: int
    name: str
    charge: str
    staff: tuple[str, ...]
    set_by: str
    set_ms: int
    assignments: tuple[tuple[str, str, str], ...]  # (room, bed, nurse)

    def to_json(self) -> dict[str, Any]:
        rooms: dict[str, dict[str, str]] = {}
        for room, bed, nurse in self.assignments:
            rooms.setdefault(room, {})[bed] = nurse
        return {"id": self.id, "name": self.name, "charge": self.charge, "staff": list(self.staff),
                "rooms": rooms, "set_by": self.set_by, "set_ms": self.set_ms}


@dataclass(frozen=True, slots=True)
class Route:
    room: str
    call_id: str
    level: int
    declined: tuple[str, ...]
    accepted_by: str | None
    updated_ms: int


def _record(row: tuple) -> LogRecord:
    data = json.loads(row[3])
    return LogRecord(row[0], row[1], row[2], data)


class WardStore(SidecarDb):
    def __init__(self, path: Path) -> None:
        # NORMAL: see the module docstring; FULL for each durable write
        super().__init__(path, name="ward-store", schema=SCHEMA, busy_timeout_s=10, synchronous="NORMAL")

    def _prepare(self, db: sqlite3.Connection) -> None:
        tokens.ensure_schema(db)

    # -- the log --------------------------------------------------------------------------------
    async def add_room_events(self, now_ms: int, events: Iterable[tuple[str, int, int, str, dict]]
                              ) -> tuple[list[LogRecord], int]:
        """Store (room, cursor, at_ms, kind, data) events in one transaction; returns the records
        stored and how many were already there (duplicates)."""
        events = list(events)

        def _add(db: sqlite3.Connection) -> tuple[list[LogRecord], int]:
            stored: list[LogRecord] = []
            dupes = 0
            db.execute("BEGIN IMMEDIATE")
            try:
                for room, cursor, at_ms, kind, data in events:
                    full = {"room": room, "cursor": cursor, "at_ms": at_ms, **data}
                    cur = db.execute("INSERT OR IGNORE INTO log (ts_ms, room, cursor, at_ms, kind, data) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", (now_ms, room, cursor, at_ms, kind,
                                                                   json.dumps(full, separators=(",", ":"))))
                    if cur.rowcount:
                        stored.append(LogRecord(cur.lastrowid, now_ms, kind, full))
                    else:
                        dupes += 1
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return stored, dupes

        return await self._run(_add)

    async def add_ward_event(self, now_ms: int, kind: str, data: dict[str, Any], room: str | None = None) -> LogRecord:
        def _add(db: sqlite3.Connection) -> LogRecord:
            full = {"room": room, **data} if room else dict(data)
            cur = db.execute("INSERT INTO log (ts_ms, room, kind, data) VALUES (?, ?, ?, ?)",
                             (now_ms, room, kind, json.dumps(full, separators=(",", ":"))))
            return LogRecord(cur.lastrowid, now_ms, kind, full)

        return await self._run(_add)

    async def read_log(self, after: int, limit: int) -> list[LogRecord]:
        return await self._run(lambda db: [_record(r) for r in db.execute(
            "SELECT id, ts_ms, kind, data FROM log WHERE id > ? ORDER BY id LIMIT ?", (after, limit))])

    async def last_id(self) -> int:
        return await self._run(lambda db: db.execute("SELECT COALESCE(MAX(id), 0) FROM log").fetchone()[0])

    async def room_cursors(self) -> dict[str, int]:
        """The highest stored cursor per room (the ward stores each room's events in cursor order)."""
        return await self._run(lambda db: dict(db.execute(
            "SELECT room, MAX(cursor) FROM log WHERE cursor IS NOT NULL GROUP BY room").fetchall()))

    async def room_event_cursors(self, room: str) -> list[int]:
        return await self._run(lambda db: [r[0] for r in db.execute(
            "SELECT cursor FROM log WHERE room = ? AND cursor IS NOT NULL ORDER BY id", (room,))])

    async def call_records(self, from_ms: int) -> dict[str, list[LogRecord]]:
        """call.* events per room raised from ``from_ms`` on (by the room's time), in cursor order,
        as the room's report code reads them."""

        def _read(db: sqlite3.Connection) -> dict[str, list[LogRecord]]:
            out: dict[str, list[LogRecord]] = {}
            for room, cursor, at_ms, kind, data in db.execute(
                    "SELECT room, cursor, at_ms, kind, data FROM log WHERE cursor IS NOT NULL AND kind >= 'call.' "
                    "AND kind < 'call.\uffff' AND at_ms >= ? ORDER BY room, cursor", (from_ms,)):
                out.setdefault(room, []).append(LogRecord(cursor, at_ms, kind, json.loads(data)))
            return out

        return await self._run(_read)

    # -- rooms ----------------------------------------------------------------------------------
    async def rooms(self) -> dict[str, RoomRow]:
        def _read(db: sqlite3.Connection) -> dict[str, RoomRow]:
            out = {}
            for r in db.execute("SELECT room, site, unit, name, status, reason, status_ms, api_url, fingerprint, "
                                "state, state_cursor, state_ms FROM rooms"):
                out[r[0]] = RoomRow(*r[:9], json.loads(r[9]) if r[9] else None, r[10], r[11])
            return out

        return await self._run(_read)

    async def save_status(self, room: str, site: str, unit: str, status: str, reason: str, ts_ms: int,
                          api_url: str | None, fingerprint: str | None, name: str | None) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO rooms (room, site, unit, name, status, reason, status_ms, api_url, fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(room) DO UPDATE SET site = excluded.site, "
            "unit = excluded.unit, name = COALESCE(excluded.name, rooms.name), status = excluded.status, "
            "reason = excluded.reason, status_ms = excluded.status_ms, "
            "api_url = COALESCE(excluded.api_url, rooms.api_url), "
            "fingerprint = COALESCE(excluded.fingerprint, rooms.fingerprint)",
            (room, site, unit, name, status, reason, ts_ms, api_url, fingerprint, )))

    async def save_state(self, room: str, site: str, unit: str, state: dict[str, Any], cursor: int,
                         ts_ms: int, now_ms: int) -> LogRecord:
        """Keep the newest state (by cursor, then time; an older one arriving late changes nothing)
        and log that the room's state changed (the pages refresh on it), in one round trip."""

        def _save(db: sqlite3.Connection) -> LogRecord:
            _upsert_state(db, room, site, unit, state, cursor, ts_ms)
            data = {"room": room, "cursor": cursor}
            cur = db.execute("INSERT INTO log (ts_ms, room, kind, data) VALUES (?, ?, 'ward.state', ?)",
                             (now_ms, room, json.dumps(data, separators=(",", ":"))))
            return LogRecord(cur.lastrowid, now_ms, "ward.state", data)

        return await self._run(_save)

    # -- shifts and assignments -----------------------------------------------------------------
    async def set_shift(self, name: str, charge: str, staff: list[str], rooms: dict[str, dict[str, str]],
                        by: str, now_ms: int) -> Shift:
        def _set(db: sqlite3.Connection) -> Shift:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute("INSERT INTO shifts (name, charge, staff, set_by, set_ms) VALUES (?, ?, ?, ?, ?)",
                                 (name, charge, json.dumps(staff), by, now_ms))
                rows = [(cur.lastrowid, room, bed, nurse) for room, beds in rooms.items() for bed, nurse in beds.items()]
                db.executemany("INSERT INTO assignments (shift, room, bed, nurse) VALUES (?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return Shift(cur.lastrowid, name, charge, tuple(staff), by, now_ms, tuple(r[1:] for r in rows))

        return await self._run(_set, durable=True)

    async def current_shift(self) -> Shift | None:
        def _read(db: sqlite3.Connection) -> Shift | None:
            row = db.execute("SELECT id, name, charge, staff, set_by, set_ms FROM shifts ORDER BY id DESC LIMIT 1"
                             ).fetchone()
            if row is None:
                return None
            rows = db.execute("SELECT room, bed, nurse FROM assignments WHERE shift = ? ORDER BY room, bed",
                              (row[0],)).fetchall()
            return Shift(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5], tuple(map(tuple, rows)))

        return await self._run(_read)

    # -- routes ---------------------------------------------------------------------------------
    async def routes(self) -> dict[tuple[str, str], Route]:
        def _read(db: sqlite3.Connection) -> dict[tuple[str, str], Route]:
            return {(r[0], r[1]): Route(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5]) for r in db.execute(
                "SELECT room, call_id, level, declined, accepted_by, updated_ms FROM routes")}

        return await self._run(_read)

    async def save_route(self, route: Route) -> None:
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO routes (room, call_id, level, declined, accepted_by, updated_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)", (route.room, route.call_id, route.level, json.dumps(list(route.declined)),
                                          route.accepted_by, route.updated_ms)), durable=True)

    async def drop_routes(self, keep: set[tuple[str, str]]) -> None:
        """Forget routes of calls no longer active (their history is in the log)."""
        def _drop(db: sqlite3.Connection) -> None:
            for room, call_id in db.execute("SELECT room, call_id FROM routes").fetchall():
                if (room, call_id) not in keep:
                    db.execute("DELETE FROM routes WHERE room = ? AND call_id = ?", (room, call_id))

        await self._run(_drop)

    # -- commands -------------------------------------------------------------------------------
    async def add_command(self, cmd_id: str, room: str, action: str, target: str, by: str, now_ms: int) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO commands (id, room, action, target, by, sent_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (cmd_id, room, action, target, by, now_ms)), durable=True)

    async def command_result(self, cmd_id: str, result: dict[str, Any], now_ms: int) -> bool:
        """Record a command's answer; False when it was already recorded (a repeated answer)."""
        def _set(db: sqlite3.Connection) -> bool:
            cur = db.execute("UPDATE commands SET result = ?, result_ms = ? WHERE id = ? AND result IS NULL",
                             (json.dumps(result), now_ms, cmd_id))
            return cur.rowcount > 0

        return await self._run(_set, durable=True)

    async def commands(self, limit: int) -> list[dict[str, Any]]:
        def _read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT id, room, action, target, by, sent_ms, result, result_ms FROM commands "
                              "ORDER BY sent_ms DESC LIMIT ?", (limit,)).fetchall()
            return [{"id": r[0], "room": r[1], "action": r[2], "target": r[3], "by": r[4], "sent_ms": r[5],
                     "result": json.loads(r[6]) if r[6] else None, "result_ms": r[7]} for r in rows]

        return await self._run(_read)

    # -- ward rollouts ---------------------------------------------------------------------------
    async def save_firmware_rollout(self, rollout_id: int, doc: dict[str, Any], state: str) -> None:
        """Only the ward knows its rollout's plan: durable when this returns."""
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO firmware_rollouts (id, state, doc, updated_ms) VALUES (?, ?, ?, ?)",
            (rollout_id, state, json.dumps(doc, separators=(",", ":")), doc.get("updated_ms", 0))), durable=True)

    async def firmware_rollouts(self) -> list[dict[str, Any]]:
        return await self._run(lambda db: [json.loads(r[0]) for r in db.execute(
            "SELECT doc FROM firmware_rollouts ORDER BY id")])

    # -- tokens and audit -----------------------------------------------------------------------
    async def find_token(self, secret: str) -> tokens.Principal | None:
        return await self._run(lambda db: tokens.find(db, secret))

    async def create_token(self, role: str, name: str, now_ms: int, roles: tuple[str, ...]
                           ) -> tuple[tokens.TokenInfo, str]:
        return await self._run(lambda db: tokens.create(db, role, name, now_ms, roles), durable=True)

    async def audit(self, entry: tokens.AuditEntry) -> None:
        await self._run(lambda db: tokens.audit(db, entry), durable=True)

    async def read_audit(self, after_ts_ms: int, limit: int) -> list[tokens.AuditEntry]:
        return await self._run(lambda db: tokens.read_audit(db, after_ts_ms, limit))


def _upsert_state(db: sqlite3.Connection, room: str, site: str, unit: str, state: dict[str, Any], cursor: int,
                  ts_ms: int) -> None:
    db.execute(
        "INSERT INTO rooms (room, site, unit, state, state_cursor, state_ms) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(room) DO UPDATE SET state = excluded.state, state_cursor = excluded.state_cursor, "
        "state_ms = excluded.state_ms WHERE excluded.state_cursor > rooms.state_cursor OR "
        "(excluded.state_cursor = rooms.state_cursor AND excluded.state_ms >= COALESCE(rooms.state_ms, 0))",
        (room, site, unit, json.dumps(state, separators=(",", ":")), cursor, ts_ms))
