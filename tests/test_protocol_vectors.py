"""The controller's codec (controller/link/protocol.py) against the shared protocol v1 vectors,
byte for byte: the same file the firmware runs under MicroPython (tests/mp/run_vectors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.link import protocol as p

VECTORS = json.loads((Path(__file__).parent / "vectors" / "protocol_v1.json").read_text())
KEY = bytes.fromhex(VECTORS["key_hex"])
NODE_TYPES = ("hello", "hb", "reading", "event")


def _named(cases: list[dict]) -> dict:
    return {"argvalues": cases, "ids": [c["name"] for c in cases]}


@pytest.mark.parametrize("case", **_named(VECTORS["valid"]))
def test_valid_frames_encode_and_decode_byte_for_byte(case):
    assert p.canonical_json(case["obj"]).decode() == case["body"]
    assert p.encode_frame(KEY, case["obj"]).hex() == case["frame_hex"]
    assert p.decode_frame(KEY, bytes.fromhex(case["frame_hex"])) == case["obj"]


@pytest.mark.parametrize("case", **_named([c for c in VECTORS["valid"] if c["obj"]["t"] in NODE_TYPES]))
def test_valid_node_frames_are_accepted_as_their_message(case):
    msg = p.parse_node_message(p.decode_frame(KEY, bytes.fromhex(case["frame_hex"])))
    obj = case["obj"]
    assert (msg.node, msg.boot, msg.seq) == (obj["n"], obj["b"], obj["s"])


@pytest.mark.parametrize("case", **_named(VECTORS["invalid"]))
def test_invalid_frames_are_rejected_with_their_reason(case):
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(KEY, bytes.fromhex(case["frame_hex"]))
    assert info.value.reason == case["reason"]


@pytest.mark.parametrize("case", VECTORS["hmac_sha256"], ids=lambda c: c["tag_hex"][:8])
def test_tags_are_rfc_4231_hmac_sha256(case):
    assert p.compute_tag(bytes.fromhex(case["key_hex"]), bytes.fromhex(case["data_hex"])).hex() == case["tag_hex"]


@pytest.mark.parametrize("bad", [{"v": 1, "s": 1.5}, {"v": 1, "s": 'quote"d'}, {"v": 1, "s": None},
                                 {"v": 1, "s": 2**31}, {"v": 1, "s": -(2**31) - 1}, {"v": 1, "s": "back\\slash"}])
def test_the_encoder_refuses_what_the_wire_cannot_carry(bad):
    with pytest.raises(p.ProtocolError) as info:
        p.canonical_json(bad)
    assert info.value.reason == "bad_message"


def test_the_vectors_cover_every_message_type_and_reason():
    """A vector file that lost its cases would pass the tests above vacuously."""
    assert {c["obj"]["t"] for c in VECTORS["valid"]} == {"hello", "hb", "reading", "event", "welcome", "ack", "cmd"}
    assert {c["reason"] for c in VECTORS["invalid"]} == {"bad_mac", "oversized_frame", "malformed_frame"}
