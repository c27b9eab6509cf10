# Fall detector v1: an impact, then the posture around it, scored in integers.
#
# update() runs once per accelerometer sample (50 or 100 Hz) and allocates nothing: small ints
# only, every product below 2^30, so a 32-bit board never makes a bignum either. Each stage is
# there for daily activities that look like a fall on |a| alone (docs/firmware.md):
#
#  1. Impact: |a| above _TRIGGER_MG opens a candidate. A bigger impact, or any impact more than
#     _MERGE_MS after the peak, moves the candidate to it (bounces and arms hitting the floor are
#     part of the fall; after a stumble, the fall that follows is judged on its own impact).
#  2. _DECIDE_MS after the peak, measure from a ring of the last 5 s: the posture before
#     ([peak - 3 s, peak - 2 s]) and after (the last _POST_MS), as angles to the wearer's
#     upright, the turn between them, the lowest |a| and the longest free fall in the second
#     before the peak, and how long the wearer has been still (reported, not scored).
#  3. Decide: not upright afterwards (jumps, stumbles, sitting down end upright), not lying
#     before (rolling over in bed), and WEIGHTS x features + bias >= 0, the weights fitted
#     subject-wise on SisFall by bench/falls_tune.py.
#  4. A free fall of _DROP_MS or more is a dropped node, not a person: counted, no alarm.
#
# Upright starts at UP, the waist mount of SisFall (Y along the spine: upright reads y = -1 g),
# and is learned while the wearer walks (4 steady 1 s blocks of step-like motion), so another
# mount works once the wearer has walked. After an alarm the detector re-arms once the wearer is
# upright again: one alarm per fall.
#
# FallDetector(rate_hz, params): params overrides trigger_mg, pre_max_deg, post_min_deg, weights
# and up by name, for tuning and evaluation; the node uses the defaults. The unix-port simulator
# compiles this file into a nearly full heap, where every new name costs a qstr: the code
# reuses short names and keeps state in a few arrays (layouts below).
from array import array
from math import acos

from micropython import const

_TRIGGER_MG = const(1600)      # |a| above 1.6 g opens a candidate (walking stays below ~1.5 g)
_MERGE_MS = const(1000)        # a smaller impact this soon after the peak belongs to the same fall
_DECIDE_MS = const(2000)       # decide 2 s after the peak: alarm well inside the 3 s target
_POST_MS = const(1000)         # posture after: the last 1 s before deciding
_PRE_FROM_MS = const(3000)     # posture before: [peak - 3 s, peak - 2 s], before the slump or
_PRE_TO_MS = const(2000)       # stagger that can lead into a fall
_PRE_MAX_DEG = const(70)       # more than this from upright before the impact: lying (in bed)
_POST_MIN_DEG = const(35)      # less than this from upright after it: still on one's feet
_FREEFALL_MG = const(300)      # |a| below 0.3 g: falling freely
_DROP_MS = const(360)          # free fall this long: the node alone (bodies: <= 240 ms in SisFall)
_STILL_MG = const(120)         # within 120 mg (|dx|+|dy|+|dz|) of the resting mean: still

# The score: peak |a| per 100 mg (capped at 6 g), the lowest |a| in the second before the peak
# per 10 mg, degrees from upright before, after, degrees turned; then the bias. Fire at >= 0.
WEIGHTS = (181, -23, -42, 30, 63, -7800)
UP = (0, -1000, 0)             # upright in mg until learned from walking

# acos in degrees at cos = i / 50 - 1, i = 0..100 (built once, at import)
_ACOS = bytes(int(acos(i / 50 - 1) * 57.29578 + 0.5) for i in range(101))


def _isqrt(n):
    if n <= 0:
        return 0
    x = n
    k = (x + 1) >> 1
    while k < x:
        x = k
        k = (x + n // x) >> 1
    return x


def _cos(a, b, c, d, e, f):
    # 1000 x cos of the angle between (a, b, c) and (d, e, f), both in 8 mg units; 0 when one is
    # zero. Means over >= 1 s stay below 4 g (500), so every product stays below 2^30.
    n = _isqrt(a * a + b * b + c * c) * _isqrt(d * d + e * e + f * f)
    return (a * d + b * e + c * f) * 1000 // n if n else 0


def _deg(a, b, c, d, e, f):
    # the angle between them, 0..180 degrees: the table, interpolated
    n = _cos(a, b, c, d, e, f) + 1000
    if n <= 0:
        return 180
    if n >= 2000:
        return 0
    i = n // 20
    t = _ACOS[i]
    return t - (t - _ACOS[i + 1]) * (n - 20 * i) // 20


class FallDetector:
    def __init__(self, rate_hz=50, params=None):
        p = dict(params) if params else {}
        t = p.pop("trigger_mg", _TRIGGER_MG) >> 3
        self._trig = t * t               # |a|^2 in (8 mg)^2, as update() computes it
        self._lim = (p.pop("pre_max_deg", _PRE_MAX_DEG), p.pop("post_min_deg", _POST_MIN_DEG))
        self._w = tuple(p.pop("weights", WEIGHTS))
        up = p.pop("up", UP)
        if p:
            raise ValueError("unknown fall parameter " + " ".join(p))
        self.rate_hz = rate_hz
        ms = 1000 // rate_hz
        self._decide_n = _DECIDE_MS // ms
        self._merge_n = _MERGE_MS // ms
        # the ring: x, y, z of the last n samples, from the posture before to the decision
        self._pre_n = _PRE_FROM_MS // ms
        n = self._decide_n + self._pre_n + 2
        self._buf = array("h", bytes(6 * n))
        self._n3 = 3 * n
        self._j = 0              # 3 x where the next sample goes
        self._seen = 0           # samples so far, until the posture before exists
        self._armed = True       # False after an alarm, until the wearer is upright again
        self._ready = False      # armed and seen enough: a candidate may open
        self._age = -1           # samples since the candidate's peak; -1: none
        self._peak = 0           # its |a|^2, (8 mg)^2
        # this 1 s block: [0] samples, [1:4] sums of x, y, z, [4] sum of |dx|+|dy|+|dz|;
        # [5:8] the last block's mean (8 mg); [8] steady walking blocks in a row; [9:12] upright (mg)
        k = self._k = array("i", bytes(4 * 12))
        k[9] = up[0]
        k[10] = up[1]
        k[11] = up[2]
        self.dropped = 0         # dropped-node impacts seen (no alarm)
        # features of the last candidate judged: peak_mg, ff_mg, freefall_ms, motion_mg,
        # still_ms, pre_deg, post_deg, tilt_deg, score (see features())
        self._f = [0] * 9
        self._v = array("i", bytes(24))   # scratch: the window means after, before (mg)

    def update(self, x, y, z):
        """Feed one sample in milli-g; True once per detected fall (then call features())."""
        b = self._buf
        j = self._j
        k = self._k
        # b[j - 3:j]: the previous sample (negative indexes wrap to the ring's end)
        k[4] += abs(x - b[j - 3]) + abs(y - b[j - 2]) + abs(z - b[j - 1])
        b[j] = x
        b[j + 1] = y
        b[j + 2] = z
        j += 3
        self._j = 0 if j == self._n3 else j
        k[1] += x
        k[2] += y
        k[3] += z
        k[0] += 1
        if k[0] == self.rate_hz:
            self._block()
        x >>= 3
        y >>= 3
        z >>= 3
        m = x * x + y * y + z * z          # < 3 x 4096^2 even for int16 extremes
        a = self._age
        if a >= 0:
            a += 1
            if m > self._trig and (m > self._peak or a >= self._merge_n):
                self._peak = m
                a = 0
            if a == self._decide_n:
                self._age = -1
                self._measure()
                return self._decide()
            self._age = a
        elif m > self._trig and self._ready:
            self._peak = m
            self._age = 0
        return False

    def _block(self):
        # Once a second: learn upright from walking; re-arm after an alarm once upright again.
        k = self._k
        n = k[0]
        x = k[1] // n >> 3
        y = k[2] // n >> 3
        z = k[3] // n >> 3
        m = x * x + y * y + z * z
        # walking: |dx|+|dy|+|dz| summed over the second within 3-60 g (still ~0.7, slow walking
        # from ~5, jogging up to ~60), |a| 0.8-1.25 g on average, within ~20 deg of the last second
        if 3000 <= k[4] <= 60000 and 10000 <= m <= 24400 and _cos(x, y, z, k[5], k[6], k[7]) >= 940:
            k[8] += 1
        else:
            k[8] = 0
        k[0] = k[1] = k[2] = k[3] = k[4] = 0
        k[5] = x
        k[6] = y
        k[7] = z
        if k[8] >= 4:             # 4 s of it: walking, upright is this
            k[9] += ((x << 3) - k[9]) >> 2
            k[10] += ((y << 3) - k[10]) >> 2
            k[11] += ((z << 3) - k[11]) >> 2
        t = self._pre_n
        if self._seen < t:
            self._seen += n
        elif not self._armed and _deg(x, y, z, k[9] >> 3, k[10] >> 3, k[11] >> 3) <= self._lim[0]:
            self._armed = True
        self._ready = self._armed and self._seen >= t

    def _mean(self, a, n, p):
        # mean x, y, z (mg) of the n samples from age a back (age 0: the newest) into self._v[p:p+3]
        b = self._buf
        i = self._j - 3 * (a + 1)
        if i < 0:
            i += self._n3
        x = y = z = 0
        for _ in range(n):
            x += b[i]
            y += b[i + 1]
            z += b[i + 2]
            i -= 3
            if i < 0:
                i += self._n3
        v = self._v
        v[p] = x // n
        v[p + 1] = y // n
        v[p + 2] = z // n

    def _measure(self):
        # Stage 2: the features of the candidate whose peak is _decide_n samples old, into _f.
        b = self._buf
        f = self._f
        v = self._v
        ms = 1000 // self.rate_hz
        n = _POST_MS // ms
        self._mean(0, n, 0)
        # after: mean |dx|+|dy|+|dz| from the resting mean, and how many of the newest samples
        # are within _STILL_MG of it
        s = 0
        t = -1
        i = self._j - 3
        if i < 0:
            i += self._n3
        for k in range(n):
            d = abs(b[i] - v[0]) + abs(b[i + 1] - v[1]) + abs(b[i + 2] - v[2])
            s += d
            if t < 0 and d > _STILL_MG:
                t = k
            i -= 3
            if i < 0:
                i += self._n3
        f[3] = s // n
        f[4] = (n if t < 0 else t) * ms
        d = self._decide_n
        self._mean(d + _PRE_TO_MS // ms, (_PRE_FROM_MS - _PRE_TO_MS) // ms, 3)
        # the second before the peak: lowest |a| and the longest free fall, (8 mg)^2
        m = self._peak
        s = t = 0
        i = self._j - 3 * (d + 1)
        if i < 0:
            i += self._n3
        for _ in range(self.rate_hz):
            x = b[i] >> 3
            y = b[i + 1] >> 3
            z = b[i + 2] >> 3
            x = x * x + y * y + z * z      # |a|^2 of this sample
            if x < m:
                m = x
            if x < (_FREEFALL_MG >> 3) * (_FREEFALL_MG >> 3):
                s += 1
                if s > t:
                    t = s
            else:
                s = 0
            i -= 3
            if i < 0:
                i += self._n3
        f[0] = _isqrt(self._peak) << 3
        f[1] = _isqrt(m) << 3
        f[2] = t * ms
        k = self._k
        x = k[9] >> 3
        y = k[10] >> 3
        z = k[11] >> 3
        f[5] = _deg(v[3] >> 3, v[4] >> 3, v[5] >> 3, x, y, z)
        f[6] = _deg(v[0] >> 3, v[1] >> 3, v[2] >> 3, x, y, z)
        f[7] = _deg(v[3] >> 3, v[4] >> 3, v[5] >> 3, v[0] >> 3, v[1] >> 3, v[2] >> 3)

    def _decide(self):
        # Stages 3 and 4 on the features in _f (bench/falls_tune.py calls this directly).
        f = self._f
        w = self._w
        # weights of a few hundred x features of a few thousand: far below 2^30
        f[8] = (w[0] * (min(f[0], 6000) // 100) + w[1] * (f[1] // 10) + w[2] * f[5] + w[3] * f[6]
                + w[4] * f[7] + w[5])
        if f[2] >= _DROP_MS:
            self.dropped += 1
            return False
        if f[5] > self._lim[0] or f[6] < self._lim[1] or f[8] < 0:
            return False
        self._armed = self._ready = False
        return True

    def features(self):
        """Why the last fall fired, all ints: peak_mg; ff_mg and freefall_ms (lowest |a|, longest
        time below 0.3 g in the second before); motion_mg and still_ms (after); pre_deg, post_deg
        (from upright, before and after); tilt_deg (turned between them); score."""
        f = self._f
        d = {}
        i = 0
        for k in ("peak_mg", "ff_mg", "freefall_ms", "motion_mg", "still_ms", "pre_deg", "post_deg",
                  "tilt_deg", "score"):
            d[k] = f[i]
            i += 1
        return d
