"""Run one room: controller + node gateway + API server, started and stopped together."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .room.config import RoomConfig
from .link.gateway import NodeGateway
from .link.lifecycle import NodeLifecycle
from .store.nodes import NodeRegistry
from .ota.server import OtaServer
from .ota.store import RolloutStore
from .model import wall_ms
from .service import RoomController
from .store.health import READINGS_MIN_FREE_BYTES
from .security.tls import TlsMaterial, ssl_context

if TYPE_CHECKING:  # zeroconf loads only for a room that advertises itself (start-up time)
    from .security.discovery import RoomAdvertiser

log = logging.getLogger("smartroom.runner")


@dataclass(frozen=True, slots=True)
class Endpoints:
    api_url: str
    node_host: str
    node_port: int
    tls_fingerprint: str | None = None  # "AA:BB:…" when the API speaks https
    node_tls_fingerprint: str | None = None  # "AA:BB:…" when the node link speaks TLS (the nodes' ctl_fp)


class RoomServer:
    """Owns the running pieces of one room; ``async with RoomServer(...) as server:``."""

    def __init__(self, config: RoomConfig, keys: dict[str, bytes], db_path: Path, *,
                 api_host: str = "127.0.0.1", api_port: int = 8080,
                 node_host: str | None = None, node_port: int | None = None,
                 tls: TlsMaterial | None = None, node_tls: TlsMaterial | None = None, advertise: bool = False,
                 mdns_interfaces: Sequence[str] | None = None, pin_factory: object | None = None,
                 ble_backend: object | None = None, scheduler: object | None = None,
                 readings_min_free_bytes: int = READINGS_MIN_FREE_BYTES,
                 clock: Callable[[], int] = wall_ms, timers: bool = True, keys_path: Path | None = None,
                 firmware_bundles: Path | None = None, firmware_public_key: bytes | None = None) -> None:
        """``clock`` and ``timers=False``: the room's time is the caller's (tests call ``controller.tick()``).

        ``tls`` serves the API over https; ``node_tls`` (usually the same certificate) the node link
        over TLS, which nodes pin by its fingerprint (docs/protocol.md, Transport). Without
        ``node_tls`` the node link is plain TCP (tests, benchmarks), with a warning."""
        self.config = config
        self.controller = RoomController(config, keys, db_path, clock=clock, timers=timers,
                                         readings_min_free_bytes=readings_min_free_bytes)
        self.controller.keys_path = keys_path  # health says so while others may read it
        self.gateway = NodeGateway(self.controller, tls=ssl_context(node_tls) if node_tls else None,
                                   allow_plain=config.plain_tcp)
        self.node_tls = node_tls
        self.registry = NodeRegistry(db_path)  # provisioned nodes (docs/provisioning.md)
        self.lifecycle = NodeLifecycle(self.controller, self.gateway, self.registry)
        # firmware updates over the link (docs/firmware.md): bundles from firmware_bundles, checked
        # against the firmware key's public half
        self.ota = OtaServer(self.gateway, audit=self.controller.store.audit, clock=self.controller.clock,
                             bundles_dir=firmware_bundles, public_key=firmware_public_key,
                             store=RolloutStore(db_path))  # rollouts survive a restart
        self._api_host, self._api_port = api_host, api_port
        self._node_host = node_host or config.node_host
        self._node_port = config.node_port if node_port is None else node_port
        self._api = None  # room_api.server.ApiServer once started
        self._tls = tls
        self._advertise = advertise
        self._pin_factory, self._ble_backend, self._scheduler = pin_factory, ble_backend, scheduler
        self.devices = None  # sensors.Attachment: wired GPIO nodes and the BLE scanner
        self.voice = None    # sensors.voice.VoiceService: the room's microphones, when it has voice nodes
        self.integrations = None  # integrations.IntegrationService: HL7 / webhooks, when [integrations] is set
        self._mdns_interfaces = mdns_interfaces
        self._advertising: asyncio.Task[None] | None = None
        self.advertiser: RoomAdvertiser | None = None  # set once the room is announced on mDNS
        self.endpoints: Endpoints | None = None
        self.uplink = None   # controller.uplink.WardUplink when the room file has a [ward] section

    async def start(self) -> Endpoints:
        """Start the room in this order (docs/architecture.md, "Start-up order"):

        1. the room's state is rebuilt from the store (newest checkpoint + the log after it) before
           anything can send an input: no node event is accepted, acked or decided on a state that
           is not yet the log's;
        2. Pi-attached devices, then the node gateway (node events from here on), then the API: a
           start answers its first request in well under a second whatever the log's length;
        3. the optional subsystems (voice, hospital integrations, ward uplink, mDNS), whose libraries
           load only where they are configured: the API answers meanwhile (/api/v1/integrations
           says 503 "starting"). A failure here still fails the start, loudly.
        """
        from room_api.server import ApiServer  # the API depends on the controller, not the reverse

        if self.config.ward is not None:
            from .uplink.uplink import WardUplink  # aiomqtt loads only for rooms on a ward broker

            self.uplink = WardUplink(self.controller, self.config.ward)  # raises UplinkError on a bad [ward]
            self.uplink.ota = self.ota  # the nodes' firmware to the ward, ward rollouts in
        await self.controller.start()
        await self.ota.start()  # the kept rollouts (one left running is now "interrupted")
        import sensors  # Pi-attached devices first: a wired pull-cord works even before the network side

        self.devices = sensors.attach(self.controller, pin_factory=self._pin_factory, ble_backend=self._ble_backend,
                                      scheduler=self._scheduler)
        await self.devices.start()  # raises sensors.WiringError on a wiring mistake in the room file
        node_port = await self.gateway.start(self._node_host, self._node_port)
        self._api = ApiServer(self.controller, self.gateway, self.devices, self.uplink)
        self._api.services.integrations_starting = self.config.integrations is not None
        api_port = await self._api.start(self._api_host, self._api_port,
                                         ssl_context(self._tls) if self._tls else None)
        scheme = "https" if self._tls else "http"
        self.endpoints = Endpoints(f"{scheme}://{self._api_host}:{api_port}", self._node_host, node_port,
                                   self._tls.fingerprint_sha256 if self._tls else None,
                                   self.node_tls.fingerprint_sha256 if self.node_tls else None)
        await self._start_optional()
        if self.uplink is not None:  # the room runs without the broker; the uplink connects when it can
            self.uplink.api_url = self.endpoints.api_url
            self.uplink.fingerprint = self.endpoints.tls_fingerprint
            await self.uplink.start()
        if self._advertise:  # only now: a client that finds the room can reach its API
            self._advertising = asyncio.create_task(self._announce(api_port), name="mdns announce")
        return self.endpoints

    async def _start_optional(self) -> None:
        """Voice and the hospital integrations, where configured. Their libraries (numpy, the speech
        engines; HL7) are imported in a worker thread, so the event loop serves the API and the
        nodes meanwhile."""
        assert self._api is not None
        if any(n.transport == "voice" for n in self.config.nodes.values()):
            voice_service = await asyncio.to_thread(_voice_service)
            self.voice = voice_service(self.controller)
            await self.voice.start()
            self._api.services.voice = self.voice
        if self.config.integrations is not None:
            integration_service = await asyncio.to_thread(_integration_service)
            self.integrations = integration_service(self.controller, self.config.integrations)
            await self.integrations.start()
            self._api.services.integrations = self.integrations
            self._api.services.integrations_starting = False

    async def _announce(self, api_port: int) -> None:
        """Advertise the API on mDNS (~1.5 s of probing). A failure is logged; it never stops the room."""
        interfaces = self._mdns_interfaces
        if interfaces is None:
            interfaces = _listen_addresses(self._api_host)  # announce only where the API can be reached
        from .security.discovery import DiscoveryError, RoomAdvertiser

        advertiser = RoomAdvertiser(self.config.room_id, self.config.name, api_port, tls=self._tls,
                                    interfaces=interfaces)
        try:
            await advertiser.start()
        except DiscoveryError as exc:
            log.warning("%s; the room runs, but `smartroom discover` will not list it", exc)
            return
        self.advertiser = advertiser
        log.info("announced %s on mDNS", advertiser.name)

    async def create_token(self, role: str, name: str) -> str:
        """A new API token (controller/security/tokens.py); the secret is returned once and stored hashed."""
        _, secret = await self.controller.store.create_token(role, name, self.controller.clock())
        return secret

    async def stop(self) -> None:
        if self.uplink is not None:  # "offline, stopped" to the ward before anything goes away
            await self.uplink.stop()
        if self._advertising is not None:  # goodbye first, so browsers drop the room before the API goes away
            self._advertising.cancel()
            with suppress(asyncio.CancelledError):
                await self._advertising
            self._advertising = None
        if self.advertiser is not None:
            await self.advertiser.stop()
            self.advertiser = None
        await self.ota.stop()
        await self.gateway.stop()
        if self._api is not None:
            await self._api.stop()
        if self.integrations is not None:
            await self.integrations.stop()  # the reporter saves its cursor; queued messages wait in the outbox
        if self.voice is not None:
            await self.voice.stop()
        if self.devices is not None:
            await self.devices.stop()  # queued inputs reach the log first
        await self.controller.stop()
        self.registry.close()

    async def __aenter__(self) -> "RoomServer":
        try:
            await self.start()
        except BaseException:  # a start that fails half way leaves nothing running
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _voice_service() -> type:
    from sensors.voice import VoiceService  # numpy and the speech engines load only for rooms that listen

    return VoiceService


def _integration_service() -> type:
    from integrations.service import IntegrationService  # HL7 and webhooks load only where configured

    return IntegrationService


def _listen_addresses(api_host: str) -> list[str] | None:
    """The addresses the API listens on, to announce only there; None when it listens on all of them."""
    if api_host == "localhost":
        return ["127.0.0.1"]
    try:
        return None if ipaddress.ip_address(api_host).is_unspecified else [api_host]
    except ValueError:  # "" (all interfaces) or a host name: announce on every interface
        return None
