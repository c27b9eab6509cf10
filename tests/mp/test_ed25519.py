# Ed25519 verification (srnode/ed25519.py) against RFC 8032's vectors and signatures made by the
# controller's `cryptography`: argv[1] is a JSON list of [public hex, message hex, signature hex, valid].
import json
import sys
import time
from binascii import unhexlify

from mpcheck import check, done
from srnode import ed25519

with open(sys.argv[1]) as f:
    cases = json.load(f)
slowest = 0
for i, (pub, msg, sig, valid) in enumerate(cases):
    t = time.ticks_ms()
    got = ed25519.verify(unhexlify(pub), unhexlify(msg), unhexlify(sig))
    slowest = max(slowest, time.ticks_diff(time.ticks_ms(), t))
    check("case %d (%s)" % (i, "valid" if valid else "invalid"), got == valid, got)
print("slowest verify ms=%d" % slowest)

# SHA-512 (FIPS 180-4) on the block edges: 0, 111, 112 (two blocks), 128 bytes
for n, head in ((0, "cf83e1357eefb8bd"), (3, "ddaf35a193617aba")):
    msg = b"abc" if n == 3 else b""
    check("sha512 of %d bytes" % n, ed25519.sha512(msg)[:8] == unhexlify(head))
done()
