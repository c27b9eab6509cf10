# Improv serial on the node: packet bytes, the decoder's resync over log noise, the state machine's
# replies (device info, scan, Wi-Fi, the vendor TRUST command and its checks), BLE authorisation.
import asyncio
from binascii import unhexlify

from mpcheck import check, done
from srnode import improv as i
from srnode.hmac256 import Hmac256

# the same bytes as the controller's codec (controller/link/improv.py), fixed here from CPython
GET_STATE = unhexlify("494d50524f560103020200e5")
TRUST = unhexlify(
    "494d50524f56010398a096056265642d6140303030313032303330343035303630373038303930613062306330643065306631"
    "303131313231333134313531363137313831393161316231633164316531660831302e302e302e320437373030406162616261"
    "626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162"
    "616261626162616278")
check("rpc bytes match the controller's", i.rpc(i.CMD_GET_STATE) == GET_STATE, i.rpc(i.CMD_GET_STATE))
check("checksum is the low byte of the sum", i.checksum(b"\xff\x02") == 1)

# decoder: log text around packets, a packet split across reads, a bad checksum skipped and counted
d = i.Decoder()
got = d.feed(b"@12 hb q=0\nIMPR") + d.feed(b"OV" + GET_STATE[6:] + b"\n@13 link up\n")
check("packet found in log noise, across reads", got == [(i.TYPE_RPC, b"\x02\x00")], got)
bad = GET_STATE[:-1] + bytes((GET_STATE[-1] ^ 1,))
got = d.feed(bad + GET_STATE)
check("bad checksum skipped, next packet kept", got == [(i.TYPE_RPC, b"\x02\x00")] and d.bad == 1, (got, d.bad))
got = d.feed(b"x" * 2000)
check("noise alone is dropped, bounded", got == [] and len(d._buf) < 700, len(d._buf))
bad_version = bytearray(GET_STATE)
bad_version[6] = 2
bad_version[-1] = i.checksum(bad_version[:-1])
check("other versions refused", d.feed(bytes(bad_version)) == [] and d.bad == 2)

import hashlib
from binascii import hexlify

CERT = bytes(range(256)) * 2  # stands for the DER: the node only hashes it (tlspin.py parses it)
FP = hexlify(hashlib.sha256(CERT).digest()).decode()
trust_pkt = i.Decoder().feed(TRUST)[0][1][2:]
try:
    i.parse_trust(trust_pkt)
    check("trust without the certificate refused", False)
except i.ImprovError as e:
    check("trust without the certificate refused", e.args[0] == i.ERR_INVALID_RPC)
# the same packet, with the certificate its fingerprint names
fp_ab = b"ab" * 32
pkt = trust_pkt.replace(fp_ab, FP.encode())
trust = i.parse_trust(pkt, CERT)
check("trust parsed", trust == {"node_id": "bed-a", "key_hex": bytes(range(32)).hex(), "ctl_host": "10.0.0.2",
                                "ctl_port": 7700, "ctl_fp": FP, "ctl_cert": hexlify(CERT).decode()}, trust)


class Board:
    def __init__(self):
        self.stored = {}
        self.joined = []

    def info(self):
        return ("srnode", "0.1.0", "sim-esp32s3", "srnode-x")

    async def connect(self, ssid, password):
        self.joined.append(ssid)
        return password == "pw"

    async def scan(self):
        return [("ward", -50, True), ("guest", -70, False)]

    def store(self, fields):
        self.stored.update(fields)

    def trusted(self):
        return "key_hex" in self.stored


def decode_all(sent):
    dec = i.Decoder()
    out = []
    for pkt in sent:
        out += dec.feed(pkt)
    return out


def run(dev, ptype, data):
    asyncio.run(dev.handle(ptype, data))


def rpc_data(cmd, payload=b""):
    return bytes((cmd, len(payload))) + payload


def trust_payload(node="bed-a", key="00" * 32, host="10.0.0.2", port="7700", fp=FP):
    return i.strings((node, key, host, port, fp))


def cert_rpc(dev, at, chunk):
    run(dev, i.TYPE_RPC, rpc_data(0xA1, i.strings((str(at), chunk))))


def send_cert(dev, cert=CERT, size=120):
    for at in range(0, len(cert), size):
        cert_rpc(dev, at, cert[at:at + size])


sent = []
board = Board()
dev = i.Improv(board, sent.append)
run(dev, i.TYPE_RPC, rpc_data(i.CMD_DEVICE_INFO))
out = decode_all(sent)
check("device info: four strings", out == [(i.TYPE_RESULT, bytes((3, 34)) + i.strings(board.info()))], out)

sent.clear()
run(dev, i.TYPE_RPC, rpc_data(i.CMD_SCAN))
out = decode_all(sent)
check("scan: one result per network, then an empty one",
      [o[1][2:] for o in out] == [i.strings(("ward", "-50", "YES")), i.strings(("guest", "-70", "NO")), b""], out)

# Wi-Fi first, without trust: joined and stored, but not provisioned (no key yet)
sent.clear()
run(dev, i.TYPE_RPC, rpc_data(i.CMD_WIFI, i.strings(("ward", "pw"))))
states = [o[1][0] for o in decode_all(sent) if o[0] == i.TYPE_STATE]
check("wifi without trust: provisioning, then ready", states == [i.STATE_PROVISIONING, i.STATE_READY], states)
check("wifi stored", board.stored.get("wifi_ssid") == "ward")

# a wrong password: error 3 (unable to connect), state back to ready, nothing stored
sent.clear()
board2 = Board()
dev2 = i.Improv(board2, sent.append)
run(dev2, i.TYPE_RPC, rpc_data(i.CMD_WIFI, i.strings(("ward", "nope"))))
out = decode_all(sent)
check("wrong password: unable to connect", (i.TYPE_ERROR, bytes((i.ERR_UNABLE_TO_CONNECT,))) in out, out)
check("wrong password: back to ready", dev2.state == i.STATE_READY and "wifi_ssid" not in board2.stored)

# CERT: chunks held in RAM, each answered with the bytes held; nothing reaches flash before TRUST
sent.clear()
send_cert(dev)
held = [o[1][2:] for o in decode_all(sent)]
check("cert: each chunk answered with the bytes held",
      held == [i.strings((str(n),)) for n in (120, 240, 360, 480, 512)] and "ctl_cert" not in board.stored, held)
# TRUST: every field checked (the certificate is held, so only the field is wrong)
for name, payload in (("short key", trust_payload(key="00" * 31)), ("key not hex", trust_payload(key="zz" * 32)),
                      ("port 0", trust_payload(port="0")), ("port 65536", trust_payload(port="65536")),
                      ("port text", trust_payload(port="http")), ("upper-case id", trust_payload(node="Bed")),
                      ("id of 33", trust_payload(node="a" * 33)), ("empty host", trust_payload(host="")),
                      ("short fingerprint", trust_payload(fp="ab" * 31)), ("four fields", i.strings(("a", "b", "c", "d"))),
                      ("string past the end", b"\x09abc")):
    sent.clear()
    run(dev, i.TYPE_RPC, rpc_data(i.CMD_TRUST, payload))
    out = decode_all(sent)
    check("trust refused: " + name, out == [(i.TYPE_ERROR, bytes((i.ERR_INVALID_RPC,)))] and "key_hex" not in board.stored, out)
check("refused trusts keep the certificate held", dev.cert == CERT)

# the certificate checks: wrong, cut short, a gap, over the limit -> an Improv error, nothing stored
other = bytes(CERT[:-1]) + bytes((CERT[-1] ^ 1,))
cases = (("another certificate", lambda d: send_cert(d, other)),
         ("cut short", lambda d: send_cert(d, CERT[:480])),
         ("no certificate", lambda d: None),
         ("fingerprint of another certificate", lambda d: (send_cert(d), send_cert(d, other))))
for name, feed in cases:
    b = Board()
    d = i.Improv(b, sent.append)
    feed(d)
    sent.clear()
    run(d, i.TYPE_RPC, rpc_data(i.CMD_TRUST, trust_payload()))
    out = decode_all(sent)
    check("trust refused, certificate " + name, out == [(i.TYPE_ERROR, bytes((i.ERR_INVALID_RPC,)))]
          and b.stored == {}, (out, b.stored))
for name, chunks in (("a gap", ((0, CERT[:120]), (240, CERT[240:360]))),
                     ("a repeat", ((0, CERT[:120]), (0 + 1, CERT[1:121]))),
                     ("an empty chunk", ((0, b""),)),
                     ("offset not a number", (("x", CERT[:120]),))):
    d = i.Improv(Board(), sent.append)
    sent.clear()
    for at, chunk in chunks:
        cert_rpc(d, at, chunk)
    out = decode_all(sent)
    check("cert refused: " + name, out[-1] == (i.TYPE_ERROR, bytes((i.ERR_INVALID_RPC,))) and d.cert == b"", out)
# the size limit: MAX_CERT bytes fit, one more does not
for size, ok in ((1536 - 1, True), (1536, True), (1536 + 1, False)):
    big = bytes(range(256)) * (size // 256) + bytes(size % 256)
    b = Board()
    d = i.Improv(b, sent.append)
    send_cert(d, big)
    sent.clear()
    run(d, i.TYPE_RPC, rpc_data(i.CMD_TRUST, trust_payload(fp=hexlify(hashlib.sha256(big).digest()).decode())))
    check("cert of %d bytes %s" % (size, "taken" if ok else "refused"),
          (b.stored.get("ctl_cert") == hexlify(big).decode()) == ok and ("node_id" in b.stored) == ok, b.stored.keys())
# offset 0 starts again: a client that retries after an error needs no reset
d = i.Improv(Board(), sent.append)
send_cert(d, other)
send_cert(d)
check("offset 0 starts again", d.cert == CERT)

sent.clear()
run(dev, i.TYPE_RPC, rpc_data(i.CMD_TRUST, trust_payload(node="a" * 32, port="65535")))
check("trust stores the certificate and forgets the copy in RAM",
      board.stored.get("ctl_cert") == hexlify(CERT).decode() and board.stored["ctl_fp"] == FP and dev.cert == b"")
send_cert(dev)
check("trust at the limits: 32-char id, port 65535", board.stored.get("ctl_port") == 65535 and len(board.stored["node_id"]) == 32)
run(dev, i.TYPE_RPC, rpc_data(i.CMD_TRUST, trust_payload(port="1")))
check("trust: port 1", board.stored.get("ctl_port") == 1 and board.stored["node_id"] == "bed-a")

# now Wi-Fi again: provisioned, and the result tells the client so
sent.clear()
run(dev, i.TYPE_RPC, rpc_data(i.CMD_WIFI, i.strings(("ward", "pw"))))
out = decode_all(sent)
check("wifi after trust: provisioned", dev.state == i.STATE_PROVISIONED and (i.TYPE_STATE, bytes((4,))) in out, out)

# malformed RPCs
for name, data in (("length mismatch", b"\x01\x05ab"), ("too short", b"\x01"), ("unknown command", b"\x42\x00")):
    sent.clear()
    run(dev, i.TYPE_RPC, data)
    want = i.ERR_UNKNOWN_RPC if name == "unknown command" else i.ERR_INVALID_RPC
    check("error: " + name, decode_all(sent) == [(i.TYPE_ERROR, bytes((want,)))], decode_all(sent))

# BLE's authorisation: nothing that changes the node before the button press
sent.clear()
board3 = Board()
dev3 = i.Improv(board3, sent.append, state=i.STATE_AUTH_REQUIRED)
run(dev3, i.TYPE_RPC, rpc_data(i.CMD_TRUST, trust_payload()))
run(dev3, i.TYPE_RPC, rpc_data(i.CMD_WIFI, i.strings(("ward", "pw"))))
check("not authorised: refused twice", decode_all(sent).count((i.TYPE_ERROR, bytes((i.ERR_NOT_AUTHORIZED,)))) == 2)
check("not authorised: nothing stored or joined", board3.stored == {} and board3.joined == [])
dev3.authorize()
send_cert(dev3)
run(dev3, i.TYPE_RPC, rpc_data(i.CMD_TRUST, trust_payload()))
check("after the press: accepted", board3.stored.get("node_id") == "bed-a" and dev3.state == i.STATE_READY)

# key rotation: the node derives what the controller derives (HMAC-SHA256(key, "rotate" || nonce))
derived = Hmac256(bytes(range(32))).digest(b"rotate" + bytes(range(16)))
check("rotation matches the controller", derived == unhexlify(
    "aa1dc202b39cc0bbab870b8eed2b62d2f9fe4358e5311ca3e1005fddf9ad458c"), derived)

done()
