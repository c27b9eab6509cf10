"""HL7 v2 messages, built and parsed with hl7apy: IHE PCD-04 alarm reports (ORU^R40), the ACKs we
send and read, the alarm manager's PCD-05 status (ORA^R41) and admissions (ADT^A01/A02/A03/A08).

PCD-04 follows the IHE PCD Alarm Communication Management profile on HL7 v2.6: ``ORU^R40^ORU_R01``,
one OBR per alarm (OBR-2, the alarm id, is the call id and stays the same from start to end) and
OBX rows for the alarm (``196616^MDC_EVT_ALARM^MDC``, OBX-8 ``A~<priority>~<type>``), its phase
(``68481``), state (``68482``), inactivation state (``68483``) and priority (``68484``).
Every outgoing message is validated against v2.6 before it is queued (:func:`validate_v26`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Field, Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

VERSION = "2.6"
ACM_PROFILE = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO"
MDC_EVT_ALARM = "196616^MDC_EVT_ALARM^MDC"
MDC_EVT_ACTIVE = "196614^MDC_EVT_ACTIVE^MDC"  # the ACM heartbeat: "this reporter is here" 
MDC_ATTR_EVENT_PHASE = "68481^MDC_ATTR_EVENT_PHASE^MDC"
MDC_ATTR_ALARM_STATE = "68482^MDC_ATTR_ALARM_STATE^MDC"
MDC_ATTR_ALARM_INACTIVATION_STATE = "68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC"
MDC_ATTR_ALARM_PRIORITY = "68484^MDC_ATTR_ALARM_PRIORITY^MDC"
LOCAL_CODES = "99SMR"  # our local coding system (HL7 reserves 99zzz for local tables)
NOTE_CODE = f"1^SMR_EVENT_NOTE^{LOCAL_CODES}"
PRIORITIES = {"high": "PH", "medium": "PM", "low": "PL", "info": "PN"}  # IEC 60601-1-8 tier -> ACM priority
ALARM_KINDS = ("SP", "ST", "SA")  # patient (physiological) / technical / advisory
PHASES = ("start", "update", "escalate", "continue", "end")

# HL7 table 0357 error codes used in our NAKs.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD = "101"
ERR_TABLE_VALUE = "103"
ERR_UNSUPPORTED_MESSAGE = "200"
ERR_UNSUPPORTED_EVENT = "201"
ERR_UNSUPPORTED_PROCESSING_ID = "202"
ERR_UNSUPPORTED_VERSION = "203"
ERR_UNKNOWN_KEY = "204"
ERR_INTERNAL = "207"
ERR_TEXT = {ERR_SEGMENT_SEQUENCE: "Segment sequence error", ERR_REQUIRED_FIELD: "Required field missing",
            ERR_TABLE_VALUE: "Table value not found", ERR_UNSUPPORTED_MESSAGE: "Unsupported message type",
            ERR_UNSUPPORTED_EVENT: "Unsupported event code", ERR_UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
            ERR_UNSUPPORTED_VERSION: "Unsupported version id", ERR_UNKNOWN_KEY: "Unknown key identifier",
            ERR_INTERNAL: "Application internal error"}


class Hl7Error(ValueError):
    """A message we cannot build or take in; ``code`` is an HL7 table 0357 error code."""

    def __init__(self, message: str, code: str = ERR_SEGMENT_SEQUENCE, ack: str = "AR") -> None:
        super().__init__(message)
        self.message, self.code, self.ack = message, code, ack


def escape(text: Any) -> str:
    """Text for one HL7 component: delimiters escaped, line breaks and control characters dropped."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def unescape(text: str) -> str:
    return (text.replace("\\F\\", "|").replace("\\S\\", "^").replace("\\T\\", "&")
            .replace("\\R\\", "~").replace("\\E\\", "\\"))


def components(*parts: Any) -> str:
    """``a^b^c`` from escaped parts, trailing empty components dropped."""
    out = [escape(p) if p is not None else "" for p in parts]
    while out and out[-1] == "":
        out.pop()
    return "^".join(out)


def hl7_time(ms: int) -> str:
    """HL7 DTM in UTC with milliseconds: 20240101120000.123+0000."""
    t = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return t.strftime("%Y%m%d%H%M%S") + f".{ms % 1000:03d}+0000"


# ---------------------------------------------------------------------------------- who we are


@dataclass(frozen=True, slots=True)
class Parties:
    """MSH-3..6 and the location our messages name."""

    application: str = "SMARTROOM"
    equipment_id: str = ""        # EUI-64 of the controller, 16 hex digits (MSH-3.2)
    facility: str = ""            # MSH-4 and PL-4
    peer_application: str = ""    # MSH-5
    peer_facility: str = ""       # MSH-6
    point_of_care: str = ""       # PL-1: the nursing unit
    room: str = ""                # PL-2

    def sender(self) -> str:
        if self.equipment_id:
            return components(self.application, self.equipment_id, "EUI-64")
        return components(self.application)


# ---------------------------------------------------------------------------------- PCD-04


@dataclass(frozen=True, slots=True)
class AlarmReport:
    """One ORU^R40: an alarm (a call) at one moment of its life."""

    control_id: str
    at_ms: int
    alarm_id: str                 # the call id; OBR-2, the same from start to end
    alarm_type: str               # our call type (OBX-3 alternate code)
    label: str                    # "Bathroom emergency" (OBX-5)
    priority: str                 # PH / PM / PL / PN
    kind: str                     # SP / ST / SA
    phase: str                    # start / update / escalate / continue / end
    state: str                    # active / inactive
    inactivation: str             # enabled / alert-acknowledged / audio-paused
    raised_at_ms: int
    bed: str = ""                 # the hospital's bed name (PL-3)
    where: str = ""               # PL-9 location description ("bathroom")
    source: str = ""              # node/input that raised it (OBX-18)
    note: str = ""                # "acknowledged by Nurse Kim"
    patient: Mapping[str, str] | None = None
    placeholder_id: str = ""      # PID-3 when the patient is unknown (anonymous, by location)


def build_oru_r40(report: AlarmReport, parties: Parties) -> str:
    """The ORU^R40 as ER7 text (segments separated by CR), validated against HL7 v2.6."""
    if report.priority not in PRIORITIES.values() or report.kind not in ALARM_KINDS or report.phase not in PHASES:
        raise Hl7Error(f"bad alarm report {report.priority}/{report.kind}/{report.phase}", ERR_TABLE_VALUE)
    msg = _oru_r40(parties, report.control_id, report.at_ms)
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient_group = result.add_group("ORU_R01_PATIENT")
    p = report.patient
    if p:
        patient_group.pid.pid_3 = components(p["id"], "", "", p.get("id_system", ""), "MR")
        patient_group.pid.pid_5 = components(p.get("family") or p.get("name") or p["id"], p.get("given", ""))
        if p.get("birth_date"):
            patient_group.pid.pid_7 = escape(p["birth_date"])
        if p.get("sex"):
            patient_group.pid.pid_8 = escape(p["sex"])
    else:  # unknown patient: an anonymous id for the location, name type U (unspecified)
        patient_group.pid.pid_3 = components(report.placeholder_id or report.alarm_id, "", "", parties.application,
                                             "ANON")
        patient_group.pid.pid_5 = "^^^^^^U"
    visit = patient_group.add_group("ORU_R01_VISIT")
    visit.pv1.pv1_2 = "I" if p else "U"
    visit.pv1.pv1_3 = components(parties.point_of_care, parties.room, report.bed, parties.facility, "", "", "", "",
                                 report.where)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_2 = components(report.alarm_id, parties.application, parties.equipment_id,
                                 "EUI-64" if parties.equipment_id else "")
    order.obr.obr_4 = MDC_EVT_ALARM
    order.obr.obr_7 = hl7_time(report.raised_at_ms)
    rows: list[tuple[str, str, list[str]]] = [
        (f"{MDC_EVT_ALARM}^{escape(report.alarm_type)}^{escape(report.label)}^{LOCAL_CODES}", escape(report.label),
         ["A", report.priority, report.kind]),
        (MDC_ATTR_EVENT_PHASE, report.phase, []),
        (MDC_ATTR_ALARM_STATE, report.state, []),
        (MDC_ATTR_ALARM_INACTIVATION_STATE, report.inactivation, []),
        (MDC_ATTR_ALARM_PRIORITY, report.priority, []),
    ]
    if report.note:
        rows.append((NOTE_CODE, escape(report.note), []))
    for i, (code, value, flags) in enumerate(rows, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(i)
        obx.obx_2 = "ST"
        obx.obx_3 = code
        obx.obx_4 = f"1.0.0.{i}"
        obx.obx_5 = value
        for flag in flags:
            _repeat(obx, "OBX_8", flag)
        obx.obx_11 = "F"
        if i == 1:
            obx.obx_14 = hl7_time(report.at_ms)
            if report.source:
                obx.obx_18 = components(report.source, parties.application)
    text = msg.to_er7()
    validate_v26(text)
    return text


def validate_v26(text: str) -> None:
    """Parse ``text`` strictly against HL7 v2.6 and check its structure; raises :class:`Hl7Error`."""
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        msg.validate()
    except HL7apyException as exc:
        raise Hl7Error(f"not valid HL7 v2.6: {exc}") from exc
    if msg.msh.msh_12.to_er7() != VERSION:
        raise Hl7Error(f"version {msg.msh.msh_12.to_er7()}, not {VERSION}", ERR_UNSUPPORTED_VERSION)


def _repeat(segment: Segment, name: str, value: str) -> None:
    f = Field(name, version=VERSION, validation_level=segment.validation_level)
    f.value = value
    segment.add(f)


def _oru_r40(parties: Parties, control_id: str, at_ms: int) -> Message:
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _msh(msg, parties, "ORU^R40^ORU_R01", control_id, at_ms)
    msg.msh.msh_15 = "AL"   # accept acknowledgement: always (PCD-04)
    msg.msh.msh_16 = "NE"   # application acknowledgement: never
    msg.msh.msh_18 = "UNICODE UTF-8"
    msg.msh.msh_21 = ACM_PROFILE
    return msg


def build_heartbeat(parties: Parties, control_id: str, at_ms: int) -> str:
    """The ACM heartbeat, sent while no alarm is: an ORU^R40 whose one observation is
    ``196614^MDC_EVT_ACTIVE`` (no patient, no alarm), so a dead link to the alarm manager is found
    before a call needs it. Validated against HL7 v2.6 like every alarm report."""
    msg = _oru_r40(parties, control_id, at_ms)
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient_group = result.add_group("ORU_R01_PATIENT")
    patient_group.pid.pid_3 = components(parties.room or "room", "", "", parties.application, "ANON")
    patient_group.pid.pid_5 = "^^^^^^U"
    visit = patient_group.add_group("ORU_R01_VISIT")
    visit.pv1.pv1_2 = "U"
    visit.pv1.pv1_3 = components(parties.point_of_care, parties.room, "", parties.facility)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_2 = components(control_id, parties.application, parties.equipment_id,
                                 "EUI-64" if parties.equipment_id else "")
    order.obr.obr_4 = MDC_EVT_ACTIVE
    order.obr.obr_7 = hl7_time(at_ms)
    obx = order.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1 = "1"
    obx.obx_2 = "ST"
    obx.obx_3 = MDC_EVT_ACTIVE
    obx.obx_4 = "1.0.0.1"
    obx.obx_5 = "heartbeat"
    obx.obx_11 = "F"
    obx.obx_14 = hl7_time(at_ms)
    text = msg.to_er7()
    validate_v26(text)
    return text


def _msh(msg: Message, parties: Parties, msg_type: str, control_id: str, at_ms: int) -> None:
    msg.msh.msh_3 = parties.sender()
    if parties.facility:
        msg.msh.msh_4 = components(parties.facility)
    if parties.peer_application:
        msg.msh.msh_5 = components(parties.peer_application)
    if parties.peer_facility:
        msg.msh.msh_6 = components(parties.peer_facility)
    msg.msh.msh_7 = hl7_time(at_ms)
    msg.msh.msh_9 = msg_type
    msg.msh.msh_10 = escape(control_id)
    msg.msh.msh_11 = "P"


# ---------------------------------------------------------------------------------- taking messages in


@dataclass(frozen=True, slots=True)
class Inbound:
    """A received message, parsed leniently (hospital feeds are rarely textbook v2.x)."""

    text: str
    msg_type: str          # MSH-9.1: ADT, ACK, ORA
    trigger: str           # MSH-9.2: A01, R41
    control_id: str        # MSH-10
    version: str           # MSH-12
    processing_id: str     # MSH-11
    sender: str            # MSH-3.1
    sender_facility: str   # MSH-4.1
    segments: Mapping[str, tuple[tuple[list[list[str]], ...], ...]] = field(default_factory=dict)

    def get(self, segment: str, field_no: int, component: int = 1, occurrence: int = 0) -> str:
        """One component (first repetition) of ``segment``-``field_no``; "" when absent. 1-based."""
        try:
            fields = self.segments[segment][occurrence]
            return unescape(fields[field_no][0][component - 1])
        except (KeyError, IndexError):
            return ""

    def all(self, segment: str) -> int:
        return len(self.segments.get(segment, ()))


def parse_inbound(text: str) -> Inbound:
    """Split and check the header with hl7apy; raises :class:`Hl7Error` with the reason and code."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH"):
        raise Hl7Error("the message does not start with an MSH segment")
    if len(text) < 8 or text[3] != "|" or text[4:8] != "^~\\&":
        raise Hl7Error("MSH-1/MSH-2 must be | and ^~\\& (the standard delimiters)")
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except HL7apyException as exc:
        code = ERR_UNSUPPORTED_VERSION if "version" in str(exc).lower() else ERR_SEGMENT_SEQUENCE
        raise Hl7Error(f"cannot parse the message: {exc}", code) from exc
    except Exception as exc:  # hl7apy raises plain errors on some malformed input; the sender still gets a NAK
        raise Hl7Error(f"cannot parse the message: {type(exc).__name__}: {exc}") from exc
    segments: dict[str, list[tuple[list[list[str]], ...]]] = {}
    for line in text.split("\r"):
        if not line:
            continue
        name, sep, rest = line.partition("|")
        fields: list[list[list[str]]] = [[[name]]]
        if name == "MSH":
            fields.append([["|"]])
            rest = rest.split("|", 1)[1] if "|" in rest else ""
            fields.append([["^~\\&"]])
        fields += [[rep.split("^") for rep in f.split("~")] for f in rest.split("|")] if sep else []
        segments.setdefault(name, []).append(tuple(fields))
    msh = msg.msh
    inbound = Inbound(text, _first(msh.msh_9, 0), _first(msh.msh_9, 1), msh.msh_10.to_er7(),
                      _first(msh.msh_12, 0), _first(msh.msh_11, 0), _first(msh.msh_3, 0), _first(msh.msh_4, 0),
                      {k: tuple(v) for k, v in segments.items()})
    if not inbound.msg_type:
        raise Hl7Error("MSH-9 (message type) is empty", ERR_REQUIRED_FIELD)
    if not inbound.control_id:
        raise Hl7Error("MSH-10 (message control id) is empty", ERR_REQUIRED_FIELD)
    return inbound


def _first(element: Any, index: int) -> str:
    parts = element.to_er7().split("~")[0].split("^")
    return unescape(parts[index]) if index < len(parts) else ""


def build_ack(inbound: Inbound | None, code: str, parties: Parties, control_id: str, at_ms: int,
              text: str = "", error: str = "", error_location: str = "") -> str:
    """An ACK (MSA-1 ``code``: AA / AE / AR) for ``inbound`` (None: it could not be parsed at all).

    A NAK carries the reason in MSA-3 and an ERR segment (ERR-3 table 0357 code, ERR-8 the text).
    """
    trigger = inbound.trigger if inbound else ""
    msg = Message("ACK", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    answering = Parties(parties.application, parties.equipment_id, parties.facility,
                        inbound.sender if inbound else "", inbound.sender_facility if inbound else "")
    _msh(msg, answering, components("ACK", trigger, "ACK"), control_id, at_ms)
    msg.msa.msa_1 = code
    msg.msa.msa_2 = escape(inbound.control_id) if inbound else ""
    if text:
        msg.msa.msa_3 = escape(text[:80])  # MSA-3 is short in v2.6; ERR-8 carries the whole reason
    if code != "AA":
        err = msg.add_segment("ERR")
        if error_location:
            err.err_2 = error_location
        err.err_3 = components(error or ERR_SEGMENT_SEQUENCE, ERR_TEXT.get(error or ERR_SEGMENT_SEQUENCE, ""),
                               "HL70357")
        err.err_4 = "E"
        err.err_8 = escape(text)
    return msg.to_er7()


@dataclass(frozen=True, slots=True)
class Ack:
    code: str          # AA AE AR (or CA CE CR)
    control_id: str    # MSA-2: the message it answers
    text: str          # MSA-3, or ERR-8 when longer

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        """AR / CR: the receiver will not take this message, however often it is sent."""
        return self.code in ("AR", "CR")


def read_ack(inbound: Inbound) -> Ack:
    code = inbound.get("MSA", 1)
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise Hl7Error(f"MSA-1 {code!r} is not an acknowledgement code", ERR_TABLE_VALUE)
    text = inbound.get("ERR", 8) or inbound.get("MSA", 3)
    return Ack(code, inbound.get("MSA", 2), text)


@dataclass(frozen=True, slots=True)
class DispatchStatus:
    """PCD-05 ORA^R41: what the alarm manager did with an alarm (delivered to a phone, read, …)."""

    alarm_id: str
    status: str


def read_ora_r41(inbound: Inbound) -> DispatchStatus:
    alarm_id = inbound.get("OBR", 2)
    if not alarm_id:
        raise Hl7Error("OBR-2 must carry the alarm id from the ORU^R40 it reports on", ERR_REQUIRED_FIELD, "AE")
    texts = []
    for i in range(inbound.all("OBX")):
        value = inbound.get("OBX", 5, 1, i)
        if value:
            rest = inbound.segments["OBX"][i][5][0][1:]
            texts.append(" ".join([value, *[unescape(r) for r in rest if r]]))
    if not texts:
        raise Hl7Error("no OBX-5 status in the ORA^R41", ERR_REQUIRED_FIELD, "AE")
    return DispatchStatus(alarm_id, "; ".join(texts))
