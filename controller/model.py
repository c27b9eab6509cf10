"""What crosses the controller's layers: the typed node messages, node ids and the wall clock.

The link (``link/protocol.py``) turns wire frames into these frozen dataclasses; the service hands
them to the room, which never sees a frame. Everything here is plain data with no project imports.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Mapping

NODE_ID_RE = re.compile(r"^[a-z0-9-]{1,32}$")  # protocol node ids; room files use the same rule


def wall_ms() -> int:
    """The controller's wall clock in epoch milliseconds (tests inject their own clocks instead)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Hello:
    node: str
    boot: int
    seq: int
    fw: str
    hw: str
    caps: tuple[str, ...]
    hb_ms: int
    nonce: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str
    boot: int
    seq: int
    up_ms: int
    queued: int
    heap: int
    dropped: int
    rssi: int | None = None
    batt_mv: int | None = None
    state: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reading:
    node: str
    boot: int
    seq: int
    at_ms: int
    measures: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class NodeEvent:
    node: str
    boot: int
    seq: int      # the frame that carried it (replay rule); a resend comes in a new frame
    e: int        # the event's own number within its boot: (node, event_boot, e) names it for good (dedupe)
    kind: str
    src: str
    val: int
    at_ms: int
    features: Mapping[str, int] = field(default_factory=dict)
    # The boot the event was made in, when earlier than the frame's: an event the node kept in its
    # flash journal through a restart (docs/protocol.md §9). None: made in this boot.
    origin_boot: int | None = None

    @property
    def event_boot(self) -> int:
        """The boot the event belongs to; with ``e`` (and the node) its identity."""
        return self.boot if self.origin_boot is None else self.origin_boot


@dataclass(frozen=True, slots=True)
class OtaGet:
    """A node updating its firmware asks for item ``item`` (0 the manifest, 1… its files) from ``offset``."""
    node: str
    boot: int
    seq: int
    bundle: str   # the bundle hash (manifest SHA-256, hex) offered
    item: int
    offset: int


@dataclass(frozen=True, slots=True)
class OtaReport:
    """Where a node's update stands: ``status`` accepted, refused, failed, staged, confirmed, rolled_back."""
    node: str
    boot: int
    seq: int
    status: str
    version: str
    reason: str | None = None
    bundle: str | None = None


NodeMessage = Hello | Heartbeat | Reading | NodeEvent | OtaGet | OtaReport
