"""Who may see patients: the admission system names the patient in each bed, and calls carry that
name; staff who do not care for patients (the ``facilities`` role) see the room without it.

"Minimum necessary" (HIPAA 45 CFR 164.502(b), GDPR art. 5(1)(c)): facilities staff look after nodes,
the gateway and the air, and need neither a name nor a record number for that. What they get is the
same JSON with every patient replaced by ``null``; what happened to a bed (``reason``) stays.
"""

from __future__ import annotations

from typing import Any, Mapping

PATIENT_READERS = frozenset({"nurse", "admin", "integration"})


def sees_patients(role: str) -> bool:
    return role in PATIENT_READERS


def room_without_patients(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The room snapshot with the beds' patients and the calls' patients as null."""
    out = dict(snapshot)
    if isinstance(out.get("patients"), Mapping):
        out["patients"] = {bed: None for bed in out["patients"]}
    if isinstance(out.get("calls"), list):
        out["calls"] = [_no_patient(c) for c in out["calls"]]
    return out


def record_without_patient(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event's JSON (``{"id", "ts_ms", "kind", "data"}``) with its patient as null."""
    data = record.get("data")
    if not isinstance(data, Mapping) or "patient" not in data:
        return dict(record)
    return {**record, "data": _no_patient(data)}


def _no_patient(obj: Any) -> Any:
    if isinstance(obj, Mapping) and obj.get("patient") is not None:
        return {**obj, "patient": None}
    return obj
