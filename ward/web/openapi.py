"""The ward console API's OpenAPI 3 description, built from its route table (as the room's is)."""

from __future__ import annotations

import re
from typing import Any, Iterable

S = dict[str, Any]
STR, INT, BOOL, MS = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "integer",
                                                                                     "description": "epoch ms"}


def _obj(required: Iterable[str] = (), **props: S) -> S:
    return {"type": "object", "required": list(required), "properties": props}


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


REACH = _obj(["level", "to", "people"], level=INT, to=STR, people={"type": "array", "items": STR})
CALL = _obj(["id", "room", "type", "priority", "rank", "raised_at_ms", "reach"], id=STR, room=STR, room_name=STR,
            type=STR, label=STR, priority={"type": "string", "enum": ["high", "medium", "low", "info"]}, rank=INT,
            state=STR, bed={"type": "string", "nullable": True}, raised_at_ms=MS, cancel_at_origin=BOOL,
            escalation_level=INT, reach=REACH, declined={"type": "array", "items": STR},
            accepted_by={"type": "string", "nullable": True})
ALARM = _obj(["room", "type", "text"], room=STR, type=STR, text=STR, since_ms={"type": "integer", "nullable": True})
SHIFT = _obj(["id", "name", "charge", "staff", "rooms"], id=INT, name=STR, charge=STR,
             staff={"type": "array", "items": STR},
             rooms={"type": "object", "additionalProperties": {"type": "object", "additionalProperties": STR}},
             set_by=STR, set_ms=MS)
SCHEMAS: dict[str, S] = {
    "Error": _obj(["error"], error=_obj(["status", "code", "message"], status=INT, code=STR, message=STR)),
    "Call": CALL,
    "Alarm": ALARM,
    "Ward": _obj(["ward", "cursor", "broker", "calls", "alarms", "rooms"], ward={"type": "object"}, cursor=INT,
                 broker=STR, calls={"type": "array", "items": _ref("Call")},
                 alarms={"type": "array", "items": _ref("Alarm")}, rooms={"type": "array", "items": _obj(
                     ["room", "status"], room=STR, name=STR, status=STR, dome={"type": "object", "nullable": True})},
                 shift={"nullable": True, "allOf": [_ref("Shift")]}),
    "Me": _obj(["person", "cursor", "calls", "alarms"], person=STR, cursor=INT, charge=BOOL, on_shift=BOOL,
               rooms={"type": "array", "items": {"type": "object"}}, calls={"type": "array", "items": _ref("Call")},
               alarms={"type": "array", "items": _ref("Alarm")}),
    "Shift": SHIFT,
    "ShiftBox": _obj(["shift"], shift={"nullable": True, "allOf": [_ref("Shift")]}),
    "Result": _obj(["id", "room", "ok", "status", "code", "message"], id=STR, room=STR, ok=BOOL, status=INT, code=STR,
                   message=STR, result={"type": "object", "nullable": True}),
    "Declined": _obj(["room", "call_id", "level", "to", "people", "declined"], room=STR, call_id=STR, level=INT,
                     to=STR, people={"type": "array", "items": STR}, declined={"type": "array", "items": STR}),
    "EventPage": _obj(["events", "next", "more"], events={"type": "array", "items": {"type": "object"}}, next=INT,
                      more=BOOL),
    "Report": _obj(["from_ms", "to_ms", "total", "rooms", "priorities", "nurses"], from_ms=MS, to_ms=MS,
                   total={"type": "object"}, rooms={"type": "object"}, priorities={"type": "object"},
                   nurses={"type": "object"}),
    "Commands": _obj(["commands"], commands={"type": "array", "items": {"type": "object"}}),
    "AuditPage": _obj(["entries"], entries={"type": "array", "items": {"type": "object"}}),
    "Health": _obj(["status"], status=STR, ward=STR, broker=STR, rooms=INT, alarms=INT, active_calls=INT),
    "WardRollout": _obj(["id", "key", "bundle", "version", "board", "by", "state", "rooms"], id=INT, key=STR,
                        bundle=STR, version=STR, board=STR, by=STR, started_ms=MS, updated_ms=MS,
                        state={"type": "string", "enum": ["running", "held", "done", "stopped"]},
                        reason={"type": "string", "nullable": True}, rooms={"type": "array", "items": _obj(
                            ["room", "nodes", "state"], room=STR, nodes={"type": "array", "items": STR},
                            skipped={"type": "object", "additionalProperties": STR},
                            state={"type": "string", "enum": ["waiting", "starting", "running", "done", "skipped",
                                                              "refused", "stopped"]},
                            room_rollout={"type": "integer", "nullable": True},
                            reason={"type": "string", "nullable": True},
                            updates={"type": "array", "items": {"type": "object"}})}),
    "WardFirmware": _obj(["rooms", "bundles", "rollouts"], rooms={"type": "array", "items": _obj(
        ["room", "status", "nodes"], room=STR, name=STR, status=STR, reported_ms={"type": "integer", "nullable": True},
        nodes={"type": "array", "items": _obj(["node", "online"], node=STR, online=BOOL, ota=BOOL,
                                              fw={"type": "string", "nullable": True},
                                              hw={"type": "string", "nullable": True},
                                              update={"type": "object", "nullable": True})},
        rollout={"type": "object", "nullable": True})},
        bundles={"type": "array", "items": _obj(["sha256", "version", "board", "rooms"], sha256=STR, version=STR,
                                                board=STR, rooms={"type": "array", "items": STR},
                                                missing={"type": "array", "items": STR},
                                                refused={"type": "object", "additionalProperties": STR})},
        rollouts={"type": "array", "items": _ref("WardRollout")}),
}
BY = _obj(by={"type": "string", "minLength": 1, "maxLength": 64, "description": "who; default the token's name"})
DOCS: dict[tuple[str, str], S] = {
    ("GET", "/"): {"html": True},
    ("GET", "/staff"): {"html": True},
    ("GET", "/api/v1/health"): {"ok": "Health"},
    ("GET", "/api/v1/openapi.json"): {"ok": None},
    ("GET", "/api/v1/ward"): {"ok": "Ward"},
    ("GET", "/api/v1/me"): {"ok": "Me"},
    ("GET", "/api/v1/events"): {"ok": "EventPage", "query": {"after": INT, "limit": INT}, "errors": [400]},
    ("GET", "/api/v1/events/stream"): {"sse": True, "query": {"after": INT}, "errors": [400]},
    ("POST", "/api/v1/rooms/{room}/calls/{call_id}/ack"): {"ok": "Result", "body": BY, "errors": [400, 404, 409, 503, 504]},
    ("POST", "/api/v1/rooms/{room}/calls/{call_id}/clear"): {"ok": "Result", "body": BY,
                                                             "errors": [400, 404, 409, 503, 504]},
    ("POST", "/api/v1/rooms/{room}/calls/{call_id}/accept"): {"ok": "Result", "errors": [404, 409, 503, 504]},
    ("POST", "/api/v1/rooms/{room}/calls/{call_id}/decline"): {"ok": "Declined", "errors": [404]},
    ("POST", "/api/v1/rooms/{room}/silence"): {"ok": "Result", "body": BY, "errors": [400, 404, 503, 504]},
    ("PUT", "/api/v1/rooms/{room}/beds/{bed}/fall-risk"): {"ok": "Result", "errors": [400, 404, 503, 504],
                                                          "body": _obj(["enabled"], enabled=BOOL,
                                                                       by=BY["properties"]["by"])},
    ("GET", "/api/v1/assignments"): {"ok": "ShiftBox"},
    ("PUT", "/api/v1/assignments"): {"ok": "ShiftBox", "errors": [400], "body": _obj(
        ["shift", "charge"], shift=STR, charge=STR, staff={"type": "array", "items": STR},
        rooms={"type": "object", "additionalProperties": {"type": "object", "additionalProperties": STR}})},
    ("GET", "/api/v1/reports/response-times"): {"ok": "Report", "query": {"from": STR, "to": STR}, "errors": [400]},
    ("GET", "/api/v1/commands"): {"ok": "Commands", "query": {"limit": INT}, "errors": [400]},
    ("GET", "/api/v1/audit"): {"ok": "AuditPage", "query": {"after_ms": INT, "limit": INT}, "errors": [400]},
    ("GET", "/metrics"): {"text": True},
    ("GET", "/firmware"): {"html": True},
    ("GET", "/api/v1/firmware"): {"ok": "WardFirmware"},
    ("POST", "/api/v1/firmware/rollouts"): {"ok": "WardRollout", "status": 201, "errors": [400, 404, 409],
                                            "body": _obj(["bundle"], bundle=STR, rooms={"type": "array", "items": STR},
                                                         by=BY["properties"]["by"])},
    ("POST", "/api/v1/firmware/rollouts/{rollout}/stop"): {"ok": "WardRollout", "body": BY, "errors": [400, 404, 409]},
}
_ERRORS = {400: "Bad request", 404: "Not found", 409: "Refused by the room's rules", 503: "The room or broker is "
           "unreachable (the room is offline)", 504: "The room did not answer"}


def _json(schema: S | None) -> S:
    return {"application/json": {"schema": schema if schema is not None else {"type": "object"}}}


def _operation(route: Any, doc: S) -> S:
    op: S = {"summary": route.summary, "responses": {},
             "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower()).strip('_') or 'root'}"}
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for n in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in doc.get("query", {}).items()]
    if params:
        op["parameters"] = params
    if "body" in doc:
        op["requestBody"] = {"required": True, "content": _json(doc["body"])}
    r = op["responses"]
    if doc.get("html"):
        r["200"] = {"description": "HTML page", "content": {"text/html": {"schema": STR}}}
    elif doc.get("text"):
        r["200"] = {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": STR}}}
    elif doc.get("sse"):
        r["200"] = {"description": "Server-Sent Events; id is the ward log cursor",
                    "content": {"text/event-stream": {"schema": STR}}}
    else:
        r[str(doc.get("status", 200))] = {"description": "Created" if doc.get("status") == 201 else "OK",
                                          "content": _json(_ref(doc["ok"]) if doc["ok"] else None)}
    for status in doc.get("errors", []):
        r[str(status)] = {"description": _ERRORS[status], "content": _json(_ref("Error"))}
    if route.roles is not None:
        op["security"] = [{"bearer": []}]
        op["x-roles"] = sorted(route.roles)
        for status, text in ((401, "No valid bearer token"), (403, "The token's role may not do this"),
                             (429, "Too many failed logins from this address")):
            r[str(status)] = {"description": text, "content": _json(_ref("Error"))}
        if route.method in ("POST", "PUT"):
            r.setdefault("400", {"description": "Bad request", "content": _json(_ref("Error"))})
    else:
        op["security"] = []
    return op


def build(routes: Iterable[Any]) -> S:
    paths: dict[str, S] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, DOCS[(route.method, route.path)])
    return {"openapi": "3.0.3",
            "info": {"title": "smartroom ward console", "version": "1",
                     "description": "Every room of a unit over MQTT: calls in priority order, rooms offline as "
                                    "technical alarms, commands to rooms, escalation to people, assignments and "
                                    "reports, ward firmware rollouts. Roles: nurse, charge, admin, facilities (x-roles on each "
                                    "operation)."},
            "paths": paths,
            "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def described(spec: S) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
