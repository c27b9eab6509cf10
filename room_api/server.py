"""Serve the API over HTTP(S): the one place the room listens for HTTP (used by controller/runner.py)."""

from __future__ import annotations

import ssl

from aiohttp import web

from controller.link.gateway import NodeGateway
from controller.service import RoomController

from .app import create_app
from .base import SERVICES, LateServices

SHUTDOWN_TIMEOUT_S = 2.0  # open event streams are closed after this; clients resume with Last-Event-ID


class ApiServer:
    """The API application on one address; ``port`` is the bound port once :meth:`start` returns."""

    def __init__(self, controller: RoomController, gateway: NodeGateway, devices: object | None = None,
                 uplink: object | None = None, integrations: object | None = None, voice: object | None = None
                 ) -> None:
        app = create_app(controller, gateway, devices, uplink, integrations, voice)
        self.services: LateServices = app[SERVICES]  # what starts after the API (controller/runner.py)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        self.port: int | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
