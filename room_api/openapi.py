"""The OpenAPI 3 description of the API, built from the route table so the two cannot drift.

Each route's request and response shapes are declared here, keyed by (method, path); a test checks
that every route in ``room_api.app.ROUTES`` is described and nothing else is, and schemathesis
checks the live server against this description.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from controller.room import CALL_TYPES, TIERS
from controller.room.calls import TIMELINE_FIRST_STEPS, TIMELINE_LATEST_STEPS
from controller.security.tokens import ROLES

S = dict[str, Any]


def _obj(required: Iterable[str] = (), **props: S) -> S:
    return {"type": "object", "required": list(required), "properties": props}


def _nullable(schema: S) -> S:
    return dict(schema, nullable=True)


INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
MS = {"type": "integer", "description": "epoch milliseconds"}

SCHEMAS: dict[str, S] = {
    "Error": _obj(["error"], error=_obj(["status", "code", "message"], status=INT, code=STR, message=STR)),
    "Call": _obj(
        ["id", "type", "label", "priority", "rank", "cancel_at_origin", "clears", "state", "source", "raised_at_ms",
         "presses", "escalation_level", "reminders", "timeline", "timeline_omitted"],
        id=STR, type={"type": "string", "enum": sorted(CALL_TYPES)}, label=STR,
        priority={"type": "string", "enum": list(TIERS)}, rank=INT, cancel_at_origin=BOOL,
        clears={"type": "string", "enum": ["in_room", "routine", "condition"]},
        state={"type": "string", "enum": ["raised", "annunciated", "acknowledged", "present"]},
        source=_obj(["node", "input"], node=_nullable(STR), input=_nullable(STR)), bed=_nullable(STR),
        raised_at_ms=MS, raised_by=STR, presses=INT, annunciated_at_ms=_nullable(MS),
        acknowledged_at_ms=_nullable(MS), acknowledged_by=_nullable(STR), present_at_ms=_nullable(MS),
        present_by=_nullable(STR), escalation_level=INT, escalated_to=_nullable(STR), reminders=INT,
        next_due_ms=_nullable(MS), held_by_presence=BOOL, detail={"type": "object"},
        timeline={"type": "array", "description": f"the call's first {TIMELINE_FIRST_STEPS} steps and its latest "
                                                 f"{TIMELINE_LATEST_STEPS}",
                  "items": _obj(["step", "at_ms"], step=STR, at_ms=MS, by=STR)},
        timeline_omitted={"type": "integer", "description": "steps between those, not shown (the log has them)"},
        patient=_nullable({"allOf": [{"$ref": "#/components/schemas/Patient"}]})),
    "Patient": _obj(["id"], id=STR, name=STR, family=STR, given=STR, id_system=STR, birth_date=STR, sex=STR,
                    visit=STR),
    "ClearedCall": _obj(["id", "state"], id=STR, state={"type": "string", "enum": ["cleared"]}),
    "Outputs": _obj(["dome", "tone", "indicators"],
                    dome=_obj(["colour", "pattern", "call_id", "presence"], colour=STR, pattern=STR,
                              call_id=_nullable(STR), presence=BOOL, presence_ending=BOOL),
                    tone=_obj(["pattern", "silenced"], pattern=STR, silenced=BOOL),
                    indicators={"type": "object", "additionalProperties": STR}),
    "Room": _obj(["room", "cursor", "calls", "occupancy", "fall_risk", "outputs", "environment", "nodes"],
                 room=_obj(["id", "name", "beds", "profile"], id=STR, name=STR,
                           beds={"type": "array", "items": STR}, profile=STR),
                 cursor=INT, calls={"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                 occupancy=_obj(["state", "room", "bath", "beds", "staff_present"],
                                state={"type": "string", "enum": ["in_bed", "in_bathroom", "in_room", "empty"]},
                                room=BOOL, bath=BOOL, beds={"type": "object", "additionalProperties": BOOL},
                                staff_present=BOOL, staff_since_ms=_nullable(MS), presence_ends_at_ms=_nullable(MS)),
                 fall_risk={"type": "object", "additionalProperties": BOOL},
                 outputs={"$ref": "#/components/schemas/Outputs"},
                 environment={"type": "object", "additionalProperties": _obj(["value", "node", "ts_ms"],
                                                                             value=NUM, node=STR, ts_ms=MS)},
                 nodes={"type": "array", "items": _obj(["id", "online", "state"], id=STR, online=BOOL, state={
                     "type": "string", "enum": ["online", "offline", "cannot_deliver", "never_connected"]})},
                 storage={"$ref": "#/components/schemas/Storage"},
                 patients={"type": "object", "description": "bed -> the patient admissions put there, or null",
                           "additionalProperties": _nullable({"allOf": [{"$ref": "#/components/schemas/Patient"}]})}),
    "Storage": _obj(["state", "write_failures", "readings_not_stored", "min_free_bytes"],
                    state={"type": "string", "enum": ["ok", "readings_paused", "failed"]},
                    failing_since_ms=_nullable(MS), error=_nullable(STR), write_failures=INT,
                    readings_paused_since_ms=_nullable(MS), free_bytes=_nullable(INT), min_free_bytes=INT,
                    readings_not_stored={"type": "object", "additionalProperties": INT},
                    inputs_waiting={"type": "object", "additionalProperties": STR,
                                    "description": "node/input -> meaning, of events refused while failing"}),
    "Event": _obj(["id", "ts_ms", "kind", "data"], id=INT, ts_ms=MS, kind=STR, data={"type": "object"}),
    "EventPage": _obj(["events", "next", "more"], events={"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                      next=INT, more=BOOL),
    "Health": _obj(["status", "reasons", "room", "version", "cursor", "active_calls"],
                   status={"type": "string", "enum": ["ok", "degraded"]},
                   reasons={"type": "array", "description": "why calls may not reach a nurse now (empty: ok)",
                            "items": _obj(["reason", "message"], reason=STR, message=STR, since_ms=_nullable(MS))},
                   room=STR, name=STR, version=STR, cursor=INT, nurse_streams=INT,
                   active_calls=_obj(list(TIERS), **{t: INT for t in TIERS})),
    "Shown": _obj(["shown", "already_shown", "not_active"], shown={"type": "array", "items": STR},
                  already_shown={"type": "array", "items": STR}, not_active={"type": "array", "items": STR}),
    "Gateway": _obj(["accepted", "rejected", "duplicates", "nodes_connected", "readings_stored"],
                    accepted={"type": "object", "additionalProperties": INT},
                    rejected={"type": "object", "additionalProperties": INT}, duplicates=INT, connections=INT,
                    nodes_connected={"type": "array", "items": STR}, readings_stored=INT,
                    readings_dropped={"type": "object", "description": "node/reason (over_budget) -> readings "
                                      "dropped", "additionalProperties": INT},
                    undelivered_sessions={"type": "object", "description": "node -> sessions ended by a "
                                          "rejection with no event delivered", "additionalProperties": INT},
                    transport={"type": "object", "description": "node connections served by transport: tls, "
                               "plain ([gateway] plain_tcp)", "additionalProperties": INT},
                    unmapped_inputs={"type": "object", "description": "node/input -> events from an input the "
                                     "room file gives no meaning", "additionalProperties": INT},
                    readings_not_stored={"type": "object", "additionalProperties": INT,
                                         "description": "by reason: disk_floor, storage_failed"},
                    devices=_nullable({"type": "object", "description": "Pi-attached GPIO nodes and the BLE "
                                       "scanner's state (stopped, starting, scanning, degraded)"})),
    "Readings": _obj(["measure", "node", "from_ms", "to_ms", "step_ms", "requested_step_ms", "step_rounded",
                      "source", "buckets", "limits"],
                     measure=STR, node=_nullable(STR), from_ms=MS, to_ms=MS, step_ms=INT, requested_step_ms=INT,
                     step_rounded=BOOL, source={"type": "string", "enum": ["raw", "rollup", "mixed"]},
                     buckets={"type": "array", "items": _obj(["start_ms", "n", "min", "max", "mean"], start_ms=MS,
                                                             n=INT, min=NUM, max=NUM, mean=NUM)},
                     limits=_obj(["low", "high"], low=_nullable(NUM), high=_nullable(NUM))),
    "Integrations": _obj(["configured"], configured=BOOL,
                         alarm_manager=_nullable({"type": "object", "description": "link, outbox and ACK counters"}),
                         admissions={"type": "object"}, mllp_listener={"type": "object"}, webhooks={"type": "object"}),
    "FallRisk": _obj(["bed", "fall_risk"], bed=STR, fall_risk=BOOL),
    "Report": _obj(["from_ms", "to_ms", "calls", "tiers", "responders"], from_ms=MS, to_ms=MS,
                   calls={"type": "array", "items": {"type": "object"}}, tiers={"type": "object"},
                   responders={"type": "object"}),
    "Token": _obj(["id", "name", "role", "created_ms", "revoked_ms", "active"], id=INT, name=STR,
                  role={"type": "string", "enum": list(ROLES)}, created_ms=MS, revoked_ms=_nullable(MS),
                  active=BOOL),
    "Node": _obj(["node", "state"], node=STR,
                 state={"type": "string", "enum": ["provisioned", "waiting", "adopted", "decommissioned"]},
                 hw=STR, fw=STR, caps={"type": "array", "items": STR}, input_names={"type": "array", "items": STR},
                 bed=_nullable(STR), role=_nullable(STR), inputs={"type": "object"}, enrolled_by=STR,
                 enrolled_ms=MS, adopted_by=_nullable(STR), adopted_ms=_nullable(MS), rotation_pending=BOOL,
                 connected=BOOL, wrong_key=INT, default_inputs={"type": "object"}),
    "NodeList": _obj(["nodes", "audit"], nodes={"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                     audit={"type": "array", "items": {"type": "object"}}),
    "Identified": _obj(["node", "identify"], node=STR, identify=BOOL),
    "TokenList": _obj(["tokens"], tokens={"type": "array", "items": {"$ref": "#/components/schemas/Token"}}),
    "AuditPage": _obj(["entries"], entries={"type": "array", "items": _obj(
        ["ts_ms", "actor", "action", "target", "status"], ts_ms=MS, actor=STR, role=_nullable(STR), action=STR,
        target=STR, status=INT, remote=_nullable(STR))}),
    "Firmware": _obj(["nodes", "bundles", "bad_bundles", "updates", "refused", "rollouts"],
                     nodes={"type": "array", "items": _obj(["node", "online", "fw", "hw", "ota", "update"], node=STR,
                                                           online=BOOL, fw=_nullable(STR), hw=_nullable(STR),
                                                           ota=BOOL, update=_nullable({"type": "object"}))},
                     bundles={"type": "array", "items": _obj(["name", "version", "board", "sha256"], name=STR,
                                                             version=STR, board=STR, sha256=STR, files=INT,
                                                             bytes=INT)},
                     bad_bundles={"type": "array", "items": {"type": "object"}},
                     updates={"type": "array", "items": {"type": "object"}},
                     refused={"type": "array", "items": {"type": "object"}},
                     rollouts={"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}}),
    "Rollout": _obj(["id", "version", "bundle", "state", "nodes"], id=INT, version=STR, bundle=STR, board=STR,
                    stages={"type": "array", "items": {"type": "array", "items": STR}}, actor=STR, started_ms=MS,
                    state={"type": "string", "enum": ["running", "done", "stopped"]}, reason=_nullable(STR),
                    nodes={"type": "array", "items": {"type": "object"}}),
    "Config": _obj(["room", "beds", "nodes", "timers", "environment", "escalation_levels"], source=STR,
                   room={"type": "object"}, beds={"type": "array", "items": STR}, heartbeat_ms=INT,
                   escalation_levels={"type": "array", "items": STR}, timers={"type": "object"},
                   environment={"type": "object"}, nodes={"type": "object"}),
}

BY_BODY = _obj(by={"type": "string", "minLength": 1, "maxLength": 64,
                   "description": "who does it; defaults to the token's name"})
# Routes whose body may be left out (an empty body means {}: done by the token's name).
OPTIONAL_BODY = {("POST", "/api/v1/calls/{call_id}/ack"), ("POST", "/api/v1/calls/{call_id}/clear"),
                 ("POST", "/api/v1/room/silence"), ("POST", "/api/v1/nodes/{node}/identify"),
                 ("POST", "/api/v1/nodes/{node}/rotate"), ("POST", "/api/v1/nodes/{node}/decommission")}
_ROUTE_DOCS: dict[tuple[str, str], S] = {
    ("GET", "/"): {"html": True},
    ("GET", "/facilities"): {"html": True},
    ("GET", "/api/v1/health"): {"ok": "Health"},
    ("GET", "/api/v1/openapi.json"): {"ok": None},
    ("GET", "/api/v1/room"): {"ok": "Room"},
    ("GET", "/api/v1/events"): {"ok": "EventPage", "query": {"after": INT, "limit": INT}, "errors": [400]},
    ("GET", "/api/v1/events/stream"): {"sse": True, "query": {"after": INT, "endpoint": STR}, "errors": [400]},
    ("POST", "/api/v1/calls/shown"): {"ok": "Shown", "errors": [400], "body": _obj(
        ["calls"], calls={"type": "array", "minItems": 1, "maxItems": 100,
                          "items": {"type": "string", "minLength": 1, "maxLength": 64}},
        by={"type": "string", "minLength": 1, "maxLength": 64,
            "description": "the screen, as recorded on the call's annunciation; defaults to the token's name"})},
    ("POST", "/api/v1/calls/{call_id}/ack"): {"ok": "Call", "body": BY_BODY, "errors": [400, 404, 409]},
    ("POST", "/api/v1/calls/{call_id}/clear"): {"ok": "ClearedCall", "body": BY_BODY, "errors": [400, 404, 409]},
    ("POST", "/api/v1/room/silence"): {"ok": "Outputs", "body": BY_BODY, "errors": [400]},
    ("PUT", "/api/v1/beds/{bed}/fall-risk"): {
        "ok": "FallRisk", "errors": [400, 404],
        "body": _obj(["enabled"], enabled=BOOL, by=BY_BODY["properties"]["by"])},
    ("GET", "/api/v1/reports/response-times"): {"ok": "Report", "query": {"from": STR, "to": STR}, "errors": [400]},
    ("GET", "/api/v1/readings"): {"ok": "Readings", "errors": [400], "query": {
        "measure": {"type": "string", "enum": ["batt_v", "co2_ppm", "noise_db", "pressure_pa", "rh_pct", "temp_c"]},
        "from": STR, "to": STR, "step": {"type": "string", "description": "whole seconds, or 30s, 5m, 1h, 1d"},
        "node": STR}},
    ("GET", "/api/v1/gateway"): {"ok": "Gateway"},
    ("GET", "/api/v1/integrations"): {"ok": "Integrations", "errors": [503]},
    ("GET", "/api/v1/config"): {"ok": "Config"},
    ("GET", "/api/v1/tokens"): {"ok": "TokenList"},
    ("POST", "/api/v1/tokens"): {"created": "Token", "errors": [400],
                                 "body": _obj(["role", "name"], role={"type": "string", "enum": list(ROLES)},
                                              name={"type": "string", "minLength": 1, "maxLength": 64})},
    ("DELETE", "/api/v1/tokens/{name}"): {"ok": "Token", "errors": [404]},
    ("GET", "/api/v1/audit"): {"ok": "AuditPage", "query": {"after_ms": INT, "limit": INT}, "errors": [400]},
    ("GET", "/metrics"): {"text": True},
    ("GET", "/api/v1/nodes"): {"ok": "NodeList", "errors": [404]},
    ("POST", "/api/v1/nodes/{node}/assign"): {"ok": "Node", "errors": [400, 404, 409], "body": _obj(
        ["role"], role={"type": "string", "enum": ["bedside", "bathroom", "door", "wearable", "environment"]},
        bed=_nullable(STR), inputs={"type": "object", "additionalProperties": STR}, by=BY_BODY["properties"]["by"])},
    ("POST", "/api/v1/nodes/{node}/identify"): {"ok": "Identified", "body": BY_BODY, "errors": [400, 404, 409]},
    ("POST", "/api/v1/nodes/{node}/rotate"): {"ok": "Node", "body": BY_BODY, "errors": [400, 404, 409]},
    ("POST", "/api/v1/nodes/{node}/replace"): {"ok": "Node", "errors": [400, 404, 409], "body": _obj(
        ["new"], new=STR, by=BY_BODY["properties"]["by"])},
    ("POST", "/api/v1/nodes/{node}/decommission"): {"ok": "Node", "body": BY_BODY, "errors": [400, 404, 409]},
    ("GET", "/api/v1/firmware"): {"ok": "Firmware", "errors": [404]},
    ("POST", "/api/v1/firmware/rollouts"): {"created": "Rollout", "errors": [400, 404, 409], "body": _obj(
        ["bundle", "nodes"], bundle={"type": "string", "minLength": 1, "description": "folder name or hash"},
        nodes={"type": "array", "minItems": 1, "maxItems": 500, "items": STR})},
    ("GET", "/fhir/r4/metadata"): {"fhir": "CapabilityStatement"},
    ("GET", "/fhir/r4/Device"): {"fhir": "Bundle"},
    ("GET", "/fhir/r4/Device/{id}"): {"fhir": "Device", "errors": [404]},
    ("GET", "/fhir/r4/Observation"): {"fhir": "Bundle", "query": {"code": STR}},
    ("GET", "/fhir/r4/Observation/{id}"): {"fhir": "Observation", "errors": [404]},
    ("GET", "/fhir/r4/Communication"): {"fhir": "Bundle", "errors": [400], "query": {
        "sent": {"type": "string", "description": "ge<date>, gt<date>, le<date> or lt<date> (ISO 8601 or ms)"}}},
    ("GET", "/fhir/r4/Communication/{id}"): {"fhir": "Communication", "errors": [404]},
    ("GET", "/fhir/r4/Flag"): {"fhir": "Bundle"},
    ("GET", "/fhir/r4/Flag/{id}"): {"fhir": "Flag", "errors": [404]},
}


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: S | None) -> S:
    return {"application/json": {"schema": schema if schema is not None else {"type": "object"}}}


def _error(description: str) -> S:
    return {"description": description, "content": _json(_ref("Error"))}


def _operation(route: Any, doc: S) -> S:
    op: S = {"summary": route.summary, "operationId": f"{route.method.lower()}_{_slug(route.path)}",
             "responses": {}}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for name in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": name, "in": "query", "required": False, "schema": schema}
               for name, schema in doc.get("query", {}).items()]
    if params:
        op["parameters"] = params
    if "body" in doc:
        op["requestBody"] = {"required": (route.method, route.path) not in OPTIONAL_BODY,
                             "content": _json(doc["body"])}
    responses = op["responses"]
    if doc.get("html"):
        responses["200"] = {"description": "HTML page", "content": {"text/html": {"schema": STR}}}
    elif doc.get("text"):
        responses["200"] = {"description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": STR}}}
    elif doc.get("fhir"):
        responses["200"] = {"description": f"FHIR R4 {doc['fhir']} (JSON)", "content": {"application/fhir+json": {
            "schema": _obj(["resourceType"], resourceType={"type": "string", "enum": [doc["fhir"]]})}}}
    elif doc.get("sse"):
        responses["200"] = {"description": "Server-Sent Events; each data line is an Event",
                            "content": {"text/event-stream": {"schema": STR}}}
    elif "created" in doc:
        responses["201"] = {"description": "Created; 'token' is the secret, shown only now",
                            "content": _json({"allOf": [_ref(doc["created"]), _obj(["token"], token=STR)]})}
    else:
        responses["200"] = {"description": "OK", "content": _json(_ref(doc["ok"]) if doc["ok"] else None)}
    for status in doc.get("errors", []):
        responses[str(status)] = _error(ERROR_TEXT[status])
    if route.roles is not None:
        op["security"] = [{"bearer": []}]
        op["x-roles"] = sorted(route.roles)
        responses["401"] = _error("No valid bearer token")
        responses["403"] = _error("The token's role may not do this")
        responses["429"] = _error("Too many failed logins from this address")
        if "body" in doc or route.method in ("POST", "PUT", "DELETE"):
            responses.setdefault("400", _error("Bad request"))
            responses["503"] = _error("The room database cannot be written: nothing was recorded")
    else:
        op["security"] = []
    return op


ERROR_TEXT = {400: "Bad request", 404: "Not found", 409: "Refused by the room's rules",
              503: "Configured, and still starting (in the moment after a start)"}


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"


def build(routes: Iterable[Any]) -> S:
    paths: dict[str, S] = {}
    for route in routes:
        doc = _ROUTE_DOCS[(route.method, route.path)]
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, doc)
    return {
        "openapi": "3.0.3",
        "info": {"title": "smartroom room controller", "version": "1",
                 "description": "One hospital room: nurse-call state, events, reports, node health. "
                                "Bearer tokens carry a role (nurse, facilities, admin, integration); "
                                "x-roles on each operation lists who may call it."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def described(spec: S) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
