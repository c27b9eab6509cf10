"""The room controller: the one place where inputs become stored room events.

Every input (a node's event, a nurse's acknowledgement, a deadline falling due) goes through
:meth:`RoomController._commit`: decide against the current state, store durably, apply, publish,
update the room's outputs. One lock serialises it, so decisions never race.

Time comes from an injected clock (epoch milliseconds). Deadlines (escalation, reminders, dwell,
environment durations, node supervision) are computed by the room from stored times; the timer task
sleeps until the next one and calls :meth:`RoomController.tick`. Tests pass ``timers=False`` and a
fake clock, and call ``tick()`` themselves after moving the clock.

A storage failure (disk full, I/O error) cannot be stored when it happens: it is raised as a
technical alarm held in memory (shown in the snapshot, health, metrics and pages, and on the dome
light and tone like any alarm), and stored with its end once the database can be written again.
Readings stop being stored below a free-space floor, so they never take the room events' disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

from .bus import EventBus, Subscription
from .store.history import ReadingsHistory, Retention
from .room.config import RoomConfig, input_warnings
from .model import Heartbeat, Hello, NodeEvent, Reading, wall_ms
from .room import BATTERY_MEASURE, CancelAtOrigin, ClearsItself, Room
from .room.hospital import Patient
from .room.supervision import MAPPED_KINDS
from .security.files import others_may_read
from .store import LogEntry, LogRecord, SeqMark, StorageError, Store
from .store.health import READINGS_MIN_FREE_BYTES, StorageStatus

log = logging.getLogger("smartroom.controller")

READING_FLUSH_S = 0.1       # readings are batched: one fsync per 100 ms, not one per reading
READING_BATCH_MAX = 2000    # flush early when this many are waiting
OFFLINE_GRACE_MS = 1000     # network jitter allowance on top of the missed heartbeat intervals
BATTERY_HISTORY_MS = 60_000  # heartbeat battery voltage goes into the readings history once a minute
HISTORY_MAINTAIN_S = 3600.0  # roll up and expire readings hourly: raw then holds raw_days + at most 1 h
TIMER_IDLE_S = 60.0         # with nothing due, the timer task still looks this often
STORAGE_RETRY_S = 5.0       # while the database cannot be written, try to store the alarm (a probe) this often
STORAGE_SOURCE = "storage"  # the storage alarm: a system_fault from "system:storage"
DISK_SPACE_SOURCE = "disk_space"  # readings paused below the floor: a system_fault from "system:disk_space"
WAITING_MAX = 32            # inputs remembered as "could not be stored" while the storage fails

# Wire measure -> (API measure, divisor). Units live in the names on both sides.
MEASURES = {"temp_mdegc": ("temp_c", 1000), "rh_mpct": ("rh_pct", 1000), "co2_ppm": ("co2_ppm", 1),
            "batt_mv": ("batt_v", 1000), "noise_cdb": ("noise_db", 100), "dp_mpa": ("pressure_pa", 1000)}


class RoomController:
    def __init__(self, config: RoomConfig, keys: dict[str, bytes], db_path: Path,
                 *, clock: Callable[[], int] = wall_ms, timers: bool = True,
                 retention: Retention = Retention(),
                 readings_min_free_bytes: int = READINGS_MIN_FREE_BYTES) -> None:
        self.config = config
        self.keys = keys
        self.keys_path: Path | None = None  # the node key file, when read from one: a health reason if others may read it
        self.clock = clock
        self.store = Store(db_path)
        self.store.health_listeners.append(self._storage_health)
        self.storage = StorageStatus(readings_min_free_bytes)
        self._held: list[LogEntry] = []   # the storage alarm's raise, shown but not yet stored
        self._storage_wakeup = asyncio.Event()
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
        self._inputs_checked: dict[str, int] = {}  # node -> the boot whose heartbeat's inputs were checked
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
        try:
            await self._commit(self.room.decide_config_checked)  # alarms the room file has fixed since
        except StorageError as exc:  # they stay up (still true to the log); the storage alarm says why
            log.warning("could not clear alarms the room file has fixed: %s", exc)
        log.info("room %s: rebuilt from %d log records, %d active calls", self.config.room_id, after,
                 len(self.room.calls))
        disk_alarm = self.room.call_from(None, f"system:{DISK_SPACE_SOURCE}", "system_fault")
        if disk_alarm is not None:  # readings were paused before the restart: resume (and clear) once there is room
            self.storage.readings_paused_since_ms = disk_alarm.raised_at_ms
        self._room_for_readings()  # health is right from the start, readings or not
        self._tasks = [asyncio.create_task(self._reading_writer(), name="reading-writer")]
        if self._run_timers:
            self._tasks.append(asyncio.create_task(self._timer_loop(), name="room-timers"))
            self._tasks.append(asyncio.create_task(self._storage_loop(), name="storage-watch"))
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
            # A storage alarm shown but not stored goes first: the log tells the failure before what followed.
            alarm = await self._store_storage_alarm(now) if self._held else []
            entries = decide(now)
            if not entries and seq_mark is None and not alarm:
                return []
            records = []
            if entries or seq_mark is not None:
                records = await self.store.append(now, entries, node_event=node_event, seq_mark=seq_mark)
                self.room.apply_all(records)
        self.bus.publish(alarm + records)
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
        self.room.note_seen(hello.node, self.clock())  # a reconnect of an online node logs no row: its check-in counts
        try:
            await self._commit(lambda now: self.room.decide_online(hello, peer, now), seq_mark=mark)
        except StorageError as exc:
            # The session goes on unrecorded, so the node can offer what it holds: each event is
            # refused (not acked, so kept and resent) and named in the storage alarm as waiting.
            log.debug("node=%s online, not recorded: %s", hello.node, exc)

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
        try:
            records = await self._commit(lambda now: self.room.decide_node_event(ev, now)
                                         + self.room.decide_delivers(ev.node, "an event was stored", now),
                                         node_event=(ev.node, ev.boot, ev.e), seq_mark=mark)
        except StorageError:
            self._not_stored(ev.node, ev.src)  # not acked: the node keeps it and resends
            raise
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
        if hb.state and self._inputs_checked.get(hb.node) != hb.boot:
            await self._check_inputs(hb)
        try:
            await self.store.save_mark(mark)
        except StorageError as exc:  # liveness needs no disk: the mark is kept in memory and stored later
            log.debug("node=%s heartbeat mark not stored: %s", hb.node, exc)
        if hb.batt_mv:
            batt_v = hb.batt_mv / 1000
            self._check_reading(hb.node, BATTERY_MEASURE, batt_v)
            now = self.clock()
            if now - self._battery_stored_ms.get(hb.node, -BATTERY_HISTORY_MS) >= BATTERY_HISTORY_MS:
                self._battery_stored_ms[hb.node] = now  # a battery chart, without a row per heartbeat
                self._readings.append((now, hb.node, BATTERY_MEASURE, batt_v))

    async def _check_inputs(self, hb: Heartbeat) -> None:
        """Once a boot: the inputs the node's heartbeat names against the room file (``smartroom check``'s
        warnings, logged); an input the room file does not map is the "input not in the room file" alarm."""
        for warning in input_warnings(self.config, hb.node, hb.state):
            log.warning("node=%s (its heartbeat): %s", hb.node, warning)
        try:
            await self._commit(lambda now: self.room.decide_inputs_reported(hb.node, sorted(hb.state), now))
        except StorageError as exc:  # tried again at the next heartbeat; the storage alarm is up
            log.debug("node=%s input check not stored: %s", hb.node, exc)
            return
        self._inputs_checked[hb.node] = hb.boot

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
        self._spawn(self._commit(lambda now: self.room.decide_reading(node, measure, value, now)))

    def _spawn(self, work: Any) -> None:
        """Store an alarm change in the background; :meth:`settle` waits for it."""
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._reading_committed)

    async def settle(self) -> None:
        """Wait until alarm changes caused by readings already received are stored."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _reading_committed(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if isinstance(task.exception(), StorageError):  # the storage alarm says so, once
            log.debug("could not store an alarm change: %s", task.exception())
        else:
            log.error("could not store an alarm change", exc_info=task.exception())

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
        if not self._room_for_readings():
            self.storage.readings_not_stored["disk_floor"] += len(rows)
            rows = []  # the sequence marks are still kept: a replayed reading stays refused after a restart
        try:
            await self.store.add_readings(rows, marks)
            self.readings_stored += len(rows)
        except StorageError as exc:  # call handling goes on; the storage alarm is the loud part
            self.storage.readings_not_stored["storage_failed"] += len(rows)
            log.debug("could not store %d readings: %s", len(rows), exc)
        except Exception:  # a bug: call handling must still go on; the loss is logged
            self.storage.readings_not_stored["error"] += len(rows)
            log.exception("could not store %d readings", len(rows))

    def _room_for_readings(self) -> bool:
        """Whether the database's disk has room for readings above the floor kept for events."""
        st = self.storage
        try:
            st.free_bytes = free = self.store.free_bytes()
        except OSError:  # cannot tell: try, and let the write say
            return True
        if st.readings_paused_since_ms is None and free < st.min_free_bytes:
            st.readings_paused_since_ms = self.clock()
            log.warning("storage: %d bytes free, below the %d kept for events: readings are not stored until "
                        "%d are free", free, st.min_free_bytes, st.resume_bytes)
            self._spawn(self.system_fault(DISK_SPACE_SOURCE, True, {"free_bytes": free,
                                                                    "min_free_bytes": st.min_free_bytes}))
            self.bus.notify()
        elif st.readings_paused_since_ms is not None and free >= st.resume_bytes:
            st.readings_paused_since_ms = None
            log.warning("storage: %d bytes free again: readings are stored again", free)
            self._spawn(self.system_fault(DISK_SPACE_SOURCE, False, {"free_bytes": free}))
            self.bus.notify()
        return st.readings_paused_since_ms is None

    # ------------------------------------------------------------------ storage failure
    def _storage_health(self, error: StorageError | None) -> None:
        """The store's listener: every failed write, and the first write that works after one."""
        st = self.storage
        if error is not None:
            st.write_failures += 1
            st.error = str(error)
            if st.failing_since_ms is not None:
                return
            st.failing_since_ms = self.clock()
            log.error("storage: the room database cannot be written (%s): raising a technical alarm", error)
        elif st.failing_since_ms is not None:
            log.warning("storage: the room database can be written again (%d failed writes)", st.write_failures)
            st.failing_since_ms = None
        self._storage_wakeup.set()  # on a change only: the probe's own failures must not spin the loop

    def _not_stored(self, node: str, src: str) -> None:
        if len(self.storage.waiting) < WAITING_MAX:
            self.storage.waiting[f"{node}/{src}"] = self.config.meaning(node, src) or "unmapped input"

    async def _storage_loop(self) -> None:
        while True:
            await self._storage_wakeup.wait()
            self._storage_wakeup.clear()
            while await self.check_storage():
                try:  # a write elsewhere may show the storage working again before the probe does
                    async with asyncio.timeout(STORAGE_RETRY_S):
                        await self._storage_wakeup.wait()
                except TimeoutError:
                    pass
                self._storage_wakeup.clear()

    async def check_storage(self) -> bool:
        """Raise the storage alarm in memory while writes fail; store it and its end once one works.

        Returns True while the alarm is up (the storage task calls this again every few seconds: the
        attempt to store the alarm is the probe that finds the storage working again)."""
        shown: list[LogRecord] = []
        records: list[LogRecord] = []
        async with self._lock:
            now = max(self.clock(), self.room.last_ms)
            st = self.storage
            if st.failing_since_ms is not None and self._storage_alarm() is None:
                detail = {"error": st.error, "since_ms": st.failing_since_ms}
                self._held = self.room.decide_system_fault(STORAGE_SOURCE, True, detail, now)
                shown = [LogRecord(0, now, e.kind, e.data) for e in self._held]  # shown now, stored later
                self.room.apply_all(shown)
            if self._storage_alarm() is None:
                return False
            try:
                records = await self._store_storage_alarm(now)
            except StorageError:
                pass
        if shown:
            self.bus.notify()
        if records:
            self.bus.publish(records)
        if shown or records:
            self._timer_wakeup.set()
            self._outputs_changed()
        return not records

    def _storage_alarm(self):  # -> Call | None
        return self.room.call_from(None, f"system:{STORAGE_SOURCE}", "system_fault")

    async def _store_storage_alarm(self, now: int) -> list[LogRecord]:
        """Under the lock: store the held alarm (as shown, with what it saw) and its end, at once.
        Raises StorageError while the database still cannot be written."""
        alarm = self._storage_alarm()
        if alarm is None:
            self._held = []
            return []
        st = self.storage
        summary = {"write_failures": st.write_failures, "inputs_waiting": dict(sorted(st.waiting.items()))}
        alarm.detail.update(summary)
        held = [LogEntry(e.kind, {**e.data, "detail": {**e.data["detail"], **summary}}) if e.kind == "call.raised"
                else e for e in self._held]
        records = await self.store.append(now, held + self.room.decide_system_fault(STORAGE_SOURCE, False, {}, now))
        self._held = []
        st.waiting.clear()
        self.room.apply_all(records)
        log.warning("storage: the alarm and its end are stored (%d records)", len(records))
        return records

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
        try:
            return await self._commit(lambda now: self.room.decide_node_event(ev, now),
                                      node_event=(node, self._local_boot, self._local_seq))
        except StorageError:
            self._not_stored(node, src)  # the sensors' outbox retries it
            raise

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
            except StorageError as exc:  # the storage alarm is up; the next round retries
                log.debug("room timers: could not store what fell due: %s", exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop the timers; the next round retries
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

    async def shown(self, call_ids: list[str], screen: str) -> list[LogRecord]:
        """A nurse screen's receipt: it displayed these calls. Returns the annunciations it caused
        (a call's first receipt) and the "not displayed" alarm's clearing when that resolves it."""
        return await self._commit(lambda now: self.room.decide_shown(call_ids, screen, now))

    async def annunciated(self, call_id: str, screen: str) -> list[LogRecord]:
        return await self.shown([call_id], screen)

    async def set_fall_risk(self, bed: str, enabled: bool, by: str) -> dict[str, Any]:
        await self._commit(lambda now: self.room.decide_fall_risk(bed, enabled, by, now))
        return {"bed": bed, "fall_risk": self.room.fall_risk[bed]}

    async def silence_tone(self, by: str) -> dict[str, Any]:
        await self._commit(lambda now: self.room.decide_silence(by, now))
        return self.room.outputs(self.clock()).to_json()

    # ------------------------------------------------------------------ the hospital's systems (integrations/)
    async def admission(self, bed: str, patient: Patient | None, reason: str, by: str,
                        control_id: str = "") -> list[LogRecord]:
        """Admissions (HL7 ADT): set or clear the patient in a bed; stored when this returns."""
        return await self._commit(lambda now: self.room.decide_patient(bed, patient, reason, by, control_id, now))

    async def call_delivery(self, call_id: str, status: str, by: str, control_id: str = "") -> list[LogRecord]:
        """The alarm manager's word on a call (accepted, rejected, delivered, read) onto its timeline."""
        return await self._commit(lambda now: self.room.decide_delivery(call_id, status, by, now, control_id))

    # ------------------------------------------------------------------ reads
    def degraded(self) -> list[dict[str, Any]]:
        """Why the room cannot promise that calls reach a nurse right now (empty: it can). Each entry
        is {"reason": code, "message": text} (and "since_ms" where known); /api/v1/health reports them."""
        reasons: list[dict[str, Any]] = [*self.storage.reasons()]
        if self.keys_path is not None and (loose := others_may_read(self.keys_path)) is not None:
            # anyone who can read the keys can forge any node's frames: an in-room cancel clears real calls
            reasons.append({"reason": "keys_readable", "message": loose})
        late = self.room.not_displayed(self.clock())
        alarm = self.room.display_alarm()
        if late or alarm is not None:
            count = len(late) if late or alarm is None else len(alarm.detail.get("calls", ()))
            reasons.append({"reason": "not_displayed", "message": (
                f"{count} active call(s) not shown on any nurse screen within "
                f"{self.config.timers.not_displayed_s:g} s")})
        return reasons

    def snapshot(self) -> dict[str, Any]:
        return {**self.room.snapshot(self.clock()), "storage": self.storage.to_json()}

    def outputs(self):  # -> RoomOutputs
        return self.room.outputs(self.clock())

    async def call_history(self, from_ms: int) -> list[LogRecord]:
        return await self.store.read_kinds("call.", from_ms)

    async def events_after(self, after: int, limit: int) -> list[LogRecord]:
        return await self.store.read_log(after, limit)

    def subscribe(self) -> Subscription:
        return self.bus.subscribe()
