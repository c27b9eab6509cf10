"""Durable state in one SQLite file: the room's event log (``events``) and the readings history.

Nothing here knows the room's rules: the store keeps what the service decided, in order, and
gives it back after a restart.
"""

from .events import LogEntry, LogRecord, SeqMark, StorageError, Store

__all__ = ["LogEntry", "LogRecord", "SeqMark", "StorageError", "Store"]
