"""API tokens with roles, stored hashed, and the audit log of state-changing requests.

A token is ``srt_`` + 43 characters of ``secrets.token_urlsafe(32)`` (256 bits): shown once when
created, stored only as its SHA-256 (a slow password hash buys nothing for 256 random bits).
Functions here take a ``sqlite3.Connection`` so the controller runs them on its store thread and
``smartroom token`` runs them on its own connection to the same database file (WAL allows both).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from .files import owner_only_database

ROLES = ("nurse", "facilities", "admin", "integration")
TOKEN_PREFIX = "srt_"
NAME_RE = re.compile(r"^[^\x00-\x1f]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_active_name ON tokens (name) WHERE revoked_ms IS NULL;
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    status  INTEGER NOT NULL,
    remote  TEXT
);
"""


class TokenError(ValueError):
    """A token request that cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role."""

    token_id: int
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    name: str
    role: str
    created_ms: int
    revoked_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_ms": self.created_ms,
                "revoked_ms": self.revoked_ms, "active": self.revoked_ms is None}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    ts_ms: int
    actor: str
    role: str | None
    action: str
    target: str
    status: int
    remote: str | None

    def to_json(self) -> dict[str, Any]:
        return {"ts_ms": self.ts_ms, "actor": self.actor, "role": self.role, "action": self.action,
                "target": self.target, "status": self.status, "remote": self.remote}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def ensure_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def create(db: sqlite3.Connection, role: str, name: str, now_ms: int,
           roles: tuple[str, ...] = ROLES) -> tuple[TokenInfo, str]:
    """A new token; returns its record and the secret (the only time the secret exists in clear).
    ``roles``: the roles of the service the token is for (the ward console has its own)."""
    if role not in roles:
        raise TokenError(f"role must be one of {', '.join(roles)}, got {role!r}")
    if not NAME_RE.match(name) or not name.strip():
        raise TokenError("name must be 1 to 64 printable characters (who or what holds the token)")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        cur = db.execute("INSERT INTO tokens (name, role, hash, created_ms) VALUES (?, ?, ?, ?)",
                         (name, role, digest(secret), now_ms))
    except sqlite3.IntegrityError:
        raise TokenError(f"an active token named {name!r} exists; revoke it first or choose another name") from None
    return TokenInfo(cur.lastrowid, name, role, now_ms, None), secret


def revoke(db: sqlite3.Connection, name_or_id: str, now_ms: int) -> TokenInfo:
    row = db.execute(
        "SELECT id, name, role, created_ms FROM tokens WHERE revoked_ms IS NULL AND (name = ? OR CAST(id AS TEXT) = ?)",
        (name_or_id, name_or_id)).fetchone()
    if row is None:
        raise TokenError(f"no active token named or numbered {name_or_id!r}")
    db.execute("UPDATE tokens SET revoked_ms = ? WHERE id = ?", (now_ms, row[0]))
    return TokenInfo(row[0], row[1], row[2], row[3], now_ms)


def find(db: sqlite3.Connection, secret: str) -> Principal | None:
    """The active token with this secret, or None (unknown, revoked or malformed)."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
        return None
    row = db.execute("SELECT id, name, role FROM tokens WHERE hash = ? AND revoked_ms IS NULL",
                     (digest(secret),)).fetchone()
    return Principal(row[0], row[1], row[2]) if row else None


def list_tokens(db: sqlite3.Connection, include_revoked: bool = False) -> list[TokenInfo]:
    where = "" if include_revoked else "WHERE revoked_ms IS NULL"
    rows = db.execute(f"SELECT id, name, role, created_ms, revoked_ms FROM tokens {where} ORDER BY id").fetchall()
    return [TokenInfo(*r) for r in rows]


def audit(db: sqlite3.Connection, entry: AuditEntry) -> None:
    db.execute("INSERT INTO audit (ts_ms, actor, role, action, target, status, remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (entry.ts_ms, entry.actor, entry.role, entry.action, entry.target, entry.status, entry.remote))


def read_audit(db: sqlite3.Connection, after_ts_ms: int = 0, limit: int = 100) -> list[AuditEntry]:
    rows = db.execute("SELECT ts_ms, actor, role, action, target, status, remote FROM audit "
                      "WHERE ts_ms >= ? ORDER BY id DESC LIMIT ?", (after_ts_ms, limit)).fetchall()
    return [AuditEntry(*r) for r in rows]


def open_db(path: str) -> sqlite3.Connection:
    """A connection for the command line, next to a running controller (WAL; waits for its lock)."""
    owner_only_database(path)
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    ensure_schema(db)
    return db
