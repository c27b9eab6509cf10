"""The room's REST API and live event stream (aiohttp application factory, no globals).

Routes (all JSON unless said):
  GET  /                          nurse dashboard (HTML, live over the event stream)
  GET  /api/v1/room               room state: active calls (highest priority first), presence,
                                  environment, nodes
  GET  /api/v1/events?after=&limit=   the stored event log, paged by cursor
  GET  /api/v1/events/stream      Server-Sent Events; ``id:`` is the log cursor; resume with
                                  ``Last-Event-ID`` (or ``?after=``) and get exactly what was missed
  POST /api/v1/calls/{id}/ack     a nurse acknowledges a call: {"by": "<name>"} (never clears it)
  POST /api/v1/calls/{id}/clear   a nurse clears a routine call remotely: {"by": "<name>"}; refused
                                  (409 cancel_at_origin / clears_when_resolved) for calls that must be
                                  cancelled in the room or clear themselves
  POST /api/v1/room/silence       silence the in-room tone for the configured time: {"by": "<name>"};
                                  the dome light is unchanged
  PUT  /api/v1/beds/{bed}/fall-risk   {"enabled": true, "by": "<name>"}: bed-exit alarm on or off
  GET  /api/v1/reports/response-times?from=&to=   per call: time to acknowledge, to presence, to
                                  clear, who responded; median and 90th percentile per tier
  GET  /api/v1/gateway            node gateway counters (accepted, rejected by reason, duplicates)
  GET  /api/v1/health             liveness

Errors always have one shape: {"error": {"status": 404, "code": "call_not_found", "message": "..."}}.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp_sse import sse_response

from controller import reports
from controller.gateway import NodeGateway
from controller.room import RoomError
from controller.service import RoomController
from controller.store import LogRecord

log = logging.getLogger("smartroom.api")

CONTROLLER = web.AppKey("controller", RoomController)
GATEWAY = web.AppKey("gateway", NodeGateway)

STATIC_DIR = Path(__file__).with_name("static")
PAGE_LIMIT_MAX = 1000
PAGE_LIMIT_DEFAULT = 100
STREAM_BACKLOG_BATCH = 500
STREAM_PING_S = 15.0  # comment line on an idle stream, so proxies and browsers keep it open
MAX_NAME_LEN = 64
REPORT_DEFAULT_SPAN_MS = 24 * 3600 * 1000  # a report without 'from' covers the last day


class ApiError(web.HTTPException):
    """An error with the API's one JSON shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": {"status": status, "code": code, "message": message}}),
                         content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError:
        raise
    except RoomError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        raise ApiError(exc.status, code, exc.text or exc.reason) from exc
    except Exception as exc:  # the API must answer in its own shape even for a bug; the bug is logged
        log.exception("unhandled error on %s %s", request.method, request.path)
        raise ApiError(500, "internal_error", "internal error; see the controller log") from exc


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"'{name}' must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, "bad_parameter", f"'{name}' must be from {lo} to {hi}")
    return value


async def get_room(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].snapshot())


async def get_events(request: web.Request) -> web.Response:
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    records = await request.app[CONTROLLER].events_after(after, limit)
    next_cursor = records[-1].id if records else after
    return web.json_response({"events": [r.to_json() for r in records], "next": next_cursor,
                              "more": len(records) == limit})


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object like {\"by\": \"nurse name\"}")
    return body


def _by(body: dict[str, object]) -> str:
    by = body.get("by")
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_NAME_LEN:
        raise ApiError(400, "bad_parameter", f"'by' must name who does this (1 to {MAX_NAME_LEN} characters)")
    return by.strip()


async def post_ack(request: web.Request) -> web.Response:
    by = _by(await _body(request))
    return web.json_response(await request.app[CONTROLLER].acknowledge(request.match_info["call_id"], by))


async def post_clear(request: web.Request) -> web.Response:
    by = _by(await _body(request))
    return web.json_response(await request.app[CONTROLLER].clear(request.match_info["call_id"], by))


async def post_silence(request: web.Request) -> web.Response:
    by = _by(await _body(request))
    return web.json_response(await request.app[CONTROLLER].silence_tone(by))


async def put_fall_risk(request: web.Request) -> web.Response:
    body = await _body(request)
    by = _by(body)
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
    return web.json_response(stats)


async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "cursor": request.app[CONTROLLER].room.cursor})


def _resume_cursor(request: web.Request, controller: RoomController) -> int:
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        try:
            return max(0, int(header))
        except ValueError:
            raise ApiError(400, "bad_parameter", f"Last-Event-ID must be an event id, got {header!r}") from None
    if "after" in request.query:
        return _int_param(request, "after", 0, 0, 2**62)
    return controller.room.cursor  # a new client starts with what happens from now on


def _endpoint(request: web.Request) -> str:
    """Who this stream delivers to, as recorded on a call's "annunciated" step."""
    name = request.query.get("endpoint", "").strip()[:MAX_NAME_LEN]
    return name or f"event stream @{request.remote or '?'}"


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Every stream client is a nurse endpoint: the first delivery of a call to any of them is
    recorded as the call's annunciation (a client that connects later annunciates calls still
    waiting for one)."""
    controller = request.app[CONTROLLER]
    endpoint = _endpoint(request)
    last = _resume_cursor(request, controller)
    # Subscribe before reading the backlog: anything stored meanwhile is in the queue as well,
    # and ids at or below `last` are skipped, so there is neither a gap nor a duplicate.
    with controller.subscribe() as sub:
        async with sse_response(request, ping_interval=STREAM_PING_S) as resp:

            async def send(record: LogRecord) -> None:
                nonlocal last
                await resp.send(json.dumps(record.to_json(), separators=(",", ":")), id=str(record.id))
                last = record.id
                if record.kind == "call.raised":
                    await controller.annunciated(record.data["call_id"], endpoint)

            async def annunciate_waiting() -> None:
                for call in list(controller.room.calls.values()):
                    if call.annunciated_at_ms is None:
                        await controller.annunciated(call.id, endpoint)

            async def catch_up(upto: int | None) -> None:
                while True:
                    batch = await controller.events_after(last, STREAM_BACKLOG_BATCH)
                    for record in batch:
                        if upto is not None and record.id > upto:
                            return
                        await send(record)
                    if len(batch) < STREAM_BACKLOG_BATCH:
                        return

            await catch_up(None)
            await annunciate_waiting()
            while resp.is_connected():
                try:
                    record = await asyncio.wait_for(sub.get(), STREAM_PING_S)
                except TimeoutError:
                    continue
                if record is None:  # lagged or shutting down: the client resumes from the log
                    if sub.lagged:
                        log.warning("event stream subscriber lagged at %d; closing so it resumes", last)
                    break
                if record.id <= last:
                    continue
                if record.id > last + 1:
                    await catch_up(record.id - 1)
                await send(record)
    return resp


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _end_streams(app: web.Application) -> None:
    app[CONTROLLER].bus.end_all()


def create_app(controller: RoomController, gateway: NodeGateway | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[CONTROLLER] = controller
    if gateway is not None:
        app[GATEWAY] = gateway
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/room", get_room)
    app.router.add_get("/api/v1/events", get_events)
    app.router.add_get("/api/v1/events/stream", stream_events)
    app.router.add_post("/api/v1/calls/{call_id}/ack", post_ack)
    app.router.add_post("/api/v1/calls/{call_id}/clear", post_clear)
    app.router.add_post("/api/v1/room/silence", post_silence)
    app.router.add_put("/api/v1/beds/{bed}/fall-risk", put_fall_risk)
    app.router.add_get("/api/v1/reports/response-times", get_response_times)
    app.router.add_get("/api/v1/gateway", get_gateway)
    app.router.add_get("/api/v1/health", get_health)
    app.router.add_static("/static/", STATIC_DIR)
    return app
