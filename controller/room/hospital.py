"""What the hospital's systems tell the room: the patient in each bed (admissions, HL7 ADT) and how
far a call got through the hospital's alarm manager (IHE PCD-04 acknowledgements, PCD-05 status).

One part of :class:`~controller.room.state.Room`, with the same decide → store → apply shape: the
adapters in ``integrations/`` parse the wire messages and call ``RoomController.admission`` /
``call_delivery``, which decide here, store, then apply. A patient is named only because the
admission system named them (docs/integration.md); nothing here reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..store import LogEntry
from .calls import CallRules, UnknownBed

if TYPE_CHECKING:
    from .config import RoomConfig

# Why a bed's patient changed, as recorded in bed.patient's "reason".
ADMIT = "admit"
TRANSFER_IN = "transfer_in"
TRANSFER_OUT = "transfer_out"
DISCHARGE = "discharge"
UPDATE = "update"
REASONS = (ADMIT, TRANSFER_IN, TRANSFER_OUT, DISCHARGE, UPDATE)
MAX_STATUS_LEN = 200  # a status line on a call's timeline, not a document


@dataclass(frozen=True, slots=True)
class Patient:
    """Who lies in a bed, as the admission system (HL7 PID / PV1) says."""

    id: str                 # PID-3 identifier (e.g. the medical record number)
    name: str = ""          # display name, "Given Family"
    family: str = ""
    given: str = ""
    id_system: str = ""     # PID-3 assigning authority
    birth_date: str = ""    # YYYYMMDD as sent
    sex: str = ""
    visit: str = ""         # PV1-19 visit number

    def to_json(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) or f.name == "id"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Patient":
        return cls(**{f.name: str(d.get(f.name, "")) for f in fields(cls)})


class HospitalRules(CallRules):
    """Patients in beds and the alarm manager's delivery steps on calls."""

    config: RoomConfig
    patients: dict[str, dict[str, str] | None]
    fall_risk: dict[str, bool]

    def patient_for(self, bed: str | None) -> dict[str, str] | None:
        """The bed's patient; a call without a bed names the patient only in a one-bed room."""
        if bed is None and len(self.config.beds) == 1:
            bed = self.config.beds[0]
        return self.patients.get(bed) if bed is not None else None

    def decide_patient(self, bed: str, patient: Patient | None, reason: str, by: str, control_id: str,
                       now_ms: int) -> list[LogEntry]:
        """Set (or, with None, clear) the patient in ``bed``; a no-op when nothing changes.

        The bed's fall-risk (bed-exit alarm) belongs to the patient: it is turned off when the
        patient leaves the bed (discharge, transfer out) or another patient takes it.
        """
        if bed not in self.patients:
            raise UnknownBed(f"no bed '{bed}' in room {self.config.room_id} (beds: {', '.join(self.config.beds)})")
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
        current = self.patients[bed]
        new = patient.to_json() if patient is not None else None
        if new == current:
            return []
        entries = [LogEntry("bed.patient", {"bed": bed, "patient": new, "reason": reason, "by": by,
                                            "control_id": control_id, "at_ms": now_ms})]
        other_patient = current is not None and (new is None or new["id"] != current["id"])
        if other_patient and self.fall_risk.get(bed):
            entries.append(LogEntry("bed.fall_risk", {"bed": bed, "enabled": False, "at_ms": now_ms,
                                                      "by": f"{by}: {reason.replace('_', ' ')}"}))
        return entries

    def bed_of_patient(self, patient_id: str) -> str | None:
        for bed, patient in self.patients.items():
            if patient is not None and patient["id"] == patient_id:
                return bed
        return None

    def decide_delivery(self, call_id: str, status: str, by: str, now_ms: int,
                        control_id: str = "") -> list[LogEntry]:
        """A step on the call's timeline from the alarm manager ("accepted", "delivered to …", "read")."""
        status = " ".join(status.split())[:MAX_STATUS_LEN] or "(no status text)"
        data: dict[str, Any] = {"call_id": call_id, "status": status, "by": by, "at_ms": now_ms}
        if control_id:
            data["control_id"] = control_id
        return [LogEntry("call.delivery", data)]

    # ------------------------------------------------------------------ state changes
    def _apply_bed_patient(self, d: dict[str, Any]) -> None:
        self.patients[d["bed"]] = d["patient"]
        if d["patient"] is not None:
            for call in self.calls.values():  # an update (A08) renames the patient on open calls too
                if call.patient is not None and call.patient.get("id") == d["patient"]["id"]:
                    call.patient = d["patient"]

    def _apply_delivery(self, d: dict[str, Any]) -> None:
        self._step(d, "delivery", status=d["status"])


HOSPITAL_APPLY: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "bed.patient": HospitalRules._apply_bed_patient,
    "call.delivery": HospitalRules._apply_delivery,
}
