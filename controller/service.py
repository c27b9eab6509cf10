"""The room controller: the one place where inputs become stored room events.

Every input (a node's event, a nurse's acknowledgement, a node going offline) goes through
:meth:`RoomController._commit`: decide against the current state, store durably, apply, publish,
update the room's outputs. One lock serialises it, so decisions never race.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from .bus import EventBus, Subscription
from .config import RoomConfig
from .protocol import Heartbeat, Hello, NodeEvent, Reading
from .room import Room
from .store import LogEntry, LogRecord, SeqMark, Store

log = logging.getLogger("smartroom.controller")

READING_FLUSH_S = 0.1       # readings are batched: one fsync per 100 ms, not one per reading
READING_BATCH_MAX = 2000    # flush early when this many are waiting
SUPERVISION_PERIOD_S = 0.5  # how often node silence is checked
MISSED_HEARTBEATS_OFFLINE = 3  # nurse-call supervision: three missed check-ins = offline
OFFLINE_GRACE_MS = 1000     # network jitter allowance on top of the three intervals

# Wire measure -> (API measure, divisor). Units live in the names on both sides.
MEASURES = {"temp_mdegc": ("temp_c", 1000), "rh_mpct": ("rh_pct", 1000), "co2_ppm": ("co2_ppm", 1),
            "batt_mv": ("batt_v", 1000), "noise_cdb": ("noise_db", 100), "dp_mpa": ("pressure_pa", 1000)}


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RoomController:
    def __init__(self, config: RoomConfig, keys: dict[str, bytes], db_path: Path,
                 *, clock: Callable[[], int] = wall_ms) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        self.store = Store(db_path)
        self.room = Room(config)
        self.bus = EventBus()
        self.marks: dict[str, SeqMark] = {}
        self._lock = asyncio.Lock()
        self._output_listeners: list[Callable[[], None]] = []
        self._readings: list[tuple[int, str, str, float]] = []
        self._reading_marks: dict[str, SeqMark] = {}
        self._reading_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.readings_stored = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.store.open()
        after = 0
        while batch := await self.store.read_log(after, 5000):
            self.room.apply_all(batch)
            after = batch[-1].id
        self.marks = await self.store.load_marks()
        for measure, (ts_ms, node, value) in (await self.store.latest_readings()).items():
            self.room.note_reading(measure, value, node, ts_ms)
        # Connections did not survive the restart: whoever the log says is online must check in again.
        for node in [n.id for n in self.room.nodes.values() if n.online]:
            await self._commit(lambda now, node=node: self.room.decide_offline(node, "controller restarted", now))
        log.info("room %s: rebuilt from %d log records, %d active calls", self.config.room_id, after,
                 len(self.room.calls))
        self._tasks = [asyncio.create_task(self._reading_writer(), name="reading-writer"),
                       asyncio.create_task(self._supervise(), name="supervision")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._flush_readings()
        await self.store.close()

    # ------------------------------------------------------------------ the commit path
    async def _commit(self, decide: Callable[[int], list[LogEntry]], *, node_event: tuple[str, int, int] | None = None,
                      seq_mark: SeqMark | None = None) -> list[LogRecord]:
        async with self._lock:
            now = self.clock()
            entries = decide(now)
            if not entries and seq_mark is None:
                return []
            records = await self.store.append(now, entries, node_event=node_event, seq_mark=seq_mark)
            self.room.apply_all(records)
        self.bus.publish(records)
        self._outputs_changed()
        return records

    def _outputs_changed(self) -> None:
        for listener in self._output_listeners:
            listener()

    def on_outputs_changed(self, listener: Callable[[], None]) -> None:
        self._output_listeners.append(listener)

    # ------------------------------------------------------------------ node inputs (from the gateway)
    def accept_mark(self, node: str, boot: int, seq: int) -> SeqMark:
        """Move the node's highest accepted (boot, seq) forward; it never moves back."""
        mark = self.marks.get(node)
        if mark is None or (boot, seq) > (mark.boot, mark.max_seq):
            mark = self.marks[node] = SeqMark(node, boot, seq)
        return mark

    async def node_hello(self, hello: Hello, peer: str) -> None:
        mark = self.accept_mark(hello.node, hello.boot, hello.seq)
        await self._commit(lambda now: self.room.decide_online(hello, peer, now), seq_mark=mark)

    async def is_duplicate(self, ev: NodeEvent) -> bool:
        return await self.store.has_node_event(ev.node, ev.boot, ev.seq)

    async def node_event(self, ev: NodeEvent) -> list[LogRecord]:
        """Store a node's event; when this returns it is durable and may be acked."""
        mark = self.accept_mark(ev.node, ev.boot, ev.seq)
        self.room.note_seen(ev.node, self.clock())
        return await self._commit(lambda now: self.room.decide_node_event(ev, now),
                                  node_event=(ev.node, ev.boot, ev.seq), seq_mark=mark)

    async def node_heartbeat(self, hb: Heartbeat) -> None:
        mark = self.accept_mark(hb.node, hb.boot, hb.seq)
        self.room.note_heartbeat(hb, self.clock())
        await self.store.save_mark(mark)

    def node_reading(self, reading: Reading) -> None:
        """Queue a reading for the next batch write; readings are never acked or resent."""
        now = self.clock()
        self._reading_marks[reading.node] = self.accept_mark(reading.node, reading.boot, reading.seq)
        self.room.note_seen(reading.node, now)
        for wire_name, raw in reading.measures.items():
            name, divisor = MEASURES.get(wire_name, (wire_name, 1))
            value = raw / divisor
            self._readings.append((now, reading.node, name, value))
            self.room.note_reading(name, value, reading.node, now)
        if len(self._readings) >= READING_BATCH_MAX:
            self._reading_wakeup.set()

    async def _reading_writer(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._reading_wakeup.wait(), READING_FLUSH_S)
            except TimeoutError:
                pass
            self._reading_wakeup.clear()
            await self._flush_readings()

    async def _flush_readings(self) -> None:
        if not self._readings:
            return
        rows, self._readings = self._readings, []
        marks, self._reading_marks = list(self._reading_marks.values()), {}
        try:
            await self.store.add_readings(rows, marks)
            self.readings_stored += len(rows)
        except Exception:  # a full SD card must not stop call handling; the loss is logged
            log.exception("could not store %d readings", len(rows))

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISION_PERIOD_S)
            now = self.clock()
            limit = MISSED_HEARTBEATS_OFFLINE * self.config.heartbeat_ms + OFFLINE_GRACE_MS
            for status in list(self.room.nodes.values()):
                if status.online and status.last_seen_ms is not None and now - status.last_seen_ms > limit:
                    log.warning("node %s: missed %d heartbeats, offline", status.id, MISSED_HEARTBEATS_OFFLINE)
                    await self._commit(lambda t, node=status.id: self.room.decide_offline(
                        node, f"missed {MISSED_HEARTBEATS_OFFLINE} heartbeats", t))

    # ------------------------------------------------------------------ nurse actions (from the API)
    async def acknowledge(self, call_id: str, by: str) -> dict[str, Any]:
        records = await self._commit(lambda now: self.room.decide_ack(call_id, by, now))
        call = self.room.calls.get(call_id)
        if call is not None:
            return call.to_json()
        return {"id": call_id, "state": "cleared", "acknowledged_at_ms": records[0].data["at_ms"],
                "acknowledged_by": by}

    # ------------------------------------------------------------------ reads
    def snapshot(self) -> dict[str, Any]:
        return self.room.snapshot()

    async def events_after(self, after: int, limit: int) -> list[LogRecord]:
        return await self.store.read_log(after, limit)

    def subscribe(self) -> Subscription:
        return self.bus.subscribe()
