"""Run one room: controller + node gateway + API server, started and stopped together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .config import RoomConfig
from .gateway import NodeGateway
from .service import RoomController

log = logging.getLogger("smartroom.runner")

SHUTDOWN_TIMEOUT_S = 2.0  # open event streams are closed after this; clients resume with Last-Event-ID


@dataclass(frozen=True, slots=True)
class Endpoints:
    api_url: str
    node_host: str
    node_port: int


class RoomServer:
    """Owns the running pieces of one room; ``async with RoomServer(...) as server:``."""

    def __init__(self, config: RoomConfig, keys: dict[str, bytes], db_path: Path, *,
                 api_host: str = "127.0.0.1", api_port: int = 8080,
                 node_host: str | None = None, node_port: int | None = None) -> None:
        self.controller = RoomController(config, keys, db_path)
        self.gateway = NodeGateway(self.controller)
        self._api_host, self._api_port = api_host, api_port
        self._node_host = node_host or config.node_host
        self._node_port = config.node_port if node_port is None else node_port
        self._runner: web.AppRunner | None = None
        self.endpoints: Endpoints | None = None

    async def start(self) -> Endpoints:
        from room_api.app import create_app  # the API depends on the controller, not the reverse

        await self.controller.start()
        node_port = await self.gateway.start(self._node_host, self._node_port)
        self._runner = web.AppRunner(create_app(self.controller, self.gateway), access_log=None,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._api_host, self._api_port)
        await site.start()
        api_port = self._runner.addresses[0][1]
        self.endpoints = Endpoints(f"http://{self._api_host}:{api_port}", self._node_host, node_port)
        return self.endpoints

    async def create_token(self, role: str, name: str) -> str:
        """A new API token (controller/tokens.py); the secret is returned once and stored hashed."""
        _, secret = await self.controller.store.create_token(role, name, self.controller.clock())
        return secret

    async def stop(self) -> None:
        await self.gateway.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.controller.stop()

    async def __aenter__(self) -> "RoomServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

