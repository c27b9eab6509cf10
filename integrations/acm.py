"""IHE PCD ACM Alarm Reporter: every call and technical alarm of the room, reported to the
hospital's alarm manager as PCD-04 ORU^R40 over MLLP, and its answers put on the call's timeline.

Two tasks. The *reader* follows the room's event log by cursor (like the API's stream: the bus for
what is new, the log to catch up) and turns each call's life into messages — start (raised),
update (acknowledged, staff present, tone silenced), escalate, continue (reminder), end (cleared) —
queued in the durable outbox in the same transaction that moves its cursor. The *sender* sends the
oldest unacknowledged message, one at a time so the alarm manager sees them in order, and resends
it (same control id) until an ACK comes: across reconnects, outages and restarts nothing is lost.

The alarm manager's words come back as ``call.delivery`` steps on the call's timeline: the ACK of a
start ("accepted by the alarm manager"), every NAK, and each PCD-05 ORA^R41 status ("delivered to
phone 4411", "read"). A call the alarm manager has not accepted within ``fault_after_s`` raises a
technical alarm in the room (``system_fault``, source ``alarm_manager``): fail loud, never silently.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

from controller.room import CALL_TYPES, CONDITION
from controller.service import RoomController
from controller.store import LogRecord

from .config import Integrations
from .follow import follow_log
from .hl7 import (PRIORITIES, AlarmReport, Hl7Error, Inbound, Parties, build_ack, build_heartbeat, build_oru_r40,
                  parse_inbound, read_ack, read_ora_r41)
from .mllp import Backoff, MllpConnection, MllpError
from .outbox import OutMessage, Outbox, Queued

log = logging.getLogger("smartroom.acm")

PEER = "alarm_manager"     # the outbox's peer name for these messages
CURSOR = "acm"             # the reader's cursor name
FAULT_SOURCE = "alarm_manager"
ACCEPTED = "accepted by the alarm manager"
LINK, REJECTED = "link", "rejected"   # why the alarm-manager fault is up: a heartbeat clears only LINK


@dataclass(slots=True)
class AcmStats:
    queued: int = 0
    sent: int = 0
    resent: int = 0
    acked: int = 0
    errors: int = 0            # AE / CE: resent
    rejected: int = 0          # AR / CR: given up, shown on the call and as a technical alarm
    link_failures: int = 0     # connect failures, lost connections, ACK timeouts
    statuses: int = 0          # ORA^R41 taken in
    heartbeats: int = 0        # heartbeats answered (the link checked while no alarm was sent)
    heartbeats_refused: int = 0  # ... answered with an error: the link works, the alarm manager dislikes them
    bad_replies: int = 0
    connected: bool = False
    last_error: str = ""
    outbox: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class _Alarm:
    """What the reader remembers of an open call (its cursor's state: saved with it)."""

    type: str
    level: str
    bed: str | None
    node: str | None
    input: str | None
    raised_at_ms: int
    patient: dict[str, str] | None = None
    answered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class AlarmReporter:
    """Start with :meth:`start`, stop with :meth:`stop`. ``clock`` is the controller's."""

    def __init__(self, controller: RoomController, options: Integrations, outbox: Outbox) -> None:
        assert options.alarm_manager is not None
        self.controller = controller
        self.options = options
        self.am = options.alarm_manager
        self.outbox = outbox
        self.clock: Callable[[], int] = controller.clock
        self.parties = Parties(options.application, options.equipment_id, options.facility,
                               self.am.application, self.am.facility, options.point_of_care,
                               options.hl7_room or controller.config.room_id)
        self.stats = AcmStats()
        self._alarms: dict[str, _Alarm] = {}
        self._cursor = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._conn: MllpConnection | None = None
        self._faulty = False
        self._fault_cause = LINK
        self._contact_ms = 0           # when the alarm manager last answered anything
        self._link_ok = True           # the last exchange worked: heartbeats every heartbeat_s, else sooner
        self._hb_n = 0
        self._ssl = self.am.tls.client_context() if self.am.tls else None
        self._nak_noted: set[str] = set()   # control ids whose NAK is already on the call's timeline
        self._ack_n = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cursor, state = await self.outbox.cursor(CURSOR)
        if cursor == 0 and not state:
            await self._first_start()
        else:
            self._cursor = cursor
            self._alarms = {k: _Alarm(**v) for k, v in state.get("alarms", {}).items()}
        self._faulty = self.controller.room.call_from(None, f"system:{FAULT_SOURCE}", "system_fault") is not None
        self._contact_ms = self.clock()
        self.stats.outbox = await self.outbox.pending(PEER)
        self._tasks = [asyncio.create_task(self._read_loop(), name="acm-reader"),
                       asyncio.create_task(self._send_loop(), name="acm-sender")]

    async def _first_start(self) -> None:
        """Reporting starts now, not with the room's whole history; the calls already open are sent as
        starts so the alarm manager knows them."""
        room = self.controller.room
        self._cursor = room.cursor
        messages = []
        for call in room.active_calls():
            self._alarms[call.id] = _Alarm(call.type, call.ctype.level, call.bed, call.node, call.input,
                                           call.raised_at_ms, call.patient, call.answered)
            record = LogRecord(self._cursor, self.clock(), "call.raised", {})
            messages.append(self._message(record, f"{self._prefix()}start-{call.id}", call.id, "start", "active",
                                          "enabled", f"open when alarm reporting started (raised by {call.raised_by})"))
        await self._save(messages)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._drop_connection()
        await self._save([])  # where the reader got to, so records without messages are not read again

    # ------------------------------------------------------------------ the reader: log -> outbox
    async def _read_loop(self) -> None:
        try:
            await follow_log(self.controller, lambda: self._cursor, self._take)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not silently stop alarm reporting: it is logged and raised as a fault
            log.exception("alarm reporting: the reader stopped")
            await self._set_fault(True, "alarm reporting stopped after an internal error; see the controller log")
            raise

    async def _take(self, records: list[LogRecord]) -> None:
        messages: list[OutMessage] = []
        for record in records:
            try:
                messages += self._translate(record)
            except Hl7Error as exc:  # a message we cannot build is a bug; the rest still goes out
                log.error("alarm reporting: could not build a message for record %d: %s", record.id, exc.message)
            self._cursor = record.id
        if messages:
            await self._save(messages)
            self.stats.queued += len(messages)
            self.stats.outbox += len(messages)
            self._wakeup.set()

    async def _save(self, messages: list[OutMessage]) -> None:
        await self.outbox.save(CURSOR, self._cursor, {"alarms": {k: a.to_json() for k, a in self._alarms.items()}},
                               peer=PEER, messages=messages, now_ms=self.clock())

    def _prefix(self) -> str:
        return f"{self.controller.config.room_id}-"

    def _translate(self, record: LogRecord) -> list[OutMessage]:
        d, kind = record.data, record.kind
        ids = iter(range(1_000_000))

        def msg(call_id: str, phase: str, state: str, inactivation: str, note: str) -> OutMessage:
            return self._message(record, f"{self._prefix()}{record.id}-{next(ids)}", call_id, phase, state,
                                 inactivation, note)

        if kind == "call.raised":
            self._alarms[d["call_id"]] = _Alarm(d["type"], d["level"], d.get("bed"), d.get("node"), d.get("input"),
                                                d["at_ms"], d.get("patient"))
            return [msg(d["call_id"], "start", "active", "enabled", f"raised by {d.get('by', '?')}")]
        if kind == "tone.silenced":
            return [msg(cid, "update", "active", "audio-paused", f"in-room tone silenced by {d['by']}")
                    for cid, alarm in self._alarms.items() if not alarm.answered]
        alarm = self._alarms.get(d.get("call_id", ""))
        if alarm is None:
            return []
        cid = d["call_id"]
        if kind == "call.acknowledged":
            alarm.answered = True
            return [msg(cid, "update", "active", "alert-acknowledged", f"acknowledged by {d['by']}")]
        if kind == "call.present":
            alarm.answered = True
            return [msg(cid, "update", "active", "alert-acknowledged", f"staff present: {d['by']}")]
        if kind == "call.escalated":
            return [msg(cid, "escalate", "active", "enabled", f"escalated to {d['to']} (level {d['level']})")]
        if kind == "call.reminded":
            alarm.answered = False
            return [msg(cid, "continue", "active", "enabled", f"reminder {d['n']}: not cleared, signalled again")]
        if kind == "call.cleared":
            out = [msg(cid, "end", "inactive", "enabled", f"cleared by {d['by']} ({d['how'].replace('_', ' ')})")]
            del self._alarms[cid]
            return out
        return []

    def _message(self, record: LogRecord, control_id: str, call_id: str, phase: str, state: str,
                 inactivation: str, note: str) -> OutMessage:
        alarm = self._alarms[call_id]
        ctype = CALL_TYPES.get(alarm.type)
        kind = "SP"
        if ctype is not None and ctype.clears == CONDITION:
            kind = "SA" if ctype.level == "info" else "ST"
        node_cfg = self.controller.config.nodes.get(alarm.node) if alarm.node else None
        room_id = self.parties.room
        report = AlarmReport(
            control_id, record.ts_ms, call_id, alarm.type, ctype.label if ctype else alarm.type,
            PRIORITIES.get(alarm.level, "PN"), kind, phase, state, inactivation, alarm.raised_at_ms,
            bed=self.options.their_bed(alarm.bed), where=node_cfg.location if node_cfg else "",
            source=f"{alarm.node}/{alarm.input}" if alarm.node else "", note=note, patient=alarm.patient,
            placeholder_id=f"{room_id}/{self.options.their_bed(alarm.bed) or 'room'}")
        return OutMessage(control_id, record.id, call_id, phase, build_oru_r40(report, self.parties))

    # ------------------------------------------------------------------ the sender: outbox -> alarm manager
    async def _send_loop(self) -> None:
        backoff = Backoff(self.am.retry_first_s, self.am.retry_max_s)
        while True:
            self._wakeup.clear()
            item = await self.outbox.head(PEER)
            self.stats.outbox = await self.outbox.pending(PEER)
            if item is None:
                await self._idle(backoff)
                continue
            try:
                conn = await self._connection()
                await self.outbox.attempted(item.seq)
                self.stats.sent += 1
                self.stats.resent += item.attempts > 0
                reply = await conn.send(item.message, item.control_id, self.am.ack_timeout_s)
            except (MllpError, OSError, TimeoutError, ssl.SSLError, Hl7Error) as exc:
                self._link_failed(exc)
                log.warning("alarm manager %s:%d: %s; resending %s", self.am.host, self.am.port,
                            self.stats.last_error, item.control_id)
                await self._drop_connection()
                await self._overdue(item.created_ms)
                await asyncio.sleep(backoff.next_s())
                continue
            try:
                retry = await self._answered(item, reply)
            finally:
                conn.handled(item.control_id)
            if retry:
                await self._overdue(item.created_ms)
                await asyncio.sleep(backoff.next_s())
            else:
                backoff.reset()

    def _link_failed(self, exc: BaseException) -> None:
        self.stats.link_failures += 1
        self.stats.last_error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        self._link_ok = False

    async def _idle(self, backoff: Backoff) -> None:
        """Nothing to send: wait for the reader's next message, and while none comes check the link
        with a heartbeat every ``heartbeat_s`` (by the retry backoff while it is failing). Without
        it a dead link would be found only when a call needs it."""
        wait_s = self.am.heartbeat_s if self._link_ok else backoff.next_s()
        try:
            await asyncio.wait_for(self._wakeup.wait(), wait_s)
        except TimeoutError:
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        self._hb_n += 1
        control_id = f"{self._prefix()}hb-{self.clock()}-{self._hb_n}"
        try:
            conn = await self._connection()
            reply = await conn.send(build_heartbeat(self.parties, control_id, self.clock()), control_id,
                                    self.am.ack_timeout_s)
        except (MllpError, OSError, TimeoutError, ssl.SSLError, Hl7Error) as exc:
            self._link_failed(exc)
            log.warning("alarm manager %s:%d: heartbeat failed: %s", self.am.host, self.am.port,
                        self.stats.last_error)
            await self._drop_connection()
            waited_ms = self.clock() - self._contact_ms
            if waited_ms >= self.am.fault_after_s * 1000:
                await self._set_fault(True, f"alarm manager {self.am.host}:{self.am.port} has not answered for "
                                            f"{waited_ms // 1000} s (heartbeat): {self.stats.last_error}", LINK)
            return
        conn.handled(control_id)
        self._answer_came()
        self.stats.heartbeats += 1
        try:
            ack = read_ack(parse_inbound(reply))
            refused = not ack.accepted
        except Hl7Error:
            refused = True
        if refused:  # it answered, so the link works; say once that it does not take heartbeats
            self.stats.heartbeats_refused += 1
            if self.stats.heartbeats_refused == 1:
                log.warning("alarm manager %s:%d does not accept ACM heartbeats (%s); its answers still show "
                            "the link works", self.am.host, self.am.port, reply[:120].replace("\r", " "))
        if self._fault_cause == LINK:
            await self._set_fault(False, "")

    def _answer_came(self) -> None:
        self._contact_ms = self.clock()
        self._link_ok = True

    async def _answered(self, item: Queued, reply: str) -> bool:
        """Store what the alarm manager's answer means; True when the message must be sent again."""
        self._answer_came()
        try:
            ack = read_ack(parse_inbound(reply))
        except Hl7Error as exc:
            self.stats.bad_replies += 1
            self.stats.last_error = f"unreadable ACK: {exc.message}"
            log.warning("alarm manager: %s; resending %s", self.stats.last_error, item.control_id)
            return True
        if ack.accepted:
            await self.outbox.done(item.seq, ack.code, self.clock())
            self.stats.acked += 1
            if item.phase == "start" and item.call_id:
                await self.controller.call_delivery(item.call_id, ACCEPTED, self._by(), item.control_id)
            await self._set_fault(False, "")
            return False
        if ack.rejected:
            await self.outbox.done(item.seq, f"{ack.code}: {ack.text}", self.clock())
            self.stats.rejected += 1
            log.error("alarm manager rejected %s (%s): %s", item.control_id, ack.code, ack.text)
            if item.call_id:
                await self.controller.call_delivery(item.call_id, f"rejected by the alarm manager "
                                                    f"({item.phase}): {ack.text or ack.code}", self._by(),
                                                    item.control_id)
            await self._set_fault(True, f"the alarm manager rejected a message ({item.control_id}): "
                                        f"{ack.text or ack.code}", REJECTED)
            return False
        self.stats.errors += 1
        self.stats.last_error = f"{ack.code}: {ack.text}"
        if item.call_id and item.control_id not in self._nak_noted:
            self._nak_noted.add(item.control_id)
            await self.controller.call_delivery(item.call_id, f"alarm manager error ({item.phase}), "
                                                f"resending: {ack.text or ack.code}", self._by(), item.control_id)
        return True

    def _by(self) -> str:
        return f"alarm manager {self.am.application}"

    async def _overdue(self, since_ms: int) -> None:
        waited_ms = self.clock() - since_ms
        if waited_ms >= self.am.fault_after_s * 1000:
            await self._set_fault(True, f"alarm manager {self.am.host}:{self.am.port} has not accepted a call "
                                        f"for {waited_ms // 1000} s: {self.stats.last_error}", LINK)

    async def _set_fault(self, faulty: bool, reason: str, cause: str = LINK) -> None:
        if faulty == self._faulty:
            return
        self._faulty = faulty
        self._fault_cause = cause
        if faulty:
            log.error("alarm reporting: %s", reason)
        try:
            await self.controller.system_fault(FAULT_SOURCE, faulty, {"reason": reason} if faulty else None)
        except Exception:
            self._faulty = not faulty  # try again next time
            log.exception("alarm reporting: could not store the alarm-manager fault")

    async def _connection(self) -> MllpConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        await self._drop_connection()
        self._conn = await MllpConnection.open(self.am.host, self.am.port, self._ssl, _ack_control_id,
                                               self.status_from_connection,
                                               server_hostname=self.am.tls.server_name if self.am.tls else None)
        self.stats.connected = True
        log.info("alarm manager %s:%d: connected", self.am.host, self.am.port)
        return self._conn

    async def _drop_connection(self) -> None:
        self.stats.connected = False
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    # ------------------------------------------------------------------ PCD-05 status in
    async def status_from_connection(self, text: str) -> str:
        try:
            inbound = parse_inbound(text)
        except Hl7Error as exc:
            self.stats.bad_replies += 1
            return self._ack(None, "AR", exc.message, exc.code)
        return await self.status(inbound)

    async def status(self, inbound: Inbound) -> str:
        """An ORA^R41 (from our connection or the MLLP listener): stored on the call, then ACKed."""
        if (inbound.msg_type, inbound.trigger) != ("ORA", "R41"):
            self.stats.bad_replies += 1
            return self._ack(inbound, "AR", f"{inbound.msg_type}^{inbound.trigger} is not taken on this "
                                            "connection (ORA^R41 status only)", "200")
        try:
            status = read_ora_r41(inbound)
        except Hl7Error as exc:
            self.stats.bad_replies += 1
            return self._ack(inbound, exc.ack, exc.message, exc.code)
        await self.controller.call_delivery(status.alarm_id, status.status,
                                            f"alarm manager {inbound.sender or self.am.application}",
                                            inbound.control_id)
        self.stats.statuses += 1
        return self._ack(inbound, "AA")

    def _ack(self, inbound: Inbound | None, code: str, text: str = "", error: str = "") -> str:
        self._ack_n += 1
        return build_ack(inbound, code, self.parties, f"{self._prefix()}ack-{self.clock()}-{self._ack_n}",
                         self.clock(), text, error)


def _ack_control_id(text: str) -> str | None:
    """MSA-2 of an ACK (the control id it answers); None for anything else."""
    try:
        inbound = parse_inbound(text)
    except Hl7Error:
        return None
    return inbound.get("MSA", 2) if inbound.msg_type == "ACK" else None
