"""The room's REST API and live event stream (aiohttp application factory, no globals).

``ROUTES`` (at the end) lists every route with the roles that may call it; the OpenAPI
description served at ``/api/v1/openapi.json`` is built from it (room_api/openapi.py), and
room_api/auth.py enforces it: 401 without a valid bearer token, 403 for a role the route does not
allow, 429 after repeated failures, and an audit entry for every state-changing request.

The event stream (``/api/v1/events/stream``) is Server-Sent Events whose ``id:`` is the log
cursor: resume with ``Last-Event-ID`` (or ``?after=``) and get exactly what was missed. A client
that does not take what is sent within ``STREAM_SEND_TIMEOUT_S`` is dropped (it resumes later).
Writing to a stream proves nothing about a screen: a call counts as shown (annunciated) only when
a nurse screen says it displayed it (``POST /api/v1/calls/shown``, the page's receipt).

Errors always have one shape: {"error": {"status": 404, "code": "call_not_found", "message": "..."}}.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp_sse import sse_response

from . import fhir as fhir_api
from . import nodes as nodes_api
from . import firmware as firmware_api
from . import metrics as metrics_mod
from . import openapi
from .auth import FailedAuthLimiter, make_middleware
from .base import (CONTROLLER, DEVICES, GATEWAY, METRICS, OPENAPI, PRINCIPAL, SERVICES, ApiError, LateServices,
                   int_param, make_error_middleware)
from .privacy import PATIENT_READERS, record_without_patient, room_without_patients, sees_patients
from .readings import HISTORY, get_readings

from controller.bus import STATUS_CHANGED
from controller.link.gateway import NodeGateway
from controller.room import TIERS, RoomError, reports
from controller.security.tokens import TokenError
from controller.service import RoomController
from controller.store import LogRecord, StorageError

log = logging.getLogger("smartroom.api")


@functools.cache
def _version() -> str:
    """The installed package's version, looked up on the first health request (importlib.metadata
    and the lookup cost ~15 ms of every start otherwise)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("smartroom")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


STATIC_DIR = Path(__file__).with_name("static")
PAGE_LIMIT_MAX = 1000
PAGE_LIMIT_DEFAULT = 100
STREAM_BACKLOG_BATCH = 500
STREAM_PING_S = 15.0  # comment line on an idle stream, so proxies and browsers keep it open
STREAM_WRITE_MAX = 256  # records sent in one write when the stream is busy (~100 KB at most)
# A stream whose client has not taken a write for this long is closed. A reading screen takes an
# event within milliseconds; one whose socket stays full for 10 s shows nothing, and closing it
# costs nothing (it resumes from its last id). Well under the 120 s aiohttp-sse would wait.
STREAM_SEND_TIMEOUT_S = 10.0
RECEIPT_CALLS_MAX = 100  # ids in one screen receipt; a room never has this many calls waiting
MAX_NAME_LEN = 64
REPORT_DEFAULT_SPAN_MS = 24 * 3600 * 1000  # a report without 'from' covers the last day


def _room_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, RoomError):
        return ApiError(exc.status, exc.code, exc.message)
    if isinstance(exc, StorageError):  # the storage alarm is up; the caller must know nothing was recorded
        return ApiError(503, "storage_unavailable", f"the room database cannot be written ({exc}); "
                        "nothing was recorded — act in person and retry")
    return None


error_middleware = make_error_middleware(_room_error, log, "controller")


async def get_room(request: web.Request) -> web.Response:
    snapshot = request.app[CONTROLLER].snapshot()
    if not sees_patients(request[PRINCIPAL].role):
        snapshot = room_without_patients(snapshot)
    return web.json_response(snapshot)


def _record_json(request: web.Request) -> Callable[[LogRecord], dict]:
    """How this caller sees a stored event: with its patient, or (facilities) without."""
    if sees_patients(request[PRINCIPAL].role):
        return LogRecord.to_json
    return lambda record: record_without_patient(record.to_json())


async def get_events(request: web.Request) -> web.Response:
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    records = await request.app[CONTROLLER].events_after(after, limit)
    next_cursor = records[-1].id if records else after
    as_json = _record_json(request)
    return web.json_response({"events": [as_json(r) for r in records], "next": next_cursor,
                              "more": len(records) == limit})


async def _body(request: web.Request, *, empty: dict[str, object] | None = None) -> dict[str, object]:
    """The request's JSON object; ``empty`` is what an empty body means (None: a body is required)."""
    raw = await request.read()
    if not raw.strip() and empty is not None:
        return dict(empty)
    reason = None
    try:
        body = json.loads(raw)  # bytes: UTF-8 (or -16/-32) as RFC 8259 allows; a bad byte is a ValueError
    except RecursionError:  # e.g. 200k nested brackets: Python's parser gives up, the client gets told
        body, reason = None, "too_deep"
    except ValueError:
        body, reason = None, "not_json"
    if not isinstance(body, dict):
        reason = reason or "not_an_object"
        request.app[METRICS].bad_bodies.labels(reason).inc()
        log.info("refused a %s body on %s %s from %s", reason.replace("_", " "), request.method, request.path,
                 request.remote)
        detail = "nested too deeply" if reason == "too_deep" else "not a JSON object"
        raise ApiError(400, "bad_json", f"body is {detail}: it must be a JSON object like {{\"by\": \"nurse name\"}}")
    return body


def _by(body: dict[str, object], request: web.Request | None = None) -> str:
    """Who does it: the body's "by" (a nurse at a shared station names herself), else the token's name."""
    by = body.get("by")
    if by is None and request is not None and PRINCIPAL in request:
        return request[PRINCIPAL].name
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_NAME_LEN:
        raise ApiError(400, "bad_parameter", f"'by' must name who does this (1 to {MAX_NAME_LEN} characters)")
    return by.strip()


async def post_ack(request: web.Request) -> web.Response:
    by = _by(await _body(request, empty={}), request)
    return web.json_response(await request.app[CONTROLLER].acknowledge(request.match_info["call_id"], by))


async def post_clear(request: web.Request) -> web.Response:
    by = _by(await _body(request, empty={}), request)
    return web.json_response(await request.app[CONTROLLER].clear(request.match_info["call_id"], by))


async def post_silence(request: web.Request) -> web.Response:
    by = _by(await _body(request, empty={}), request)
    return web.json_response(await request.app[CONTROLLER].silence_tone(by))


async def put_fall_risk(request: web.Request) -> web.Response:
    body = await _body(request)
    by = _by(body, request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise ApiError(400, "bad_parameter", "'enabled' must be true or false")
    return web.json_response(await request.app[CONTROLLER].set_fall_risk(request.match_info["bed"], enabled, by))


def _time_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return reports.parse_time(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", f"'{name}': {exc}") from None


async def get_response_times(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    to_ms = _time_param(request, "to", controller.clock() + 1)
    from_ms = _time_param(request, "from", to_ms - REPORT_DEFAULT_SPAN_MS)
    if from_ms > to_ms:
        raise ApiError(400, "bad_parameter", "'from' must not be after 'to'")
    records = await controller.call_history(from_ms)
    return web.json_response(reports.response_times(records, from_ms, to_ms))


async def get_gateway(request: web.Request) -> web.Response:
    gateway = request.app.get(GATEWAY)
    stats = gateway.stats.to_json() if gateway else {}
    stats["nodes_connected"] = sorted(gateway.connections) if gateway else []
    stats["readings_stored"] = request.app[CONTROLLER].readings_stored
    stats["unmapped_inputs"] = {f"{node}/{src}": n for (node, src), n in
                                sorted(request.app[CONTROLLER].unmapped_inputs.items())}
    stats["readings_not_stored"] = dict(request.app[CONTROLLER].storage.readings_not_stored)
    devices = request.app[DEVICES]
    stats["devices"] = devices.to_json() if devices is not None else None
    return web.json_response(stats)


async def post_shown(request: web.Request) -> web.Response:
    """A nurse screen's receipt for the calls it displayed; a call's first receipt is its annunciation."""
    body = await _body(request)
    ids = body.get("calls")
    if not isinstance(ids, list) or not 1 <= len(ids) <= RECEIPT_CALLS_MAX or \
            not all(isinstance(i, str) and 0 < len(i) <= MAX_NAME_LEN for i in ids):
        raise ApiError(400, "bad_parameter", f"'calls' must list the 1 to {RECEIPT_CALLS_MAX} call ids the screen "
                                             "displayed, e.g. {\"calls\": [\"c0123456789ab\"]}")
    screen = _by(body, request)
    controller = request.app[CONTROLLER]
    raised_at = {cid: call.raised_at_ms for cid in ids if (call := controller.room.calls.get(cid)) is not None}
    records = await controller.shown(ids, screen)
    shown = [r.data["call_id"] for r in records if r.kind == "call.annunciated"]
    for record in records:
        if record.kind == "call.annunciated":
            delay_ms = record.data["at_ms"] - raised_at[record.data["call_id"]]
            request.app[METRICS].delivery.observe(max(0, delay_ms) / 1000)
    return web.json_response({"shown": shown, "already_shown": [i for i in raised_at if i not in shown],
                              "not_active": [i for i in dict.fromkeys(ids) if i not in raised_at]})


async def get_integrations(request: web.Request) -> web.Response:
    """The hospital integrations' counters: alarm manager link and outbox, admissions, listener, webhooks."""
    services = request.app[SERVICES]
    service = services.integrations
    if service is None:
        if services.integrations_starting:
            raise ApiError(503, "starting", "the integrations are configured and still starting")
        return web.json_response({"configured": False})
    return web.json_response({"configured": True, **service.to_json()})


async def get_health(request: web.Request) -> web.Response:
    """Public: liveness, how many calls are active per priority (no patient or call details), and
    why the room is degraded when it is (``reasons``: a list of {reason, message, since_ms?}; the
    failure modes in docs/architecture.md)."""
    controller = request.app[CONTROLLER]
    room = controller.room
    calls = {tier: sum(1 for c in room.calls.values() if c.ctype.level == tier) for tier in TIERS}
    reasons = controller.degraded()
    return web.json_response({"status": "degraded" if reasons else "ok", "reasons": reasons,
                              "room": controller.config.room_id, "name": controller.config.name,
                              "version": _version(), "cursor": controller.cursor, "active_calls": calls,
                              "nurse_streams": request.app[METRICS].nurse_streams})


def _resume_cursor(request: web.Request, controller: RoomController) -> int:
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        try:
            return max(0, int(header))
        except ValueError:
            raise ApiError(400, "bad_parameter", f"Last-Event-ID must be an event id, got {header!r}") from None
    if "after" in request.query:
        return int_param(request, "after", 0, 0, 2**62)
    return controller.cursor  # a new client starts with what happens from now on (what is stored)


def _endpoint(request: web.Request) -> str:
    """Who this stream delivers to, as named in the log when it is dropped."""
    name = request.query.get("endpoint", "").strip()[:MAX_NAME_LEN]
    return name or f"event stream @{request.remote or '?'}"


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Stored events as they happen. Delivery here is not annunciation: the page confirms what it
    displayed with ``POST /api/v1/calls/shown``. A client that stops taking data is dropped."""
    controller = request.app[CONTROLLER]
    endpoint = _endpoint(request)
    nurse = request[PRINCIPAL].role == "nurse"
    last = _resume_cursor(request, controller)
    as_json = _record_json(request)
    # Subscribe before reading the backlog: anything stored meanwhile is in the queue as well,
    # and ids at or below `last` are skipped, so there is neither a gap nor a duplicate.
    metrics = request.app[METRICS]
    with controller.subscribe() as sub, metrics.subscribers.track_inprogress(), metrics.nurse_stream(nurse):
        async with sse_response(request, ping_interval=STREAM_PING_S, send_timeout=STREAM_SEND_TIMEOUT_S) as resp:

            async def send(record: LogRecord) -> None:
                nonlocal last
                await resp.send(json.dumps(as_json(record), separators=(",", ":")), id=str(record.id))
                last = record.id

            async def catch_up(upto: int | None) -> None:
                while True:
                    batch = await controller.events_after(last, STREAM_BACKLOG_BATCH)
                    for record in batch:
                        if upto is not None and record.id > upto:
                            return
                        await send(record)
                    if len(batch) < STREAM_BACKLOG_BATCH:
                        return

            async def send_many(records: list[LogRecord]) -> None:
                """Records as they were stored, in one write (one TLS record, one syscall) however
                many: aiohttp-sse's send makes a write, and a timeout, for each."""
                nonlocal last
                if as_json is LogRecord.to_json:  # (the data as encoded once for the store)
                    text = "".join([f"id: {r.id}\r\ndata: {r.json_text()}\r\n\r\n" for r in records])
                else:
                    text = "".join([f"id: {r.id}\r\ndata: {json.dumps(as_json(r), separators=(',', ':'))}\r\n\r\n"
                                    for r in records])
                async with asyncio.timeout(STREAM_SEND_TIMEOUT_S):
                    await resp.write(text.encode())
                last = records[-1].id

            async def send_live(batch: list[LogRecord | object]) -> None:
                chunk: list[LogRecord] = []
                for record in batch:
                    if record is STATUS_CHANGED:  # not in the log (yet): no id, the page looks at the room
                        if chunk:
                            await send_many(chunk)
                            chunk = []
                        await resp.send(json.dumps({"reasons": controller.degraded()}), event="status")
                        continue
                    newest = chunk[-1].id if chunk else last
                    if record.id <= newest:
                        continue
                    if record.id > newest + 1:
                        if chunk:
                            await send_many(chunk)
                            chunk = []
                        await catch_up(record.id - 1)
                    chunk.append(record)
                if chunk:
                    await send_many(chunk)

            try:
                await catch_up(None)
                while resp.is_connected():
                    try:
                        async with asyncio.timeout(STREAM_PING_S):  # a timer, not a task per record (wait_for)
                            record = await sub.get()
                    except TimeoutError:
                        continue
                    if record is None:  # lagged or shutting down: the client resumes from the log
                        if sub.lagged:
                            metrics.streams_dropped.labels("lagged").inc()
                            log.warning("event stream %s lagged at %d; closing so it resumes", endpoint, last)
                        break
                    await send_live([record, *sub.get_nowait(STREAM_WRITE_MAX)])  # a busy stream: one write
            except (TimeoutError, ConnectionError) as exc:
                if not _timed_out(exc):  # the client went away: normal, it resumes when it comes back
                    log.debug("event stream %s closed by its client at %d", endpoint, last)
                    return resp
                metrics.streams_dropped.labels("send_timeout").inc()
                log.warning("event stream %s took no data for %g s at %d; dropped (it resumes from there)",
                            endpoint, STREAM_SEND_TIMEOUT_S, last)
    return resp


def _timed_out(exc: BaseException) -> bool:
    """A write the client did not take in time: aiohttp-sse's send timeout, or the kernel's TCP user
    timeout it sets to the same value (the connection is lost with ETIMEDOUT)."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def facilities_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "facilities.html")


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": metrics_mod.CONTENT_TYPE})


async def get_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[CONTROLLER].store.list_tokens()
    return web.json_response({"tokens": [t.to_json() for t in tokens]})


async def post_token(request: web.Request) -> web.Response:
    body = await _body(request)
    role, name = body.get("role"), body.get("name")
    if not isinstance(role, str) or not isinstance(name, str):
        raise ApiError(400, "bad_parameter", "'role' and 'name' must be strings")
    controller = request.app[CONTROLLER]
    try:
        info, secret = await controller.store.create_token(role, name.strip(), controller.clock())
    except TokenError as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    return web.json_response(dict(info.to_json(), token=secret), status=201)


async def delete_token(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    try:
        info = await controller.store.revoke_token(request.match_info["name"], controller.clock())
    except TokenError as exc:
        raise ApiError(404, "token_not_found", str(exc)) from None
    return web.json_response(info.to_json())


async def get_audit(request: web.Request) -> web.Response:
    after = int_param(request, "after_ms", 0, 0, 2**62)
    limit = int_param(request, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    entries = await request.app[CONTROLLER].store.read_audit(after, limit)
    return web.json_response({"entries": [e.to_json() for e in entries]})


async def get_config(request: web.Request) -> web.Response:
    config = request.app[CONTROLLER].config
    return web.json_response({
        "source": config.source, "room": {"id": config.room_id, "name": config.name, "profile": config.profile},
        "beds": list(config.beds), "heartbeat_ms": config.heartbeat_ms,
        "escalation_levels": list(config.escalation_levels),
        "timers": {"tiers": {t: {"escalate_s": v.escalate_s, "reminder_s": v.reminder_s}
                             for t, v in config.timers.tiers.items()},
                   "bath_dwell_s": config.timers.bath_dwell_s, "fall_ok_window_s": config.timers.fall_ok_window_s,
                   "silence_s": config.timers.silence_s, "presence_s": config.timers.presence_s,
                   "presence_reminder_s": config.timers.presence_reminder_s,
                   "not_displayed_s": config.timers.not_displayed_s},
        "environment": {m: {"low": r.low, "high": r.high, "hysteresis": r.hysteresis,
                            "min_duration_s": r.min_duration_s, "clear_s": r.clear_s}
                        for m, r in config.environment.items()},
        "nodes": {n.id: {"location": n.location, "bed": n.bed, "inputs": dict(n.inputs), "indicator": n.indicator,
                         "tone": n.tone} for n in config.nodes.values()},
    })


async def _end_streams(app: web.Application) -> None:
    app[CONTROLLER].bus.end_all()


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    roles: frozenset[str] | None   # None: public (pages and liveness carry no room data)
    summary: str


NURSE = frozenset({"nurse"})
ROOM_READERS = frozenset({"nurse", "facilities", "admin", "integration"})  # an integration needs what is active
HISTORY_READERS = frozenset({"nurse", "facilities", "admin"})
FEED_READERS = frozenset({"nurse", "facilities", "admin", "integration"})
FACILITIES = frozenset({"facilities", "admin"})
REPORT_READERS = frozenset({"nurse", "admin", "integration"})
ADMIN = frozenset({"admin"})
SCRAPERS = frozenset({"facilities", "admin", "integration"})
FHIR_READERS = PATIENT_READERS  # calls name patients: not facilities

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", index, None, "Nurse page (HTML)"),
    Route("GET", "/facilities", facilities_page, None, "Facilities page (HTML)"),
    Route("GET", "/api/v1/health", get_health, None, "Liveness and the room's call counts"),
    Route("GET", "/api/v1/openapi.json", get_openapi, None, "This API's OpenAPI 3 description"),
    Route("GET", "/api/v1/room", get_room, ROOM_READERS, "Room state: calls, occupancy, outputs, nodes"),
    Route("GET", "/api/v1/events", get_events, FEED_READERS, "The stored event log, paged by cursor"),
    Route("GET", "/api/v1/events/stream", stream_events, FEED_READERS, "Live events (Server-Sent Events)"),
    Route("POST", "/api/v1/calls/shown", post_shown, NURSE, "A nurse screen's receipt: the calls it displayed"),
    Route("POST", "/api/v1/calls/{call_id}/ack", post_ack, NURSE, "Acknowledge a call (never clears it)"),
    Route("POST", "/api/v1/calls/{call_id}/clear", post_clear, NURSE, "Clear a routine call remotely"),
    Route("POST", "/api/v1/room/silence", post_silence, NURSE, "Silence the in-room tone"),
    Route("PUT", "/api/v1/beds/{bed}/fall-risk", put_fall_risk, NURSE, "Bed-exit alarm on or off for a bed"),
    Route("GET", "/api/v1/reports/response-times", get_response_times, REPORT_READERS, "Response times"),
    Route("GET", "/api/v1/readings", get_readings, HISTORY_READERS, "A measure's history in buckets"),
    Route("GET", "/api/v1/gateway", get_gateway, FACILITIES, "Node gateway counters"),
    Route("GET", "/api/v1/integrations", get_integrations, SCRAPERS, "HL7 / webhook integration counters"),
    Route("GET", "/api/v1/config", get_config, ADMIN, "The room's configuration as loaded"),
    Route("GET", "/api/v1/tokens", get_tokens, ADMIN, "Active API tokens (never their secrets)"),
    Route("POST", "/api/v1/tokens", post_token, ADMIN, "Create a token; its secret is shown once"),
    Route("DELETE", "/api/v1/tokens/{name}", delete_token, ADMIN, "Revoke a token by name or id"),
    Route("GET", "/api/v1/audit", get_audit, ADMIN, "Audit log of state-changing requests, newest first"),
    Route("GET", "/metrics", get_metrics, SCRAPERS, "Prometheus metrics"),
    # node adoption and lifecycle (room_api/nodes.py)
    Route("GET", "/api/v1/nodes", nodes_api.get_nodes, FACILITIES, "Provisioned nodes and their audit"),
    Route("POST", "/api/v1/nodes/{node}/assign", nodes_api.post_assign, FACILITIES,
          "Adopt a node: its bed, role and input meanings (pushed to the node)"),
    Route("POST", "/api/v1/nodes/{node}/identify", nodes_api.post_identify, FACILITIES, "Blink or beep a node"),
    Route("POST", "/api/v1/nodes/{node}/rotate", nodes_api.post_rotate, FACILITIES,
          "Rotate a node's key (no key on the wire)"),
    Route("POST", "/api/v1/nodes/{node}/replace", nodes_api.post_replace, FACILITIES,
          "Replace a node by another, keeping bed and role"),
    Route("POST", "/api/v1/nodes/{node}/decommission", nodes_api.post_decommission, FACILITIES,
          "Revoke a node's key at once; the node is told to forget"),
    # firmware updates over the node link (room_api/firmware.py)
    Route("GET", "/api/v1/firmware", firmware_api.get_firmware, FACILITIES,
          "Firmware: each node's version and update, the bundles on offer, rollouts"),
    Route("POST", "/api/v1/firmware/rollouts", firmware_api.post_rollout, FACILITIES,
          "Start a staged firmware rollout: the first node alone, then the rest"),
    # FHIR R4 reads (room_api/fhir.py)
    Route("GET", "/fhir/r4/metadata", fhir_api.get_metadata, FHIR_READERS, "FHIR CapabilityStatement"),
    Route("GET", "/fhir/r4/Device", fhir_api.search_devices, FHIR_READERS, "FHIR Devices: the room's nodes"),
    Route("GET", "/fhir/r4/Device/{id}", fhir_api.read_device, FHIR_READERS, "FHIR Device: one node"),
    Route("GET", "/fhir/r4/Observation", fhir_api.search_observations, FHIR_READERS,
          "FHIR Observations: the newest environment readings"),
    Route("GET", "/fhir/r4/Observation/{id}", fhir_api.read_observation, FHIR_READERS, "FHIR Observation"),
    Route("GET", "/fhir/r4/Communication", fhir_api.search_communications, FHIR_READERS,
          "FHIR Communications: calls raised in a range, and the active ones"),
    Route("GET", "/fhir/r4/Communication/{id}", fhir_api.read_communication, FHIR_READERS,
          "FHIR Communication: one call"),
    Route("GET", "/fhir/r4/Flag", fhir_api.search_flags, FHIR_READERS, "FHIR Flags: the active calls"),
    Route("GET", "/fhir/r4/Flag/{id}", fhir_api.read_flag, FHIR_READERS, "FHIR Flag: one call"),
)


def _roles_index(routes: tuple[Route, ...]) -> Callable[[web.Request], frozenset[str] | None]:
    index_: dict[tuple[str, str], frozenset[str] | None] = {(r.method, r.path): r.roles for r in routes}

    def roles_for(request: web.Request) -> frozenset[str] | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None  # 404 / 405: nothing to protect
        method = "GET" if request.method == "HEAD" else request.method
        return index_.get((method, resource.canonical))

    return roles_for


def create_app(controller: RoomController, gateway: NodeGateway | None = None,
               devices: object | None = None, uplink: object | None = None,
               integrations: object | None = None, voice: object | None = None) -> web.Application:
    """``devices``: the Pi-attached devices (sensors.Attachment), shown with the gateway and in /metrics;
    ``uplink``: the ward uplink (controller.uplink.WardUplink), its counters in /metrics;
    ``integrations``: the hospital integrations (integrations.IntegrationService), GET /api/v1/integrations
    and the alarm manager's link in /metrics; ``voice``: the microphones (sensors.voice.VoiceService),
    their decoder's counters in /metrics."""
    limiter = FailedAuthLimiter(controller.clock)
    auth = make_middleware(roles_for=_roles_index(ROUTES), find_token=controller.store.find_token,
                           audit=controller.store.audit, limiter=limiter, error=ApiError,
                           principal_key=PRINCIPAL, clock=controller.clock)
    app = web.Application(middlewares=[error_middleware, auth])
    app[CONTROLLER] = controller
    app[HISTORY] = controller.history
    if gateway is not None:
        app[GATEWAY] = gateway
    app[DEVICES] = devices
    services = app[SERVICES] = LateServices(integrations, voice)  # (the runner may set them once started)
    app[METRICS] = metrics_mod.Metrics(controller, lambda: app.get(GATEWAY), lambda: limiter.blocked_total,
                                       lambda: devices, lambda: uplink, lambda: services.integrations,
                                       lambda: services.voice)
    app[OPENAPI] = openapi.build(ROUTES)
    app.on_shutdown.append(_end_streams)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_static("/static/", STATIC_DIR)
    return app
