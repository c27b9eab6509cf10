"""The ward console's service: MQTT in (every room's events, state and status), the ward's store,
gap backfill, commands out, escalation to people, and the views the pages show.

Delivery: a room publishes its log from the last cursor the broker acknowledged, so an event may
come twice but is stored once (room + cursor). Events are stored in each room's cursor order; one
that arrives ahead of a missing one waits (``GAP_GRACE_S``) for the missing ones, which are then
read from the room's API (``GET /api/v1/events?after=``). A room's state carries its cursor, so a
gap at the end of a burst (say the broker died after acknowledging the room's last events) is seen
too. The ward's MQTT session is persistent: what is published while the console is down waits in
the broker, and the retained state and status of every room arrive on each connect.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.bus import EventBus, Subscription
from controller.model import wall_ms
from controller.room.reports import collect_calls, summarize
from controller.security.tls import pin
from controller.store import LogRecord
from controller.uplink.client import MqttClient, refusal_reason
from controller.uplink.wire import (Command, FirmwareStatus, Result, RoomEvent, Topics, WireError, decode_event,
                                    decode_firmware, decode_result, decode_state, decode_status, parse_topic,
                                    unit_filter)

from . import routing
from .config import WardConfig
from .errors import WardError
from .firmware import WardRollouts
from .store import Route, RoomRow, Shift, WardStore

log = logging.getLogger("smartroom.ward")

ROLES = ("nurse", "charge", "admin", "facilities")
GAP_GRACE_S = 1.0            # a missing event usually arrives right behind; after this, ask the room's API
BACKFILL_PAGE = 1000         # events per request to the room's API (its maximum page)
BACKFILL_TIMEOUT_S = 10.0    # one page from a room's API on the LAN takes milliseconds
BACKFILL_RETRY_MAX_S = 30.0  # a room's API down: retry at most this far apart (the gap stays an alarm)
BUFFER_MAX = 20_000          # out-of-order events held per room while a gap is filled; beyond, the API has them
INGEST_BATCH = 1000          # messages handled (and events stored) together when a burst piles up
COMMAND_TIMEOUT_S = 10.0     # a room answers a command in milliseconds; ten seconds is a dead room
COMMAND_EXPIRY_S = 30        # MQTT 5 message expiry: a command never reaches a room late
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps the ward's session (and queues for it) a week
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 15.0


@dataclass(slots=True)
class WardStats:
    connects: int = 0
    connect_refused: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)      # by topic leaf
    rejected: Counter[str] = field(default_factory=Counter)      # malformed or foreign messages, by reason
    events_stored: int = 0
    duplicates: int = 0
    backfilled: int = 0
    backfill_failures: int = 0
    skipped: int = 0     # log ids a room never stored (a write that failed there), known from its API
    commands: Counter[str] = field(default_factory=Counter)      # by result code (and "timeout")
    publish_refused: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"connects": self.connects, "connect_refused": dict(self.connect_refused),
                "messages": dict(self.messages), "rejected": dict(self.rejected),
                "events_stored": self.events_stored, "duplicates": self.duplicates, "backfilled": self.backfilled,
                "backfill_failures": self.backfill_failures, "skipped": self.skipped, "commands": dict(self.commands),
                "publish_refused": self.publish_refused}


class WardConsole:
    """``await start()`` / ``await stop()``; the HTTP app (ward/web/) reads and acts through this."""

    def __init__(self, config: WardConfig, db_path: Path, *, clock: Callable[[], int] = wall_ms) -> None:
        self.config = config
        self.clock = clock
        self.store = WardStore(db_path)
        self.bus = EventBus()
        self.stats = WardStats()
        self.connected = asyncio.Event()
        self.cursors: dict[str, int] = {}
        self.rooms: dict[str, RoomRow] = {}
        self.routes: dict[tuple[str, str], Route] = {}
        self.shift: Shift | None = None
        self.gaps: dict[str, tuple[int, int, str]] = {}  # room -> (from, to, why) while a gap is unfilled
        self._buffer: dict[str, dict[int, RoomEvent]] = {}
        self._holes: dict[str, set[int]] = {}  # ids the room's own log shows it never stored
        self._ingest = asyncio.Lock()  # events are stored by one writer at a time, in each room's order
        self._gap_tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, asyncio.Future[Result]] = {}
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.cursor = 0  # the ward log's newest id
        self.firmware: dict[str, FirmwareStatus] = {}  # room -> its nodes' firmware (retained, so current)
        self.ward_rollouts = WardRollouts(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.store.open()
        self.cursors = await self.store.room_cursors()
        self.rooms = await self.store.rooms()
        self.routes = await self.store.routes()
        self.shift = await self.store.current_shift()
        self.cursor = await self.store.last_id()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BACKFILL_TIMEOUT_S))
        for room, row in self.rooms.items():  # a gap the console was down for: the stored state shows it
            if row.state_cursor > self.cursors.get(room, 0):
                self._schedule_gap(room)
        self._task = asyncio.create_task(self._run(), name="ward mqtt")
        await self.ward_rollouts.resume()  # a ward rollout running before a restart goes on

    async def stop(self) -> None:
        await self.ward_rollouts.close()
        tasks = [t for t in [self._task, *self._gap_tasks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self.bus.end_all()
        if self._http is not None:
            await self._http.close()
        await self.store.close()

    # ------------------------------------------------------------------ MQTT
    def _make_client(self) -> MqttClient:
        b = self.config.broker
        tls = None
        if b.tls:
            tls = aiomqtt.TLSParameters(ca_certs=str(b.ca_file) if b.ca_file else None, cert_reqs=ssl.CERT_REQUIRED,
                                        tls_version=ssl.PROTOCOL_TLS_CLIENT)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        site, unit = (s.replace("+", "all") for s in (self.config.site, self.config.unit))
        return MqttClient(b.host, b.port, username=b.username, password=b.password,
                          identifier=b.client_id or f"ward-{site}-{unit}", protocol=aiomqtt.ProtocolVersion.V5,
                          keepalive=b.keepalive_s, tls_params=tls, clean_start=False, properties=props,
                          timeout=COMMAND_TIMEOUT_S)

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while True:
            try:
                async with self._make_client() as client:
                    self._client = client
                    self.stats.connects += 1
                    backoff = RECONNECT_MIN_S
                    for leaf in ("event", "state", "status", "firmware", "result"):
                        await client.subscribe(unit_filter(self.config.site, self.config.unit, leaf), qos=1)
                    self.connected.set()
                    self.ward_rollouts.wake()
                    await self._note("ward.link", {"state": "connected"})
                    await self._receive(client)
            except aiomqtt.MqttError as exc:
                reason = refusal_reason(exc)
                if reason:
                    self.stats.connect_refused[reason] += 1
                    log.error("ward: the broker refused the console (%s): check [broker] username/password_file",
                              reason)
                else:
                    log.warning("ward: broker %s:%s: %s; retrying in %.1f s", self.config.broker.host,
                                self.config.broker.port, exc, backoff)
            finally:
                if self.connected.is_set():
                    self.connected.clear()
                    self.ward_rollouts.wake()
                    try:
                        await self._note("ward.link", {"state": "disconnected"})
                    except Exception:  # the store closing at shutdown
                        pass
                self._client = None
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # a retry pause, not a wait for a condition
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _receive(self, client: MqttClient) -> None:
        """Take messages as they come, and what has piled up meanwhile as one batch: a burst from
        many rooms is stored in one transaction, not one per event."""
        inbox: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for message in client.messages:
                    inbox.put_nowait((str(message.topic), bytes(message.payload or b"")))
            finally:
                inbox.put_nowait(None)

        reader = asyncio.create_task(read(), name="ward mqtt reader")
        try:
            while True:
                batch = [await inbox.get()]
                while not inbox.empty() and len(batch) < INGEST_BATCH:
                    batch.append(inbox.get_nowait())
                if None in batch:
                    await self._on_batch([m for m in batch if m is not None])
                    reader.result()  # the error that ended the connection
                    raise aiomqtt.MqttError("the broker connection ended")
                await self._on_batch(batch)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _on_batch(self, batch: list[tuple[str, bytes]]) -> None:
        events: list[RoomEvent] = []
        for topic, payload in batch:  # events first (one transaction), then states, statuses, results
            if topic.endswith("/event"):
                try:
                    topics, _ = parse_topic(topic)
                    if not self._mine(topics):
                        raise WireError(f"{topic}: not this ward's site/unit")
                    events.append(decode_event(payload, topics.room))
                    self.stats.messages["event"] += 1
                except WireError as exc:
                    self.stats.rejected["event"] += 1
                    log.warning("ward: rejected a message on %s: %s", topic, exc)
        if events:
            await self._on_events(events)
        for topic, payload in batch:
            if not topic.endswith("/event"):
                await self._on_message(topic, payload)

    def _mine(self, topics: Topics) -> bool:
        return self.config.site in ("+", topics.site) and self.config.unit in ("+", topics.unit)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        leaf = "topic"
        try:
            topics, leaf = parse_topic(topic)
            if not self._mine(topics):
                leaf = "foreign"
                raise WireError(f"{topic}: not this ward's site/unit")
            self.stats.messages[leaf] += 1
            room = topics.room
            if leaf == "event":
                await self._on_events([decode_event(payload, room)])
            elif leaf == "state":
                await self._on_state(topics, payload)
            elif leaf == "status":
                await self._on_status(topics, payload)
            elif leaf == "result":
                await self._on_result(decode_result(payload, room))
            elif leaf == "firmware":
                if payload:  # an empty retained message clears the topic: nothing to show
                    self.firmware[room] = decode_firmware(payload, room)
                    self.ward_rollouts.wake()
            else:
                raise WireError(f"{topic}: the ward does not take {leaf} messages")
        except WireError as exc:  # counted by what it claimed to be; the ward carries on
            self.stats.rejected[leaf] += 1
            log.warning("ward: rejected a message on %s: %s", topic, exc)

    # ------------------------------------------------------------------ events, in cursor order
    async def _on_events(self, events: list[RoomEvent]) -> None:
        """Buffer each event; store every room's events that now follow its stored cursor."""
        async with self._ingest:
            rooms = set()
            for ev in events:
                last = self.cursors.get(ev.room, 0)
                buffer = self._buffer.setdefault(ev.room, {})
                if ev.cursor <= last or ev.cursor in buffer:
                    self.stats.duplicates += 1
                    continue
                if len(buffer) < BUFFER_MAX:  # beyond, the room's API has them (the gap filler reads them)
                    buffer[ev.cursor] = ev
                rooms.add(ev.room)
            await self._store_in_order(rooms)
            for room in rooms:
                if self._buffer.get(room):
                    self._schedule_gap(room)

    async def _store_in_order(self, rooms: set[str], from_api: set[tuple[str, int]] = frozenset()) -> None:
        """Store, in one transaction, each room's buffered events that follow its stored cursor
        without a gap (``_ingest`` held). A hole the room's API showed (an id its log never stored)
        is passed over, as if it had been stored."""
        rows: list[RoomEvent] = []
        reached: dict[str, int] = {}
        for room in rooms:
            buffer = self._buffer.setdefault(room, {})
            holes = self._holes.get(room, set())
            nxt = self.cursors.get(room, 0) + 1
            while True:
                ev = buffer.pop(nxt, None)
                if ev is not None:
                    rows.append(ev)
                elif nxt in holes:
                    holes.discard(nxt)
                    self.stats.skipped += 1
                else:
                    break
                nxt += 1
            reached[room] = nxt - 1
            for stale in [c for c in buffer if c <= nxt - 1]:
                del buffer[stale]
        records: list[LogRecord] = []
        if rows:
            records, dupes = await self.store.add_room_events(self.clock(), [(e.room, e.cursor, e.ts_ms, e.kind, e.data)
                                                                            for e in rows])
            self.stats.duplicates += dupes
            self.stats.events_stored += len(records)
            self.stats.backfilled += sum(1 for e in rows if (e.room, e.cursor) in from_api)
        for room, cursor in reached.items():
            self.cursors[room] = max(self.cursors.get(room, 0), cursor)
            if room in self.gaps and self.cursors[room] >= self.gaps[room][1]:
                del self.gaps[room]
        self._publish(records)

    def _publish(self, records: list[LogRecord]) -> None:
        if records:
            self.cursor = max(self.cursor, records[-1].id)
            self.bus.publish(records)

    async def _note(self, kind: str, data: dict[str, Any], room: str | None = None) -> LogRecord:
        record = await self.store.add_ward_event(self.clock(), kind, data, room)
        self._publish([record])
        return record

    async def note(self, kind: str, data: dict[str, Any], room: str | None = None) -> LogRecord:
        """Something the ward did, in its log (and live stream)."""
        return await self._note(kind, data, room)

    def _schedule_gap(self, room: str) -> None:
        task = self._gap_tasks.get(room)
        if task is None or task.done():
            self._gap_tasks[room] = asyncio.create_task(self._fill_gap(room), name=f"ward gap {room}")

    def _gap_target(self, room: str) -> int:
        row = self.rooms.get(room)
        buffered = self._buffer.get(room) or {}
        return max([row.state_cursor if row else 0, *buffered])

    async def _fill_gap(self, room: str) -> None:
        await asyncio.sleep(GAP_GRACE_S)  # the grace period for events still on their way
        retry = 1.0
        while (last := self.cursors.get(room, 0)) < (target := self._gap_target(room)):
            buffered = self._buffer.get(room) or {}
            upto = min([c for c in buffered if c > last], default=target + 1) - 1
            try:
                events, beyond = await self._backfill(room, last, max(upto, last + 1))
            except (aiohttp.ClientError, TimeoutError, ValueError, WardError) as exc:
                self.stats.backfill_failures += 1
                why = str(exc) or type(exc).__name__
                if self.gaps.get(room, (0, 0, ""))[2] != why:
                    log.error("ward: room %s: events %d..%d missing and not readable from the room: %s",
                              room, last + 1, target, why)
                self.gaps[room] = (last + 1, target, why)
                await self._note("ward.gap", {"from": last + 1, "to": target, "why": why}, room)
                await asyncio.sleep(retry)  # the room's API is down: try again later; the gap is an alarm meanwhile
                retry = min(retry * 2, BACKFILL_RETRY_MAX_S)
                continue
            async with self._ingest:
                buffer = self._buffer.setdefault(room, {})
                for ev in events:
                    if ev.cursor > self.cursors.get(room, 0):
                        buffer.setdefault(ev.cursor, ev)
                if beyond is not None:  # the room's log goes on past upto: what it lacks below, it never stored
                    present = {ev.cursor for ev in events}
                    holes = [c for c in range(last + 1, min(beyond, upto + 1)) if c not in present]
                    if holes:
                        log.info("ward: room %s never stored log ids %d..%d (a write that failed there); "
                                 "passing over them", room, holes[0], holes[-1])
                        self._holes.setdefault(room, set()).update(holes)
                await self._store_in_order({room}, {(room, ev.cursor) for ev in events})
            if self.cursors.get(room, 0) == last:  # the room had nothing more to give: stop, say so
                self.gaps[room] = (last + 1, target, "the room's log has no such events")
                return

    async def _backfill(self, room: str, after: int, upto: int) -> tuple[list[RoomEvent], int | None]:
        """The room's events after ``after`` up to ``upto``, read from its API, and the first id its
        log holds beyond ``upto`` (None: none, or not read). The room's log is in id order, so an id
        up to ``upto`` missing below a later one was never stored there (the room's ids are never
        reused, and a write that fails leaves its ids unused)."""
        row = self.rooms.get(room)
        urls = self.config.room_urls or {}
        base = urls.get(room) or (row.api_url if row else None)
        token = (self.config.room_tokens or {}).get(room)
        if not base or not token:
            raise WardError(503, "no_backfill", f"no API address or token for room {room} ([backfill] in ward.toml)")
        assert self._http is not None
        events: list[RoomEvent] = []
        beyond: int | None = None
        ssl_ctx: Any = pin(row.fingerprint) if row and row.fingerprint and base.startswith("https") else True
        while after < upto:
            async with self._http.get(f"{base}/api/v1/events", params={"after": after, "limit": BACKFILL_PAGE},
                                      headers={"Authorization": f"Bearer {token}"}, ssl=ssl_ctx) as resp:
                if resp.status != 200:
                    raise WardError(502, "backfill_failed", f"{base}: HTTP {resp.status}")
                page = await resp.json()
            batch = [RoomEvent(room, e["id"], e["ts_ms"], e["kind"], e["data"]) for e in page["events"]]
            events += [e for e in batch if e.cursor <= upto]
            beyond = next((e.cursor for e in batch if e.cursor > upto), None)
            if beyond is not None or not batch or not page.get("more"):
                break
            after = batch[-1].cursor
        return events, beyond

    # ------------------------------------------------------------------ state, status, results
    async def _on_state(self, topics: Topics, payload: bytes) -> None:
        st = decode_state(payload, topics.room)
        old = self.rooms.get(st.room)
        if old is not None and (old.state_cursor, old.state_ms or 0) > (st.cursor, st.ts_ms):
            return  # an older state arriving late
        record = await self.store.save_state(st.room, topics.site, topics.unit, dict(st.state), st.cursor, st.ts_ms,
                                             self.clock())
        self.rooms[st.room] = _replace_row(old, topics, state=dict(st.state), state_cursor=st.cursor,
                                           state_ms=st.ts_ms)
        self._publish([record])
        if st.cursor > self.cursors.get(st.room, 0):
            self._schedule_gap(st.room)
        active = {(st.room, c["id"]) for c in st.state.get("calls", [])}
        gone = [k for k in self.routes if k[0] == st.room and k not in active]
        if gone:
            for key in gone:
                del self.routes[key]
            await self.store.drop_routes(set(self.routes))

    async def _on_status(self, topics: Topics, payload: bytes) -> None:
        st = decode_status(payload, topics.room)
        now = self.clock()
        old = self.rooms.get(st.room)
        await self.store.save_status(st.room, topics.site, topics.unit, st.status, st.reason, now, st.api_url,
                                     st.fingerprint, st.name)
        self.rooms[st.room] = _replace_row(old, topics, status=st.status, reason=st.reason, status_ms=now,
                                           api_url=st.api_url or (old.api_url if old else None),
                                           fingerprint=st.fingerprint or (old.fingerprint if old else None),
                                           name=st.name or (old.name if old else None))
        self.ward_rollouts.wake()
        if old is None or old.status != st.status or old.reason != st.reason:
            await self._note("ward.status", {"status": st.status, "reason": st.reason}, st.room)
            if st.status == "offline":
                log.error("ward: room %s is OFFLINE (%s)", st.room, st.reason)

    async def _on_result(self, res: Result) -> None:
        fresh = await self.store.command_result(res.id, res.to_json(), self.clock())
        fut = self._pending.pop(res.id, None)
        if fut is not None and not fut.done():
            fut.set_result(res)
        if fresh:
            self.stats.commands[res.code] += 1
            await self._note("ward.command.result", {"id": res.id, "ok": res.ok, "status": res.status,
                                                     "code": res.code, "message": res.message}, res.room)

    # ------------------------------------------------------------------ commands
    async def command(self, room: str, action: str, by: str, *, call_id: str | None = None, bed: str | None = None,
                      enabled: bool | None = None, bundle: str | None = None, nodes: tuple[str, ...] | None = None,
                      rollout: str | None = None) -> Result:
        row = self.rooms.get(room)
        if row is None:
            raise WardError(404, "room_not_found", f"no room {room!r} on this ward")
        if row.status != "online":
            raise WardError(503, "room_offline", f"room {room} is offline ({row.reason or 'never seen'}): "
                                                 "the command cannot reach it; go to the room")
        client = self._client
        if client is None or not self.connected.is_set():
            raise WardError(503, "broker_unreachable", "the ward console has no connection to the broker")
        cmd = Command(uuid.uuid4().hex, action, by, self.clock(), call_id, bed, enabled, bundle, nodes, rollout)
        topics = Topics(row.site, row.unit, room)
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[cmd.id] = fut
        await self.store.add_command(cmd.id, room, action, cmd.target, by, cmd.ts_ms)
        await self._note("ward.command", {"id": cmd.id, "action": action, "target": cmd.target, "by": by}, room)
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = COMMAND_EXPIRY_S
        try:
            await client.publish_checked(topics.cmd, cmd.encode(), properties=props)
            return await asyncio.wait_for(fut, COMMAND_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            self.stats.publish_refused += 1
            raise WardError(503, "command_not_sent", f"the broker did not take the command: {exc}") from None
        except TimeoutError:
            self.stats.commands["timeout"] += 1
            await self._note("ward.command.result", {"id": cmd.id, "ok": False, "status": 504, "code": "timeout",
                                                     "message": "the room did not answer"}, room)
            raise WardError(504, "room_no_answer", f"room {room} did not answer within {COMMAND_TIMEOUT_S:g} s") \
                from None
        finally:
            self._pending.pop(cmd.id, None)

    # ------------------------------------------------------------------ people
    def _call(self, room: str, call_id: str) -> dict[str, Any]:
        row = self.rooms.get(room)
        for call in (row.state or {}).get("calls", []) if row else []:
            if call["id"] == call_id:
                return call
        raise WardError(404, "call_not_found", f"no active call {call_id} in room {room}")

    async def accept(self, room: str, call_id: str, person: str) -> dict[str, Any]:
        self._call(room, call_id)
        res = await self.command(room, "ack", person, call_id=call_id)
        if not res.ok:
            raise WardError(res.status, res.code, res.message)
        route = self.routes.get((room, call_id)) or routing.new_route(room, call_id, self.clock())
        route = Route(room, call_id, route.level, route.declined, person, self.clock())
        self.routes[(room, call_id)] = route
        await self.store.save_route(route)
        await self._note("ward.routing", {"call_id": call_id, "accepted_by": person}, room)
        return res.to_json()

    async def decline(self, room: str, call_id: str, person: str) -> dict[str, Any]:
        call = self._call(room, call_id)
        before = self.routes.get((room, call_id)) or routing.new_route(room, call_id, self.clock())
        route = routing.decline(before, call, room, self.shift, person, self.clock())
        self.routes[(room, call_id)] = route
        await self.store.save_route(route)
        now = routing.reach(call, room, self.shift, route)
        await self._note("ward.routing", {"call_id": call_id, "declined_by": person, "level": now.level,
                                          "to": now.label}, room)
        return {"room": room, "call_id": call_id, "level": now.level, "to": now.label, "people": list(now.people),
                "declined": list(route.declined)}

    async def set_shift(self, name: str, charge: str, staff: list[str], rooms: dict[str, dict[str, str]],
                        by: str) -> Shift:
        everyone = list(dict.fromkeys([charge, *staff, *(n for beds in rooms.values() for n in beds.values())]))
        self.shift = await self.store.set_shift(name, charge, everyone, rooms, by, self.clock())
        await self._note("ward.assignment", {"shift": name, "charge": charge, "by": by})
        return self.shift

    # ------------------------------------------------------------------ views
    def room_ids(self) -> list[str]:
        return sorted(set(self.config.rooms) | set(self.rooms))

    def alarms(self) -> list[dict[str, Any]]:
        """Technical alarms: rooms offline or never heard from, and events that could not be had."""
        out = []
        for room in self.room_ids():
            row = self.rooms.get(room)
            if row is None or row.status is None:
                out.append({"room": room, "type": "room_never_seen", "since_ms": None,
                            "text": f"Room {room}: never connected to the ward"})
            elif row.status != "online":
                out.append({"room": room, "type": "room_offline", "since_ms": row.status_ms,
                            "text": f"Room {room} OFFLINE ({row.reason}): its calls do not reach the ward"})
            if room in self.gaps:
                lo, hi, why = self.gaps[room]
                out.append({"room": room, "type": "events_missing", "since_ms": None,
                            "text": f"Room {room}: events {lo}–{hi} missing ({why})"})
        return out

    def _call_view(self, room: str, call: dict[str, Any]) -> dict[str, Any]:
        route = self.routes.get((room, call["id"]))
        r = routing.reach(call, room, self.shift, route)
        return {**call, "room": room, "room_name": (self.rooms[room].name if room in self.rooms else None) or room,
                "reach": {"level": r.level, "to": r.label, "people": list(r.people)},
                "declined": list(route.declined) if route else [],
                "accepted_by": route.accepted_by if route else None}

    def calls(self) -> list[dict[str, Any]]:
        calls = [self._call_view(room, call) for room, row in self.rooms.items() for call in
                 ((row.state or {}).get("calls", []))]
        return sorted(calls, key=lambda c: (c["rank"], c["raised_at_ms"], c["room"], c["id"]))

    def ward_view(self) -> dict[str, Any]:
        rooms = []
        for room in self.room_ids():
            row = self.rooms.get(room)
            state = (row.state if row else None) or {}
            rooms.append({"room": room, "name": (row.name if row else None) or room,
                          "status": (row.status if row else None) or "never_seen",
                          "reason": row.reason if row else None, "status_ms": row.status_ms if row else None,
                          "dome": (state.get("outputs") or {}).get("dome"), "cursor": self.cursors.get(room, 0),
                          "calls": len(state.get("calls", [])), "occupancy": (state.get("occupancy") or {}).get("state"),
                          "beds": (state.get("room") or {}).get("beds", [])})
        return {"ward": {"name": self.config.name, "site": self.config.site, "unit": self.config.unit},
                "cursor": self.cursor, "broker": "connected" if self.connected.is_set() else "disconnected",
                "calls": self.calls(), "alarms": self.alarms(), "rooms": rooms,
                "shift": self.shift.to_json() if self.shift else None}

    def staff_view(self, person: str) -> dict[str, Any]:
        mine = [c for c in self.calls() if person in c["reach"]["people"]]
        charge = self.shift is not None and self.shift.charge == person
        assigned = sorted({(r, b) for r, b, n in self.shift.assignments if n == person}) if self.shift else []
        return {"person": person, "cursor": self.cursor, "charge": charge,
                "on_shift": bool(self.shift and person in self.shift.staff),
                "rooms": [{"room": r, "bed": None if b == "*" else b} for r, b in assigned],
                "calls": mine, "alarms": self.alarms() if charge else []}

    async def report(self, from_ms: int, to_ms: int) -> dict[str, Any]:
        per_room = await self.store.call_records(from_ms)
        calls = []
        for room, records in per_room.items():
            calls += [(room, c) for c in collect_calls(records, from_ms, to_ms)]

        def summary(items: list) -> dict[str, Any]:
            return {"calls": len(items), "to_ack_s": summarize([c.to_ack_s for _, c in items if c.to_ack_s is not None]),
                    "to_clear_s": summarize([c.to_clear_s for _, c in items if c.to_clear_s is not None])}

        def group(key: Callable[[tuple], str | None]) -> dict[str, Any]:
            groups: dict[str, list] = {}
            for item in calls:
                groups.setdefault(key(item) or "unknown", []).append(item)
            return {k: summary(v) for k, v in sorted(groups.items())}

        return {"from_ms": from_ms, "to_ms": to_ms, "total": summary(calls),
                "rooms": group(lambda i: i[0]), "priorities": group(lambda i: i[1].level),
                "nurses": group(lambda i: i[1].acknowledged_by)}

    def subscribe(self) -> Subscription:
        return self.bus.subscribe()

    async def events_after(self, after: int, limit: int) -> list[LogRecord]:
        return await self.store.read_log(after, limit)


def _replace_row(old: RoomRow | None, topics: Topics, **changes: Any) -> RoomRow:
    base = old or RoomRow(topics.room, topics.site, topics.unit, None, None, None, None, None, None, None, 0, None)
    fields = {f: getattr(base, f) for f in RoomRow.__slots__}
    fields.update(changes, site=topics.site, unit=topics.unit)
    return RoomRow(**fields)


