# HMAC-SHA256 (RFC 2104) on hashlib: MicroPython's unix port and most boards ship no hmac module.
from hashlib import sha256
from micropython import const

_BLOCK_BYTES = const(64)


class Hmac256:
    """Holds the padded key pads so each tag costs two sha256 passes and no key work."""

    def __init__(self, key):
        if len(key) > _BLOCK_BYTES:
            key = sha256(key).digest()
        ipad = bytearray(_BLOCK_BYTES)
        opad = bytearray(_BLOCK_BYTES)
        for i in range(_BLOCK_BYTES):
            k = key[i] if i < len(key) else 0
            ipad[i] = k ^ 0x36
            opad[i] = k ^ 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def digest(self, msg):
        inner = sha256(self._ipad)
        inner.update(msg)
        outer = sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def verify(self, msg, tag):
        # Constant time over the tag length: no early exit on the first differing byte.
        mine = self.digest(msg)
        if len(tag) != len(mine):
            return False
        diff = 0
        for i in range(len(mine)):
            diff |= mine[i] ^ tag[i]
        return diff == 0
