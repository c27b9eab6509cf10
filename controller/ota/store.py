"""The room's staged rollouts in its database, so a controller restart never loses one silently.

One row per rollout (``firmware_rollouts``): what it updates, who started it (and the ward rollout
it is part of), its state and each node's last known update (JSON). Written on every change of
state (not on every downloaded chunk), with ``synchronous=FULL``: what the row says is on disk
when the write returns. On start, a rollout the previous process left ``running`` is marked
``interrupted`` (docs/firmware.md, "Rollouts survive a restart"). Its own SQLite connection to the
room's database file (``SidecarDb``), like the uplink's marks.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..store.sidecar import SidecarDb

SCHEMA = """
CREATE TABLE IF NOT EXISTS firmware_rollouts (
    id         INTEGER PRIMARY KEY,
    version    TEXT NOT NULL,
    bundle     TEXT NOT NULL,          -- SHA-256 of the manifest
    board      TEXT NOT NULL,
    stages     TEXT NOT NULL,          -- JSON list of lists of node ids
    actor      TEXT NOT NULL,          -- who started it (an API token's name, or the ward's acting person)
    ward       TEXT,                   -- the ward rollout it is part of (started over the uplink), or NULL
    started_ms INTEGER NOT NULL,
    state      TEXT NOT NULL,          -- running, done, stopped, interrupted
    reason     TEXT,
    nodes      TEXT NOT NULL,          -- JSON list of each node's last known NodeUpdate
    updated_ms INTEGER NOT NULL
);
"""
BUSY_TIMEOUT_S = 10.0  # the event store holds its write lock for one transaction at a time
KEPT = 200             # rollouts kept (newest); older ones stay in the audit log


class RolloutStore(SidecarDb):
    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path, name="smartroom-ota", schema=SCHEMA, busy_timeout_s=BUSY_TIMEOUT_S)

    async def load(self) -> list[dict[str, Any]]:
        """Every kept rollout, oldest first, as ``Rollout.to_json()`` shaped it."""
        def _read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT id, version, bundle, board, stages, actor, ward, started_ms, state, reason, "
                              "nodes FROM firmware_rollouts ORDER BY id").fetchall()
            return [{"id": r[0], "version": r[1], "bundle": r[2], "board": r[3], "stages": json.loads(r[4]),
                     "actor": r[5], "ward": r[6], "started_ms": r[7], "state": r[8], "reason": r[9],
                     "nodes": json.loads(r[10])} for r in rows]

        return await self._run(_read)

    async def save(self, doc: dict[str, Any], now_ms: int) -> None:
        """Insert or replace one rollout (``Rollout.to_json()``); keeps the newest ``KEPT``."""
        def _save(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO firmware_rollouts (id, version, bundle, board, stages, actor, ward, "
                       "started_ms, state, reason, nodes, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (doc["id"], doc["version"], doc["bundle"], doc["board"], json.dumps(doc["stages"]),
                        doc["actor"], doc.get("ward"), doc["started_ms"], doc["state"], doc["reason"],
                        json.dumps(doc["nodes"], separators=(",", ":")), now_ms))
            db.execute("DELETE FROM firmware_rollouts WHERE id <= ?", (doc["id"] - KEPT,))

        await self._run(_save)
