# Integer vector maths for the fall detector (srnode/fall.py): square roots, cosines and angles
# of milli-g vectors, allocation-free. A module of its own so that the unix-port simulator, which
# compiles source in the node's heap, never holds both files' parse trees at once (docs/firmware.md,
# Heap).
from math import acos
# acos in degrees at cos = i / 50 - 1, i = 0..100 (built once, at import)
_ACOS = bytes(int(acos(i / 50 - 1) * 57.29578 + 0.5) for i in range(101))


def isqrt(n):
    # floor(sqrt(n)) by Newton's method, n >= 0 (0 for n <= 0)
    if n <= 0:
        return 0
    x = n
    k = (x + 1) >> 1
    while k < x:
        x = k
        k = (x + n // x) >> 1
    return x


def cos1000(a, b, c, d, e, f):
    # 1000 x cos of the angle between (a, b, c) and (d, e, f), both in 8 mg units; 0 when one is
    # zero. Each vector is halved until within 4 g (500) a component, so that every product stays
    # below 2^30 (a 32-bit board's small ints): means over >= 1 s always are, the 200 ms just
    # after a hard impact need not be.
    while a > 500 or a < -500 or b > 500 or b < -500 or c > 500 or c < -500:
        a >>= 1
        b >>= 1
        c >>= 1
    while d > 500 or d < -500 or e > 500 or e < -500 or f > 500 or f < -500:
        d >>= 1
        e >>= 1
        f >>= 1
    n = isqrt(a * a + b * b + c * c) * isqrt(d * d + e * e + f * f)
    return (a * d + b * e + c * f) * 1000 // n if n else 0


def deg(a, b, c, d, e, f):
    # the angle between them, 0..180 degrees: the table, interpolated
    n = cos1000(a, b, c, d, e, f) + 1000
    if n <= 0:
        return 180
    if n >= 2000:
        return 0
    i = n // 20
    t = _ACOS[i]
    return t - (t - _ACOS[i + 1]) * (n - 20 * i) // 20


