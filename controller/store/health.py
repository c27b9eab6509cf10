"""The storage's health as the service sees it, kept in memory: a failing disk cannot record it.

``StorageStatus`` is shown in the room snapshot, ``/api/v1/health`` (its :meth:`reasons`), the
metrics and the pages; the service raises and clears the storage alarms from it
(docs/architecture.md, failure modes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Readings stop being stored when the database's file system has less free space than this, so the
# room's events keep about two months of room: ~170 B a log record with its indexes, and 500 calls a
# day with their acks, presence and PIR changes is ~1.1 MB a day (docs/history.md). Facilities get
# a technical alarm the day readings stop, not the day calls cannot be stored.
READINGS_MIN_FREE_BYTES = 64 * 2**20
READINGS_RESUME_MARGIN = 0.25  # resume 25 % above the floor, so one batch or one expiry cannot flap the alarm


@dataclass(slots=True)
class StorageStatus:
    """The room's storage as the controller sees it; in memory, because a failing disk cannot record it."""

    min_free_bytes: int = READINGS_MIN_FREE_BYTES
    failing_since_ms: int | None = None        # a write failed and none has worked since
    error: str | None = None
    write_failures: int = 0                    # failed writes since the controller started
    readings_paused_since_ms: int | None = None  # free space went below the floor: readings not stored
    free_bytes: int | None = None              # at the last check (before each batch of readings)
    readings_not_stored: Counter[str] = field(default_factory=Counter)  # by reason: disk_floor, storage_failed
    waiting: dict[str, str] = field(default_factory=dict)  # "node/input" -> meaning, refused while failing

    @property
    def resume_bytes(self) -> int:
        """Free space at which paused readings are stored again."""
        return int(self.min_free_bytes * (1 + READINGS_RESUME_MARGIN))

    @property
    def state(self) -> str:
        if self.failing_since_ms is not None:
            return "failed"
        return "readings_paused" if self.readings_paused_since_ms is not None else "ok"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "failing_since_ms": self.failing_since_ms, "error": self.error,
                "write_failures": self.write_failures, "readings_paused_since_ms": self.readings_paused_since_ms,
                "free_bytes": self.free_bytes, "min_free_bytes": self.min_free_bytes,
                "readings_not_stored": dict(self.readings_not_stored),
                "inputs_waiting": dict(sorted(self.waiting.items()))}

    def reasons(self) -> list[dict[str, Any]]:
        """Why storage makes the room degraded (empty: it does not)."""
        found: list[dict[str, Any]] = []
        if self.failing_since_ms is not None:
            waiting = "; inputs waiting: " + ", ".join(f"{k} ({v})" for k, v in sorted(self.waiting.items())) \
                if self.waiting else ""
            found.append({"reason": "storage_failed", "since_ms": self.failing_since_ms,
                          "message": f"the room database cannot be written ({self.error}): new calls are not "
                                     f"recorded until it can; nodes keep them and resend{waiting}"})
        if self.readings_paused_since_ms is not None:
            found.append({"reason": "disk_low", "since_ms": self.readings_paused_since_ms,
                          "message": f"less than {self.min_free_bytes // 2**20} MiB free for the database: "
                                     "readings are not stored, so that events are"})
        return found
