"""The node registry: every node provisioned into this room, in the room's SQLite database.

One row per node id: its key (and a rotated key not yet confirmed by the node), its state
(``provisioned`` → ``waiting`` → ``adopted``; ``decommissioned``), what it said about itself
(hardware, firmware, capabilities, input names), where facilities put it (bed, role, input meanings)
and who did what when — every change also goes to ``node_audit``. ``smartroom nodes provision``
writes here while the controller runs (WAL, a short lock wait), and the gateway looks a node up
here when it is not in the key file, so a newly provisioned node is let in without a restart.

Calls are rare here (provisioning, adoption, a hello), so the connection is synchronous.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..model import NODE_ID_RE
from ..security.files import owner_only_database

STATES = ("provisioned", "waiting", "adopted", "decommissioned")
ROLES = ("bedside", "bathroom", "door", "wearable", "environment")
KEY_BYTES = 32
LOCK_WAIT_S = 5.0  # the controller's group commit holds the write lock for milliseconds; the CLI waits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, key_hex TEXT NOT NULL, pending_key_hex TEXT,
    state TEXT NOT NULL, hw TEXT NOT NULL DEFAULT '', fw TEXT NOT NULL DEFAULT '',
    caps TEXT NOT NULL DEFAULT '[]', input_names TEXT NOT NULL DEFAULT '[]',
    bed TEXT, role TEXT, inputs TEXT NOT NULL DEFAULT '{}',
    enrolled_by TEXT NOT NULL, enrolled_ms INTEGER NOT NULL,
    adopted_by TEXT, adopted_ms INTEGER, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS node_audit (
    id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, actor TEXT NOT NULL, node_id TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}');
"""


class RegistryError(ValueError):
    """A registry change that cannot be made; ``status``: 404 unknown node, 409 wrong state, 400 bad value."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    key: bytes
    pending_key: bytes | None
    state: str
    hw: str = ""
    fw: str = ""
    caps: tuple[str, ...] = ()
    input_names: tuple[str, ...] = ()
    bed: str | None = None
    role: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    enrolled_by: str = ""
    enrolled_ms: int = 0
    adopted_by: str | None = None
    adopted_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        """For the API: never the key."""
        return {"node": self.node_id, "state": self.state, "hw": self.hw, "fw": self.fw,
                "caps": list(self.caps), "input_names": list(self.input_names), "bed": self.bed,
                "role": self.role, "inputs": dict(self.inputs), "enrolled_by": self.enrolled_by,
                "enrolled_ms": self.enrolled_ms, "adopted_by": self.adopted_by, "adopted_ms": self.adopted_ms,
                "rotation_pending": self.pending_key is not None}


@dataclass(frozen=True, slots=True)
class NodeAudit:
    ts_ms: int
    actor: str
    node_id: str
    action: str
    detail: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"ts_ms": self.ts_ms, "actor": self.actor, "node": self.node_id, "action": self.action,
                "detail": dict(self.detail)}


_COLUMNS = ("node_id, key_hex, pending_key_hex, state, hw, fw, caps, input_names, bed, role, inputs, "
            "enrolled_by, enrolled_ms, adopted_by, adopted_ms")


def _record(row: tuple[Any, ...]) -> NodeRecord:
    (node, key, pending, state, hw, fw, caps, names, bed, role, inputs, by, at, adopted_by, adopted_ms) = row
    return NodeRecord(node, bytes.fromhex(key), bytes.fromhex(pending) if pending else None, state, hw, fw,
                      tuple(json.loads(caps)), tuple(json.loads(names)), bed, role, json.loads(inputs),
                      by, at, adopted_by, adopted_ms)


class NodeRegistry:
    def __init__(self, path: Path | str) -> None:
        owner_only_database(Path(path))
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=LOCK_WAIT_S, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reading
    def get(self, node: str) -> NodeRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (node,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[NodeRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM nodes ORDER BY node_id").fetchall()
        return [_record(r) for r in rows]

    def audit(self, node: str | None = None, limit: int = 100) -> list[NodeAudit]:
        sql = "SELECT ts_ms, actor, node_id, action, detail FROM node_audit"
        args: tuple[Any, ...] = ()
        if node is not None:
            sql, args = sql + " WHERE node_id = ?", (node,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [NodeAudit(ts, actor, n, action, json.loads(detail)) for ts, actor, n, action, detail in rows]

    # ------------------------------------------------------------------ changes, each audited
    def _change(self, sql: str, args: tuple[Any, ...], actor: str, node: str, action: str,
                detail: Mapping[str, Any], now_ms: int) -> NodeRecord:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(sql, args)
                self._db.execute("INSERT INTO node_audit (ts_ms, actor, node_id, action, detail) VALUES (?, ?, ?, ?, ?)",
                                 (now_ms, actor, node, action, json.dumps(dict(detail), sort_keys=True)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        record = self.get(node)
        assert record is not None
        return record

    def _need(self, node: str, *states: str) -> NodeRecord:
        record = self.get(node)
        if record is None:
            raise RegistryError(f"node {node!r} is not in this room's registry (provision it first)", 404)
        if states and record.state not in states:
            raise RegistryError(f"node {node!r} is {record.state}, not {' or '.join(states)}", 409)
        return record

    def enrol(self, node: str, key: bytes, actor: str, now_ms: int, *, hw: str = "", fw: str = "") -> NodeRecord:
        """A node given its key over Improv. Re-provisioning a known id (after a factory reset) gives it a
        new key and keeps its bed, role and inputs: it is adopted again on its first hello."""
        if not NODE_ID_RE.match(node):
            raise RegistryError(f"node id {node!r} is not [a-z0-9-]{{1,32}}")
        if len(key) != KEY_BYTES:
            raise RegistryError(f"a node key is {KEY_BYTES} bytes")
        old = self.get(node)
        detail = {"hw": hw, "fw": fw, "again": old is not None}
        if old is None:
            return self._change(
                "INSERT INTO nodes (node_id, key_hex, state, hw, fw, enrolled_by, enrolled_ms, updated_ms) "
                "VALUES (?, ?, 'provisioned', ?, ?, ?, ?, ?)", (node, key.hex(), hw, fw, actor, now_ms, now_ms),
                actor, node, "provision", detail, now_ms)
        return self._change(
            "UPDATE nodes SET key_hex = ?, pending_key_hex = NULL, state = 'provisioned', hw = ?, fw = ?, "
            "enrolled_by = ?, enrolled_ms = ?, updated_ms = ? WHERE node_id = ?",
            (key.hex(), hw or old.hw, fw or old.fw, actor, now_ms, now_ms, node), actor, node, "provision", detail, now_ms)

    def seen(self, node: str, hw: str, fw: str, caps: tuple[str, ...], now_ms: int) -> NodeRecord:
        """A verified hello: a provisioned node is now waiting for facilities (or adopted again, when it
        already has a bed and role)."""
        record = self._need(node)
        state = record.state
        if state == "provisioned":
            state = "adopted" if record.bed is not None and record.role is not None else "waiting"
        if (state, hw, fw, caps) == (record.state, record.hw, record.fw, record.caps):
            return record
        return self._change("UPDATE nodes SET state = ?, hw = ?, fw = ?, caps = ?, updated_ms = ? WHERE node_id = ?",
                            (state, hw, fw, json.dumps(list(caps)), now_ms, node), "node " + node, node,
                            "hello" if state == record.state else state, {"hw": hw, "fw": fw, "caps": list(caps)}, now_ms)

    def input_names_seen(self, node: str, names: tuple[str, ...]) -> None:
        """The input names a node's heartbeat lists (its state object): what facilities can map."""
        with self._lock:
            self._db.execute("UPDATE nodes SET input_names = ? WHERE node_id = ? AND input_names != ?",
                             (json.dumps(sorted(names)), node, json.dumps(sorted(names))))

    def assign(self, node: str, bed: str | None, role: str, inputs: Mapping[str, str], actor: str,
               now_ms: int) -> NodeRecord:
        self._need(node, "waiting", "adopted", "provisioned")
        if role not in ROLES:
            raise RegistryError(f"role {role!r} is not one of {', '.join(ROLES)}")
        record = self._need(node)
        state = "adopted" if record.state in ("waiting", "adopted") else record.state
        return self._change(
            "UPDATE nodes SET bed = ?, role = ?, inputs = ?, state = ?, adopted_by = ?, adopted_ms = ?, updated_ms = ? "
            "WHERE node_id = ?", (bed, role, json.dumps(dict(inputs), sort_keys=True), state, actor, now_ms, now_ms, node),
            actor, node, "assign", {"bed": bed, "role": role, "inputs": dict(inputs)}, now_ms)

    def start_rotation(self, node: str, new_key: bytes, actor: str, now_ms: int) -> NodeRecord:
        self._need(node, "waiting", "adopted")
        return self._change("UPDATE nodes SET pending_key_hex = ?, updated_ms = ? WHERE node_id = ?",
                            (new_key.hex(), now_ms, node), actor, node, "rotate key", {}, now_ms)

    def finish_rotation(self, node: str, now_ms: int) -> NodeRecord:
        """The node signed with the rotated key: it is the key from now on; the old one is gone."""
        record = self._need(node)
        if record.pending_key is None:
            return record
        return self._change("UPDATE nodes SET key_hex = pending_key_hex, pending_key_hex = NULL, updated_ms = ? "
                            "WHERE node_id = ?", (now_ms, node), "node " + node, node, "key rotated", {}, now_ms)

    def decommission(self, node: str, actor: str, now_ms: int, reason: str = "") -> NodeRecord:
        self._need(node, "provisioned", "waiting", "adopted")
        return self._change("UPDATE nodes SET state = 'decommissioned', pending_key_hex = NULL, updated_ms = ? "
                            "WHERE node_id = ?", (now_ms, node), actor, node, "decommission", {"reason": reason}, now_ms)

    def replace(self, old: str, new: str, actor: str, now_ms: int) -> NodeRecord:
        """``new`` (provisioned or waiting) takes ``old``'s bed, role and inputs; ``old`` is decommissioned."""
        was = self._need(old, "waiting", "adopted", "provisioned")
        self._need(new, "provisioned", "waiting")
        if was.role is None:
            raise RegistryError(f"node {old!r} has no bed and role to hand over", 409)
        self.decommission(old, actor, now_ms, reason=f"replaced by {new}")
        return self.assign(new, was.bed, was.role, was.inputs, actor, now_ms)
