# srnode/tlspin.py: the controller certificate's pin (docs/protocol.md, Transport).
# argv[1]: a JSON file with ctl_fp, ctl_cert (hex) of the controller and other_cert (another's DER, hex)
# (a file: the unix port 1.29 dies with "uncaught NLR" on arguments this long).
import asyncio
import hashlib
import json
import sys
from binascii import unhexlify

from mpcheck import check, done
from srnode import tlspin
from srnode.link import LinkDown
from srnode.tlspin import Pin, PinError

with open(sys.argv[1]) as f:
    _doc = json.load(f)
FP, CERT, OTHER = _doc["ctl_fp"], _doc["ctl_cert"], _doc["other_cert"]
OTHER_FP = hashlib.sha256(unhexlify(OTHER)).digest().hex()


def raises(fn, kind=ValueError):
    try:
        fn()
    except kind:
        return True
    return False


class Sock:
    def __init__(self, der):
        self.der = der

    def getpeercert(self, binary):
        return self.der


class Writer:
    def __init__(self, sock=None, fail=None):
        self.s = sock
        self.fail = fail

    def write(self, data):
        if self.fail is not None:
            raise self.fail

    async def drain(self):
        pass


class Hal:
    async def wait_for_ms(self, coro, ms):
        return await coro


pin = Pin(FP, CERT)
check("a matching pair is accepted", pin.cert == unhexlify(CERT) and pin.fp == unhexlify(FP))
check("the name checked defaults to localhost", pin.name == "localhost" and Pin(FP, CERT, "room-4b").name == "room-4b")
check("colons are allowed in the fingerprint", Pin(":".join(FP[i:i + 2] for i in range(0, 64, 2)), CERT).fp == pin.fp)
check("a certificate that is not the fingerprint's is refused", raises(lambda: Pin(OTHER_FP, CERT)))
check("a short fingerprint is refused", raises(lambda: Pin(FP[:-2], CERT)))
check("a long fingerprint is refused", raises(lambda: Pin(FP + "00", CERT)))
check("non-hex is refused", raises(lambda: Pin("zz" * 32, CERT)))
check("this unix build has no getpeercert", not tlspin.fp_only_supported())
check("so a fingerprint alone is refused at boot", raises(lambda: Pin(FP)))

# with the certificate as the trust anchor, mbedtls already verified: check() passes without getpeercert
pin.check(Writer(object()))
check("anchor path: no getpeercert needed", True)
check("anchor path with getpeercert: another certificate still refused",
      raises(lambda: pin.check(Writer(Sock(unhexlify(OTHER)))), PinError))

# the fingerprint-only path (ESP-IDF builds keep the peer certificate)
tlspin.fp_only_supported = lambda: True
fp_only = Pin(FP)
check("fingerprint only: no certificate kept", fp_only.cert is None)
fp_only.check(Writer(Sock(unhexlify(CERT))))
check("fingerprint only: the pinned certificate passes", True)
check("fingerprint only: another certificate is refused",
      raises(lambda: fp_only.check(Writer(Sock(unhexlify(OTHER)))), PinError))
check("fingerprint only: no certificate at all is refused", raises(lambda: fp_only.check(Writer(Sock(None))), PinError))
check("fingerprint only: a build without getpeercert is refused", raises(lambda: fp_only.check(Writer(object())), PinError))


async def refusals():
    reasons = []
    for _ in range(3):
        try:
            await pin.handshake(Hal(), Writer(fail=ValueError("not correctly signed by the trusted CA")), b"hello")
        except LinkDown as e:
            reasons.append(e.args[0])
    return reasons


check("each refused handshake ends the session and is counted",
      asyncio.run(refusals()) == ["tls_pin n=1", "tls_pin n=2", "tls_pin n=3"])
done()
