"""The controller's codec against the shared vectors (tests/vectors/protocol_v2.json).

The firmware passes the same file under MicroPython (tests/mp/run_vectors.py); together they pin
the wire byte for byte on both sides.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.link import protocol as p

VECTORS = json.loads((Path(__file__).parent / "vectors" / "protocol_v2.json").read_text())
KEY = bytes.fromhex(VECTORS["key_hex"])
NODE_TYPES = ("hello", "event", "reading", "hb")


def test_the_vectors_are_for_this_protocol_version():
    assert VECTORS["protocol"] == p.PROTOCOL_VERSION == 2


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_frames_encode_and_decode_byte_for_byte(case):
    assert p.canonical_json(case["obj"]).decode() == case["body"]
    assert p.encode_frame(KEY, case["obj"]).hex() == case["frame_hex"]
    assert p.decode_frame(KEY, bytes.fromhex(case["frame_hex"])) == case["obj"]
    if case["obj"]["t"] in NODE_TYPES:
        msg = p.parse_node_message(case["obj"])
        assert (msg.node, msg.boot, msg.seq) == (case["obj"]["n"], case["obj"]["b"], case["obj"]["s"])
        if case["obj"]["t"] == "event":
            assert msg.e == case["obj"]["e"]
            assert msg.event_boot == case["obj"].get("ob", case["obj"]["b"])


def test_a_resent_event_is_a_new_frame_carrying_the_same_event():
    by_name = {c["name"]: c["obj"] for c in VECTORS["valid"]}
    first, resent = p.parse_node_message(by_name["event-button"]), p.parse_node_message(by_name["event-button-resent"])
    assert resent.seq > first.seq and (resent.node, resent.boot, resent.e) == (first.node, first.boot, first.e)


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_frames_are_rejected_with_their_reason(case):
    with pytest.raises(p.ProtocolError) as err:
        p.decode_frame(KEY, bytes.fromhex(case["frame_hex"]))
    assert err.value.reason == case["reason"]


@pytest.mark.parametrize("case", VECTORS["bad_messages"], ids=lambda c: c["name"])
def test_messages_that_break_v2_are_refused(case):
    with pytest.raises(p.ProtocolError) as err:
        p.parse_node_message(case["obj"])
    assert err.value.reason == case["reason"]


def test_acks_name_the_event_only_for_events():
    assert p.ack(5, 2, 7, 2) == {"v": 2, "t": "ack", "sid": 5, "s": 2, "a": 7, "e": 2}
    assert "e" not in p.ack(5, 3, 8)


def test_a_kept_event_is_named_by_its_own_boot_and_acked_with_it():
    """§9: the event of boot 2 that a power loss kept is the same event when boot 3 sends it."""
    by_name = {c["name"]: c["obj"] for c in VECTORS["valid"]}
    kept = p.parse_node_message(by_name["event-button-kept"])
    assert (kept.boot, kept.origin_boot, kept.event_boot, kept.e) == (3, 2, 2, 2)
    fresh = p.parse_node_message(by_name["event-button"])
    assert fresh.origin_boot is None and fresh.event_boot == fresh.boot == 3
    assert p.ack(123456789, 2, 2, 2, 2) == by_name["ack-event-kept"]
    assert "ob" not in p.ack(5, 2, 7, 2), "an event of this boot is acked as before"
    # at the edge: ob one below b is taken, ob equal to b is not
    assert p.parse_node_message({**by_name["event-button"], "ob": 2}).event_boot == 2
    with pytest.raises(p.ProtocolError, match="ob"):
        p.parse_node_message({**by_name["event-button"], "ob": 3})
    with pytest.raises(p.ProtocolError, match="ob"):
        p.parse_node_message({**by_name["event-button"], "b": 1, "ob": 1})


# The tag is computed from the key's pads hashed once (controller/link/protocol.py); it must be
# RFC 2104's HMAC-SHA256 for every key length: shorter than a block, a block, longer (hashed first).
@given(key=st.binary(min_size=0, max_size=200), body=st.binary(max_size=1100))
@settings(max_examples=300, deadline=None)
def test_tags_are_hmac_sha256_for_any_key_and_body(key, body):
    assert p.compute_tag(key, body) == hmac.digest(key, body, "sha256")


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 128])
def test_a_tag_with_the_pads_cached_stays_the_tag_of_its_own_key(key_len):
    key, other = bytes(range(key_len)), bytes(reversed(range(key_len))) + b"x"
    body = b'{"t":"reading"}'
    first = p.compute_tag(key, body)
    p.compute_tag(other, body)  # another key's pads in between: nothing is shared
    assert p.compute_tag(key, body) == first == hmac.digest(key, body, "sha256")
    assert p.compute_tag(key, body + b" ") != first
