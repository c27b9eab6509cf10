"""Run the ward console: the MQTT side and the HTTP side, started and stopped together
(``smartroom ward --config ward.toml``)."""

from __future__ import annotations

from pathlib import Path

from .config import WardConfig
from .console import ROLES, WardConsole
from .web.app import WardHttp


class WardServer:
    """``async with WardServer(config, db) as ward:`` — ``ward.url`` once started."""

    def __init__(self, config: WardConfig, db_path: Path, *, http_host: str | None = None,
                 http_port: int | None = None) -> None:
        self.config = config
        self.console = WardConsole(config, db_path)
        self._http = WardHttp(self.console)
        self._host = http_host or config.http_host
        self._port = config.http_port if http_port is None else http_port
        self.url: str | None = None

    async def start(self) -> str:
        await self.console.start()
        port = await self._http.start(self._host, self._port)
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def stop(self) -> None:
        await self._http.stop()
        await self.console.stop()

    async def create_token(self, role: str, name: str) -> str:
        _, secret = await self.console.store.create_token(role, name, self.console.clock(), ROLES)
        return secret

    async def __aenter__(self) -> "WardServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
