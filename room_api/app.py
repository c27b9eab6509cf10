"""The room's REST API and live event stream (aiohttp application factory, no globals).

Routes (all JSON unless said):
  GET  /                          nurse dashboard (HTML, live over the event stream)
  GET  /api/v1/room               room state: active calls (highest priority first), presence,
                                  environment, nodes
  GET  /api/v1/events?after=&limit=   the stored event log, paged by cursor
  GET  /api/v1/events/stream      Server-Sent Events; ``id:`` is the log cursor; resume with
                                  ``Last-Event-ID`` (or ``?after=``) and get exactly what was missed
  POST /api/v1/calls/{id}/ack     a nurse acknowledges a call: {"by": "<name>"}
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


async def post_ack(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_json", "body must be a JSON object like {\"by\": \"nurse name\"}") from None
    by = body.get("by") if isinstance(body, dict) else None
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_NAME_LEN:
        raise ApiError(400, "bad_parameter", f"'by' must name who acknowledges (1 to {MAX_NAME_LEN} characters)")
    call = await request.app[CONTROLLER].acknowledge(request.match_info["call_id"], by.strip())
    return web.json_response(call)


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


async def stream_events(request: web.Request) -> web.StreamResponse:
    controller = request.app[CONTROLLER]
    last = _resume_cursor(request, controller)
    # Subscribe before reading the backlog: anything stored meanwhile is in the queue as well,
    # and ids at or below `last` are skipped, so there is neither a gap nor a duplicate.
    with controller.subscribe() as sub:
        async with sse_response(request, ping_interval=STREAM_PING_S) as resp:

            async def send(record: LogRecord) -> None:
                nonlocal last
                await resp.send(json.dumps(record.to_json(), separators=(",", ":")), id=str(record.id))
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

            await catch_up(None)
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
    app.router.add_get("/api/v1/gateway", get_gateway)
    app.router.add_get("/api/v1/health", get_health)
    app.router.add_static("/static/", STATIC_DIR)
    return app
