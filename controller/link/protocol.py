"""Node link protocol v2, controller side (specification: docs/protocol.md).

Layered like the node's copy in ``firmware/srnode/proto.py``: framing and tags here, canonical
JSON here, typed messages as frozen dataclasses for the layers above. Both copies pass
``tests/vectors/protocol_v2.json``.

v2 (over v1): every frame's ``s`` grows in the order frames leave the node, events included, so
one replay rule covers every message; an event carries its own number ``e`` within the boot,
which a resend keeps and duplicates are recognised by. v1's event window (``seq_out_of_window``)
is gone, and with it the wedge after a long outage (docs/protocol.md §8).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import struct
from types import MappingProxyType
from typing import Any, Mapping

from ..model import NODE_ID_RE, Heartbeat, Hello, NodeEvent, NodeMessage, OtaGet, OtaReport, Reading  # noqa: F401 (re-exported)

PROTOCOL_VERSION = 2
MAX_FRAME_BYTES = 1024
TAG_BYTES = 32
LENGTH_BYTES = 2
MIN_FRAME_BYTES = TAG_BYTES + 2  # tag plus "{}"
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1

_PRINTABLE_RE = re.compile(r'^[\x20-\x21\x23-\x5b\x5d-\x7e]*$')  # printable ASCII minus " and \

EVENT_KINDS = ("button", "presence", "fall", "fault")
INDICATOR_PATTERNS = ("off", "received", "acknowledged")
TONE_PATTERNS = ("off", "high", "medium", "low")
# Firmware updates (§12), announced by the node's hello cap "ota".
OTA_STATUSES = ("accepted", "refused", "failed", "staged", "confirmed", "rolled_back")
OTA_CHUNK_BYTES = 480  # raw bytes per ota_data: 640 base64 characters, a frame of ~800 bytes
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol; ``reason`` is the counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- canonical JSON


def _check_value(value: Any, path: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ProtocolError("bad_message", f"{path}: integer out of range")
        return
    if isinstance(value, str):
        if not _PRINTABLE_RE.match(value):
            raise ProtocolError("bad_message", f"{path}: string must be printable ASCII without quote or backslash")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _PRINTABLE_RE.match(key):
                raise ProtocolError("bad_message", f"{path}: bad key {key!r}")
            _check_value(item, f"{path}.{key}")
        return
    raise ProtocolError("bad_message", f"{path}: {type(value).__name__} is not allowed on the wire")


def _wire_safe(value: Any) -> bool:
    """True when ``value`` may go on the wire; the hot path's check, which builds no error paths.

    json.loads gives exact types, so ``type(v) is int`` also keeps bools (their own type) apart.
    """
    kind = type(value)
    if kind is int:
        return INT_MIN <= value <= INT_MAX
    if kind is str:
        return _PRINTABLE_RE.match(value) is not None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or _PRINTABLE_RE.match(key) is None or not _wire_safe(item):
                return False
        return True
    if kind is bool:
        return True
    if kind is list:
        for item in value:
            if not _wire_safe(item):
                return False
        return True
    return False


def check_wire_safe(obj: Mapping[str, Any]) -> None:
    """Raise ProtocolError (naming the offending path) unless every value of ``obj`` may go on the wire."""
    if type(obj) is not dict or not _wire_safe(obj):
        _check_value(dict(obj), "$")


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Encode ``obj`` canonically: sorted keys, no spaces, wire-safe values only."""
    check_wire_safe(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --------------------------------------------------------------------------- framing


TAG_KEYS_CACHED = 4096  # keys whose HMAC state is kept (a room has tens of nodes; a ward's bridge a few hundred)


@functools.lru_cache(maxsize=TAG_KEYS_CACHED)
def _keyed(key: bytes) -> "hmac.HMAC":
    """The key's HMAC-SHA256 with its pads hashed once; each tag starts from a copy of it."""
    return hmac.new(key, digestmod=hashlib.sha256)


def compute_tag(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``body``, from a copy of the key's prepared HMAC: every frame has a tag, and
    ``hmac.digest`` sets a MAC up from the key each call (1.5 µs a tag here against 2.5)."""
    mac = _keyed(key).copy()
    mac.update(body)
    return mac.digest()


def encode_frame(key: bytes, obj: Mapping[str, Any]) -> bytes:
    body = canonical_json(obj)
    length = len(body) + TAG_BYTES
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("oversized_frame", f"{length} bytes > {MAX_FRAME_BYTES}")
    return struct.pack(">H", length) + body + compute_tag(key, body)


def check_length(length: int) -> None:
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("oversized_frame", f"length {length} > {MAX_FRAME_BYTES}")
    if length < MIN_FRAME_BYTES:
        raise ProtocolError("malformed_frame", f"length {length} < {MIN_FRAME_BYTES}")


class FrameSplitter:
    """Whole frames out of a byte stream, however it was cut into reads (the gateway's reader).

    :meth:`feed` takes the bytes as they came and returns every payload (body + tag) completed by
    them, in order. A length prefix out of bounds ends the stream: it is returned, after the
    payloads before it, as a :class:`ProtocolError`, and nothing fed after it is looked at.
    """

    __slots__ = ("_buf", "broken")

    def __init__(self) -> None:
        self._buf = b""
        self.broken = False

    @property
    def partial(self) -> int:
        """Bytes of a frame begun but not complete (0: the stream is between frames)."""
        return len(self._buf)

    def ended(self) -> str | None:
        """What to say of a stream that ends now: None between frames, else where it was cut."""
        buf = self._buf
        if not buf:
            return None
        if len(buf) < LENGTH_BYTES:
            return "connection ended inside a length prefix"
        return f"connection ended {len(buf) - LENGTH_BYTES}/{(buf[0] << 8) | buf[1]} bytes into a frame"

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        if self.broken:
            return []
        if self._buf:
            data = self._buf + data
        out: list[bytes | ProtocolError] = []
        i, n = 0, len(data)
        while n - i >= LENGTH_BYTES:
            length = (data[i] << 8) | data[i + 1]
            if length > MAX_FRAME_BYTES or length < MIN_FRAME_BYTES:
                try:
                    check_length(length)
                except ProtocolError as exc:
                    out.append(exc)
                self.broken = True
                self._buf = b""
                return out
            end = i + LENGTH_BYTES + length
            if end > n:
                break
            out.append(data[i + LENGTH_BYTES:end])
            i = end
        self._buf = data[i:] if i < n else b""
        return out


def split_payload(payload: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """Split a frame's payload (after the length) into body, tag and parsed object.

    The tag is *not* verified here: the key depends on the node named in the body.
    """
    body, tag = payload[:-TAG_BYTES], payload[-TAG_BYTES:]
    try:
        obj = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("malformed_frame", f"body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("malformed_frame", "body is not a JSON object")
    return body, tag, obj


def verify_tag(key: bytes, body: bytes, tag: bytes) -> None:
    if not hmac.compare_digest(compute_tag(key, body), tag):
        raise ProtocolError("bad_mac", "tag does not verify")


def decode_frame(key: bytes, frame: bytes) -> dict[str, Any]:
    """Decode one whole frame (length prefix included) with a known key; for tests and tools."""
    if len(frame) < LENGTH_BYTES:
        raise ProtocolError("malformed_frame", "shorter than the length prefix")
    (length,) = struct.unpack(">H", frame[:LENGTH_BYTES])
    check_length(length)
    if len(frame) != LENGTH_BYTES + length:
        raise ProtocolError("malformed_frame", f"length says {length}, frame has {len(frame) - LENGTH_BYTES}")
    body, tag, obj = split_payload(frame[LENGTH_BYTES:])
    verify_tag(key, body, tag)
    _check_value(obj, "$")
    return obj


# --------------------------------------------------------------------------- typed messages


def _get(obj: Mapping[str, Any], key: str, kind: type, *, lo: int | None = None, hi: int | None = None) -> Any:
    if key not in obj:
        raise ProtocolError("bad_message", f"missing field {key!r}")
    value = obj[key]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError("bad_message", f"field {key!r} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ProtocolError("bad_message", f"field {key!r}={value} out of range")
    elif not isinstance(value, kind):
        raise ProtocolError("bad_message", f"field {key!r} must be {kind.__name__}")
    return value


def _int_map(obj: Mapping[str, Any], key: str) -> dict[str, int]:
    value = obj.get(key, {})
    if not isinstance(value, dict) or any(isinstance(v, bool) or not isinstance(v, int) for v in value.values()):
        raise ProtocolError("bad_message", f"field {key!r} must map names to integers")
    return dict(value)


_READING_KEYS = frozenset(("v", "t", "n", "b", "s", "at_ms", "m"))


# Node ids and measure names the readings path has found well-formed: a reading's strings are the same
# few every time, so each is matched against its pattern once (bounded: a stream of new names is
# matched every time, never remembered).
_SEEN_MAX = 1024
_good_node_ids: set[str] = set()
_good_measures: set[str] = set()


def _seen_good(name: str, pattern: re.Pattern[str], seen: set[str]) -> bool:
    if pattern.match(name) is None:
        return False
    if len(seen) < _SEEN_MAX:
        seen.add(name)
    return True


def _fixed_shape_reading(obj: Mapping[str, Any]) -> Reading | None:
    """The readings path: a well-formed reading checked field by field, with nothing built on the way.

    None for anything unusual; the general path then finds (and names) what is wrong.
    """
    node, boot, seq, at_ms, measures = obj["n"], obj["b"], obj["s"], obj["at_ms"], obj["m"]
    if (obj["v"] != PROTOCOL_VERSION or obj["t"] != "reading" or type(node) is not str
            or (node not in _good_node_ids and not _seen_good(node, NODE_ID_RE, _good_node_ids))
            or type(boot) is not int or not 1 <= boot <= INT_MAX
            or type(seq) is not int or not 1 <= seq <= INT_MAX or type(at_ms) is not int
            or not 0 <= at_ms <= INT_MAX or type(measures) is not dict or not measures):
        return None
    for name, value in measures.items():
        if (type(value) is not int or not INT_MIN <= value <= INT_MAX
                or (name not in _good_measures and not _seen_good(name, _PRINTABLE_RE, _good_measures))):
            return None
    return Reading(node, boot, seq, at_ms, measures)


_EVENT_KEYS = frozenset(("v", "t", "n", "b", "s", "e", "k", "src", "val", "at_ms"))
_EVENT_KEYS_X = _EVENT_KEYS | {"x"}
_NO_FEATURES: Mapping[str, int] = MappingProxyType({})


def _fixed_shape_event(obj: Mapping[str, Any]) -> NodeEvent | None:
    """The events path, like :func:`_fixed_shape_reading`: None sends anything unusual the general way."""
    node, boot, seq, event_no, kind, src = obj["n"], obj["b"], obj["s"], obj["e"], obj["k"], obj["src"]
    val, at_ms = obj["val"], obj["at_ms"]
    features = obj.get("x", _NO_FEATURES)
    if (obj["v"] != PROTOCOL_VERSION or obj["t"] != "event" or type(node) is not str
            or NODE_ID_RE.match(node) is None or type(boot) is not int or not 1 <= boot <= INT_MAX
            or type(seq) is not int or not 1 <= seq <= INT_MAX or type(event_no) is not int
            or not 1 <= event_no <= INT_MAX or kind not in EVENT_KINDS
            or type(src) is not str or _PRINTABLE_RE.match(src) is None or type(val) is not int
            or not INT_MIN <= val <= INT_MAX or type(at_ms) is not int or not 0 <= at_ms <= INT_MAX
            or (features is not _NO_FEATURES and type(features) is not dict)):
        return None
    for name, value in features.items():
        if type(value) is not int or not INT_MIN <= value <= INT_MAX or _PRINTABLE_RE.match(name) is None:
            return None
    return NodeEvent(node, boot, seq, event_no, kind, src, val, at_ms, dict(features))


def fast_message(body: bytes) -> NodeEvent | Reading | None:
    """The hot path: ``body`` as a node event or reading of the usual shape, or None for anything
    else, whatever is wrong with it (the general path, :func:`split_payload` and
    :func:`parse_node_message`, then decides the frame and names what is wrong)."""
    try:
        obj = json.loads(body.decode("ascii"))
    except ValueError:  # (UnicodeDecodeError is one)
        return None
    if type(obj) is not dict:
        return None
    keys = obj.keys()
    if keys == _EVENT_KEYS or keys == _EVENT_KEYS_X:
        return _fixed_shape_event(obj)
    if keys == _READING_KEYS:
        return _fixed_shape_reading(obj)
    return None


def parse_node_message(obj: Mapping[str, Any]) -> NodeMessage:
    """Validate a node → controller body and return its typed message."""
    keys = obj.keys()
    if keys == _READING_KEYS:
        reading = _fixed_shape_reading(obj)
        if reading is not None:
            return reading
    elif keys == _EVENT_KEYS or keys == _EVENT_KEYS_X:
        event = _fixed_shape_event(obj)
        if event is not None:
            return event
    check_wire_safe(obj)
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_message", f"protocol version {obj.get('v')!r} is not {PROTOCOL_VERSION}")
    node = _get(obj, "n", str)
    if not NODE_ID_RE.match(node):
        raise ProtocolError("bad_message", f"node id {node!r} is not [a-z0-9-]{{1,32}}")
    boot = _get(obj, "b", int, lo=1)
    seq = _get(obj, "s", int, lo=1)
    kind = _get(obj, "t", str)
    if kind == "hello":
        caps = _get(obj, "caps", list)
        if not all(isinstance(c, str) for c in caps):
            raise ProtocolError("bad_message", "caps must be a list of strings")
        return Hello(node, boot, seq, _get(obj, "fw", str), _get(obj, "hw", str), tuple(caps),
                     _get(obj, "hb_ms", int, lo=100), _get(obj, "nonce", int, lo=0))
    if kind == "hb":
        rssi = obj.get("rssi")
        batt = obj.get("batt_mv")
        for name, value in (("rssi", rssi), ("batt_mv", batt)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ProtocolError("bad_message", f"field {name!r} must be an integer")
        return Heartbeat(node, boot, seq, _get(obj, "up_ms", int, lo=0), _get(obj, "q", int, lo=0),
                         _get(obj, "heap", int, lo=0), _get(obj, "drop", int, lo=0), rssi, batt,
                         _int_map(obj, "state"))
    if kind == "reading":
        if not isinstance(obj.get("m"), dict) or not obj["m"]:
            raise ProtocolError("bad_message", "reading needs a non-empty 'm'")
        return Reading(node, boot, seq, _get(obj, "at_ms", int, lo=0), _int_map(obj, "m"))
    if kind == "event":
        ev_kind = _get(obj, "k", str)
        if ev_kind not in EVENT_KINDS:
            raise ProtocolError("bad_message", f"event kind {ev_kind!r} is not one of {EVENT_KINDS}")
        # §9: an event the node kept through a restart names the boot it was made in, always an
        # earlier one (the frame's `b` stays the connection's, for the replay rules)
        origin = _get(obj, "ob", int, lo=1, hi=boot - 1) if "ob" in obj else None
        return NodeEvent(node, boot, seq, _get(obj, "e", int, lo=1), ev_kind, _get(obj, "src", str),
                         _get(obj, "val", int), _get(obj, "at_ms", int, lo=0), _int_map(obj, "x"), origin)
    if kind == "ota_get":
        bundle = _get(obj, "mh", str)
        if not _HEX64_RE.match(bundle):
            raise ProtocolError("bad_message", "mh must be 64 lowercase hex digits")
        return OtaGet(node, boot, seq, bundle, _get(obj, "f", int, lo=0), _get(obj, "o", int, lo=0))
    if kind == "ota":
        status = _get(obj, "st", str)
        if status not in OTA_STATUSES:
            raise ProtocolError("bad_message", f"ota status {status!r} is not one of {OTA_STATUSES}")
        reason = obj.get("why")
        bundle = obj.get("mh")
        for name, value in (("why", reason), ("mh", bundle)):
            if value is not None and not isinstance(value, str):
                raise ProtocolError("bad_message", f"field {name!r} must be a string")
        return OtaReport(node, boot, seq, status, _get(obj, "ver", str), reason, bundle)
    raise ProtocolError("bad_message", f"unknown message type {kind!r}")


def welcome(sid: int, seq: int, hb_ms: int, time_ms: int) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "t": "welcome", "sid": sid, "s": seq, "hb_ms": hb_ms,
            "time_ms": time_ms % (INT_MAX + 1)}


def ack(sid: int, seq: int, acked: int, event_no: int | None = None, origin_boot: int | None = None
        ) -> dict[str, Any]:
    """The ack of frame ``acked``; an event's ack also names the event (``e``, and ``ob`` when it came
    from an earlier boot, §9), which frees it at the node."""
    msg = {"v": PROTOCOL_VERSION, "t": "ack", "sid": sid, "s": seq, "a": acked}
    if event_no is not None:
        msg["e"] = event_no
    if origin_boot is not None:
        msg["ob"] = origin_boot
    return msg


def ack_frame(key: bytes, sid: int, seq: int, acked: int, event_no: int | None = None,
              origin_boot: int | None = None) -> bytes:
    """``encode_frame(key, ack(sid, seq, acked, event_no, origin_boot))``, byte for byte, without the
    general encoder: an ack is sent for every event and heartbeat. Its fields are integers the
    controller chose or checked. (An event kept through a restart, §9, is rare: the general way.)"""
    if origin_boot is not None or not (0 <= acked <= INT_MAX and 0 <= seq <= INT_MAX and 0 <= sid <= INT_MAX
                                       and (event_no is None or 0 <= event_no <= INT_MAX)):
        return encode_frame(key, ack(sid, seq, acked, event_no, origin_boot))  # names what is out of range
    if event_no is None:
        body = b'{"a":%d,"s":%d,"sid":%d,"t":"ack","v":%d}' % (acked, seq, sid, PROTOCOL_VERSION)
    else:
        body = b'{"a":%d,"e":%d,"s":%d,"sid":%d,"t":"ack","v":%d}' % (acked, event_no, seq, sid, PROTOCOL_VERSION)
    return struct.pack(">H", len(body) + TAG_BYTES) + body + compute_tag(key, body)


def command(sid: int, seq: int, name: str, **fields: Any) -> dict[str, Any]:
    if name == "indicator" and fields.get("p") not in INDICATOR_PATTERNS:
        raise ValueError(f"indicator pattern must be one of {INDICATOR_PATTERNS}")
    if name == "tone" and fields.get("p") not in TONE_PATTERNS:
        raise ValueError(f"tone pattern must be one of {TONE_PATTERNS}")
    return {"v": PROTOCOL_VERSION, "t": "cmd", "sid": sid, "s": seq, "c": name, **fields}
