"""The room's uplink to the ward broker: every stored room event out (QoS 1, with its log cursor),
the room's state and online/offline status as retained messages, ward commands in.

Delivery: the uplink publishes the log in cursor order from the last cursor the broker
acknowledged, which it keeps in the room's database (``marks.py``). After any outage (broker down,
network cut, room restart) it starts again from there, so the ward gets every event at least once
and stores it once (dedupe by room + cursor). Live records come from the bus (``controller/bus.py``)
like the API's stream; whatever the bus cannot hand over in order is read back from the log.

Status: "online" (retained) after each connect; the connection's last will is "offline" (retained),
which the broker publishes when the room stops answering for 1.5 x keepalive, or at once when its
connection drops. A clean stop publishes "offline", reason "stopped".

The room does not need the broker: its rules, lights, tones and pages run the same without it; the
uplink only retries (capped back-off) and counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..bus import Subscription
from ..room.config import ConfigError, WardLink
from ..service import RoomController
from ..store import LogRecord
from . import commands
from .client import MqttClient, PublishRefused, refusal_reason
from .marks import UplinkMarks
from .wire import (Command, FirmwareStatus, RoomEvent, RoomStatus, Topics, WireError, decode_command,
                   encode_state)

log = logging.getLogger("smartroom.uplink")

SEND_BATCH = 200            # events in flight at once: enough to fill a LAN round trip, bounded memory
PUBLISH_TIMEOUT_S = 10.0    # no PUBACK this long: the link is dead (keepalive will agree); reconnect
MARK_SAVE_S = 0.5           # the acked cursor is written at most twice a second (a crash resends <= 0.5 s)
STATE_MIN_INTERVAL_S = 0.2  # a burst of events sends one state, not one per event
STATE_REFRESH_S = 10.0      # readings and timers change the state without log records: look this often
RECONNECT_MIN_S = 0.5       # first retry after a lost connection
RECONNECT_MAX_S = 15.0      # back-off cap: a restarted broker is reached within 15 s
SESSION_EXPIRY_S = 0        # the room keeps no session: everything unacked is resent from its log
FIRMWARE_MIN_INTERVAL_S = 0.5  # the nodes' firmware status: at most twice a second during a download
FIRMWARE_REFRESH_S = 2.0    # a node linking up with a new version is seen within this (no OTA event for it)
FIRMWARE_ROLLOUTS = 5       # the newest rollouts in the retained firmware status (the ward finds its own there)


class UplinkError(ConfigError):
    """The [ward] section cannot be used as it is (e.g. its password file is unreadable)."""


@dataclass(slots=True)
class UplinkStats:
    connects: int = 0
    connect_refused: Counter[str] = field(default_factory=Counter)  # by reason: bad_credentials, not_authorized
    disconnects: int = 0
    link_errors: int = 0            # connects that failed (no broker, TLS refused) and sessions lost
    last_error: str | None = None
    events_published: int = 0
    events_resent: int = 0          # published again after an outage (at-least-once)
    publish_refused: Counter[str] = field(default_factory=Counter)  # by topic leaf
    states_published: int = 0
    firmware_published: int = 0
    commands: Counter[str] = field(default_factory=Counter)         # by result code
    commands_rejected: Counter[str] = field(default_factory=Counter)  # malformed, by reason
    commands_repeated: int = 0      # delivered again: answered from the stored result, not done twice
    storage_errors: int = 0         # the marks' reads and writes in the room database that failed

    def to_json(self) -> dict[str, Any]:
        return {"connects": self.connects, "connect_refused": dict(self.connect_refused),
                "disconnects": self.disconnects, "link_errors": self.link_errors, "last_error": self.last_error,
                "events_published": self.events_published,
                "events_resent": self.events_resent, "publish_refused": dict(self.publish_refused),
                "states_published": self.states_published, "firmware_published": self.firmware_published,
                "commands": dict(self.commands),
                "commands_rejected": dict(self.commands_rejected), "commands_repeated": self.commands_repeated,
                "storage_errors": self.storage_errors}


def read_password(link: WardLink) -> str | None:
    if link.password_file is None:
        return None
    try:
        return Path(link.password_file).read_text().strip()
    except OSError as exc:
        raise UplinkError(f"[ward] password_file {link.password_file}: {exc.strerror or exc}") from None


class WardUplink:
    """``await start()`` once the controller runs; ``await stop()`` before the controller stops."""

    def __init__(self, controller: RoomController, link: WardLink, *, api_url: str | None = None,
                 client_id: str | None = None) -> None:
        self.controller = controller
        self.link = link
        self.topics = Topics(link.site, link.unit, controller.config.room_id)
        self.api_url = api_url
        self.fingerprint: str | None = None  # the API's certificate, when it speaks https
        self.username = link.username or controller.config.room_id
        self.password = read_password(link)
        self.client_id = client_id or f"room-{link.site}-{link.unit}-{controller.config.room_id}"
        self.broker_key = f"{link.host}:{link.port}/{link.site}/{link.unit}"
        self.stats = UplinkStats()
        self.marks = UplinkMarks(controller.store.path)
        self.acked = 0               # highest cursor the broker acknowledged
        self.connected = asyncio.Event()
        self._saved = 0
        self._last_save = 0.0
        self._task: asyncio.Task[None] | None = None
        self._client: MqttClient | None = None
        self._published_max = 0      # the highest cursor this process published: below it is a resend
        self.ota: Any = None         # the room's OtaServer: its nodes' firmware out, ward rollouts in
        self._firmware_changed = asyncio.Event()

    @property
    def remote(self) -> str:
        return f"mqtt{'s' if self.link.tls else ''}://{self.link.host}:{self.link.port}"

    async def start(self) -> None:
        await self.marks.open()
        self.acked = self._saved = await self.marks.acked(self.broker_key)
        self._task = asyncio.create_task(self._run(), name=f"ward uplink {self.topics.room}")

    async def stop(self) -> None:
        if self._task is None:
            return
        client = self._client
        if client is not None and self.connected.is_set():
            try:  # a clean goodbye: the ward sees "stopped", not "connection lost"
                await client.publish_checked(self.topics.status, self._status("offline", "stopped"), retain=True,
                                             timeout=2.0)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.info("ward uplink: could not say goodbye (%s); the broker sends the last will", exc)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._save_acked(force=True)
        await self.marks.close()

    # ------------------------------------------------------------------ connection
    def _status(self, status: str, reason: str) -> bytes:
        return RoomStatus(self.topics.room, status, reason, self.controller.clock(), self.api_url,
                          self.controller.config.name, self.fingerprint).encode()

    def _make_client(self) -> MqttClient:
        link = self.link
        tls = None
        if link.tls:
            tls = aiomqtt.TLSParameters(ca_certs=str(link.ca_file) if link.ca_file else None,
                                        cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will = aiomqtt.Will(self.topics.status, self._status("offline", "connection lost"), qos=1, retain=True,
                            properties=will_props)
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = SESSION_EXPIRY_S
        return MqttClient(link.host, link.port, username=self.username, password=self.password,
                          identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5, keepalive=link.keepalive_s,
                          will=will, tls_params=tls, clean_start=True, properties=connect_props,
                          timeout=PUBLISH_TIMEOUT_S)

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while True:
            try:
                async with self._make_client() as client:
                    self._client = client
                    self.stats.connects += 1
                    backoff = RECONNECT_MIN_S
                    log.info("ward uplink %s: connected to %s", self.topics.base, self.remote)
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                reason = refusal_reason(exc)
                if reason is not None:
                    self.stats.connect_refused[reason] += 1
                    log.error("ward uplink: %s refused the room (%s): check [ward] username/password_file and the "
                              "broker's ACL", self.remote, reason)
                elif isinstance(exc, PublishRefused):
                    log.error("ward uplink: %s; check the broker's ACL for user %s", exc, self.username)
                else:
                    self.stats.link_errors += 1
                    log.warning("ward uplink: %s: %s; retrying in %.1f s", self.remote, exc, backoff)
                self.stats.last_error = str(exc)
            except Exception as exc:  # a fault of ours must not end the uplink for good: loud, then again
                self.stats.link_errors += 1
                self.stats.last_error = f"internal error: {exc!r}"
                log.exception("ward uplink: the session failed; reconnecting in %.1f s", backoff)
            finally:
                if self.connected.is_set():
                    self.stats.disconnects += 1
                self.connected.clear()
                self._client = None
            await self._save_acked(force=True)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # a retry pause, jittered across rooms
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _session(self, client: MqttClient) -> None:
        await client.subscribe(self.topics.cmd, qos=1)
        await self._publish(client, self.topics.status, self._status("online", "started"), retain=True)
        self.connected.set()
        tasks = [asyncio.create_task(self._send_loop(client), name="uplink send"),
                 asyncio.create_task(self._command_loop(client), name="uplink commands")]
        if self.ota is not None:
            tasks.append(asyncio.create_task(self._firmware_loop(client), name="uplink firmware"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises the error that ended the session
        raise aiomqtt.MqttError("the uplink's session ended")

    async def _publish(self, client: MqttClient, topic: str, payload: bytes, *, retain: bool = False) -> None:
        try:
            await client.publish_checked(topic, payload, qos=1, retain=retain)
        except PublishRefused:
            self.stats.publish_refused[topic.rsplit("/", 1)[-1]] += 1
            raise

    # ------------------------------------------------------------------ events and state out
    async def _send_loop(self, client: MqttClient) -> None:
        while True:
            with self.controller.subscribe() as sub:  # before reading the log: nothing falls between the two
                try:
                    await self._send(client, sub)
                except _Lagged:
                    log.warning("ward uplink fell behind the room's bus at %d; reading the log", self.acked)

    async def _send(self, client: MqttClient, sub: Subscription) -> None:
        loop = asyncio.get_running_loop()
        sent_state: bytes | None = None  # a new connection sends the state again (the broker may be new)
        dirty, state_due, next_look = True, loop.time(), loop.time()
        read_log = True                  # what was stored before the subscription comes from the log
        pending: list[LogRecord] = []
        while True:
            batch = [r for r in pending if r.id > self.acked]
            pending = []
            if batch and (batch[0].id != self.acked + 1 or any(b.id != a.id + 1 for a, b in zip(batch, batch[1:]))):
                batch, read_log = [], True  # not the next ones in order: read them back from the log
            if read_log and not batch:
                batch = await self.controller.events_after(self.acked, SEND_BATCH)
                read_log = len(batch) == SEND_BATCH  # a full page: there may be more
            if batch:
                await self._publish_events(client, batch)
                dirty = True
                continue
            now = loop.time()
            if (dirty and now >= state_due) or (not dirty and now >= next_look):
                state = self._state_payload()
                if state != sent_state:
                    await self._publish(client, self.topics.state, encode_state(
                        self.topics.room, json.loads(state), self.controller.clock()), retain=True)
                    self.stats.states_published += 1
                    sent_state = state
                dirty, state_due, next_look = False, now + STATE_MIN_INTERVAL_S, now + STATE_REFRESH_S
            wait_s = max(0.0, (state_due if dirty else next_look) - loop.time())
            record = await self._next_record(sub, wait_s)
            if record is _LAGGED:  # the bus dropped us (we fell behind): resubscribe, then the log
                raise _Lagged()
            elif record is not None:
                pending = [record, *sub.get_nowait(SEND_BATCH - 1)]

    def _state_payload(self) -> bytes:
        return json.dumps(self.controller.snapshot(), separators=(",", ":"), sort_keys=True).encode()

    async def _next_record(self, sub: Subscription, wait_s: float) -> Any:
        try:
            async with asyncio.timeout(wait_s):
                record = await sub.get()
        except TimeoutError:
            return None
        return _LAGGED if record is None else record

    async def _publish_events(self, client: MqttClient, records: list[LogRecord]) -> None:
        room = self.topics.room
        await asyncio.gather(*(self._publish(client, self.topics.event,
                                             RoomEvent(room, r.id, r.ts_ms, r.kind, r.data).encode()) for r in records))
        self.stats.events_published += len(records)
        self.stats.events_resent += sum(1 for r in records if r.id <= self._published_max)
        self._published_max = max(self._published_max, records[-1].id)
        self.acked = records[-1].id
        await self._save_acked()

    async def _save_acked(self, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if self.acked <= self._saved or (not force and loop.time() - self._last_save < MARK_SAVE_S):
            return
        cursor = self.acked
        try:
            await self.marks.save_acked(self.broker_key, cursor, self.controller.clock())
        except sqlite3.Error as exc:  # the events went out all the same: only a restart would resend them
            self._storage_failed(f"keep the acknowledged cursor {cursor} (a restart before the next save "
                                 f"resends from {self._saved}; the ward drops repeats)", exc)
            return
        self._saved, self._last_save = cursor, loop.time()

    def _storage_failed(self, what: str, exc: sqlite3.Error) -> None:
        self.stats.storage_errors += 1
        self.stats.last_error = f"room database: {exc}"
        log.error("ward uplink: could not %s: %s", what, exc)

    # ------------------------------------------------------------------ the nodes' firmware out
    def firmware_status(self) -> FirmwareStatus:
        config = self.controller.config
        doc = self.ota.status(sorted(n.id for n in config.nodes.values() if n.transport == "tcp"))
        return FirmwareStatus(self.topics.room, self.controller.clock(), tuple(doc["nodes"]), tuple(doc["bundles"]),
                              tuple(doc["rollouts"][-FIRMWARE_ROLLOUTS:]), tuple(doc["bad_bundles"]))

    async def _firmware_loop(self, client: MqttClient) -> None:
        """The retained firmware status whenever it changes (an update's state at once, a download's
        progress at most twice a second, a node's version within FIRMWARE_REFRESH_S)."""
        listener = self._firmware_changed.set
        self.ota.listeners.append(listener)
        loop = asyncio.get_running_loop()
        sent: str | None = None  # a new connection sends it again (the broker may be new)
        try:
            while True:
                self._firmware_changed.clear()
                status = self.firmware_status()
                body = json.dumps({**status.to_json(), "ts_ms": 0}, sort_keys=True)
                if body != sent:
                    await self._publish(client, self.topics.firmware, status.encode(), retain=True)
                    self.stats.firmware_published += 1
                    sent = body
                    await asyncio.sleep(FIRMWARE_MIN_INTERVAL_S)  # a rate limit, not a wait for a condition
                try:
                    await asyncio.wait_for(self._firmware_changed.wait(), FIRMWARE_REFRESH_S)
                except TimeoutError:
                    pass
        finally:
            self.ota.listeners.remove(listener)

    # ------------------------------------------------------------------ commands in
    async def _command_loop(self, client: MqttClient) -> None:
        async for message in client.messages:
            if str(message.topic) != self.topics.cmd:
                continue  # only our command topic is subscribed; anything else is the broker's business
            await self._command(client, bytes(message.payload or b""))

    async def _command(self, client: MqttClient, payload: bytes) -> None:
        try:
            cmd = decode_command(payload)
        except WireError as exc:
            self.stats.commands_rejected["malformed"] += 1
            log.warning("ward command rejected: %s", exc)
            return
        try:
            stored = await self.marks.command_result(cmd.id)
        except sqlite3.Error as exc:  # whether it was done already is unknown: do nothing, and say so
            self._storage_failed(f"look up ward command {cmd.id}; nothing done", exc)
            result = commands.Result(cmd.id, self.topics.room, False, 503, "storage_unavailable",
                                     f"the room database cannot be read ({exc}); nothing was done: "
                                     "send the command again")
        else:
            if stored is not None:
                self.stats.commands_repeated += 1
                result = commands.Result(**stored)
            else:
                result = await self._carry_out(cmd)
        await self._publish(client, self.topics.result, result.encode())

    async def _carry_out(self, cmd: Command) -> commands.Result:
        result = await commands.execute(self.controller, cmd, self.ota)
        now = self.controller.clock()
        try:
            await self.marks.save_command(cmd.id, result.to_json(), now)
        except sqlite3.Error as exc:  # done and answered; a repeat of this command would be done again
            self._storage_failed(f"keep the result of ward command {cmd.id}", exc)
        await self.controller.store.audit(commands.audit_entry(cmd, result, now, self.remote))
        self.stats.commands[result.code] += 1
        return result


class _Lagged(Exception):
    """The bus ended our subscription: resubscribe and read what was missed from the log."""


_LAGGED = object()  # the bus closed our subscription (we fell behind): resubscribe and read the log
__all__ = ["Command", "UplinkError", "UplinkStats", "WardUplink"]
