"""What each protocol refusal says (its reason is the counter; its detail is the log line an
engineer reads to find the node's bug): one row per check in controller/link/protocol.py, and the
canonical encoding's exact bytes. The vectors (tests/test_protocol_vectors.py) pin the reasons."""

from __future__ import annotations

import pytest

from controller.link import protocol as p

KEY = bytes(range(32))
EVENT = {"v": 2, "t": "event", "n": "bath", "b": 1, "s": 3, "e": 1, "k": "button", "src": "cord", "val": 1, "at_ms": 0}
HB = {"v": 2, "t": "hb", "n": "bath", "b": 1, "s": 3, "up_ms": 0, "q": 0, "heap": 0, "drop": 0}
READING = {"v": 2, "t": "reading", "n": "env", "b": 1, "s": 3, "at_ms": 0, "m": {"temp_mdegc": 21_000}}


@pytest.mark.parametrize("obj, detail", [
    ({**EVENT, "v": 1}, "protocol version 1 is not 2"),
    ({**EVENT, "n": "Bath"}, "node id 'Bath' is not [a-z0-9-]{1,32}"),
    ({**EVENT, "n": 7}, "field 'n' must be str"),
    ({**EVENT, "b": 0}, "field 'b'=0 out of range"),
    ({**EVENT, "s": True}, "field 's' must be an integer"),
    ({**EVENT, "t": "bye"}, "unknown message type 'bye'"),
    ({**EVENT, "k": "sneeze"}, "event kind 'sneeze' is not one of ('button', 'presence', 'fall', 'fault')"),
    ({**EVENT, "e": 0}, "field 'e'=0 out of range"),
    ({**EVENT, "x": {"a": "b"}}, "field 'x' must map names to integers"),
    ({**EVENT, "x": {"a": True}}, "field 'x' must map names to integers"),
    ({k: v for k, v in EVENT.items() if k != "src"}, "missing field 'src'"),
    ({**HB, "rssi": "strong"}, "field 'rssi' must be an integer"),
    ({**HB, "batt_mv": True}, "field 'batt_mv' must be an integer"),
    ({**HB, "q": -1}, "field 'q'=-1 out of range"),
    ({**READING, "m": {}}, "reading needs a non-empty 'm'"),
    ({**READING, "m": [1]}, "reading needs a non-empty 'm'"),
    ({**EVENT, "src": "a\"b"}, "$.src: string must be printable ASCII without quote or backslash"),
    ({**EVENT, "val": 2**31}, "$.val: integer out of range"),
    ({**EVENT, "x": {"k": [1, 2**31]}}, "$.x.k[1]: integer out of range"),
    ({**EVENT, "x": {"é": 1}}, "$.x: bad key 'é'"),
    ({**EVENT, "at_ms": None}, "$.at_ms: NoneType is not allowed on the wire"),
])
def test_a_bad_message_says_what_is_wrong_with_it(obj, detail):
    with pytest.raises(p.ProtocolError) as info:
        p.parse_node_message(obj)
    assert (info.value.reason, info.value.detail) == ("bad_message", detail)


# The readings path remembers node ids and measure names it has found well-formed (so it matches each
# once): a malformed one is refused every time it comes, never remembered as good.
@pytest.mark.parametrize("obj, detail", [
    ({**READING, "n": "Env"}, "node id 'Env' is not [a-z0-9-]{1,32}"),
    ({**READING, "m": {"temp\\c": 1}}, "$.m: bad key 'temp\\\\c'"),
    ({**READING, "m": {"temp_mdegc": 1, "é": 1}}, "$.m: bad key 'é'"),
])
def test_a_malformed_reading_is_refused_again_and_again(obj, detail):
    for _ in range(3):
        with pytest.raises(p.ProtocolError) as info:
            p.parse_node_message(obj)
        assert (info.value.reason, info.value.detail) == ("bad_message", detail)
    good = p.parse_node_message(READING)  # and a good one beside it is taken every time
    assert p.parse_node_message(READING) == good


def test_the_edges_of_the_integers_on_the_wire_are_accepted():
    ev = p.parse_node_message({**EVENT, "val": 2**31 - 1, "x": {"lo": -2**31}})
    assert (ev.val, dict(ev.features)) == (2**31 - 1, {"lo": -2**31})
    with pytest.raises(p.ProtocolError, match=r"\$\.x\.lo: integer out of range"):
        p.parse_node_message({**EVENT, "x": {"lo": -2**31 - 1}})


@pytest.mark.parametrize("frame, reason, detail", [
    (b"\x00", "malformed_frame", "shorter than the length prefix"),
    (b"\x04\x01" + bytes(1025), "oversized_frame", "length 1025 > 1024"),
    (b"\x00\x05" + bytes(5), "malformed_frame", f"length 5 < {p.MIN_FRAME_BYTES}"),
    (b"\x00\x30" + b"[1]" + b" " * 13 + bytes(32), "malformed_frame", "body is not a JSON object"),
])
def test_a_bad_frame_says_what_is_wrong_with_it(frame, reason, detail):
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(KEY, frame)
    assert (info.value.reason, info.value.detail) == (reason, detail)


def test_a_body_that_is_not_json_says_why():
    with pytest.raises(p.ProtocolError) as info:
        p.split_payload(b"{nope" + bytes(p.TAG_BYTES))
    assert info.value.reason == "malformed_frame"
    assert info.value.detail.startswith("body is not JSON: Expecting property name enclosed in double quotes")
    with pytest.raises(p.ProtocolError, match="body is not JSON: 'ascii' codec can't decode"):
        p.split_payload("{\"a\":\"é\"}".encode() + bytes(p.TAG_BYTES))


def test_an_oversized_frame_is_refused_when_encoding_too():
    big = {**EVENT, "src": "a" * 1000}
    with pytest.raises(p.ProtocolError) as info:
        p.encode_frame(KEY, big)
    length = len(p.canonical_json(big)) + p.TAG_BYTES
    assert (info.value.reason, info.value.detail) == ("oversized_frame", f"{length} bytes > 1024")


def test_the_canonical_body_is_sorted_compact_ascii():
    frame = p.encode_frame(KEY, {"t": "hb", "a": [1, {"z": 1, "b": True}]})
    body = b'{"a":[1,{"b":true,"z":1}],"t":"hb"}'
    assert frame == len(body + bytes(p.TAG_BYTES)).to_bytes(2, "big") + body + p.compute_tag(KEY, body)
    assert p.decode_frame(KEY, frame) == {"t": "hb", "a": [1, {"z": 1, "b": True}]}


HELLO = {"v": 2, "t": "hello", "n": "bath", "b": 1, "s": 1, "fw": "1", "hw": "x", "caps": [], "hb_ms": 10_000, "nonce": 7}


def test_a_hello_names_a_heartbeat_of_at_least_100_ms_and_any_nonce_from_0():
    hello = p.parse_node_message({**HELLO, "hb_ms": 100, "nonce": 0})
    assert (hello.hb_ms, hello.nonce) == (100, 0)
    with pytest.raises(p.ProtocolError) as info:
        p.parse_node_message({**HELLO, "hb_ms": 99})
    assert info.value.detail == "field 'hb_ms'=99 out of range"
    with pytest.raises(p.ProtocolError) as info:
        p.parse_node_message({**HELLO, "nonce": -1})
    assert info.value.detail == "field 'nonce'=-1 out of range"


def test_an_event_carries_every_field_it_was_sent_with():
    ev = p.parse_node_message({**EVENT, "s": 9, "e": 4, "val": -3, "at_ms": 1234, "x": {"peak_mg": 4100}})
    assert (ev.node, ev.boot, ev.seq, ev.e, ev.kind, ev.src, ev.val, ev.at_ms, dict(ev.features)) == \
        ("bath", 1, 9, 4, "button", "cord", -3, 1234, {"peak_mg": 4100})
