"""Regenerate protocol_v2.json from controller/link/protocol.py (python tests/vectors/make_vectors.py).

The vectors are committed; the firmware (MicroPython) and the controller (CPython) must both
reproduce them byte for byte, so a change to either codec that breaks the wire shows up in tests.
"""

import json
import pathlib
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from controller.link import protocol as p  # noqa: E402

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))

VALID = [
    ("hello", {"v": 2, "t": "hello", "n": "bedside-a", "b": 3, "s": 1, "fw": "0.1.0", "hw": "esp32s3-devkitc-1",
               "caps": ["button", "presence", "indicator"], "hb_ms": 10000, "nonce": 123456789}),
    ("event-button", {"v": 2, "t": "event", "n": "bedside-a", "b": 3, "s": 7, "e": 2, "k": "button",
                      "src": "call", "val": 1, "at_ms": 1234}),
    # the same event resent after a reconnect: a new frame (s), the same event (e)
    ("event-button-resent", {"v": 2, "t": "event", "n": "bedside-a", "b": 3, "s": 1500, "e": 2, "k": "button",
                             "src": "call", "val": 1, "at_ms": 1234}),
    ("event-fall", {"v": 2, "t": "event", "n": "wearable-a", "b": 1, "s": 42, "e": 5, "k": "fall", "src": "accel",
                    "val": 1, "at_ms": 600123, "x": {"peak_mg": 4210, "still_ms": 2000, "tilt_deg": 78}}),
    ("event-presence-off", {"v": 2, "t": "event", "n": "bath", "b": 9, "s": 2147483647, "e": 2147483647, "k": "presence",
                            "src": "pir", "val": 0, "at_ms": 0}),
    ("reading", {"v": 2, "t": "reading", "n": "env", "b": 2, "s": 10, "at_ms": 20000,
                 "m": {"temp_mdegc": 22150, "rh_mpct": 45210, "co2_ppm": 640}}),
    ("reading-negative", {"v": 2, "t": "reading", "n": "env", "b": 2, "s": 11, "at_ms": 21000,
                          "m": {"temp_mdegc": -4500}}),
    ("heartbeat", {"v": 2, "t": "hb", "n": "bedside-a", "b": 3, "s": 8, "up_ms": 10000, "q": 0, "heap": 40960,
                   "drop": 0, "rssi": -61, "batt_mv": 3710, "state": {"call": 0, "pir": 1}}),
    ("welcome", {"v": 2, "t": "welcome", "sid": 123456789, "s": 1, "hb_ms": 10000, "time_ms": 1719999999}),
    ("ack-event", {"v": 2, "t": "ack", "sid": 123456789, "s": 2, "a": 7, "e": 2}),
    ("ack-heartbeat", {"v": 2, "t": "ack", "sid": 123456789, "s": 3, "a": 8}),
    ("cmd-indicator", {"v": 2, "t": "cmd", "sid": 123456789, "s": 3, "c": "indicator", "p": "acknowledged"}),
    ("cmd-config", {"v": 2, "t": "cmd", "sid": 5, "s": 4, "c": "config", "hb_ms": 5000}),
    # §9: an event of boot 2 kept in the flash journal through a power loss, sent in boot 3's
    # frame 2: the frame's b is the connection's, `ob` the boot the event was made in; its ack names both
    ("event-button-kept", {"v": 2, "t": "event", "n": "bedside-a", "b": 3, "s": 2, "e": 2, "ob": 2, "k": "button",
                           "src": "call", "val": 1, "at_ms": 1234}),
    ("ack-event-kept", {"v": 2, "t": "ack", "sid": 123456789, "s": 2, "a": 2, "e": 2, "ob": 2}),
]


def frame_hex(obj, key=KEY):
    return p.encode_frame(key, obj).hex()


def main():
    valid = [{"name": name, "obj": obj, "body": p.canonical_json(obj).decode(), "frame_hex": frame_hex(obj)}
             for name, obj in VALID]
    good = bytes.fromhex(valid[1]["frame_hex"])
    body = p.canonical_json(VALID[1][1])
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    tampered_body = good.replace(b'"val":1', b'"val":2')
    not_json = b"this is not json"
    array_body = b"[1,2,3]"
    invalid = [
        {"name": "bad-mac-flipped-bit", "frame_hex": bytes(flipped).hex(), "reason": "bad_mac"},
        {"name": "bad-mac-tampered-body", "frame_hex": tampered_body.hex(), "reason": "bad_mac"},
        {"name": "bad-mac-other-key", "frame_hex": frame_hex(VALID[1][1], OTHER_KEY), "reason": "bad_mac"},
        {"name": "oversized", "frame_hex": (struct.pack(">H", 1025) + b"{}" + bytes(32)).hex(),
         "reason": "oversized_frame"},
        {"name": "too-short", "frame_hex": (struct.pack(">H", 33) + b"{" + bytes(32)).hex(),
         "reason": "malformed_frame"},
        {"name": "not-json", "frame_hex": (struct.pack(">H", len(not_json) + 32) + not_json
                                           + p.compute_tag(KEY, not_json)).hex(), "reason": "malformed_frame"},
        {"name": "not-object", "frame_hex": (struct.pack(">H", len(array_body) + 32) + array_body
                                             + p.compute_tag(KEY, array_body)).hex(), "reason": "malformed_frame"},
        {"name": "length-mismatch", "frame_hex": (struct.pack(">H", len(body) + 33) + body
                                                  + p.compute_tag(KEY, body)).hex(), "reason": "malformed_frame"},
    ]
    # Frames that are well formed but whose message breaks v2: the controller refuses them (bad_message).
    event = dict(VALID[1][1])
    without_e = {k: v for k, v in event.items() if k != "e"}
    bad_messages = [
        {"name": "v1-event-without-e", "obj": {**without_e, "v": 1}, "reason": "bad_message"},
        {"name": "event-without-e", "obj": without_e, "reason": "bad_message"},
        {"name": "event-e-zero", "obj": {**event, "e": 0}, "reason": "bad_message"},
        {"name": "event-e-string", "obj": {**event, "e": "2"}, "reason": "bad_message"},
        # §9: `ob` names an earlier boot than the frame's, never this one or a later one
        {"name": "event-ob-same-boot", "obj": {**event, "ob": event["b"]}, "reason": "bad_message"},
        {"name": "event-ob-later-boot", "obj": {**event, "ob": event["b"] + 1}, "reason": "bad_message"},
        {"name": "event-ob-zero", "obj": {**event, "ob": 0}, "reason": "bad_message"},
        {"name": "event-ob-string", "obj": {**event, "ob": "2"}, "reason": "bad_message"},
    ]
    rfc4231 = [  # RFC 4231 HMAC-SHA256 test cases 1, 2, 6 (key longer than the block)
        {"key_hex": "0b" * 20, "data_hex": b"Hi There".hex(),
         "tag_hex": "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"key_hex": b"Jefe".hex(), "data_hex": b"what do ya want for nothing?".hex(),
         "tag_hex": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {"key_hex": "aa" * 131, "data_hex": b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
         "tag_hex": "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
    ]
    doc = {"protocol": p.PROTOCOL_VERSION, "key_hex": KEY.hex(), "valid": valid, "invalid": invalid,
           "bad_messages": bad_messages, "hmac_sha256": rfc4231}
    out = pathlib.Path(__file__).with_name("protocol_v2.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({len(valid)} valid, {len(invalid)} invalid, {len(bad_messages)} bad messages)")


if __name__ == "__main__":
    main()
