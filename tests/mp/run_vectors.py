# Runs under MicroPython: the firmware's codec and message builders against tests/vectors/protocol_v2.json.
# Usage: MICROPYPATH=firmware micropython tests/mp/run_vectors.py tests/vectors/protocol_v2.json
import sys
import json
import binascii
from srnode import proto
from srnode.hmac256 import Hmac256

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL", name, detail)


with open(sys.argv[1]) as f:
    doc = json.load(f)
mac = Hmac256(binascii.unhexlify(doc["key_hex"]))

for case in doc["hmac_sha256"]:
    tag = Hmac256(binascii.unhexlify(case["key_hex"])).digest(binascii.unhexlify(case["data_hex"]))
    check("hmac " + case["tag_hex"][:8], binascii.hexlify(tag).decode() == case["tag_hex"])

for case in doc["valid"]:
    frame = proto.encode_frame(mac, case["obj"])
    check("encode " + case["name"], binascii.hexlify(frame).decode() == case["frame_hex"],
          binascii.hexlify(frame))
    got = proto.decode_frame(mac, binascii.unhexlify(case["frame_hex"]))
    check("decode " + case["name"], got == case["obj"], got)
    check("canonical " + case["name"], proto.canonical(case["obj"]).decode() == case["body"])

# The builders make exactly the vectors' bodies (a queued message's s is stamped by the link).
check("protocol version", doc["protocol"] == proto.PROTOCOL_VERSION)
built = {}
for case in doc["valid"]:
    o = case["obj"]
    t = o["t"]
    if t == "hello":
        m = proto.hello(o["n"], o["b"], o["s"], o["fw"], o["hw"], o["caps"], o["hb_ms"], o["nonce"])
    elif t == "event":
        m = proto.event(o["n"], o["b"], o["s"], o["e"], o["k"], o["src"], o["val"], o["at_ms"], o.get("x"), o.get("ob"))
    elif t == "reading":
        m = proto.reading(o["n"], o["b"], o["at_ms"], o["m"])
        m["s"] = o["s"]
    elif t == "hb":
        m = proto.heartbeat(o["n"], o["b"], o["up_ms"], o["q"], o["heap"], o["drop"], o.get("rssi"),
                            o.get("batt_mv"), o.get("state"))
        m["s"] = o["s"]
    else:
        continue
    built[case["name"]] = 1
    check("build " + case["name"], proto.canonical(m).decode() == case["body"], proto.canonical(m))
check("every node message built", len(built) == 9, built)

for case in doc["invalid"]:
    try:
        proto.decode_frame(mac, binascii.unhexlify(case["frame_hex"]))
        check("reject " + case["name"], False, "accepted")
    except proto.ProtoError as e:
        check("reject " + case["name"], e.reason == case["reason"], e.reason)

for bad in ({"v": 1, "s": 1.5}, {"v": 1, "s": "quote\"d"}, {"v": 1, "s": None}, {"v": 1, "s": 2 ** 31}):
    try:
        proto.canonical(bad)
        check("refuse " + repr(bad), False, "encoded")
    except proto.ProtoError as e:
        check("refuse " + repr(bad), e.reason == "bad_message")

print("%d passed, %d failed" % (passed, failed))
