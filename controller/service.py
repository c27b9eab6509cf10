"""The room controller: the one place where inputs become stored room events.

Every input (a node's event, a nurse's acknowledgement, a deadline falling due) goes through
:meth:`RoomController._commit`: decide against the current state, store durably, publish, update
the room's outputs. Inputs that arrive together are committed as a group (``_commit_group``): one
task decides them one after another, each against the state its predecessors left, stores all
their records in one transaction with one fsync, and only then answers each of them (the gateway
acks a node's event then). If that transaction fails, every input of the group fails, nothing of
it is published, and the state is rebuilt from the stored log: what is visible is what is stored
(and the storage alarm below, which says that something is not).

The state is rebuilt on start from the newest checkpoint (taken every ``CHECKPOINT_EVERY``
records) and the log after it, so a start takes as long whatever the log's length.

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
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
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
from .store.events import data_json
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
CHECKPOINT_EVERY = 10_000   # log records between checkpoints: a start replays at most this many (0.1-0.5 s)
REPLAY_BATCH = 5000         # log records read per store round trip while rebuilding

# Wire measure -> (API measure, divisor). Units live in the names on both sides.
MEASURES = {"temp_mdegc": ("temp_c", 1000), "rh_mpct": ("rh_pct", 1000), "co2_ppm": ("co2_ppm", 1),
            "batt_mv": ("batt_v", 1000), "noise_cdb": ("noise_db", 100), "dp_mpa": ("pressure_pa", 1000)}


@dataclass(slots=True)
class _Input:
    """One input waiting for the next group commit."""

    decide: Callable[[int], list[LogEntry]]
    node_event: tuple[str, int, int] | None
    seq_mark: SeqMark | None
    done: asyncio.Future[list[LogRecord]]


class RoomController:
    def __init__(self, config: RoomConfig, keys: dict[str, bytes], db_path: Path,
                 *, clock: Callable[[], int] = wall_ms, timers: bool = True,
                 retention: Retention = Retention(),
                 readings_min_free_bytes: int = READINGS_MIN_FREE_BYTES,
                 checkpoint_every: int = CHECKPOINT_EVERY) -> None:
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
        self._lock = asyncio.Lock()  # a group commit, or the storage alarm's check: one at a time
        self.cursor = 0  # the last stored (and published) log id; the room's own may run ahead while a group commits
        self._queue: list[_Input] = []
        self._committer: asyncio.Task[None] | None = None
        self._unsettled: dict[tuple[str, int, int], asyncio.Future[list[LogRecord]]] = {}
        self._state_stale = False  # a failed group left state that is not stored: rebuild before deciding
        self._checkpoint_every = checkpoint_every
        self._checkpoint_cursor = 0
        self.replayed = 0  # log records applied on top of the checkpoint at the last start
        self.rebuilt = ""  # how the last start rebuilt the state, for the operator
        self._output_listeners: list[Callable[[], None]] = []
        self._readings: list[tuple[int, str, str, float]] = []
        self._reading_marks: dict[str, SeqMark] = {}
        self._reading_wakeup = asyncio.Event()
        self._timer_wakeup = asyncio.Event()
        self._run_timers = timers
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self._local_boot = max(1, wall_ms() // 1000 % 2**31)  # Pi-attached sources: one "boot" per start
        self._local_seq = 0
        self._battery_stored_ms: dict[str, int] = {}
        self.readings_stored = 0
        self._inputs_checked: dict[str, int] = {}  # node -> the boot whose heartbeat's inputs were checked
        # node -> True while it waits for adoption (link/lifecycle.py sets this): its inputs have no
        # meaning yet by design and it sends no events, so they are not "input not in the room file"
        self.adoption_pending: Callable[[str], bool] = lambda node: False
        self.unmapped_inputs: Counter[tuple[str, str]] = Counter()  # (node, input) -> events the room file gives no meaning

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.store.open()
        t0 = time.perf_counter()
        from_checkpoint = await self._rebuild()
        self.marks = await self.store.load_marks()
        for measure, (ts_ms, node, value) in (await self.store.latest_readings()).items():
            self.room.note_reading(measure, value, node, ts_ms)
        # Connections did not survive the restart: nodes the log says are online get the usual
        # supervision time from now to check in again before they count as offline.
        now = self.clock()
        for status in self.room.nodes.values():
            if status.online:
                status.last_seen_ms = now
                status.connection_lost_ms = None  # (a checkpoint may have kept one from before the restart)
        self.room.started_ms = now  # configured nodes that never checked in are alarmed from here
        self.rebuilt = (f"state rebuilt to log record {self.cursor} from "
                        f"{f'the checkpoint at {from_checkpoint}' if from_checkpoint else 'nothing'} and "
                        f"{self.replayed} records in {time.perf_counter() - t0:.2f} s")
        log.info("room %s: %s, %d active calls", self.config.room_id, self.rebuilt, len(self.room.calls))
        if self.replayed >= self._checkpoint_every:
            await self._checkpoint()
        try:
            await self._commit(self.room.decide_config_checked)  # alarms the room file has fixed since
        except StorageError as exc:  # they stay up (still true to the log); the storage alarm says why
            log.warning("could not clear alarms the room file has fixed: %s", exc)
        disk_alarm = self.room.call_from(None, f"system:{DISK_SPACE_SOURCE}", "system_fault")
        if disk_alarm is not None:  # readings were paused before the restart: resume (and clear) once there is room
            self.storage.readings_paused_since_ms = disk_alarm.raised_at_ms
        self._room_for_readings()  # health is right from the start, readings or not
        self._tasks = [asyncio.create_task(self._reading_writer(), name="reading-writer")]
        if self._run_timers:
            self._tasks.append(asyncio.create_task(self._timer_loop(), name="room-timers"))
            self._tasks.append(asyncio.create_task(self._storage_loop(), name="storage-watch"))
            self._tasks.append(asyncio.create_task(self._history_loop(), name="readings-history"))

    async def _rebuild(self, *, keep_live: bool = False) -> int:
        """The room's state from the store: the newest usable checkpoint, then the log after it.
        Built aside and taken over only when complete; returns the checkpoint's cursor (0: none)."""
        room = Room(self.config)
        start = 0
        for cursor, state in await self.store.checkpoints(room.state_key()):
            try:
                room.load_state(json.loads(state))
                start = cursor
                break
            except (ValueError, KeyError, TypeError):  # unreadable: an older one, or the whole log
                log.exception("checkpoint at log record %d cannot be loaded; trying an older one", cursor)
                room = Room(self.config)
        after, replayed = start, 0
        while batch := await self.store.read_log(after, REPLAY_BATCH):
            room.apply_all(batch)
            after = batch[-1].id
            replayed += len(batch)
        live = self.room.live_state() if keep_live else None
        self.room.take_state(room)
        if live is not None:
            self.room.restore_live(live)
        if self._held:  # the storage alarm is shown before it can be stored: it stays shown
            self.room.apply_all([LogRecord(0, self.room.last_ms, e.kind, e.data) for e in self._held])
        self.cursor = self.room.cursor
        self._checkpoint_cursor = start
        self.replayed = replayed
        self._state_stale = False
        return start

    async def _checkpoint(self) -> None:
        """Store the state as it is now (everything in it is stored: called between group commits)."""
        cursor = self.room.cursor
        if self._held:  # a storage alarm is shown that is not stored yet: not a state of the log
            return
        try:
            state = json.dumps(self.room.state_json(), separators=(",", ":"))
            await self.store.save_checkpoint(cursor, self.room.last_ms, self.room.state_key(), state)
            self._checkpoint_cursor = cursor
        except Exception:  # a missing checkpoint only makes the next start replay more
            log.exception("could not store a checkpoint at log record %d", cursor)
            self._checkpoint_cursor = cursor  # the next try after as many records again, not at once

    async def stop(self) -> None:
        for task in self._tasks:  # no new timer inputs from here on
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        while self._committer is not None and not self._committer.done():
            await asyncio.gather(self._committer, return_exceptions=True)
        if self.room.cursor > self._checkpoint_cursor and not self._state_stale:
            await self._checkpoint()
        await self._flush_readings()
        await self.store.close()

    # ------------------------------------------------------------------ the commit path
    def _submit(self, decide: Callable[[int], list[LogEntry]], node_event: tuple[str, int, int] | None = None,
                seq_mark: SeqMark | None = None) -> asyncio.Future[list[LogRecord]]:
        """Queue an input for the next group commit; the future is its stored records."""
        done: asyncio.Future[list[LogRecord]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Input(decide, node_event, seq_mark, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="group-commit")
        return done

    async def _commit(self, decide: Callable[[int], list[LogEntry]], *, node_event: tuple[str, int, int] | None = None,
                      seq_mark: SeqMark | None = None) -> list[LogRecord]:
        """Decide, store, publish one input; when this returns its records are durable."""
        return await self._submit(decide, node_event, seq_mark)

    async def _commit_queued(self) -> None:
        # What arrives while a group is being stored waits for the next group: under load the
        # groups grow, and the cost of a transaction and its fsync is shared by more inputs.
        while self._queue:
            group, self._queue = self._queue, []
            async with self._lock:
                await self._commit_group(group)

    async def _commit_group(self, group: list[_Input]) -> None:
        if self._state_stale:
            try:
                await self._rebuild(keep_live=True)
            except Exception as exc:  # the store cannot even be read: decide nothing on a state it lacks
                log.exception("cannot rebuild the room from the store; refusing %d input(s)", len(group))
                _fail(group, exc)
                return
        now = max(self.clock(), self.room.last_ms)  # the log's times never go back, even if the clock does
        try:
            # A storage alarm shown but not stored goes first: the log tells the failure before what followed.
            alarm = await self._store_storage_alarm(now) if self._held else []
        except BaseException as exc:  # still failing: nothing of the group was decided, nothing to undo
            _fail(group, exc)
            if not isinstance(exc, Exception):
                raise
            return
        stored: list[tuple[_Input, list[LogRecord]]] = []
        try:
            for item in group:
                try:
                    entries = item.decide(now)
                except Exception as exc:  # a refusal (e.g. no such call) is this input's answer alone
                    if not item.done.done():
                        item.done.set_exception(exc)
                    continue
                if not entries and item.seq_mark is None:
                    if not item.done.done():
                        item.done.set_result([])
                    continue
                first = self.store.reserve_ids(len(entries))
                records = [LogRecord(first + i, now, e.kind, e.data, data_json(e.data)) for i, e in enumerate(entries)]
                self.room.apply_all(records)  # ahead of the store: the next input is decided on it
                stored.append((item, records))
            if stored:
                await self.store.append_group(now, [(records, item.node_event, item.seq_mark)
                                                    for item, records in stored])
        except BaseException as exc:
            # Nothing of the group is stored: none of it may be acked, published or kept.
            self._state_stale = True
            if not isinstance(exc, Exception):
                _fail(group, exc)
                raise
            log.error("group commit of %d input(s) failed (%r); rebuilding the room from the store", len(group), exc)
            try:
                await self._rebuild(keep_live=True)
            except Exception:
                log.exception("cannot rebuild the room from the store; the next group retries")
            _fail(group, exc)  # answered once the room shows only what is stored again
            if alarm:
                self._published(alarm)
            return
        self.cursor = self.room.cursor
        changed = bool(alarm)
        if alarm:
            self.bus.publish(alarm)
        for item, records in stored:
            self.bus.publish(records)
            if not item.done.done():
                item.done.set_result(records)
            changed = changed or self.room.changes_state(records)
        if changed:  # a deadline or an output may have moved
            self._timer_wakeup.set()
            self._outputs_changed()
        if self.room.cursor - self._checkpoint_cursor >= self._checkpoint_every:
            await self._checkpoint()

    def _published(self, records: list[LogRecord]) -> None:
        """Stored records of their own (the storage alarm and its end): out to every stream."""
        self.cursor = max(self.cursor, records[-1].id)
        self.bus.publish(records)
        self._timer_wakeup.set()
        self._outputs_changed()

    def _outputs_changed(self) -> None:
        for listener in self._output_listeners:
            try:
                listener()
            except Exception:  # one failing listener must not stop the others, nor the group commit
                log.exception("an outputs listener failed; the other nodes are still updated")

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
        """Is (node, boot, e) stored already? The boot is the event's own: an earlier one for an event
        kept through a restart (protocol §9). An earlier copy still on its way to the store (a resend
        on a new connection) is waited for first. A number above the boot's highest stored one is new
        without asking the store (a node numbers its events in the order they happen)."""
        boot = ev.event_boot
        earlier = self._unsettled.get((ev.node, boot, ev.e))
        if earlier is not None:
            try:
                await asyncio.shield(earlier)
                return True
            except Exception:  # the earlier copy was not stored: this one is not a duplicate
                return False
        known = self._stored_event_no.get(ev.node)
        if known is None or known[0] != boot:
            known = self._stored_event_no[ev.node] = (boot, await self.store.max_event_no(ev.node, boot))
        if ev.e > known[1]:
            return False
        return await self.store.has_node_event(ev.node, boot, ev.e)

    async def node_event(self, ev: NodeEvent) -> list[LogRecord]:
        """Store a node's event; when this returns it is durable and may be acked."""
        key = (ev.node, ev.event_boot, ev.e)  # the event's own boot: protocol §9
        earlier = self._unsettled.get(key)
        if earlier is not None:  # the same event is already in a group: it is stored once
            self.accept_mark(ev.node, ev.boot, ev.seq)
            return await asyncio.shield(earlier)
        return await self._submit_event(ev, key)

    def new_node_event(self, ev: NodeEvent) -> asyncio.Future[list[LogRecord]] | None:
        """The pipelined :meth:`node_event`: when ``ev`` is known to be new without asking the store
        (a number above its boot's highest stored one, no copy of it in a group), queue it for the
        next group commit and return its future (its stored records; StorageError if it could not
        be stored). None when that takes the store: the caller then uses is_duplicate/node_event."""
        key = (ev.node, ev.event_boot, ev.e)
        known = self._stored_event_no.get(ev.node)
        if known is None or known[0] != ev.event_boot or ev.e <= known[1] or key in self._unsettled:
            return None
        return self._submit_event(ev, key)

    def _submit_event(self, ev: NodeEvent, key: tuple[str, int, int]) -> asyncio.Future[list[LogRecord]]:
        mark = self.accept_mark(ev.node, ev.boot, ev.seq)
        self.room.note_seen(ev.node, self.clock())
        self._count_unmapped(ev)
        room = self.room
        done = self._submit(lambda now: room.decide_node_event(ev, now)
                            + room.decide_delivers(ev.node, "an event was stored", now), key, mark)
        self._unsettled[key] = done
        done.add_done_callback(lambda fut: self._event_settled(ev, key, fut))
        return done

    def _event_settled(self, ev: NodeEvent, key: tuple[str, int, int], done: asyncio.Future[list[LogRecord]]) -> None:
        self._unsettled.pop(key, None)
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            known = self._stored_event_no.get(ev.node)
            if known is not None and known[0] == ev.event_boot and ev.e > known[1]:
                self._stored_event_no[ev.node] = (ev.event_boot, ev.e)
        elif isinstance(exc, StorageError):
            self._not_stored(ev.node, ev.src)  # not acked: the node keeps it and resends

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
        if hb.state and self._inputs_checked.get(hb.node) != hb.boot and not self.adoption_pending(hb.node):
            await self._check_inputs(hb)
        try:
            await self._commit(_nothing, seq_mark=mark)  # the mark rides with the next group commit
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
        """Queue a reading for the next batch write; readings are never acked or resent.

        The readings path (tens of thousands of values a second): per value one row, the latest
        value updated in place, and the limits checked without allocating; only a value outside
        them (or one that may end an alarm) is decided, and stored, as an input of its own."""
        now = self.clock()
        node = reading.node
        self._reading_marks[node] = self.accept_mark(node, reading.boot, reading.seq)
        room = self.room
        room.note_seen(node, now)
        rows = self._readings
        for wire_name, raw in reading.measures.items():
            known = MEASURES.get(wire_name)
            if known is None:
                name, value = wire_name, raw / 1
            else:
                name, value = known[0], raw / known[1]
            rows.append((now, node, name, value))
            room.note_reading(name, value, node, now)
            if room.reading_matters(node, name, value):  # (rarely: _check_reading asks again)
                self._check_reading(node, name, value)
        if len(rows) >= READING_BATCH_MAX:
            self._reading_wakeup.set()

    def _check_reading(self, node: str, measure: str, value: float) -> None:
        """Most readings change nothing; the few that cross a limit are decided again and stored."""
        if not self.room.reading_matters(node, measure, value) or \
                not self.room.decide_reading(node, measure, value, self.clock()):
            return
        self._background(self._submit(lambda now: self.room.decide_reading(node, measure, value, now)))

    def _spawn(self, work: Any) -> None:
        """Store an alarm change in the background; :meth:`settle` waits for it."""
        self._background(asyncio.ensure_future(work))

    def _background(self, done: asyncio.Future[Any]) -> None:
        self._pending.add(done)
        done.add_done_callback(self._reading_committed)

    async def settle(self) -> None:
        """Wait until alarm changes caused by readings already received are stored."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _reading_committed(self, task: asyncio.Future[Any]) -> None:
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
        key = f"{node}/{src}"
        if key not in self.storage.waiting and len(self.storage.waiting) < WAITING_MAX:
            self.storage.waiting[key] = self.config.meaning(node, src) or "unmapped input"
            self.bus.notify()  # the pages name it at once ("check in person"), not at the next probe

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
            self.cursor = max(self.cursor, records[-1].id)
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
        return {**self.room.snapshot(self.clock()), "cursor": self.cursor, "storage": self.storage.to_json()}

    def outputs(self):  # -> RoomOutputs
        return self.room.outputs(self.clock())

    async def call_history(self, from_ms: int) -> list[LogRecord]:
        return await self.store.read_kinds("call.", from_ms)

    async def events_after(self, after: int, limit: int) -> list[LogRecord]:
        return await self.store.read_log(after, limit)

    def subscribe(self) -> Subscription:
        return self.bus.subscribe()


def _nothing(now_ms: int) -> list[LogEntry]:
    return []


def _fail(group: list[_Input], exc: BaseException) -> None:
    error = exc if isinstance(exc, Exception) else RuntimeError(f"group commit interrupted: {exc!r}")
    for item in group:
        if not item.done.done():
            item.done.set_exception(error)
