"""What every part of the API shares: the application's keys (no globals) and its one error shape."""

from __future__ import annotations

import json

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
INTEGRATIONS = web.AppKey("integrations", object)  # integrations.IntegrationService, when configured
PRINCIPAL = web.RequestKey("principal", Principal)  # who is calling: the token's name and role


class ApiError(web.HTTPException):
    """An error with the API's one JSON shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": {"status": status, "code": code, "message": message}}),
                         content_type="application/json")
