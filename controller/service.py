"""The room controller: the one place where inputs become stored room events.

Every input (a node's event, a nurse's acknowledgement, a deadline falling due) goes through
:meth:`RoomController._commit`: decide against the current state, store durably, apply, publish,
update the room's outputs. One lock serialises it, so decisions never race.

Time comes from an injected clock (epoch milliseconds). Deadlines (escalation, reminders, dwell,
environment durations, node supervision) are computed by the room from stored times; the timer task
sleeps until the next one and calls :meth:`RoomController.tick`. Tests pass ``timers=False`` and a
fake clock, and call ``tick()`` themselves after moving the clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

from .bus import EventBus, Subscription
from .store.history import ReadingsHistory, Retention
from .room.config import RoomConfig
from .model import Heartbeat, Hello, NodeEvent, Reading, wall_ms
from .room import BATTERY_MEASURE, CancelAtOrigin, ClearsItself, Room
from .room.supervision import MAPPED_KINDS
from .store import LogEntry, LogRecord, SeqMark, Store

log = logging.getLogger("smartroom.controller")

READING_FLUSH_S = 0.1       # readings are batched: one fsync per 100 ms, not one per reading
READING_BATCH_MAX = 2000    # flush early when this many are waiting
OFFLINE_GRACE_MS = 1000     # network jitter allowance on top of the missed heartbeat intervals
BATTERY_HISTORY_MS = 60_000  # heartbeat battery voltage goes into the readings history once a minute
HISTORY_MAINTAIN_S = 3600.0  # roll up and expire readings hourly: raw then holds raw_days + at most 1 h
TIMER_IDLE_S = 60.0         # with nothing due, the timer task still looks this often

# Wire measure -> (API measure, divisor). Units live in the names on both sides.
MEASURES = {"temp_mdegc": ("temp_c", 1000), "rh_mpct": ("rh_pct", 1000), "co2_ppm": ("co2_ppm", 1),
            "batt_mv": ("batt_v", 1000), "noise_cdb": ("noise_db", 100), "dp_mpa": ("pressure_pa", 1000)}


class RoomController:
    def __init__(self, config: RoomConfig, keys: dict[str, bytes], db_path: Path,
                 *, clock: Callable[[], int] = wall_ms, timers: bool = True,
                 retention: Retention = Retention()) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        self.store = Store(db_path)
        self.history = ReadingsHistory(self.store, retention)
        self.room = Room(config)
        self.bus = EventBus()
        self.marks: dict[str, SeqMark] = {}
        self._stored_event_no: dict[str, tuple[int, int]] = {}  # node -> (boot, highest e stored), once asked
        self._lock = asyncio.Lock()
        self._output_listeners: list[Callable[[], None]] = []
        self._readings: list[tuple[int, str, str, float]] = []
        self._reading_marks: dict[str, SeqMark] = {}
        self._reading_wakeup = asyncio.Event()
        self._timer_wakeup = asyncio.Event()
        self._run_timers = timers
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[object]] = set()
        self._local_boot = max(1, wall_ms() // 1000 % 2**31)  # Pi-attached sources: one "boot" per start
        self._local_seq = 0
        self._battery_stored_ms: dict[str, int] = {}
        self.readings_stored = 0
        self.unmapped_inputs: Counter[tuple[str, str]] = Counter()  # (node, input) -> events the room file gives no meaning

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
        # Connections did not survive the restart: nodes the log says are online get the usual
        # supervision time from now to check in again before they count as offline.
        now = self.clock()
        for status in self.room.nodes.values():
            if status.online:
                status.last_seen_ms = now
        self.room.started_ms = now  # configured nodes that never checked in are alarmed from here
        await self._commit(self.room.decide_config_checked)  # alarms the room file has fixed since
        log.info("room %s: rebuilt from %d log records, %d active calls", self.config.room_id, after,
                 len(self.room.calls))
        self._tasks = [asyncio.create_task(self._reading_writer(), name="reading-writer")]
        if self._run_timers:
            self._tasks.append(asyncio.create_task(self._timer_loop(), name="room-timers"))
            self._tasks.append(asyncio.create_task(self._history_loop(), name="readings-history"))

    async def stop(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
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
            now = max(self.clock(), self.room.last_ms)  # the log's times never go back, even if the clock does
            entries = decide(now)
            if not entries and seq_mark is None:
                return []
            records = await self.store.append(now, entries, node_event=node_event, seq_mark=seq_mark)
            self.room.apply_all(records)
        self.bus.publish(records)
        self._timer_wakeup.set()
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
        self.room.note_connected(hello.node)
        await self._commit(lambda now: self.room.decide_online(hello, peer, now), seq_mark=mark)

    async def is_duplicate(self, ev: NodeEvent) -> bool:
        """Is (node, boot, e) stored already? A number above the boot's highest stored one is new
        without asking the store (a node numbers its events in the order they happen)."""
        known = self._stored_event_no.get(ev.node)
        if known is None or known[0] != ev.boot:
            known = self._stored_event_no[ev.node] = (ev.boot, await self.store.max_event_no(ev.node, ev.boot))
        if ev.e > known[1]:
            return False
        return await self.store.has_node_event(ev.node, ev.boot, ev.e)

    async def node_event(self, ev: NodeEvent) -> list[LogRecord]:
        """Store a node's event; when this returns it is durable and may be acked."""
        mark = self.accept_mark(ev.node, ev.boot, ev.seq)
        self.room.note_seen(ev.node, self.clock())
        self._count_unmapped(ev)
        records = await self._commit(lambda now: self.room.decide_node_event(ev, now)
                                     + self.room.decide_delivers(ev.node, "an event was stored", now),
                                     node_event=(ev.node, ev.boot, ev.e), seq_mark=mark)
        known = self._stored_event_no.get(ev.node)
        if known is not None and known[0] == ev.boot and ev.e > known[1]:
            self._stored_event_no[ev.node] = (ev.boot, ev.e)
        return records

    def _count_unmapped(self, ev: NodeEvent) -> None:
        if ev.kind in MAPPED_KINDS and self.config.meaning(ev.node, ev.src) is None:
            self.unmapped_inputs[(ev.node, ev.src)] += 1
            log.warning("node=%s input=%s: the room file gives this input no meaning (technical alarm)",
                        ev.node, ev.src)

    # ------------------------------------------------------------------ link supervision (from the gateway)
    def node_connection_lost(self, node: str) -> None:
        """The node's live connection ended: offline after the grace unless it is welcomed again."""
        self.room.note_connection_lost(node, self.clock())
        self._timer_wakeup.set()  # a new deadline

    async def node_cannot_deliver(self, node: str, detail: Mapping[str, Any]) -> list[LogRecord]:
        """The gateway saw the node's sessions end rejected, one after another, with nothing delivered."""
        return await self._commit(lambda now: self.room.decide_cannot_deliver(node, dict(detail), now))

    async def node_delivers(self, node: str, how: str) -> list[LogRecord]:
        """The node showed it delivers (e.g. a heartbeat with nothing queued): "cannot deliver" clears."""
        if not self.room.cannot_deliver(node):
            return []
        return await self._commit(lambda now: self.room.decide_delivers(node, how, now))

    async def node_heartbeat(self, hb: Heartbeat) -> None:
        mark = self.accept_mark(hb.node, hb.boot, hb.seq)
        self.room.note_heartbeat(hb, self.clock())
        await self.store.save_mark(mark)
        if hb.batt_mv:
            batt_v = hb.batt_mv / 1000
            self._check_reading(hb.node, BATTERY_MEASURE, batt_v)
            now = self.clock()
            if now - self._battery_stored_ms.get(hb.node, -BATTERY_HISTORY_MS) >= BATTERY_HISTORY_MS:
                self._battery_stored_ms[hb.node] = now  # a battery chart, without a row per heartbeat
                self._readings.append((now, hb.node, BATTERY_MEASURE, batt_v))

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
            self._check_reading(reading.node, name, value)
        if len(self._readings) >= READING_BATCH_MAX:
            self._reading_wakeup.set()

    def _check_reading(self, node: str, measure: str, value: float) -> None:
        """Most readings change nothing; the few that cross a limit are decided again and stored."""
        if not self.room.decide_reading(node, measure, value, self.clock()):
            return
        task = asyncio.create_task(self._commit(lambda now: self.room.decide_reading(node, measure, value, now)))
        self._pending.add(task)
        task.add_done_callback(self._reading_committed)

    async def settle(self) -> None:
        """Wait until alarm changes caused by readings already received are stored."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _reading_committed(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not store a reading's alarm change", exc_info=task.exception())

    async def _history_loop(self) -> None:
        while True:
            try:
                report = await self.history.maintain(self.clock())
                if report.transactions:
                    log.info("readings history: %d rolled up, %d raw and %d rollups expired (%d transactions)",
                             report.rolled_up, report.raw_expired, report.rollups_expired, report.transactions)
            except Exception:  # a full SD card must not stop call handling; the next round retries
                log.exception("readings history: maintenance failed")
            await asyncio.sleep(HISTORY_MAINTAIN_S)

    async def _reading_writer(self) -> None:
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races the wakeup
                async with asyncio.timeout(READING_FLUSH_S):
                    await self._reading_wakeup.wait()
            except TimeoutError:
                pass
            self._reading_wakeup.clear()
            await self._flush_readings()

    async def flush_readings(self) -> None:
        """Write the readings waiting for the next batch now."""
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

    # ------------------------------------------------------------------ Pi-attached sources
    # Wired inputs (sensors/wired.py), Bluetooth sensors (sensors/ble.py) and the voice pipeline
    # run in this process. Each is a node of the room file with transport "gpio", "ble" or
    # "voice"; its events take the same decide -> store -> apply path as a firmware node's.
    def _local_node(self, node: str, transport: str | None = None) -> None:
        cfg = self.config.nodes.get(node)
        if cfg is None or cfg.transport == "tcp" or (transport is not None and cfg.transport != transport):
            raise ValueError(f"node {node!r} is not a Pi-attached node of this room"
                             + (f" with transport {transport!r}" if transport else ""))

    async def local_online(self, node: str, fw: str, hw: str, caps: tuple[str, ...] = ()) -> None:
        """A Pi-attached source is working (at start, or again after a failure)."""
        self._local_node(node)
        status = self.room.nodes.get(node)
        if status is not None and status.online and status.fw == fw and status.hw == hw:
            self.room.note_seen(node, self.clock())
            return
        hello = Hello(node, self._local_boot, 0, fw, hw, tuple(caps), self.config.heartbeat_ms, 0)
        await self._commit(lambda now: self.room.decide_online(hello, "local", now))

    async def local_event(self, node: str, kind: str, src: str, val: int = 1,
                          detail: Mapping[str, Any] | None = None) -> list[LogRecord]:
        """An input from a Pi-attached source; stored (and so never lost) when this returns."""
        self._local_node(node)
        self._local_seq += 1
        ev = NodeEvent(node, self._local_boot, self._local_seq, self._local_seq, kind, src, val, 0, dict(detail or {}))
        self.room.note_seen(node, self.clock())
        self._count_unmapped(ev)
        return await self._commit(lambda now: self.room.decide_node_event(ev, now),
                                  node_event=(node, self._local_boot, self._local_seq))

    def local_reading(self, node: str, measures: Mapping[str, float]) -> None:
        """Readings in API units (temp_c, rh_pct, co2_ppm, batt_v, ...) from a Pi-attached source."""
        self._local_node(node)
        now = self.clock()
        self.room.note_seen(node, now)
        for name, value in measures.items():
            self._readings.append((now, node, name, float(value)))
            self.room.note_reading(name, float(value), node, now)
            self._check_reading(node, name, float(value))

    def local_seen(self, node: str, *, rssi: int | None = None, batt_v: float | None = None) -> None:
        """A Pi-attached source checked in (e.g. a BLE advertisement arrived)."""
        self._local_node(node)
        self.room.note_seen(node, self.clock())
        status = self.room.nodes[node]
        if rssi is not None:
            status.rssi = rssi
        if batt_v is not None:
            status.batt_mv = int(batt_v * 1000)
            self._check_reading(node, BATTERY_MEASURE, batt_v)

    async def system_fault(self, src: str, faulty: bool, detail: Mapping[str, Any] | None = None) -> None:
        """A part of the controller (e.g. the Bluetooth adapter) failed or recovered: a technical alarm."""
        await self._commit(lambda now: self.room.decide_system_fault(src, faulty, dict(detail or {}), now))

    # ------------------------------------------------------------------ time
    @property
    def offline_after_ms(self) -> int:
        return self.config.supervision.missed_heartbeats * self.config.heartbeat_ms + OFFLINE_GRACE_MS

    async def tick(self) -> list[LogRecord]:
        """Store everything that has fallen due by now (a chain of deadlines, one link per round)."""
        done: list[LogRecord] = []
        while records := await self._commit(lambda now: self.room.decide_tick(now, self.offline_after_ms)):
            done += records
        self._outputs_changed()  # a tone silence may have run out
        return done

    async def _timer_loop(self) -> None:
        while True:
            due = self.room.next_due_ms(self.clock(), self.offline_after_ms)
            wait_s = TIMER_IDLE_S if due is None else min(TIMER_IDLE_S, max(0.0, (due - self.clock()) / 1000))
            self._timer_wakeup.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._timer_wakeup.wait()
                continue  # the state changed: the next deadline may have moved
            except TimeoutError:
                pass
            try:
                await self.tick()
            except Exception:  # a store failure must not stop the timers; the next round retries
                log.exception("room timers: could not store what fell due")
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ nurse actions (from the API)
    def _call_json(self, call_id: str) -> dict[str, Any]:
        call = self.room.calls.get(call_id)
        if call is None:
            return {"id": call_id, "state": "cleared"}
        return call.to_json(self.room.call_due_ms(call), self.config.escalation_levels)

    async def acknowledge(self, call_id: str, by: str) -> dict[str, Any]:
        await self._commit(lambda now: self.room.decide_ack(call_id, by, now))
        return self._call_json(call_id)

    async def clear(self, call_id: str, by: str) -> dict[str, Any]:
        """A remote clear; refused (and the refusal logged) for calls that must be cancelled in the room."""
        records = await self._commit(lambda now: self.room.decide_clear(call_id, by, now))
        refused = [r for r in records if r.kind == "call.clear_refused"]
        if refused:
            error = CancelAtOrigin if self.room.calls[call_id].ctype.cancel_at_origin else ClearsItself
            raise error(refused[0].data["reason"])
        return self._call_json(call_id)

    async def annunciated(self, call_id: str, endpoint: str) -> list[LogRecord]:
        return await self._commit(lambda now: self.room.decide_annunciated(call_id, endpoint, now))

    async def set_fall_risk(self, bed: str, enabled: bool, by: str) -> dict[str, Any]:
        await self._commit(lambda now: self.room.decide_fall_risk(bed, enabled, by, now))
        return {"bed": bed, "fall_risk": self.room.fall_risk[bed]}

    async def silence_tone(self, by: str) -> dict[str, Any]:
        await self._commit(lambda now: self.room.decide_silence(by, now))
        return self.room.outputs(self.clock()).to_json()

    # ------------------------------------------------------------------ reads
    def snapshot(self) -> dict[str, Any]:
        return self.room.snapshot(self.clock())

    def outputs(self):  # -> RoomOutputs
        return self.room.outputs(self.clock())

    async def call_history(self, from_ms: int) -> list[LogRecord]:
        return await self.store.read_kinds("call.", from_ms)

    async def events_after(self, after: int, limit: int) -> list[LogRecord]:
        return await self.store.read_log(after, limit)

    def subscribe(self) -> Subscription:
        return self.bus.subscribe()
