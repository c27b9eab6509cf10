"""The room file's ``[integrations]`` section: the alarm manager (IHE PCD-04 over MLLP), the MLLP
listener for admissions and alarm status, webhooks; TLS and allow-lists (docs/configuration.md).

``controller/room/config.py`` hands the table to :func:`parse_integrations` when it loads the room
file, so a mistake here is reported like any other: file, line and key.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from controller.room.config import OptionError

DEFAULT_MLLP_PORT = 2575                 # the port IANA lists for HL7 over MLLP
DEFAULT_ACK_TIMEOUT_S = 10.0             # an alarm manager ACKs in milliseconds; 10 s without one is a lost link
DEFAULT_HEARTBEAT_S = 60.0               # an idle link to the alarm manager is checked once a minute (ACM heartbeat)
DEFAULT_FAULT_AFTER_S = 30.0             # a call not accepted by the alarm manager for 30 s raises a technical alarm
DEFAULT_RETRY_FIRST_S = 1.0              # first resend after 1 s, doubling ...
DEFAULT_RETRY_MAX_S = 30.0               # ... to at most every 30 s, so an outage ends with a delivery within 30 s
DEFAULT_WEBHOOK_TIMEOUT_S = 10.0         # a webhook receiver answers at once; it may queue its own work
DEFAULT_LOOPBACK = ("127.0.0.0/8", "::1")
_EUI64_RE = re.compile(r"^[0-9A-F]{16}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9 ._/-]{1,64}$")  # HL7 names without delimiters

_TOP_KEYS = ("application", "facility", "equipment_id", "point_of_care", "hl7_room", "hl7_beds",
             "alarm_manager", "mllp", "webhooks")
_AM_KEYS = ("host", "port", "application", "facility", "tls", "ack_timeout_s", "fault_after_s",
            "retry_first_s", "retry_max_s", "heartbeat_s")
_MLLP_KEYS = ("host", "port", "allow", "tls")
_TLS_KEYS = ("ca", "cert", "key", "server_name")
_HOOK_KEYS = ("name", "url", "secret_file", "events", "timeout_s", "retry_first_s", "retry_max_s")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """MLLP over TLS. Client: ``ca`` verifies the alarm manager's certificate, ``cert``/``key`` are
    ours if it asks for one. Listener: ``cert``/``key`` are ours; with ``ca`` every peer must
    present a certificate signed by it (mutual TLS)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # the name in the alarm manager's certificate (default: host)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert or "", self.key)
        if self.ca:
            ctx.load_verify_locations(cafile=self.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True, slots=True)
class AlarmManagerOptions:
    host: str
    port: int = DEFAULT_MLLP_PORT
    application: str = "AM"              # MSH-5
    facility: str = ""                   # MSH-6
    tls: TlsOptions | None = None
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    fault_after_s: float = DEFAULT_FAULT_AFTER_S
    retry_first_s: float = DEFAULT_RETRY_FIRST_S
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    """The MLLP listener: admissions (ADT) and alarm-manager status (ORA^R41) come in here."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_MLLP_PORT
    allow: tuple[str, ...] = DEFAULT_LOOPBACK
    tls: TlsOptions | None = None


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    name: str
    url: str
    secret: bytes = field(repr=False)
    events: tuple[str, ...] = ()         # kinds ("call.raised") or prefixes ("call."); empty: every event
    timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    retry_first_s: float = DEFAULT_RETRY_FIRST_S
    retry_max_s: float = DEFAULT_RETRY_MAX_S

    def wants(self, kind: str) -> bool:
        return not self.events or any(kind == e or (e.endswith(".") and kind.startswith(e)) for e in self.events)


@dataclass(frozen=True, slots=True)
class Integrations:
    application: str = "SMARTROOM"       # MSH-3: this system
    facility: str = ""                   # MSH-4 and the location's facility
    equipment_id: str = ""               # EUI-64 of the controller (16 hex digits)
    point_of_care: str = ""              # the nursing unit, as the hospital's systems name it (PV1-3.1)
    hl7_room: str = ""                   # the room, as they name it (PV1-3.2); "" = the room id
    hl7_beds: Mapping[str, str] = field(default_factory=dict)  # our bed -> their bed (PV1-3.3)
    alarm_manager: AlarmManagerOptions | None = None
    mllp: ListenerOptions | None = None
    webhooks: tuple[WebhookOptions, ...] = ()

    def their_bed(self, bed: str | None) -> str:
        return "" if bed is None else self.hl7_beds.get(bed, bed)

    def our_bed(self, theirs: str, beds: tuple[str, ...]) -> str | None:
        for ours in beds:
            if self.their_bed(ours).casefold() == theirs.casefold():
                return ours
        return None


# ---------------------------------------------------------------------------------- parsing


def _get(table: Mapping[str, Any], path: tuple[str | int, ...], key: str, kind: type | tuple[type, ...],
         default: Any = None, *, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise OptionError(path + (key,), f"missing key '{key}'")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = {str: "a string", int: "an integer", float: "a number", list: "an array", dict: "a table",
                 bool: "a boolean"}
        raise OptionError(path + (key,), f"expected {names[kinds[0]]}, got {value!r}")
    if float in kinds:
        value = float(value)
    return value


def _only(table: Mapping[str, Any], path: tuple[str | int, ...], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise OptionError(path + (key,), f"unknown key '{key}' (allowed: {', '.join(allowed)})")


def _seconds(table: Mapping[str, Any], path: tuple[str | int, ...], key: str, default: float,
             lo: float, hi: float) -> float:
    value = _get(table, path, key, (int, float), default)
    if not lo <= value <= hi:
        raise OptionError(path + (key,), f"{value!r} is out of range: allowed {lo:g} to {hi:g}")
    return value


def _port(table: Mapping[str, Any], path: tuple[str | int, ...], default: int) -> int:
    port = _get(table, path, "port", int, default)
    if not 0 <= port <= 65535:
        raise OptionError(path + ("port",), f"{port} is out of range: allowed 0 to 65535")
    return port


def _name(table: Mapping[str, Any], path: tuple[str | int, ...], key: str, default: str) -> str:
    value = _get(table, path, key, str, default)
    if value and not _NAME_RE.match(value):
        raise OptionError(path + (key,), f"{value!r}: use letters, digits, space and . _ / - (at most 64), "
                                         "no HL7 delimiters")
    return value


def _file(path: tuple[str | int, ...], value: str) -> str:
    if not Path(value).is_file():
        raise OptionError(path, f"no such file: {value}")
    return value


def _tls(table: Any, path: tuple[str | int, ...], server: bool) -> TlsOptions | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise OptionError(path, f"expected a table like {{ ca = \"/etc/smartroom/hospital-ca.pem\" }}, got {table!r}")
    _only(table, path, _TLS_KEYS)
    files = {k: _file(path + (k,), _get(table, path, k, str)) for k in ("ca", "cert", "key") if k in table}
    if server and "cert" not in files:
        raise OptionError(path + ("cert",), "the listener needs its own certificate ('cert', and 'key')")
    if "key" in files and "cert" not in files:
        raise OptionError(path + ("key",), "'key' needs 'cert'")
    return TlsOptions(files.get("ca"), files.get("cert"), files.get("key"), _get(table, path, "server_name", str))


def _parse_am(table: Any, path: tuple[str | int, ...]) -> AlarmManagerOptions:
    if not isinstance(table, dict):
        raise OptionError(path, "expected a table [integrations.alarm_manager]")
    _only(table, path, _AM_KEYS)
    host = _get(table, path, "host", str, required=True)
    if not host.strip():
        raise OptionError(path + ("host",), "must not be empty")
    retry_first = _seconds(table, path, "retry_first_s", DEFAULT_RETRY_FIRST_S, 0.01, 600)
    retry_max = _seconds(table, path, "retry_max_s", DEFAULT_RETRY_MAX_S, 0.01, 3600)
    if retry_max < retry_first:
        raise OptionError(path + ("retry_max_s",), f"must be at least retry_first_s ({retry_first:g})")
    return AlarmManagerOptions(
        host, _port(table, path, DEFAULT_MLLP_PORT), _name(table, path, "application", "AM"),
        _name(table, path, "facility", ""), _tls(table.get("tls"), path + ("tls",), server=False),
        _seconds(table, path, "ack_timeout_s", DEFAULT_ACK_TIMEOUT_S, 0.01, 300),
        _seconds(table, path, "fault_after_s", DEFAULT_FAULT_AFTER_S, 1, 3600), retry_first, retry_max,
        _seconds(table, path, "heartbeat_s", DEFAULT_HEARTBEAT_S, 1, 3600))


def _parse_listener(table: Any, path: tuple[str | int, ...]) -> ListenerOptions:
    if not isinstance(table, dict):
        raise OptionError(path, "expected a table [integrations.mllp]")
    _only(table, path, _MLLP_KEYS)
    allow = _get(table, path, "allow", list, list(DEFAULT_LOOPBACK))
    for i, entry in enumerate(allow):
        try:
            ipaddress.ip_network(entry if isinstance(entry, str) else "", strict=False)
        except ValueError:
            raise OptionError(path + ("allow", i), f"{entry!r} is not an address or network "
                                                   "(like \"10.1.2.0/24\" or \"10.1.3.7\")") from None
    return ListenerOptions(_get(table, path, "host", str, "127.0.0.1"), _port(table, path, DEFAULT_MLLP_PORT),
                           tuple(allow), _tls(table.get("tls"), path + ("tls",), server=True))


def _parse_webhook(table: Any, path: tuple[str | int, ...], names: set[str]) -> WebhookOptions:
    if not isinstance(table, dict):
        raise OptionError(path, "expected a table [[integrations.webhooks]]")
    _only(table, path, _HOOK_KEYS)
    url = _get(table, path, "url", str, required=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OptionError(path + ("url",), f"{url!r} is not an http:// or https:// URL")
    name = _get(table, path, "name", str, parts.netloc)
    if name in names:
        raise OptionError(path + ("name",), f"two webhooks named {name!r}: give each its own 'name'")
    names.add(name)
    secret_file = _file(path + ("secret_file",), _get(table, path, "secret_file", str, required=True))
    secret = Path(secret_file).read_bytes().strip()
    if len(secret) < 16:
        raise OptionError(path + ("secret_file",), f"{secret_file}: the secret must be at least 16 bytes "
                                                  "(e.g. `openssl rand -hex 32 > file`)")
    events = _get(table, path, "events", list, [])
    for i, e in enumerate(events):
        if not isinstance(e, str) or not re.fullmatch(r"[a-z_]+(\.[a-z_]*)?", e):
            raise OptionError(path + ("events", i), f"{e!r}: an event kind (\"call.raised\") or a prefix (\"call.\")")
    retry_first = _seconds(table, path, "retry_first_s", DEFAULT_RETRY_FIRST_S, 0.01, 600)
    retry_max = _seconds(table, path, "retry_max_s", DEFAULT_RETRY_MAX_S, 0.01, 3600)
    if retry_max < retry_first:
        raise OptionError(path + ("retry_max_s",), f"must be at least retry_first_s ({retry_first:g})")
    return WebhookOptions(name, url, secret, tuple(events),
                          _seconds(table, path, "timeout_s", DEFAULT_WEBHOOK_TIMEOUT_S, 0.1, 300), retry_first, retry_max)


def parse_integrations(table: Mapping[str, Any], beds: tuple[str, ...] = ()) -> Integrations:
    """Check the ``[integrations]`` table; raises ``OptionError`` with the key path inside it."""
    _only(table, (), _TOP_KEYS)
    equipment_id = _get(table, (), "equipment_id", str, "").upper().replace(":", "").replace("-", "")
    if equipment_id and not _EUI64_RE.match(equipment_id):
        raise OptionError(("equipment_id",), "an EUI-64: 16 hex digits, e.g. \"0123456789ABCDEF\"")
    hl7_beds = _get(table, (), "hl7_beds", dict, {})
    for bed, theirs in hl7_beds.items():
        if bed not in beds:
            raise OptionError(("hl7_beds", bed), f"'{bed}' is not a bed of this room (beds: {', '.join(beds) or 'none'})")
        if not isinstance(theirs, str) or not _NAME_RE.match(theirs):
            raise OptionError(("hl7_beds", bed), f"expected the hospital's bed name (a string), got {theirs!r}")
    am = table.get("alarm_manager")
    listener = table.get("mllp")
    hooks = _get(table, (), "webhooks", list, [])
    names: set[str] = set()
    return Integrations(
        _name(table, (), "application", "SMARTROOM") or "SMARTROOM", _name(table, (), "facility", ""), equipment_id,
        _name(table, (), "point_of_care", ""), _name(table, (), "hl7_room", ""), MappingProxyType(dict(hl7_beds)),
        _parse_am(am, ("alarm_manager",)) if am is not None else None,
        _parse_listener(listener, ("mllp",)) if listener is not None else None,
        tuple(_parse_webhook(h, ("webhooks", i), names) for i, h in enumerate(hooks)))
