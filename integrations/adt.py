"""Admissions in: HL7 v2 ADT^A01 (admit), A02 (transfer), A03 (discharge) and A08 (update) set and
clear the patient in each of the room's beds, as room events (``bed.patient``) stored through the
``RoomController``; the ACK goes back only once they are stored.

A message is for this room when PV1-3 (point of care ^ room ^ bed) names it: the point of care and
room as the ``[integrations]`` section says the hospital calls them. Messages for other rooms are
acknowledged (AA) and ignored; bad ones get AE (the content is wrong: e.g. no patient id, a bed
this room does not have) or AR (we do not take it: unparseable, another message type or event,
a test feed), each with the reason, and are counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from controller.room import RoomError
from controller.room.hospital import ADMIT, DISCHARGE, TRANSFER_IN, TRANSFER_OUT, UPDATE, Patient
from controller.service import RoomController

from .config import Integrations
from .hl7 import (ERR_INTERNAL, ERR_REQUIRED_FIELD, ERR_UNKNOWN_KEY, ERR_UNSUPPORTED_EVENT,
                  ERR_UNSUPPORTED_PROCESSING_ID, Hl7Error, Inbound, Parties, build_ack)

log = logging.getLogger("smartroom.adt")

TRIGGERS = ("A01", "A02", "A03", "A08")
MAX_TEXT = 64  # a name or an id, not a document


@dataclass(frozen=True, slots=True)
class Location:
    point_of_care: str
    room: str
    bed: str

    def text(self) -> str:
        return "^".join((self.point_of_care, self.room, self.bed)).rstrip("^") or "(empty)"


class Admissions:
    """Answers each ADT message with its ACK; ``stats`` counts accepted, ignored and refused ones."""

    def __init__(self, controller: RoomController, options: Integrations, parties: Parties,
                 new_control_id: Callable[[], str]) -> None:
        self.controller = controller
        self.options = options
        self.parties = parties
        self._new_id = new_control_id
        self.accepted: Counter[str] = Counter()   # by trigger
        self.ignored = 0                          # for other rooms, or nothing to change
        self.refused: Counter[str] = Counter()    # by reason code

    def to_json(self) -> dict[str, object]:
        return {"accepted": dict(self.accepted), "ignored": self.ignored, "refused": dict(self.refused)}

    def refuse(self, inbound: Inbound | None, error: Hl7Error) -> str:
        self.refused[error.code] += 1
        log.warning("ADT %s refused (%s %s): %s", inbound.control_id if inbound else "(unparseable)", error.ack,
                    error.code, error.message)
        return self._ack(inbound, error.ack, error.message, error.code)

    async def handle(self, inbound: Inbound) -> str:
        try:
            note = await self._apply(inbound)
        except Hl7Error as exc:
            return self.refuse(inbound, exc)
        except RoomError as exc:
            return self.refuse(inbound, Hl7Error(exc.message, ERR_UNKNOWN_KEY, "AE"))
        except Exception:  # the store failed: AE, so the sender keeps the message and sends it again
            log.exception("ADT %s: could not store", inbound.control_id)
            return self.refuse(inbound, Hl7Error("could not store the change; send it again", ERR_INTERNAL, "AE"))
        return self._ack(inbound, "AA", note)

    def _ack(self, inbound: Inbound | None, code: str, text: str = "", error: str = "") -> str:
        return build_ack(inbound, code, self.parties, self._new_id(), self.controller.clock(), text, error)

    # ------------------------------------------------------------------ the rules
    async def _apply(self, m: Inbound) -> str:
        if m.trigger not in TRIGGERS:
            raise Hl7Error(f"ADT^{m.trigger} is not used by this room (it takes {', '.join(TRIGGERS)})",
                           ERR_UNSUPPORTED_EVENT)
        if m.processing_id != "P":
            raise Hl7Error(f"MSH-11 processing id {m.processing_id or '(empty)'!r}: this room takes production "
                           "(P) messages only", ERR_UNSUPPORTED_PROCESSING_ID)
        patient = _patient(m)
        by = f"ADT {m.trigger} from {m.sender or '?'}"
        here = self._our_bed(_location(m, 3), "PV1-3")
        known = self.controller.room.bed_of_patient(patient.id)
        if m.trigger == ADT_ADMIT:
            if here is None:
                return self._ignored("not this room")
            if known is not None and known != here:  # admitted again to another bed: it moved
                await self.controller.admission(known, None, TRANSFER_OUT, by, m.control_id)
            return await self._set(here, patient, ADMIT, by, m)
        if m.trigger == ADT_TRANSFER:
            before = self._our_bed(_location(m, 6), "PV1-6") or known
            changed = []
            if before is not None and before != here and self._holds(before, patient.id):
                changed += await self.controller.admission(before, None, TRANSFER_OUT, by, m.control_id)
            if here is not None:
                changed += await self.controller.admission(here, patient, TRANSFER_IN, by, m.control_id)
            return "stored" if changed else self._ignored("nothing to change in this room")
        if m.trigger == ADT_DISCHARGE:
            bed = here if here is not None and self._holds(here, patient.id) else known
            if bed is None:
                return self._ignored("the patient is in no bed of this room")
            return await self._set(bed, None, DISCHARGE, by, m)
        bed = known if known is not None else here  # A08: update who is where we know them to be
        if bed is None:
            return self._ignored("the patient is in no bed of this room")
        return await self._set(bed, patient, UPDATE, by, m)

    async def _set(self, bed: str, patient: Patient | None, reason: str, by: str, m: Inbound) -> str:
        records = await self.controller.admission(bed, patient, reason, by, m.control_id)
        if not records:
            return self._ignored("already so")
        self.accepted[m.trigger] += 1
        return "stored"

    def _ignored(self, why: str) -> str:
        self.ignored += 1
        return f"ignored: {why}"

    def _holds(self, bed: str, patient_id: str) -> bool:
        current = self.controller.room.patients.get(bed)
        return current is not None and current["id"] == patient_id

    def _our_bed(self, where: Location, field_name: str) -> str | None:
        """Our bed for a PV1 location in this room; None for another room; an error for a bed we lack."""
        opts = self.options
        room = opts.hl7_room or self.controller.config.room_id
        if not where.room or where.room.casefold() != room.casefold():
            return None
        if opts.point_of_care and where.point_of_care.casefold() != opts.point_of_care.casefold():
            return None
        beds = self.controller.config.beds
        if not where.bed:
            if len(beds) == 1:
                return beds[0]
            raise Hl7Error(f"{field_name} {where.text()}: names the room but no bed (it has "
                           f"{', '.join(opts.their_bed(b) for b in beds)})", ERR_REQUIRED_FIELD, "AE")
        bed = opts.our_bed(where.bed, beds)
        if bed is None:
            raise Hl7Error(f"{field_name} {where.text()}: room {room} has no bed {where.bed!r} (beds: "
                           f"{', '.join(opts.their_bed(b) for b in beds)})", ERR_UNKNOWN_KEY, "AE")
        return bed


ADT_ADMIT, ADT_TRANSFER, ADT_DISCHARGE, ADT_UPDATE = TRIGGERS


def _clip(text: str) -> str:
    return " ".join(text.split())[:MAX_TEXT]


def _location(m: Inbound, field_no: int) -> Location:
    return Location(_clip(m.get("PV1", field_no, 1)), _clip(m.get("PV1", field_no, 2)),
                    _clip(m.get("PV1", field_no, 3)))


def _patient(m: Inbound) -> Patient:
    if not m.all("PID"):
        raise Hl7Error("no PID segment: the patient is not named", ERR_REQUIRED_FIELD, "AE")
    if not m.all("PV1"):
        raise Hl7Error("no PV1 segment: the patient's location is not given", ERR_REQUIRED_FIELD, "AE")
    patient_id = _clip(m.get("PID", 3, 1))
    if not patient_id:
        raise Hl7Error("PID-3 (patient identifier) is empty", ERR_REQUIRED_FIELD, "AE")
    family = _clip(m.get("PID", 5, 1).split("&")[0])
    given = _clip(m.get("PID", 5, 2))
    return Patient(patient_id, _clip(f"{given} {family}"), family, given, _clip(m.get("PID", 3, 4).split("&")[0]),
                   _clip(m.get("PID", 7, 1))[:8], _clip(m.get("PID", 8, 1)), _clip(m.get("PV1", 19, 1)))
