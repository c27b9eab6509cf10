# Ed25519 signature verification (RFC 8032, section 5.1.7) in plain Python for MicroPython, which
# has neither Ed25519 nor SHA-512. Only an update loads it (srnode/ota.py): a firmware manifest is
# signed by the controller's firmware key, and a node holds only the public half, so no node's
# flash lets anyone sign firmware. Slow (docs/firmware.md, OTA) but run once per update, on a
# 32-byte digest, so SHA-512 here hashes 96 bytes: one block.

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
_M64 = 0xFFFFFFFFFFFFFFFF

_K = None  # SHA-512 round constants, built on first use


def _k():
    global _K
    if _K is None:
        # the first 64 bits of the fractional parts of the cube roots of the first 80 primes
        _K = [int(h, 16) for h in (
            "428a2f98d728ae22 7137449123ef65cd b5c0fbcfec4d3b2f e9b5dba58189dbbc 3956c25bf348b538 "
            "59f111f1b605d019 923f82a4af194f9b ab1c5ed5da6d8118 d807aa98a3030242 12835b0145706fbe "
            "243185be4ee4b28c 550c7dc3d5ffb4e2 72be5d74f27b896f 80deb1fe3b1696b1 9bdc06a725c71235 "
            "c19bf174cf692694 e49b69c19ef14ad2 efbe4786384f25e3 0fc19dc68b8cd5b5 240ca1cc77ac9c65 "
            "2de92c6f592b0275 4a7484aa6ea6e483 5cb0a9dcbd41fbd4 76f988da831153b5 983e5152ee66dfab "
            "a831c66d2db43210 b00327c898fb213f bf597fc7beef0ee4 c6e00bf33da88fc2 d5a79147930aa725 "
            "06ca6351e003826f 142929670a0e6e70 27b70a8546d22ffc 2e1b21385c26c926 4d2c6dfc5ac42aed "
            "53380d139d95b3df 650a73548baf63de 766a0abb3c77b2a8 81c2c92e47edaee6 92722c851482353b "
            "a2bfe8a14cf10364 a81a664bbc423001 c24b8b70d0f89791 c76c51a30654be30 d192e819d6ef5218 "
            "d69906245565a910 f40e35855771202a 106aa07032bbd1b8 19a4c116b8d2d0c8 1e376c085141ab53 "
            "2748774cdf8eeb99 34b0bcb5e19b48a8 391c0cb3c5c95a63 4ed8aa4ae3418acb 5b9cca4f7763e373 "
            "682e6ff3d6b2b8a3 748f82ee5defb2fc 78a5636f43172f60 84c87814a1f0ab72 8cc702081a6439ec "
            "90befffa23631e28 a4506cebde82bde9 bef9a3f7b2c67915 c67178f2e372532b ca273eceea26619c "
            "d186b8c721c0c207 eada7dd6cde0eb1e f57d4f7fee6ed178 06f067aa72176fba 0a637dc5a2c898a6 "
            "113f9804bef90dae 1b710b35131c471b 28db77f523047d84 32caab7b40c72493 3c9ebe0a15c9bebc "
            "431d67c49c100d4c 4cc5d4becb3e42b6 597f299cfc657e2a 5fcb6fab3ad6faec 6c44198c4a475817").split()]
    return _K


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def sha512(msg):
    """SHA-512 (FIPS 180-4) of ``msg``; plain Python, for the short inputs of a verification."""
    k = _k()
    h = [0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
         0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179]
    n = len(msg)
    pad = bytearray(msg)
    pad.append(0x80)
    while len(pad) % 128 != 112:
        pad.append(0)
    pad += (n * 8).to_bytes(16, "big")
    w = [0] * 80
    for blk in range(0, len(pad), 128):
        for i in range(16):
            w[i] = int.from_bytes(pad[blk + 8 * i:blk + 8 * i + 8], "big")
        for i in range(16, 80):
            x = w[i - 15]
            y = w[i - 2]
            s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
            s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & _M64
        a, b, c, d, e, f, g, hh = h
        for i in range(80):
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g)) + k[i] + w[i]) & _M64
            t2 = ((_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))) & _M64
            hh = g
            g = f
            f = e
            e = (d + t1) & _M64
            d = c
            c = b
            b = a
            a = (t1 + t2) & _M64
        h = [(x + y) & _M64 for x, y in zip(h, (a, b, c, d, e, f, g, hh))]
    return b"".join(x.to_bytes(8, "big") for x in h)


def _inv(x):
    return pow(x, P - 2, P)


_D = None
_G = None


def _consts():
    global _D, _G
    if _D is None:
        _D = -121665 * _inv(121666) % P
        gy = 4 * _inv(5) % P
        gx = _recover_x(gy, 0)
        _G = (gx, gy, 1, gx * gy % P)
    return _D, _G


def _recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * _inv(_D * y * y + 1)
    if x2 % P == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def _add(p1, p2):
    # extended twisted Edwards coordinates (X, Y, Z, T), RFC 8032 section 5.1.4
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % P
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % P
    c = 2 * p1[3] * p2[3] * _D % P
    d = 2 * p1[2] * p2[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _decompress(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def verify(public, msg, sig):
    """True when ``sig`` (64 bytes) is ``public``'s (32 bytes) Ed25519 signature of ``msg``."""
    _, g = _consts()
    if len(sig) != 64:
        return False
    a = _decompress(public)
    r = _decompress(sig[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    h = int.from_bytes(sha512(sig[:32] + public + msg), "little") % L
    sb = _mul(s, g)
    rha = _add(r, _mul(h, a))
    return (sb[0] * rha[2] - rha[0] * sb[2]) % P == 0 and (sb[1] * rha[2] - rha[1] * sb[2]) % P == 0
