"""What every part of the API shares: the application's keys (no globals), its one error shape and the
middleware that puts every error into it (the ward console's API uses the same)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

from controller.link.gateway import NodeGateway
from controller.security.tokens import Principal
from controller.service import RoomController

from . import metrics as metrics_mod

CONTROLLER = web.AppKey("controller", RoomController)
GATEWAY = web.AppKey("gateway", NodeGateway)
METRICS = web.AppKey("metrics", metrics_mod.Metrics)
OPENAPI = web.AppKey("openapi", dict)
DEVICES = web.AppKey("devices", object)


@dataclass(slots=True)
class LateServices:
    """Subsystems that start after the API answers (controller/runner.py, "Start-up order"): each is
    None until it has started; ``*_starting`` says one is configured and on its way."""

    integrations: object | None = None  # integrations.IntegrationService
    voice: object | None = None         # sensors.voice.VoiceService
    integrations_starting: bool = False


SERVICES = web.AppKey("services", LateServices)
PRINCIPAL = web.RequestKey("principal", Principal)  # who is calling: the token's name and role


class ApiError(web.HTTPException):
    """An error with the API's one JSON shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": {"status": status, "code": code, "message": message}}),
                         content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_error_middleware(translate: Callable[[Exception], ApiError | None], log: logging.Logger, where: str):
    """Every error leaves as an ``ApiError``: ``translate`` maps the service's own errors (None: not
    one of them), aiohttp's HTTP errors keep their status, and a bug is logged and becomes a 500
    that says to look at ``where``'s log."""

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError:
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            raise ApiError(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason) from exc
        except Exception as exc:
            mapped = translate(exc)
            if mapped is not None:
                raise mapped from exc
            # the API answers in its own shape even for a bug; the bug is logged
            log.exception("unhandled error on %s %s", request.method, request.path)
            raise ApiError(500, "internal_error", f"internal error; see the {where} log") from exc

    return error_middleware


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an integer from ``lo`` to ``hi`` (``default`` when absent)."""
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
