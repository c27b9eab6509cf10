"""Find room controllers on the ward network: DNS-SD over multicast DNS (zeroconf, "Bonjour").

Each controller advertises one ``_smartroom._tcp.local.`` service named after its room id, on the
API port, with a TXT record telling a client everything it needs before the first request:

- ``room``: room id (``4b``)
- ``name``: room name (``Room 4B, Ward 3``), cut to fit a TXT string
- ``path``: API base path (``/api/v1``)
- ``version``: controller software version
- ``api``: URL scheme, ``https`` or ``http``
- ``tls``: ``1`` when the API speaks TLS, else ``0``
- ``fp``: SHA-256 fingerprint of the API certificate, 64 hex digits (empty without TLS)

The controller starts advertising only after its API listens, and withdraws the service (mDNS
"goodbye") when it stops::

    async with RoomAdvertiser("4b", "Room 4B", api_port, tls=material):
        ...  # serve

    rooms = await browse(timeout_s=3)           # every room that answers within 3 s
    rooms = await browse(3, ["127.0.0.1"], expect=2)  # loopback only; return as soon as 2 are seen

mDNS is link-local and unauthenticated: anyone on the segment can advertise anything. A client may
use ``fp`` to connect to a self-signed controller, but the fingerprint a client *trusts* should come
from installation records (docs/network.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from importlib import metadata

import ifaddr
from zeroconf import (BadTypeInNameException, DNSQuestionType, InterfaceChoice, IPVersion,
                      NonUniqueNameException, ServiceStateChange, Zeroconf)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .hostnames import LABEL_MAX_BYTES, host_label
from .tls import TlsMaterial, format_fingerprint

SERVICE_TYPE = "_smartroom._tcp.local."
API_PATH = "/api/v1"
DEFAULT_BROWSE_TIMEOUT_S = 3.0  # mDNS responders answer within ~20-120 ms; 3 s covers a busy Wi-Fi and a retry
TXT_VALUE_MAX_BYTES = 200  # a TXT string holds 255 bytes including "key="; keep room names well inside

# Browse with multicast (QM) questions only. With a "unicast response" (QU) question a responder may
# answer by unicast to port 5353 of the asking host, and when several mDNS stacks share that port
# (avahi-daemon on a Pi, another zeroconf user, two rooms in one test) the kernel hands a unicast
# datagram to just one of them - maybe not us. Multicast answers reach every listener.
_QUESTION_TYPE = DNSQuestionType.QM


class DiscoveryError(RuntimeError):
    """The service could not be advertised (no usable interface, invalid name, name taken)."""


@dataclass(frozen=True, slots=True)
class RoomRecord:
    name: str                # room name
    room: str                # room id
    host: str                # an address of the controller (IPv4 preferred)
    port: int
    path: str
    version: str
    tls: bool
    fingerprint: str | None  # "AA:BB:…" like TlsMaterial.fingerprint_sha256; None without TLS
    url: str                 # API base URL, e.g. https://10.0.0.5:8443/api/v1


def package_version() -> str:
    try:
        return metadata.version("smartroom")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def instance_name(room_id: str) -> str:
    """The DNS-SD instance label for a room: its id, without dots (they separate labels), ≤ 63 bytes."""
    return _clip(room_id.replace(".", "-").strip(), LABEL_MAX_BYTES) or "room"


def txt_record(room_id: str, room_name: str, *, tls: TlsMaterial | None, path: str = API_PATH) -> dict[str, str]:
    return {
        "room": _clip(room_id, TXT_VALUE_MAX_BYTES),
        "name": _clip(room_name, TXT_VALUE_MAX_BYTES),
        "path": path,
        "version": _clip(package_version(), TXT_VALUE_MAX_BYTES),
        "api": "https" if tls else "http",
        "tls": "1" if tls else "0",
        "fp": tls.fingerprint_hex if tls else "",
    }


def local_addresses(interfaces: Sequence[str] | None = None) -> list[str]:
    """Addresses to advertise: the given interface addresses, or every non-loopback IPv4 address."""
    if interfaces is not None:
        return [a for a in interfaces if isinstance(a, str)]
    found = {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if ip.is_IPv4}
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


class RoomAdvertiser:
    """Advertise one room's API while the ``async with`` block runs.

    ``interfaces``: addresses of the interfaces to answer on (``["127.0.0.1"]`` in tests); None means
    all. ``addresses``: what the service resolves to; by default the interface addresses, or every
    non-loopback IPv4 address of the host. Pass ``zeroconf`` to share one ``AsyncZeroconf`` with other
    users; it is then left open. If another controller already holds the instance name, ours becomes
    ``<room>-2`` on host ``smartroom-<room>-2.local``; the ``room`` TXT key still says which room it is.
    """

    def __init__(self, room_id: str, room_name: str, port: int, *, tls: TlsMaterial | None = None,
                 interfaces: Sequence[str] | None = None, addresses: Sequence[str] | None = None,
                 zeroconf: AsyncZeroconf | None = None, service_type: str = SERVICE_TYPE) -> None:
        self.room_id = room_id
        self._interfaces = interfaces
        self._given_zc = zeroconf
        self._zc: AsyncZeroconf | None = None
        self._registered = False
        self._service = (service_type, port, txt_record(room_id, room_name, tls=tls),
                         list(addresses) if addresses is not None else local_addresses(interfaces))
        self.info = self._service_info(instance_name(room_id))

    def _service_info(self, label: str) -> AsyncServiceInfo:
        """The service as instance ``label``, on the host name made from that label."""
        service_type, port, txt, addresses = self._service
        return AsyncServiceInfo(service_type, f"{label}.{service_type}", port=port, properties=txt,
                                server=f"{host_label(label)}.", parsed_addresses=addresses)

    @property
    def name(self) -> str:
        """The registered service name (may carry a ``-2`` suffix after a name conflict)."""
        return self.info.name

    async def start(self) -> None:
        if not self.info.addresses:
            raise DiscoveryError(f"room {self.room_id}: no address to advertise (no network interface is up?)")
        try:
            self._zc = self._given_zc or AsyncZeroconf(interfaces=_interface_choice(self._interfaces))
            # Probe first (renaming to "<room>-2" on a conflict), so that a renamed service also gets
            # a host name of its own: two controllers answering for one host name with different
            # addresses would send a client resolving one room to the other.
            await self._zc.zeroconf.async_check_service(self.info, allow_name_change=True)
            label = self.info.name[:-len(self.info.type) - 1]
            if label != instance_name(self.room_id):
                self.info = self._service_info(label)
            # Probed just now: register without probing again (the name is defended from here on).
            registered = await self._zc.async_register_service(self.info, cooperating_responders=True)
            await registered  # announcements done: the name is ours
        except BaseException as exc:  # also cancellation while probing: leave nothing registered or open
            await self._abandon()
            if isinstance(exc, (OSError, BadTypeInNameException, NonUniqueNameException)):
                raise DiscoveryError(f"room {self.room_id}: cannot advertise {self.info.name}: {exc}") from exc
            raise
        self._registered = True

    async def stop(self) -> None:
        if self._zc is None:
            return
        try:
            if self._registered:
                self._registered = False
                goodbye = await self._zc.async_unregister_service(self.info)
                await goodbye  # the goodbye packets are out: browsers drop the room now, not at TTL expiry
        finally:
            await self._close_own()

    async def _abandon(self) -> None:
        if self._zc is not None and self._zc is self._given_zc:
            with suppress(Exception):  # a shared instance stays open: take back a half-done registration
                await (await self._zc.async_unregister_service(self.info))
        await self._close_own()

    async def _close_own(self) -> None:
        zc, self._zc = self._zc, None
        if zc is not None and zc is not self._given_zc:
            await zc.async_close()

    async def __aenter__(self) -> "RoomAdvertiser":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def browse(timeout_s: float = DEFAULT_BROWSE_TIMEOUT_S, interfaces: Sequence[str] | None = None, *,
                 expect: int | None = None, service_type: str = SERVICE_TYPE,
                 zeroconf: AsyncZeroconf | None = None) -> list[RoomRecord]:
    """Rooms whose service was seen and resolved within ``timeout_s``, sorted by room id.

    Returns early once ``expect`` rooms are resolved. A room that says goodbye during the browse is
    left out. ``interfaces`` as for ``RoomAdvertiser``; ``zeroconf`` to reuse an open instance.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    aiozc = zeroconf or AsyncZeroconf(interfaces=_interface_choice(interfaces))
    found: dict[str, RoomRecord] = {}
    resolving: dict[str, asyncio.Task[None]] = {}
    enough = asyncio.Event()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        remaining_ms = max(0.0, deadline - loop.time()) * 1000
        if await info.async_request(aiozc.zeroconf, remaining_ms, question_type=_QUESTION_TYPE):
            record = room_record(info)
            if record is not None:
                found[name] = record
                if expect is not None and len(found) >= expect:
                    enough.set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        previous = resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
        else:  # Added, or Updated (new TXT or addresses): resolve (again)
            resolving[name] = loop.create_task(resolve(name), name=f"resolve {name}")

    browser = AsyncServiceBrowser(aiozc.zeroconf, service_type, handlers=[on_change], question_type=_QUESTION_TYPE)
    try:
        if expect is None or expect > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout_s)
    finally:
        await browser.async_cancel()
        for task in resolving.values():
            task.cancel()
        await asyncio.gather(*resolving.values(), return_exceptions=True)
        if zeroconf is None:
            await aiozc.async_close()
    return sorted(found.values(), key=lambda r: (r.room, r.name, r.host, r.port))


def room_record(info: AsyncServiceInfo) -> RoomRecord | None:
    """The TXT record and addresses of a resolved service as a RoomRecord; None if it has no address."""
    addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
    if not addresses or info.port is None:
        return None
    txt = {_text(k): _text(v) for k, v in (info.properties or {}).items() if v is not None}
    tls = txt.get("tls") == "1"
    scheme = txt.get("api") or ("https" if tls else "http")
    path = txt.get("path") or API_PATH
    host = addresses[0]
    netloc = f"[{host}]" if ":" in host else host
    return RoomRecord(name=txt.get("name", ""), room=txt.get("room", ""), host=host, port=info.port, path=path,
                      version=txt.get("version", ""), tls=tls,
                      fingerprint=_fingerprint(txt.get("fp", "")) if tls else None,
                      url=f"{scheme}://{netloc}:{info.port}{path}")


def _fingerprint(hex_digits: str) -> str | None:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", hex_digits):
        return None
    return format_fingerprint(bytes.fromhex(hex_digits))


def _interface_choice(interfaces: Sequence[str] | None) -> InterfaceChoice | list[str]:
    return InterfaceChoice.All if interfaces is None else list(interfaces)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _clip(text: str, max_bytes: int) -> str:
    """Cut text to at most max_bytes of UTF-8 without splitting a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
