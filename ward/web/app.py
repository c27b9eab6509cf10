"""The ward console's REST API, live stream and pages (aiohttp application factory, no globals).

Same style as the room's API (room_api/app.py): one route table with the roles each route admits,
from which the OpenAPI description is built and which the room API's auth middleware enforces
(bearer tokens stored hashed in the ward's database; 401/403/429; every state-changing request in
the audit log); errors of one shape; a Server-Sent Events stream whose ``id:`` is the ward log's
cursor, resumable with ``Last-Event-ID``.

Roles: ``nurse`` (the staff view, the ward page, acknowledge/clear/silence/fall-risk, accept or
decline the calls that reach her), ``charge`` (all that, plus the shift's assignments and the
reports), ``admin`` (audit, commands, metrics), ``facilities`` (the ward firmware page: every room's
nodes' firmware and ward rollouts; no patient data).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp_sse import sse_response

from controller.room import reports
from controller.security.tokens import Principal
from room_api.app import STATIC_DIR as ROOM_STATIC
from room_api.auth import FailedAuthLimiter, make_middleware
from room_api.base import ApiError, int_param, make_error_middleware

from ..console import WardConsole, WardError
from ..firmware import RolloutRefused
from . import metrics as metrics_mod
from . import openapi

log = logging.getLogger("smartroom.ward.api")

STATIC_DIR = Path(__file__).with_name("static")
CONSOLE = web.AppKey("console", WardConsole)
METRICS = web.AppKey("metrics", metrics_mod.WardMetrics)
OPENAPI = web.AppKey("openapi", dict)
PRINCIPAL = web.RequestKey("principal", Principal)
PAGE_LIMIT_MAX, PAGE_LIMIT_DEFAULT = 1000, 100
STREAM_BACKLOG_BATCH = 500
STREAM_PING_S = 15.0   # a comment line on an idle stream keeps proxies and browsers from closing it
MAX_NAME_LEN = 64
REPORT_DEFAULT_SPAN_MS = 24 * 3600 * 1000


def _ward_error(exc: Exception) -> ApiError | None:
    return ApiError(exc.status, exc.code, exc.message) if isinstance(exc, (WardError, RolloutRefused)) else None


error_middleware = make_error_middleware(_ward_error, log, "ward console's")


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return body


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LEN:
        raise ApiError(400, "bad_parameter", f"'{what}' must be 1 to {MAX_NAME_LEN} characters")
    return value.strip()


def _by(body: dict[str, object], request: web.Request) -> str:
    """Who acts: the body's "by" (at a shared station she names herself), else the token's name."""
    by = body.get("by")
    return request[PRINCIPAL].name if by is None else _name(by, "by")


def _result(res) -> web.Response:
    if not res.ok:
        raise ApiError(res.status, res.code, res.message)
    return web.json_response(res.to_json())


# --------------------------------------------------------------------------- reads
async def get_ward(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONSOLE].ward_view())


async def get_me(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONSOLE].staff_view(request[PRINCIPAL].name))


async def get_health(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    view = console.ward_view()
    return web.json_response({"status": "ok", "ward": console.config.name, "broker": view["broker"],
                              "rooms": len(view["rooms"]), "alarms": len(view["alarms"]),
                              "active_calls": len(view["calls"])})


async def get_events(request: web.Request) -> web.Response:
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    records = await request.app[CONSOLE].events_after(after, limit)
    return web.json_response({"events": [r.to_json() for r in records], "next": records[-1].id if records else after,
                              "more": len(records) == limit})


async def stream_events(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        try:
            last = max(0, int(header))
        except ValueError:
            raise ApiError(400, "bad_parameter", f"Last-Event-ID must be an event id, got {header!r}") from None
    elif "after" in request.query:
        last = int_param(request, "after", 0, 0, 2**62)
    else:
        last = console.cursor
    metrics = request.app[METRICS]
    with console.subscribe() as sub, metrics.subscribers.track_inprogress():
        async with sse_response(request, ping_interval=STREAM_PING_S) as resp:

            async def catch_up(upto: int | None) -> None:
                nonlocal last
                while True:
                    batch = await console.events_after(last, STREAM_BACKLOG_BATCH)
                    for record in batch:
                        if upto is not None and record.id > upto:
                            return
                        await resp.send(json.dumps(record.to_json(), separators=(",", ":")), id=str(record.id))
                        last = record.id
                    if len(batch) < STREAM_BACKLOG_BATCH:
                        return

            await catch_up(None)
            while resp.is_connected():
                try:
                    record = await asyncio.wait_for(sub.get(), STREAM_PING_S)
                except TimeoutError:
                    continue
                if record is None:
                    break
                if record.id <= last:
                    continue
                if record.id > last + 1:
                    await catch_up(record.id - 1)
                await resp.send(json.dumps(record.to_json(), separators=(",", ":")), id=str(record.id))
                last = record.id
    return resp


async def get_assignments(request: web.Request) -> web.Response:
    shift = request.app[CONSOLE].shift
    return web.json_response({"shift": shift.to_json() if shift else None})


async def get_report(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]

    def when(name: str, default: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            return reports.parse_time(raw)
        except ValueError as exc:
            raise ApiError(400, "bad_parameter", f"'{name}': {exc}") from None

    to_ms = when("to", console.clock() + 1)
    from_ms = when("from", to_ms - REPORT_DEFAULT_SPAN_MS)
    if from_ms > to_ms:
        raise ApiError(400, "bad_parameter", "'from' must not be after 'to'")
    return web.json_response(await console.report(from_ms, to_ms))


async def get_commands(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    return web.json_response({"commands": await request.app[CONSOLE].store.commands(limit)})


async def get_audit(request: web.Request) -> web.Response:
    after = int_param(request, "after_ms", 0, 0, 2**62)
    limit = int_param(request, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    entries = await request.app[CONSOLE].store.read_audit(after, limit)
    return web.json_response({"entries": [e.to_json() for e in entries]})


async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": metrics_mod.CONTENT_TYPE})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def ward_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "ward.html")


async def staff_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "staff.html")


async def firmware_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "firmware.html")


# --------------------------------------------------------------------------- firmware (ward rollouts)
async def get_firmware(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONSOLE].ward_rollouts.view())


async def post_firmware_rollout(request: web.Request) -> web.Response:
    """A ward rollout: ``bundle`` (a hash the rooms report, or 8+ leading digits), optional ``rooms``
    (the order: the first room's first node is the canary; default every room of the ward)."""
    body = await _body(request)
    bundle = body.get("bundle")
    if not isinstance(bundle, str) or not bundle.strip():
        raise ApiError(400, "bad_parameter", "'bundle' must be a bundle's SHA-256 (or its first 8+ digits)")
    rooms = body.get("rooms")
    if rooms is not None:
        if not isinstance(rooms, list) or not rooms or len(set(map(str, rooms))) != len(rooms):
            raise ApiError(400, "bad_parameter", "'rooms' must be a list of distinct room ids")
        rooms = [_name(r, "rooms[]") for r in rooms]
    rollout = await request.app[CONSOLE].ward_rollouts.start(bundle.strip().lower(), rooms, _by(body, request))
    return web.json_response(rollout.to_json(), status=201)


async def post_firmware_stop(request: web.Request) -> web.Response:
    try:
        rollout_id = int(request.match_info["rollout"])
    except ValueError:
        raise ApiError(400, "bad_parameter", "the rollout id must be a number") from None
    by = _by(await _body(request), request)
    return web.json_response((await request.app[CONSOLE].ward_rollouts.stop(rollout_id, by)).to_json())


# --------------------------------------------------------------------------- actions
async def post_ack(request: web.Request) -> web.Response:
    by = _by(await _body(request), request)
    m = request.match_info
    return _result(await request.app[CONSOLE].command(m["room"], "ack", by, call_id=m["call_id"]))


async def post_clear(request: web.Request) -> web.Response:
    by = _by(await _body(request), request)
    m = request.match_info
    return _result(await request.app[CONSOLE].command(m["room"], "clear", by, call_id=m["call_id"]))


async def post_silence(request: web.Request) -> web.Response:
    by = _by(await _body(request), request)
    return _result(await request.app[CONSOLE].command(request.match_info["room"], "silence", by))


async def put_fall_risk(request: web.Request) -> web.Response:
    body = await _body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise ApiError(400, "bad_parameter", "'enabled' must be true or false")
    m = request.match_info
    return _result(await request.app[CONSOLE].command(m["room"], "fall_risk", _by(body, request), bed=m["bed"],
                                                      enabled=enabled))


async def post_accept(request: web.Request) -> web.Response:
    """The signed-in person takes the call: acknowledged in the room in her name."""
    m = request.match_info
    return web.json_response(await request.app[CONSOLE].accept(m["room"], m["call_id"], request[PRINCIPAL].name))


async def post_decline(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(await request.app[CONSOLE].decline(m["room"], m["call_id"], request[PRINCIPAL].name))


async def put_assignments(request: web.Request) -> web.Response:
    """The shift: its charge nurse, its staff, and who covers which room and bed ("*": every bed)."""
    body = await _body(request)
    shift = _name(body.get("shift"), "shift")
    charge = _name(body.get("charge"), "charge")
    staff = body.get("staff", [])
    rooms = body.get("rooms", {})
    if not isinstance(staff, list):
        raise ApiError(400, "bad_parameter", "'staff' must be a list of names")
    staff = [_name(s, "staff[]") for s in staff]
    if not isinstance(rooms, dict) or not all(isinstance(b, dict) for b in rooms.values()):
        raise ApiError(400, "bad_parameter", "'rooms' must map room id -> {bed or \"*\": nurse}")
    checked = {_name(room, "room"): {_name(bed, "bed"): _name(nurse, "nurse") for bed, nurse in beds.items()}
               for room, beds in rooms.items()}
    result = await request.app[CONSOLE].set_shift(shift, charge, staff, checked, request[PRINCIPAL].name)
    return web.json_response({"shift": result.to_json()})


async def _end_streams(app: web.Application) -> None:
    app[CONSOLE].bus.end_all()


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    roles: frozenset[str] | None
    summary: str


STAFF = frozenset({"nurse", "charge"})
READERS = frozenset({"nurse", "charge", "admin"})
CHARGE = frozenset({"charge"})
MANAGERS = frozenset({"charge", "admin"})
ADMIN = frozenset({"admin"})
FACILITIES = frozenset({"facilities", "admin"})

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", ward_page, None, "Ward page: the nurse station (HTML)"),
    Route("GET", "/staff", staff_page, None, "Staff view: a nurse's phone (HTML)"),
    Route("GET", "/firmware", firmware_page, None, "Ward firmware: every room's nodes, ward rollouts (HTML)"),
    Route("GET", "/api/v1/health", get_health, None, "Liveness and counts (no patient data)"),
    Route("GET", "/api/v1/openapi.json", get_openapi, None, "This API's OpenAPI 3 description"),
    Route("GET", "/api/v1/ward", get_ward, READERS, "Every active call in priority order, the room grid, alarms"),
    Route("GET", "/api/v1/me", get_me, STAFF, "The calls that reach the signed-in person"),
    Route("GET", "/api/v1/events", get_events, READERS, "The ward log, paged by cursor"),
    Route("GET", "/api/v1/events/stream", stream_events, READERS, "The ward log live (Server-Sent Events)"),
    Route("POST", "/api/v1/rooms/{room}/calls/{call_id}/ack", post_ack, STAFF, "Acknowledge a call in its room"),
    Route("POST", "/api/v1/rooms/{room}/calls/{call_id}/clear", post_clear, STAFF, "Clear a routine call"),
    Route("POST", "/api/v1/rooms/{room}/calls/{call_id}/accept", post_accept, STAFF, "Take a call (acknowledges it)"),
    Route("POST", "/api/v1/rooms/{room}/calls/{call_id}/decline", post_decline, STAFF,
          "Decline a call: it moves on to the next level"),
    Route("POST", "/api/v1/rooms/{room}/silence", post_silence, STAFF, "Silence a room's in-room tone"),
    Route("PUT", "/api/v1/rooms/{room}/beds/{bed}/fall-risk", put_fall_risk, STAFF, "Bed-exit alarm on or off"),
    Route("GET", "/api/v1/assignments", get_assignments, READERS, "The shift: charge nurse, staff, assignments"),
    Route("PUT", "/api/v1/assignments", put_assignments, CHARGE, "Set the shift and its assignments"),
    Route("GET", "/api/v1/reports/response-times", get_report, MANAGERS,
          "Response times across the unit per room, priority and nurse"),
    Route("GET", "/api/v1/commands", get_commands, MANAGERS, "Commands sent to rooms and their answers"),
    Route("GET", "/api/v1/audit", get_audit, ADMIN, "Audit log of state-changing requests, newest first"),
    Route("GET", "/metrics", get_metrics, ADMIN, "Prometheus metrics"),
    Route("GET", "/api/v1/firmware", get_firmware, FACILITIES,
          "Every room's nodes (firmware version, board, update), the bundles the rooms hold, ward rollouts"),
    Route("POST", "/api/v1/firmware/rollouts", post_firmware_rollout, FACILITIES,
          "Start a ward rollout: one node first, then the rest of its room, then each other room"),
    Route("POST", "/api/v1/firmware/rollouts/{rollout}/stop", post_firmware_stop, FACILITIES,
          "Stop a ward rollout: no further room is started"),
)


def _roles_index(routes: tuple[Route, ...]) -> Callable[[web.Request], frozenset[str] | None]:
    index_ = {(r.method, r.path): r.roles for r in routes}

    def roles_for(request: web.Request) -> frozenset[str] | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None
        return index_.get(("GET" if request.method == "HEAD" else request.method, resource.canonical))

    return roles_for


def create_app(console: WardConsole) -> web.Application:
    limiter = FailedAuthLimiter(console.clock)
    auth = make_middleware(roles_for=_roles_index(ROUTES), find_token=console.store.find_token,
                           audit=console.store.audit, limiter=limiter, error=ApiError, principal_key=PRINCIPAL,
                           clock=console.clock)
    app = web.Application(middlewares=[error_middleware, auth])
    app[CONSOLE] = console
    app[METRICS] = metrics_mod.WardMetrics(console, lambda: limiter.blocked_total)
    app[OPENAPI] = openapi.build(ROUTES)
    app.on_shutdown.append(_end_streams)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_static("/static/", ROOM_STATIC)        # the room pages' session, stream, sound and UI code
    app.router.add_static("/ward-static/", STATIC_DIR)
    return app


class WardHttp:
    """The ward app on one address; ``port`` is the bound port once :meth:`start` returns."""

    SHUTDOWN_TIMEOUT_S = 2.0  # open streams close after this; pages resume with Last-Event-ID

    def __init__(self, console: WardConsole) -> None:
        self._runner = web.AppRunner(create_app(console), access_log=None, shutdown_timeout=self.SHUTDOWN_TIMEOUT_S)
        self.port: int | None = None

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
