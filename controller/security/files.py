"""Files only their owner may read: the room database (token hashes, the audit log, call history),
and the node key file (checked, not changed: an installer's file is theirs to fix).

SQLite creates a database's ``-wal`` and ``-shm`` files with the main file's permission bits, so
making the main file owner-only before SQLite first opens it covers all three; files left by an
older version with wider modes are narrowed on the next start.
"""

from __future__ import annotations

import os
from pathlib import Path

OWNER_ONLY = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def owner_only_database(path: Path) -> None:
    """Create ``path`` (empty: a valid new SQLite database) mode 0600, or narrow it and its companions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, OWNER_ONLY))
    except FileExistsError:
        pass
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        try:
            if file.stat().st_mode & 0o777 != OWNER_ONLY:
                os.chmod(file, OWNER_ONLY)
        except FileNotFoundError:
            continue


def others_may_read(path: Path) -> str | None:
    """Why ``path`` (a secret, e.g. the node key file) is readable beyond its owner, or None.

    Group or world read (or write) bits: anyone in that group can forge any node's frames."""
    try:
        mode = Path(path).stat().st_mode & 0o777
    except OSError:  # gone or unreadable: nothing left to expose
        return None
    if mode & 0o077 == 0:
        return None
    return (f"{path} is mode {mode:04o}: others on this machine can read the node keys and forge any node's "
            f"calls; run: chmod 600 {path}")
