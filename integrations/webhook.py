"""Webhooks out: the room's events, POSTed as signed JSON to a paging gateway or an in-house tool.

Each POST carries a batch of events in log order::

    POST <url>
    Content-Type: application/json
    X-Smartroom-Delivery: 4b-12:1041-1043          (room:first-last event id; the same on a retry)
    X-Smartroom-Timestamp: 1764547200               (unix seconds, when this attempt was signed)
    X-Smartroom-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the shared secret>

    {"room": "4b-12", "events": [{"id": 1041, "ts_ms": ..., "kind": "call.raised", "data": {...}}, ...]}

A 2xx answer moves the webhook's durable cursor past the batch; anything else (or no answer) is
retried with capped exponential backoff, the same events in the same order, until it is taken:
at least once, in order; the receiver drops repeats by event id (or the delivery header).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from controller.service import RoomController
from controller.store import LogRecord

from .config import WebhookOptions
from .follow import follow_log
from .mllp import Backoff
from .outbox import Outbox

log = logging.getLogger("smartroom.webhook")

BATCH_MAX = 100  # events per POST: small enough for any receiver's body limit, large enough to catch up fast
SIGNATURE_HEADER = "X-Smartroom-Signature"
TIMESTAMP_HEADER = "X-Smartroom-Timestamp"
DELIVERY_HEADER = "X-Smartroom-Delivery"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (constant-time compare); it should also refuse old timestamps."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


@dataclass(slots=True)
class WebhookStats:
    delivered: int = 0        # events taken by the receiver
    posts: int = 0
    failures: int = 0         # attempts that did not end in 2xx
    last_status: int | None = None
    last_error: str = ""
    cursor: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class WebhookSender:
    def __init__(self, controller: RoomController, options: WebhookOptions, outbox: Outbox,
                 *, session: aiohttp.ClientSession | None = None) -> None:
        self.controller = controller
        self.options = options
        self.outbox = outbox
        self.stats = WebhookStats()
        self._cursor_name = f"webhook:{options.name}"
        self._cursor = 0
        self._session = session
        self._own_session = session is None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cursor, state = await self.outbox.cursor(self._cursor_name)
        if cursor == 0 and not state:  # a new webhook starts with what happens from now on
            cursor = self.controller.room.cursor
            await self.outbox.save(self._cursor_name, cursor, {"since": cursor})
        self._cursor = self.stats.cursor = cursor
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.options.timeout_s))
        self._task = asyncio.create_task(self._run(), name=f"webhook {self.options.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.outbox.save(self._cursor_name, self._cursor, {"since": self._cursor})
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        await follow_log(self.controller, lambda: self._cursor, self._take, BATCH_MAX)

    async def _take(self, records: list[LogRecord]) -> None:
        wanted = [r for r in records if self.options.wants(r.kind)]
        if wanted:
            await self._deliver(wanted)
            # taken: the cursor moves now (no await in between), so even a stop during the save below
            # saves it in stop(); skipped kinds are saved with the next delivery or at stop
            self._cursor = self.stats.cursor = records[-1].id
            self.stats.delivered += len(wanted)
            await self.outbox.save(self._cursor_name, records[-1].id, {"since": records[-1].id})
        self._cursor = self.stats.cursor = records[-1].id

    async def _deliver(self, records: list[LogRecord]) -> None:
        """POST until a 2xx: never gives up (an event is never dropped), backing off between tries."""
        room = self.controller.config.room_id
        body = json.dumps({"room": room, "events": [r.to_json() for r in records]}, separators=(",", ":")).encode()
        delivery = f"{room}:{records[0].id}-{records[-1].id}"
        backoff = Backoff(self.options.retry_first_s, self.options.retry_max_s)
        assert self._session is not None
        while True:
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery,
                       TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(self.options.secret, timestamp, body)}
            self.stats.posts += 1
            try:
                async with self._session.post(self.options.url, data=body, headers=headers) as resp:
                    self.stats.last_status = resp.status
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return
                    self.stats.last_error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.stats.last_error = str(exc) or type(exc).__name__
            self.stats.failures += 1
            log.warning("webhook %s: %s; retrying delivery %s", self.options.name, self.stats.last_error, delivery)
            await asyncio.sleep(backoff.next_s())
