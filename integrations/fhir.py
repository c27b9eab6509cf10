"""The room as FHIR R4 resources, for an EHR or a data platform that does not know our API:
``Device`` for each node, ``Observation`` for the latest environment readings, ``Communication``
for each call (active, and those raised in a time range) and ``Flag`` for the calls active now.

Every resource is built as plain JSON and validated with the ``fhir.resources`` models (their R4B
package: R4B left Device, Observation, Communication, Flag and Bundle as they are in R4 4.0.1)
before it is served. room_api/fhir.py serves them under ``/fhir/r4``; this module reads only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.observation import Observation

from controller.room import CALL_TYPES
from controller.room.calls import TIMELINE_FIRST_STEPS
from controller.room.reports import CallTimes, collect_calls
from controller.service import RoomController
from controller.store import LogRecord

FHIR_VERSION = "4.0.1"
CONTENT_TYPE = "application/fhir+json"
SYSTEM = "urn:smartroom"                          # our identifiers and local codes live under this
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
# Measure -> (LOINC code where one exists, display, UCUM code). Only room temperature has a LOINC code.
MEASURES: Mapping[str, tuple[str | None, str, str]] = {
    "temp_c": ("60832-3", "Room temperature", "Cel"),
    "rh_pct": (None, "Relative humidity", "%"),
    "co2_ppm": (None, "Carbon dioxide concentration", "[ppm]"),
    "noise_db": (None, "Sound level", "dB"),
    "pressure_pa": (None, "Differential pressure to the corridor", "Pa"),
    "batt_v": (None, "Battery voltage", "V"),
}
PRIORITY = {"high": "stat", "medium": "asap", "low": "urgent", "info": "routine"}  # request-priority


class NotFound(LookupError):
    """No resource with that id."""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _room_ref(controller: RoomController) -> dict[str, Any]:
    return {"identifier": {"system": f"{SYSTEM}:room", "value": controller.config.room_id},
            "display": controller.config.name}


def _patient_ref(patient: Mapping[str, str] | None) -> dict[str, Any] | None:
    if not patient:
        return None
    ref: dict[str, Any] = {"identifier": {"value": patient["id"]}, "display": patient.get("name") or patient["id"]}
    if patient.get("id_system"):
        ref["identifier"]["system"] = f"{SYSTEM}:assigner:{patient['id_system']}"
    return ref


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, [], {}, "")}


# ---------------------------------------------------------------------------------- Device


def devices(controller: RoomController) -> list[dict[str, Any]]:
    return [device(controller, node) for node in sorted(controller.config.nodes)]


def device(controller: RoomController, node: str) -> dict[str, Any]:
    cfg = controller.config.nodes.get(node)
    if cfg is None:
        raise NotFound(f"no Device/{node}")
    status = controller.room.nodes.get(node)
    online = bool(status and status.online)
    notes = [f"location: {cfg.location or 'unspecified'}", f"transport: {cfg.transport}"]
    if cfg.bed:
        notes.append(f"bed: {cfg.bed}")
    if status is not None and status.batt_mv:
        notes.append(f"battery: {status.batt_mv / 1000:.2f} V")
    resource = _clean({
        "resourceType": "Device", "id": node,
        "identifier": [{"system": f"{SYSTEM}:node", "value": node}],
        "status": "active" if online else "inactive",
        "deviceName": [{"name": node, "type": "user-friendly-name"}],
        "type": {"text": f"smartroom {cfg.transport} node ({cfg.location or 'room'})"},
        "version": [{"value": status.fw}] if status is not None and status.fw else [],
        "modelNumber": status.hw if status is not None else None,
        "note": [{"text": "; ".join(notes)}],
    })
    return _validated(Device, resource)


# ---------------------------------------------------------------------------------- Observation


def observations(controller: RoomController, code: str | None = None) -> list[dict[str, Any]]:
    """The newest reading of each measure (or of ``code`` only)."""
    out = []
    for measure, reading in sorted(controller.room.environment.items()):
        if code is not None and code != measure and code != MEASURES.get(measure, (None,))[0]:
            continue
        out.append(observation(controller, measure, reading))
    return out


def observation_id(measure: str, node: str, ts_ms: int) -> str:
    return f"{measure.replace('_', '-')}.{node}.{ts_ms}"


def observation(controller: RoomController, measure: str, reading: Mapping[str, Any]) -> dict[str, Any]:
    loinc, display, unit = MEASURES.get(measure, (None, measure, ""))
    codings = [{"system": LOINC, "code": loinc, "display": display}] if loinc else []
    codings.append({"system": f"{SYSTEM}:measure", "code": measure, "display": display})
    quantity = _clean({"value": reading["value"], "unit": unit, "system": UCUM if unit else None,
                       "code": unit or None})
    resource = {
        "resourceType": "Observation", "id": observation_id(measure, reading["node"], reading["ts_ms"]),
        "status": "final",
        "category": [{"coding": [{"system": f"{SYSTEM}:observation-category", "code": "environment",
                                  "display": "Room environment"}]}],
        "code": {"coding": codings, "text": display},
        "subject": _room_ref(controller),
        "effectiveDateTime": iso(reading["ts_ms"]),
        "device": {"reference": f"Device/{reading['node']}"},
        "valueQuantity": quantity,
    }
    return _validated(Observation, resource)


def observation_by_id(controller: RoomController, obs_id: str) -> dict[str, Any]:
    for measure, reading in controller.room.environment.items():
        if observation_id(measure, reading["node"], reading["ts_ms"]) == obs_id:
            return observation(controller, measure, reading)
    raise NotFound(f"no Observation/{obs_id} (only the newest reading of each measure is served)")


# ---------------------------------------------------------------------------------- calls


def calls(controller: RoomController, history: Iterable[LogRecord], from_ms: int, to_ms: int) -> list[CallTimes]:
    """Calls raised in ``[from_ms, to_ms)`` plus every call active now, oldest first."""
    found = {c.call_id: c for c in collect_calls(history, from_ms, to_ms)}
    for call in controller.room.calls.values():
        if call.id not in found:
            found[call.id] = CallTimes(call.id, call.type, call.ctype.level, call.bed, None, call.raised_at_ms,
                                       patient=call.patient)
    return sorted(found.values(), key=lambda c: (c.raised_at_ms, c.call_id))


def _label(call: CallTimes) -> str:
    ctype = CALL_TYPES.get(call.type or "")
    label = ctype.label if ctype else (call.type or "call")
    return f"{label}{f' — bed {call.bed}' if call.bed else ''}"


def _type_code(call: CallTimes) -> dict[str, Any]:
    ctype = CALL_TYPES.get(call.type or "")
    return {"coding": [{"system": f"{SYSTEM}:call-type", "code": call.type or "unknown",
                        "display": ctype.label if ctype else call.type}], "text": _label(call)}


def communication(controller: RoomController, call: CallTimes) -> dict[str, Any]:
    active = controller.room.calls.get(call.call_id)
    notes = []
    if active is not None:
        notes = [{"time": iso(step["at_ms"]), "text": " ".join(
            str(x) for x in (step["step"].replace("_", " "), step.get("by", ""), step.get("status", "")) if x)}
            for step in active.timeline]
        if active.timeline_omitted:  # the timeline keeps its first and latest steps (controller/room/calls.py)
            notes.insert(TIMELINE_FIRST_STEPS, {"text": f"{active.timeline_omitted} steps between not shown "
                                                        "(the room's event log has them)"})
    else:
        for what, at, by in (("acknowledged", call.acknowledged_at_ms, call.acknowledged_by),
                             ("staff present", call.present_at_ms, call.present_by),
                             ("cleared", call.cleared_at_ms, call.cleared_by)):
            if at is not None:
                notes.append({"time": iso(at), "text": f"{what} {by or ''}".strip()})
    resource = _clean({
        "resourceType": "Communication", "id": call.call_id,
        "identifier": [{"system": f"{SYSTEM}:call", "value": call.call_id}],
        "status": "in-progress" if active is not None else "completed",
        "category": [{"coding": [{"system": COMM_CATEGORY, "code": "alert", "display": "Alert"}]}],
        "priority": PRIORITY.get(call.level or "", "routine"),
        "subject": _patient_ref(call.patient),
        "topic": _type_code(call),
        "sent": iso(call.raised_at_ms),
        "received": iso(call.acknowledged_at_ms) if call.acknowledged_at_ms is not None else None,
        "sender": {"display": f"{controller.config.name} ({controller.config.room_id})"},
        "payload": [{"contentString": _label(call)}],
        "note": notes,
    })
    return _validated(Communication, resource)


def flag(controller: RoomController, call: CallTimes) -> dict[str, Any]:
    active = call.call_id in controller.room.calls
    resource = _clean({
        "resourceType": "Flag", "id": call.call_id,
        "identifier": [{"system": f"{SYSTEM}:call", "value": call.call_id}],
        "status": "active" if active else "inactive",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "safety", "display": "Safety"}]}],
        "code": _type_code(call),
        "subject": _patient_ref(call.patient) or _room_ref(controller),
        "period": _clean({"start": iso(call.raised_at_ms),
                          "end": iso(call.cleared_at_ms) if call.cleared_at_ms is not None else None}),
    })
    return _validated(Flag, resource)


# ---------------------------------------------------------------------------------- bundles


def bundle(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    return _validated(Bundle, {
        "resourceType": "Bundle", "type": "searchset", "total": len(resources),
        "entry": [{"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match"}} for r in resources],
    })


def capability_statement(now_ms: int, base_url: str) -> dict[str, Any]:
    def res(kind: str, params: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
        return _clean({"type": kind, "interaction": [{"code": "read"}, {"code": "search-type"}],
                       "searchParam": [{"name": n, "type": t} for n, t in params]})

    return _validated(CapabilityStatement, {
        "resourceType": "CapabilityStatement", "status": "active", "date": iso(now_ms), "kind": "instance",
        "fhirVersion": FHIR_VERSION, "format": ["json"],
        "implementation": {"description": "smartroom room controller (read only)", "url": base_url},
        "rest": [{"mode": "server", "resource": [
            res("Device"), res("Observation", (("code", "token"),)),
            res("Communication", (("sent", "date"),)), res("Flag"),
        ]}],
    })


def _validated(model: type, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` checked by the fhir.resources model, as the model serialises it."""
    return model.model_validate(resource).model_dump(mode="json", exclude_none=True)
