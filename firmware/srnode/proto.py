# Node link protocol v2, node side (docs/protocol.md). Same vectors as controller/link/protocol.py.
import io
import json
from micropython import const

PROTOCOL_VERSION = const(2)
MAX_FRAME_BYTES = const(1024)
TAG_BYTES = const(32)
MIN_FRAME_BYTES = const(34)


class ProtoError(Exception):
    # reason: the counter label of docs/protocol.md section 4
    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _enc(obj, w):
    # w: a stream the pieces are written to. One growing buffer, not a list of pieces: a fall
    # event's ~150 pieces would need one 2 KB pointer array, hard to find in a fragmented heap.
    t = type(obj)
    if t is bool:
        w.write("true" if obj else "false")
    elif t is int:
        if obj < -2147483648 or obj > 2147483647:
            raise ProtoError("bad_message", "int range")
        w.write(str(obj))
    elif t is str:
        # Bytes, not characters: iterating a str makes one-character strings, which the unix port
        # interns as names (a table that only grows); ints cost nothing.
        for c in obj.encode():
            if c < 0x20 or c > 0x7E or c == 0x22 or c == 0x5C:
                raise ProtoError("bad_message", "string chars")
        w.write('"')
        w.write(obj)
        w.write('"')
    elif t is list or t is tuple:
        w.write("[")
        first = True
        for item in obj:
            if not first:
                w.write(",")
            first = False
            _enc(item, w)
        w.write("]")
    elif t is dict:
        w.write("{")
        first = True
        for key in sorted(obj):
            if not first:
                w.write(",")
            first = False
            _enc(key, w)
            w.write(":")
            _enc(obj[key], w)
        w.write("}")
    else:
        raise ProtoError("bad_message", "type not allowed")


def canonical(obj):
    w = io.StringIO()
    _enc(obj, w)
    return w.getvalue().encode()


def encode_frame(mac, obj):
    # mac: an Hmac256 holding the node key. Returns length(2) + body + tag.
    body = canonical(obj)
    n = len(body) + TAG_BYTES
    if n > MAX_FRAME_BYTES:
        raise ProtoError("oversized_frame", "too long")
    return bytes((n >> 8, n & 0xFF)) + body + mac.digest(body)


def check_length(n):
    if n > MAX_FRAME_BYTES:
        raise ProtoError("oversized_frame", "length")
    if n < MIN_FRAME_BYTES:
        raise ProtoError("malformed_frame", "length")


def decode_payload(mac, payload):
    # payload: body + tag (the bytes after the length prefix). Returns the parsed dict.
    body = payload[:-TAG_BYTES]
    if not mac.verify(body, payload[-TAG_BYTES:]):
        raise ProtoError("bad_mac", "tag")
    try:
        obj = json.loads(body)
    except ValueError:
        raise ProtoError("malformed_frame", "json")
    if type(obj) is not dict:
        raise ProtoError("malformed_frame", "not an object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtoError("bad_message", "version")
    return obj


def decode_frame(mac, frame):
    if len(frame) < 2:
        raise ProtoError("malformed_frame", "short")
    n = (frame[0] << 8) | frame[1]
    check_length(n)
    if len(frame) != n + 2:
        raise ProtoError("malformed_frame", "length mismatch")
    return decode_payload(mac, frame[2:])


def check_controller_msg(obj, sid, last_s):
    # A controller message must be for this connection (sid) and newer than the last one.
    t = obj.get("t")
    if t not in ("welcome", "ack", "cmd"):
        raise ProtoError("bad_message", "type")
    if obj.get("sid") != sid:
        raise ProtoError("bad_message", "sid")
    s = obj.get("s")
    if type(s) is not int or s <= last_s:
        raise ProtoError("replayed_seq", "s")
    return t


# Message builders (node -> controller). n: node id, b: boot, s: frame seq, e: event number.
# The link stamps `s` on every frame when it writes it (section 2: `s` grows in the order frames
# leave), so the builders of queued messages take no `s`.
def hello(n, b, s, fw, hw, caps, hb_ms, nonce):
    return {"v": 2, "t": "hello", "n": n, "b": b, "s": s, "fw": fw, "hw": hw,
            "caps": caps, "hb_ms": hb_ms, "nonce": nonce}


def event(n, b, s, e, kind, src, val, at_ms, x=None, ob=None):
    # ob: the boot the event was made in, when older than b (recovered from the journal, section 9)
    d = {"v": 2, "t": "event", "n": n, "b": b, "s": s, "e": e, "k": kind, "src": src,
         "val": val, "at_ms": at_ms}
    if x:
        d["x"] = x
    if ob:
        d["ob"] = ob
    return d


def reading(n, b, at_ms, m):
    return {"v": 2, "t": "reading", "n": n, "b": b, "s": 0, "at_ms": at_ms, "m": m}


def heartbeat(n, b, up_ms, q, heap, drop, rssi=None, batt_mv=None, state=None):
    d = {"v": 2, "t": "hb", "n": n, "b": b, "s": 0, "up_ms": up_ms, "q": q,
         "heap": heap, "drop": drop}
    if rssi is not None:
        d["rssi"] = rssi
    if batt_mv is not None:
        d["batt_mv"] = batt_mv
    if state:
        d["state"] = state
    return d
