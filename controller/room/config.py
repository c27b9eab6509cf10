"""Room configuration (one TOML file per room) and the node key file.

A room file is checked against a strict schema: unknown keys, wrong types and out-of-range values
are errors. Every error names the file, the line and the dotted key, e.g.::

    rooms/4b.toml:23: nodes.bath.inputs.cord: 'bath_emergancy' is not one of patient_call, ...

so a technician can fix the file without reading code. The line comes from ``key_line``, a small
locator over the TOML source; a configuration given as a dict (tests, the demo) has no source text,
so its errors read ``{file}: {dotted.key}: {message}``. Every key, type, default and range is listed
in docs/configuration.md; docs/examples/ holds commented room files to copy.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import re
import tomllib
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from ..model import NODE_ID_RE

# What a node's input can mean in this room. The node reports only which input changed.
INPUT_MEANINGS = (
    "patient_call",     # bedside call button, pendant
    "bath_emergency",   # bathroom / shower pull-cord
    "staff_assist",     # staff assist button
    "staff_emergency",  # staff emergency button
    "code_call",        # code blue
    "request_water",    # patient request buttons
    "request_pain",
    "request_toilet",
    "cancel",           # in-room cancel button
    "staff_presence",   # staff presence button / badge reader
    "im_ok",            # "I'm OK" button after a detected fall
    "room_presence",    # PIR in the room
    "bath_presence",    # PIR in the bathroom
    "bed_occupancy",    # bed pad (the node must name its bed)
    "patient_emergency",  # the patient calls for help urgently ("help me", "I fell" by voice)
    "patient_cancel",   # the patient cancels their own routine call ("never mind")
)

# How a node reaches the controller. "tcp" nodes run the firmware and speak the node protocol (v2); the
# others are attached to the Pi itself and feed the controller in-process (RoomController.local_*).
TRANSPORTS = ("tcp", "gpio", "ble", "voice")
# transport -> "module:function" that checks the node's [nodes.<id>.<transport>] options table.
# The function takes the table and returns the checked options, or raises OptionError.
_OPTION_PARSERS = {"gpio": "sensors.wired:parse_options", "ble": "sensors.ble:parse_options",
                   "voice": "sensors.voice:parse_options"}

DEFAULT_HEARTBEAT_MS = 10_000
# Each node's readings budget (a token bucket in the gateway). A node sends its climate readings
# every 30 s and a fast sensor (noise, pressure) at most once a second, so 10/s with a burst of 20
# leaves ten times the headroom of any real node, while one flooding node costs the controller no
# more than ten well-behaved ones. Events are never limited.
DEFAULT_READINGS_PER_S = 10.0
DEFAULT_READINGS_BURST = 20
DEFAULT_NODE_PORT = 7700
DEFAULT_API_PORT = 8080
KEY_BYTES = 32

TIERS = ("high", "medium", "low", "info")  # IEC 60601-1-8 alarm priorities plus information signals
MEASURES = ("temp_c", "rh_pct", "co2_ppm", "noise_db", "pressure_pa")
DEFAULT_ESCALATION = ("primary nurse", "charge nurse", "all staff")
_PROTOCOL_TEXT_RE = re.compile(r'^[\x20-\x21\x23-\x5b\x5d-\x7e]+$')  # what protocol strings may hold

KeyPath = tuple[str | int, ...]


class ConfigError(ValueError):
    """The room configuration or key file is wrong; the message names file, line and key."""


# --------------------------------------------------------------------------- the configuration


@dataclass(frozen=True, slots=True)
class TierTimers:
    escalate_s: float  # unacknowledged this long -> next escalation level
    reminder_s: float  # acknowledged but not cleared this long -> signal again


@dataclass(frozen=True, slots=True)
class EnvRule:
    measure: str
    low: float | None        # alarm below this (None: no lower limit)
    high: float | None       # alarm above this (None: no upper limit)
    hysteresis: float        # must come back this far inside the limit to count as in range
    min_duration_s: float    # out of range this long before the alarm
    clear_s: float           # back in range this long before the alarm clears


@dataclass(frozen=True, slots=True)
class Timers:
    tiers: Mapping[str, TierTimers]  # keys exactly TIERS
    bath_dwell_s: float = 1200
    fall_ok_window_s: float = 30
    silence_s: float = 120
    presence_s: float = 1800          # staff presence ends by itself after this long (a forgotten presence)
    presence_reminder_s: float = 60   # the reminder comes this long before presence ends
    not_displayed_s: float = 15       # a call not shown on any nurse screen this long is a technical alarm


@dataclass(frozen=True, slots=True)
class Supervision:
    missed_heartbeats: int = 3
    low_battery_v: float = 3.45
    battery_replaced_v: float = 3.9
    # A configured node that has not checked in this long after the controller started is a
    # technical alarm. A node retries at least every 30 s (its backoff cap) and boots in well under
    # a minute, so 2 min after a power cut that brought both up every working node is in.
    first_check_in_s: float = 120


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    location: str = ""
    bed: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)  # input name -> meaning
    indicator: bool = False
    tone: bool = False
    transport: str = "tcp"
    options: Mapping[str, Any] = field(default_factory=dict)  # the [nodes.<id>.<transport>] table, checked
    check_in_ms: int | None = None  # how often it checks in, if not the gateway's heartbeat (BLE)


class OptionError(ValueError):
    """A transport's options table is wrong; ``path`` is the key path inside that table."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _rules(*rules: EnvRule) -> Mapping[str, EnvRule]:
    return MappingProxyType({rule.measure: rule for rule in rules})


_PATIENT_ROOM_RULES = (
    EnvRule("temp_c", 21.0, 24.0, 0.5, 600.0, 60.0),        # ASHRAE 170 patient room 21-24 °C
    EnvRule("rh_pct", None, 60.0, 3.0, 600.0, 60.0),        # ASHRAE 170: at most 60 % RH
    EnvRule("co2_ppm", None, 1100.0, 100.0, 1800.0, 60.0),  # ventilation indicator
    EnvRule("noise_db", None, 45.0, 3.0, 600.0, 60.0),      # WHO hospital guideline (LAeq)
)
PROFILES: Mapping[str, Mapping[str, EnvRule]] = MappingProxyType({
    "patient_room": _rules(*_PATIENT_ROOM_RULES),
    # ASHRAE 170 AII room: at least 2.5 Pa below the corridor, so the reading must stay <= -2.5 Pa
    "airborne_isolation": _rules(*_PATIENT_ROOM_RULES, EnvRule("pressure_pa", None, -2.5, 0.5, 60.0, 30.0)),
})
DEFAULT_PROFILE = "patient_room"

TIER_DEFAULTS: Mapping[str, TierTimers] = MappingProxyType({
    "high": TierTimers(30.0, 180.0), "medium": TierTimers(60.0, 180.0),
    "low": TierTimers(120.0, 180.0), "info": TierTimers(600.0, 1800.0),
})
DEFAULT_TIMERS = Timers(TIER_DEFAULTS)


@dataclass(frozen=True, slots=True)
class WardLink:
    """The room file's [ward] section: the ward's MQTT broker this room publishes to (docs/ward.md)."""

    host: str
    site: str
    unit: str
    port: int = 1883
    username: str | None = None        # default: the room id
    password_file: Path | None = None  # a file holding the broker password (mode 0600)
    tls: bool = False
    ca_file: Path | None = None        # the hospital CA for the broker's certificate (default: system CAs)
    keepalive_s: int = 6               # the broker publishes the room's last will within 1.5 x this


@dataclass(frozen=True, slots=True)
class RoomConfig:
    room_id: str
    name: str
    beds: tuple[str, ...]
    nodes: Mapping[str, NodeConfig]
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    node_host: str = "127.0.0.1"
    node_port: int = DEFAULT_NODE_PORT
    source: str = "<memory>"
    profile: str = DEFAULT_PROFILE
    fall_risk_beds: frozenset[str] = frozenset()
    timers: Timers = DEFAULT_TIMERS
    escalation_levels: tuple[str, ...] = DEFAULT_ESCALATION
    supervision: Supervision = Supervision()
    environment: Mapping[str, EnvRule] = field(default_factory=lambda: dict(PROFILES[DEFAULT_PROFILE]))
    ward: WardLink | None = None  # None: the room is not on a ward broker
    integrations: Any = None  # integrations.config.Integrations: the [integrations] section, checked; None without
    readings_per_s: float = DEFAULT_READINGS_PER_S  # each node's readings budget: sustained rate ...
    readings_burst: int = DEFAULT_READINGS_BURST    # ... and burst
    plain_tcp: bool = False  # [gateway] plain_tcp: also accept nodes on plain TCP (bench, old firmware)

    def meaning(self, node: str, src: str) -> str | None:
        cfg = self.nodes.get(node)
        return cfg.inputs.get(src) if cfg else None


# --------------------------------------------------------------------------- key locator
#
# Just enough TOML to know on which line each key is defined: headers ([a."b"], [[a]]), key/value
# statements with dotted keys, and values skipped as a whole (strings, multi-line strings, arrays and
# inline tables over several lines). Keys inside an inline table are not indexed: a path into one
# resolves to the line of the key that holds the inline table.

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def key_line(text: str, path: KeyPath) -> int | None:
    """The 1-based line defining ``path`` in TOML ``text``, else of its deepest defined prefix.

    Path elements are keys, or ints indexing the occurrences of an ``[[array]]`` table.
    """
    return _lookup(_key_lines(text), path)


def _lookup(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    for end in range(len(path), 0, -1):
        if tuple(path[:end]) in lines:
            return lines[tuple(path[:end])]
    return None


@dataclass(slots=True)
class _Scanner:
    """Position in the TOML text; line numbers from newline offsets."""

    text: str
    pos: int = 0
    newlines: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.newlines = [i for i, c in enumerate(self.text) if c == "\n"]

    @property
    def line(self) -> int:
        return bisect_right(self.newlines, self.pos - 1) + 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces (and newlines and comments when ``newlines``)."""
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t\r" or (newlines and c == "\n"):
                self.pos += 1
            elif newlines and c == "#":
                self.to_line_end()
            else:
                return

    def to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end


def _key_lines(text: str) -> dict[KeyPath, int]:
    """Every defined path (and implied prefix) -> the line it is first defined on."""
    sc = _Scanner(text)
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}  # [[array]] path -> index of its current occurrence
    while True:
        sc.skip_blank(newlines=True)
        if sc.pos >= len(text):
            return lines
        line = sc.line
        if sc.peek() == "[":
            table = _header(sc, arrays, lines, line) or table
        else:
            keys = _read_key(sc)
            sc.skip_blank(newlines=False)
            if keys and sc.peek() == "=":
                sc.pos += 1
                _record(lines, table, keys, line)
                _skip_value(sc)
        sc.to_line_end()


def _record(lines: dict[KeyPath, int], table: KeyPath, keys: tuple[str, ...], line: int) -> None:
    for end in range(1, len(keys) + 1):
        lines.setdefault(table + keys[:end], line)


def _header(sc: _Scanner, arrays: dict[KeyPath, int], lines: dict[KeyPath, int], line: int) -> KeyPath | None:
    is_array = sc.peek(2) == "[["
    sc.pos += 2 if is_array else 1
    keys = _read_key(sc)
    if not keys:
        return None
    path: KeyPath = ()
    for i, key in enumerate(keys):
        path += (key,)
        lines.setdefault(path, line)
        last = i == len(keys) - 1
        if last and is_array:
            arrays[path] = arrays.get(path, -1) + 1
            path += (arrays[path],)
            lines[path] = line
        elif path in arrays:
            path += (arrays[path],)
    lines[path] = line  # an explicit header wins over a prefix implied earlier
    return path


def _read_key(sc: _Scanner) -> tuple[str, ...]:
    """A dotted key at the scanner (``a."b c".'d'``); () if there is none."""
    keys: list[str] = []
    while True:
        sc.skip_blank(newlines=False)
        key = _read_simple_key(sc)
        if key is None:
            return ()
        keys.append(key)
        sc.skip_blank(newlines=False)
        if sc.peek() != ".":
            return tuple(keys)
        sc.pos += 1


def _read_simple_key(sc: _Scanner) -> str | None:
    quote = sc.peek()
    if quote in ("'", '"'):
        end = _string_end(sc.text, sc.pos, quote)
        raw = sc.text[sc.pos:end]
        sc.pos = end
        if quote == "'":
            return raw[1:-1]
        try:
            return next(iter(tomllib.loads(f"{raw} = 0")))
        except (tomllib.TOMLDecodeError, StopIteration):
            return None
    match = _BARE_KEY_RE.match(sc.text, sc.pos)
    if not match:
        return None
    sc.pos = match.end()
    return match.group()


def _string_end(text: str, pos: int, quote: str) -> int:
    """Offset just past the one-line string starting at ``pos`` (or the line's end if unclosed)."""
    i = pos + 1
    while i < len(text) and text[i] not in (quote, "\n"):
        i += 2 if quote == '"' and text[i] == "\\" else 1
    return min(i + 1, len(text)) if i < len(text) and text[i] == quote else i


def _multiline_end(text: str, pos: int, quote: str) -> int:
    """Offset just past the multi-line string (``\"\"\"`` or ``'''``) starting at ``pos``."""
    i = pos + 3
    while i < len(text) and not text.startswith(quote * 3, i):
        i += 2 if quote == '"' and text[i] == "\\" else 1
    run = 0
    while i + run < len(text) and text[i + run] == quote:
        run += 1
    return i + min(run, 5)  # a closing delimiter may follow up to two quotes of content


def _skip_value(sc: _Scanner) -> None:
    """Move to the end of the value at the scanner: the newline after it outside any bracket."""
    text, depth = sc.text, 0
    while sc.pos < len(text):
        c = text[sc.pos]
        if c == "\n" and depth <= 0:
            return
        if c in "\"'":
            multi = text.startswith(c * 3, sc.pos)
            sc.pos = _multiline_end(text, sc.pos, c) if multi else _string_end(text, sc.pos, c)
            continue
        if c == "#":
            sc.to_line_end()
            continue
        depth += (c in "[{") - (c in "]}")
        sc.pos += 1


# --------------------------------------------------------------------------- errors and typed values


def dotted(path: KeyPath) -> str:
    """``("nodes", "bath", "inputs")`` -> ``nodes.bath.inputs``; ints index arrays: ``beds[1].id``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = json.dumps(part) if part == "" or any(c in part for c in ".\"'[]=#") else part
            out += f".{text}" if out else text
    return out


@dataclass(frozen=True, slots=True)
class _Doc:
    """Where errors point: the file name and, when parsed from text, the line of each key."""

    source: str
    lines: Mapping[KeyPath, int] | None = None

    def error(self, path: KeyPath, message: str) -> ConfigError:
        line = _lookup(self.lines, path) if self.lines is not None else None
        where = f"{self.source}:{line}" if line is not None else self.source
        return ConfigError(f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}")


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
               dict: "a table", list: "an array"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    for kind in (str, int, float):
        if isinstance(value, kind):
            return f"{_TYPE_NAMES[kind]} ({value!r})"
    for kind in (dict, list):
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    return f"a {type(value).__name__} ({value})"


def _typed(doc: _Doc, value: Any, path: KeyPath, kind: type) -> Any:
    """``value`` if it is a ``kind`` (bool is not int; an int is accepted as a float)."""
    numeric = kind in (int, float)
    if (numeric and isinstance(value, bool)) or not isinstance(value, (int, float) if kind is float else kind):
        raise doc.error(path, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
    if kind is float:
        if not math.isfinite(value):
            raise doc.error(path, f"expected a finite number, got {value}")
        return float(value)
    return value


def _in_range(doc: _Doc, value: float, path: KeyPath, lo: float, hi: float | None) -> None:
    if hi is None and not lo <= value:
        raise doc.error(path, f"{value!r} is out of range: allowed {lo!r} or more")
    if hi is not None and not lo <= value <= hi:
        raise doc.error(path, f"{value!r} is out of range: allowed {lo!r} to {hi!r}")


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _only(doc: _Doc, table: Mapping[str, Any], path: KeyPath, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            hint = _suggest(key, allowed) or f" (allowed: {', '.join(allowed)})"
            raise doc.error(path + (key,), f"unknown key '{key}'{hint}")


def _required(doc: _Doc, table: Mapping[str, Any], path: KeyPath, key: str, kind: type, hint: str = "") -> Any:
    if key not in table:
        raise doc.error(path + (key,), f"missing key '{key}'{hint}")
    return _typed(doc, table[key], path + (key,), kind)


def _optional(doc: _Doc, table: Mapping[str, Any], path: KeyPath, key: str, kind: type, default: Any,
              bounds: tuple[float, float | None] | None = None) -> Any:
    if key not in table:
        return default
    value = _typed(doc, table[key], path + (key,), kind)
    if bounds:
        _in_range(doc, table[key], path + (key,), *bounds)  # the value as written, 2 rather than 2.0
    return value


def _text(doc: _Doc, value: Any, path: KeyPath) -> str:
    """A non-empty string."""
    value = _typed(doc, value, path, str)
    if not value.strip():
        raise doc.error(path, "must not be empty")
    return value


def _section(doc: _Doc, root: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """An optional top-level table, checked for unknown keys; {} when absent."""
    table = _typed(doc, root.get(key, {}), (key,), dict)
    _only(doc, table, (key,), allowed)
    return table


# --------------------------------------------------------------------------- sections

_TOP_KEYS = ("room", "beds", "gateway", "timers", "escalation", "supervision", "environment", "nodes", "ward",
             "integrations")
_ROOM_KEYS = ("id", "name", "profile")
_BED_KEYS = ("id", "fall_risk")
_GATEWAY_KEYS = ("host", "port", "heartbeat_ms", "readings_per_s", "readings_burst", "plain_tcp")
_TIMER_KEYS = ("bath_dwell_s", "fall_ok_window_s", "silence_s", "presence_s", "presence_reminder_s",
               "not_displayed_s") + TIERS
_TIER_KEYS = ("escalate_s", "reminder_s")
_SUPERVISION_KEYS = ("missed_heartbeats", "low_battery_v", "battery_replaced_v", "first_check_in_s")
_RULE_KEYS = ("low", "high", "hysteresis", "min_duration_s", "clear_s", "enabled")
_WARD_KEYS = ("host", "port", "site", "unit", "username", "password_file", "tls", "ca_file", "keepalive_s")
_TOPIC_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # part of MQTT topic names (controller/uplink/wire.py)
_NODE_KEYS = ("location", "bed", "indicator", "tone", "inputs", "transport", "check_in_s", *TRANSPORTS[1:])


def _parse_room_table(doc: _Doc, root: Mapping[str, Any]) -> tuple[str, str, str]:
    if "room" not in root:
        raise doc.error(("room",), "missing key 'room' (the file needs a [room] table)")
    room = _typed(doc, root["room"], ("room",), dict)
    _only(doc, room, ("room",), _ROOM_KEYS)
    room_id = _text(doc, _required(doc, room, ("room",), "id", str), ("room", "id"))
    name = _text(doc, room.get("name", room_id), ("room", "name"))
    profile = _optional(doc, room, ("room",), "profile", str, DEFAULT_PROFILE)
    if profile not in PROFILES:
        raise doc.error(("room", "profile"),
                        f"'{profile}' is not one of {', '.join(PROFILES)}{_suggest(profile, list(PROFILES))}")
    return room_id, name, profile


def _parse_beds(doc: _Doc, root: Mapping[str, Any]) -> tuple[tuple[str, ...], frozenset[str]]:
    beds: list[str] = []
    fall_risk: set[str] = set()
    for i, bed in enumerate(_typed(doc, root.get("beds", []), ("beds",), list)):
        path = ("beds", i)
        bed = _typed(doc, bed, path, dict)
        _only(doc, bed, path, _BED_KEYS)
        bed_id = _text(doc, _required(doc, bed, path, "id", str), path + ("id",))
        if bed_id in beds:
            raise doc.error(path + ("id",), f"duplicate bed id '{bed_id}' (also beds[{beds.index(bed_id)}])")
        beds.append(bed_id)
        if _optional(doc, bed, path, "fall_risk", bool, False):
            fall_risk.add(bed_id)
    return tuple(beds), frozenset(fall_risk)


def _parse_gateway(doc: _Doc, root: Mapping[str, Any]) -> tuple[str, int, int]:
    gateway = _section(doc, root, "gateway", _GATEWAY_KEYS)
    path = ("gateway",)
    host = gateway.get("host", "127.0.0.1")
    host = _text(doc, host, path + ("host",))
    port = _optional(doc, gateway, path, "port", int, DEFAULT_NODE_PORT, (0, 65535))
    heartbeat_ms = _optional(doc, gateway, path, "heartbeat_ms", int, DEFAULT_HEARTBEAT_MS, (1000, 600_000))
    return host, port, heartbeat_ms


def _parse_budget(doc: _Doc, root: Mapping[str, Any]) -> tuple[float, int]:
    """Each node's readings budget: (readings per second, burst)."""
    gateway = _section(doc, root, "gateway", _GATEWAY_KEYS)
    path = ("gateway",)
    return (_optional(doc, gateway, path, "readings_per_s", float, DEFAULT_READINGS_PER_S, (0.01, 10_000)),
            _optional(doc, gateway, path, "readings_burst", int, DEFAULT_READINGS_BURST, (1, 100_000)))


def _parse_tier(doc: _Doc, timers: Mapping[str, Any], tier: str) -> TierTimers:
    path = ("timers", tier)
    default = TIER_DEFAULTS[tier]
    table = _typed(doc, timers.get(tier, {}), path, dict)
    _only(doc, table, path, _TIER_KEYS)
    return TierTimers(_optional(doc, table, path, "escalate_s", float, default.escalate_s, (5, 3600)),
                      _optional(doc, table, path, "reminder_s", float, default.reminder_s, (10, 86_400)))


def _parse_timers(doc: _Doc, root: Mapping[str, Any]) -> Timers:
    timers = _section(doc, root, "timers", _TIMER_KEYS)
    path = ("timers",)
    presence_s = _optional(doc, timers, path, "presence_s", float, DEFAULT_TIMERS.presence_s, (60, 14_400))
    reminder_s = _optional(doc, timers, path, "presence_reminder_s", float, DEFAULT_TIMERS.presence_reminder_s,
                           (5, 600))
    if reminder_s >= presence_s:
        raise doc.error(path + ("presence_reminder_s",), f"{reminder_s:g} must be less than presence_s "
                        f"({presence_s:g}): the reminder comes before presence ends")
    return Timers(
        MappingProxyType({tier: _parse_tier(doc, timers, tier) for tier in TIERS}),
        bath_dwell_s=_optional(doc, timers, path, "bath_dwell_s", float, DEFAULT_TIMERS.bath_dwell_s, (10, 86_400)),
        fall_ok_window_s=_optional(doc, timers, path, "fall_ok_window_s", float, DEFAULT_TIMERS.fall_ok_window_s,
                                   (0, 600)),
        silence_s=_optional(doc, timers, path, "silence_s", float, DEFAULT_TIMERS.silence_s, (10, 3600)),
        presence_s=presence_s,
        presence_reminder_s=reminder_s,
        not_displayed_s=_optional(doc, timers, path, "not_displayed_s", float, DEFAULT_TIMERS.not_displayed_s,
                                  (5, 600)),
    )


def _parse_escalation(doc: _Doc, root: Mapping[str, Any]) -> tuple[str, ...]:
    escalation = _section(doc, root, "escalation", ("levels",))
    path = ("escalation", "levels")
    if "levels" not in escalation:
        return DEFAULT_ESCALATION
    levels: list[str] = []
    for i, level in enumerate(_typed(doc, escalation["levels"], path, list)):
        level = _text(doc, level, path + (i,))
        if level in levels:
            raise doc.error(path + (i,), f"duplicate level '{level}'")
        levels.append(level)
    if len(levels) < 3:
        raise doc.error(path, f"needs at least 3 levels (e.g. {', '.join(DEFAULT_ESCALATION)}), got {len(levels)}")
    return tuple(levels)


def _parse_supervision(doc: _Doc, root: Mapping[str, Any]) -> Supervision:
    table = _section(doc, root, "supervision", _SUPERVISION_KEYS)
    path, default = ("supervision",), Supervision()
    result = Supervision(
        _optional(doc, table, path, "missed_heartbeats", int, default.missed_heartbeats, (2, 10)),
        _optional(doc, table, path, "low_battery_v", float, default.low_battery_v, (2.0, 5.0)),
        _optional(doc, table, path, "battery_replaced_v", float, default.battery_replaced_v, (2.0, 5.0)),
        _optional(doc, table, path, "first_check_in_s", float, default.first_check_in_s, (10, 86_400)),
    )
    if result.battery_replaced_v <= result.low_battery_v:
        key = "battery_replaced_v" if "battery_replaced_v" in table else "low_battery_v"
        raise doc.error(path + (key,), f"battery_replaced_v ({result.battery_replaced_v}) must be greater "
                                       f"than low_battery_v ({result.low_battery_v})")
    return result


def _parse_rule(doc: _Doc, measure: str, table: Mapping[str, Any], base: EnvRule | None) -> EnvRule | None:
    """The profile's rule for ``measure`` overridden key by key; None when ``enabled = false``."""
    path = ("environment", measure)
    _only(doc, table, path, _RULE_KEYS)
    base = base or EnvRule(measure, None, None, 0.0, 0.0, 0.0)
    rule = replace(
        base,
        low=_optional(doc, table, path, "low", float, base.low),
        high=_optional(doc, table, path, "high", float, base.high),
        hysteresis=_optional(doc, table, path, "hysteresis", float, base.hysteresis, (0, None)),
        min_duration_s=_optional(doc, table, path, "min_duration_s", float, base.min_duration_s, (0, 86_400)),
        clear_s=_optional(doc, table, path, "clear_s", float, base.clear_s, (0, 86_400)),
    )
    if not _optional(doc, table, path, "enabled", bool, True):
        return None
    _check_band(doc, rule, path, table)
    return rule


def _check_band(doc: _Doc, rule: EnvRule, path: KeyPath, table: Mapping[str, Any]) -> None:
    """A rule needs a limit, low below high, and a clear band left between the hysteresis margins."""
    if rule.low is None and rule.high is None:
        raise doc.error(path, "needs 'low' or 'high' (or enabled = false)")
    if rule.low is None or rule.high is None:
        return
    key = next((k for k in ("high", "low", "hysteresis") if k in table), "high")
    if rule.low >= rule.high:
        raise doc.error(path + (key,), f"low ({rule.low}) must be less than high ({rule.high})")
    if 2 * rule.hysteresis >= rule.high - rule.low:
        raise doc.error(path + ("hysteresis",) if "hysteresis" in table else path + (key,),
                        f"hysteresis ({rule.hysteresis}) must be less than half of high - low "
                        f"({rule.high} - {rule.low}), or the alarm could never clear")


def _parse_environment(doc: _Doc, root: Mapping[str, Any], profile: str) -> dict[str, EnvRule]:
    overrides = _section(doc, root, "environment", MEASURES)
    rules = dict(PROFILES[profile])
    for measure, table in overrides.items():
        table = _typed(doc, table, ("environment", measure), dict)
        rule = _parse_rule(doc, measure, table, rules.get(measure))
        if rule is None:
            rules.pop(measure, None)
        else:
            rules[measure] = rule
    return {m: rules[m] for m in MEASURES if m in rules}


def _parse_inputs(doc: _Doc, table: Mapping[str, Any], path: KeyPath, bed: str | None) -> dict[str, str]:
    inputs = _typed(doc, table.get("inputs", {}), path, dict)
    for src, meaning in inputs.items():
        where = path + (src,)
        if not _PROTOCOL_TEXT_RE.match(src):
            raise doc.error(where, "input name must be printable ASCII without quotes or backslashes")
        meaning = _typed(doc, meaning, where, str)
        if meaning not in INPUT_MEANINGS:
            raise doc.error(where, f"'{meaning}' is not one of {', '.join(INPUT_MEANINGS)}"
                                   f"{_suggest(meaning, INPUT_MEANINGS)}")
        if meaning == "bed_occupancy" and bed is None:
            raise doc.error(where, "a bed_occupancy input needs the node's 'bed' to be set")
    return dict(inputs)


def _parse_node(doc: _Doc, node_id: str, table: Any, beds: tuple[str, ...]) -> NodeConfig:
    path = ("nodes", node_id)
    if not NODE_ID_RE.match(node_id):
        raise doc.error(path, f"node id '{node_id}' must match {NODE_ID_RE.pattern} "
                              "(lower-case letters, digits and '-', at most 32)")
    table = _typed(doc, table, path, dict)
    _only(doc, table, path, _NODE_KEYS)
    bed = _optional(doc, table, path, "bed", str, None)
    if bed is not None and bed not in beds:
        declared = ", ".join(beds) if beds else "none"
        raise doc.error(path + ("bed",), f"bed '{bed}' is not declared under [[beds]] (declared: {declared})")
    transport = _optional(doc, table, path, "transport", str, "tcp")
    if transport not in TRANSPORTS:
        raise doc.error(path + ("transport",), f"'{transport}' is not one of {', '.join(TRANSPORTS)}"
                                               f"{_suggest(transport, TRANSPORTS)}")
    for other in TRANSPORTS[1:]:
        if other in table and other != transport:
            raise doc.error(path + (other,), f"a [{other}] options table needs transport = \"{other}\"")
    check_in_s = table.get("check_in_s")
    if check_in_s is not None:
        check_in_s = _optional(doc, table, path, "check_in_s", int, None, (1, 86_400))
    return NodeConfig(
        node_id,
        location=_optional(doc, table, path, "location", str, ""),
        bed=bed,
        inputs=_parse_inputs(doc, table, path + ("inputs",), bed),
        indicator=_optional(doc, table, path, "indicator", bool, False),
        tone=_optional(doc, table, path, "tone", bool, False),
        transport=transport,
        options=_parse_options(doc, table, path, transport),
        check_in_ms=check_in_s * 1000 if check_in_s is not None else None,
    )


def _parse_options(doc: _Doc, table: Mapping[str, Any], path: KeyPath, transport: str) -> Mapping[str, Any]:
    if transport == "tcp":
        return {}
    options = _typed(doc, table.get(transport, {}), path + (transport,), dict)
    module_name, _, func = _OPTION_PARSERS[transport].partition(":")
    try:
        parse = getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError) as exc:
        raise doc.error(path + ("transport",), f"transport '{transport}' is not available here ({exc})") from None
    try:
        return MappingProxyType(dict(parse(options)))
    except OptionError as exc:
        raise doc.error(path + (transport, *exc.path), exc.message) from None


def _parse_ward(doc: _Doc, root: Mapping[str, Any], room_id: str) -> WardLink | None:
    if "ward" not in root:
        return None
    table = _section(doc, root, "ward", _WARD_KEYS)
    path = ("ward",)
    base = Path(doc.source).parent if doc.lines is not None else Path(".")  # relative to the room file

    def segment(key: str, value: str, where: KeyPath) -> str:
        if not _TOPIC_SEGMENT_RE.match(value):
            raise doc.error(where, f"{key} {value!r} must be 1 to 64 of A-Z a-z 0-9 . _ - (it names MQTT topics)")
        return value

    def file(key: str) -> Path | None:
        value = _optional(doc, table, path, key, str, None)
        return None if value is None else base / _text(doc, value, path + (key,))

    segment("room id", room_id, ("room", "id"))
    tls = _optional(doc, table, path, "tls", bool, False)
    return WardLink(
        host=_text(doc, _required(doc, table, path, "host", str, " (the ward broker's address)"), path + ("host",)),
        site=segment("site", _required(doc, table, path, "site", str), path + ("site",)),
        unit=segment("unit", _required(doc, table, path, "unit", str), path + ("unit",)),
        port=_optional(doc, table, path, "port", int, 8883 if tls else 1883, (1, 65535)),
        username=_optional(doc, table, path, "username", str, None),
        password_file=file("password_file"),
        tls=tls,
        ca_file=file("ca_file"),
        keepalive_s=_optional(doc, table, path, "keepalive_s", int, 6, (2, 300)),
    )


_INTEGRATIONS_PARSER = "integrations.config:parse_integrations"


def _parse_integrations(doc: _Doc, root: Mapping[str, Any], beds: tuple[str, ...]) -> Any:
    """The [integrations] section, checked by the integrations package (HL7, FHIR, webhooks)."""
    if "integrations" not in root:
        return None
    table = _typed(doc, root["integrations"], ("integrations",), dict)
    module_name, _, func = _INTEGRATIONS_PARSER.partition(":")
    try:
        parse = getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError) as exc:
        raise doc.error(("integrations",), f"integrations are not available here ({exc})") from None
    try:
        return parse(table, beds)
    except OptionError as exc:
        raise doc.error(("integrations", *exc.path), exc.message) from None


def _parse_nodes(doc: _Doc, root: Mapping[str, Any], beds: tuple[str, ...]) -> dict[str, NodeConfig]:
    nodes = _required(doc, root, (), "nodes", dict, " (the file needs at least one [nodes.<id>] table)")
    return {node_id: _parse_node(doc, node_id, table, beds) for node_id, table in nodes.items()}


# --------------------------------------------------------------------------- entry points


def parse_room(doc: Mapping[str, Any], source: str = "<memory>", *, text: str | None = None) -> RoomConfig:
    """Check a parsed room document; ``text`` (the TOML source) lets errors give line numbers."""
    where = _Doc(source, _key_lines(text) if text is not None else None)
    root = _typed(where, doc, (), dict)
    _only(where, root, (), _TOP_KEYS)
    room_id, name, profile = _parse_room_table(where, root)
    beds, fall_risk = _parse_beds(where, root)
    host, port, heartbeat_ms = _parse_gateway(where, root)
    timers = _parse_timers(where, root)
    levels = _parse_escalation(where, root)
    supervision = _parse_supervision(where, root)
    environment = _parse_environment(where, root, profile)
    nodes = _parse_nodes(where, root, beds)
    ward = _parse_ward(where, root, room_id)
    integrations = _parse_integrations(where, root, beds)
    readings_per_s, readings_burst = _parse_budget(where, root)
    plain_tcp = _optional(where, _section(where, root, "gateway", _GATEWAY_KEYS), ("gateway",), "plain_tcp", bool,
                          False)
    return RoomConfig(room_id, name, beds, nodes, heartbeat_ms, host, port, source, profile, fall_risk,
                      timers, levels, supervision, environment, ward, integrations=integrations,
                      readings_per_s=readings_per_s, readings_burst=readings_burst, plain_tcp=plain_tcp)


def load_room(path: Path) -> RoomConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_room(doc, str(path), text=text)


def input_warnings(config: RoomConfig, node: str, inputs: Iterable[str]) -> list[str]:
    """Mismatches between the inputs a node has (its pin map / firmware config) and the room file.

    An input the room file does not map would make every press a technical alarm at run time
    instead of a call; an input the room file maps that the node does not have is usually a typo.
    """
    inputs = list(inputs)
    cfg = config.nodes.get(node)
    if cfg is None:
        return [f"{config.source}: nodes.{node}: the node has inputs ({', '.join(inputs) or 'none'}) but is not in "
                f"the room file{_suggest(node, list(config.nodes))}: every event from it would be a technical alarm"]
    warnings = [f"{config.source}: nodes.{node}.inputs: the node has input '{name}', which the room file gives no "
                f"meaning{_suggest(name, list(cfg.inputs))}: its presses would raise the technical alarm "
                "'input not in the room file', not a call"
                for name in inputs if name not in cfg.inputs]
    warnings += [f"{config.source}: nodes.{node}.inputs.{name}: the node has no input '{name}'"
                 f"{_suggest(name, inputs)}: nothing will ever raise this {cfg.inputs[name]}"
                 for name in cfg.inputs if name not in inputs]
    return warnings


def load_keys(path: Path) -> dict[str, bytes]:
    """Read ``{"nodes": {"<node id>": "<64 hex digits>"}}``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    where = _Doc(str(path))
    keys: dict[str, bytes] = {}
    for node, hex_key in _required(where, _typed(where, doc, (), dict), (), "nodes", dict).items():
        if not isinstance(hex_key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", hex_key):
            raise where.error(("nodes", node), f"key must be {KEY_BYTES * 2} hex digits")
        keys[node] = bytes.fromhex(hex_key)
    return keys
