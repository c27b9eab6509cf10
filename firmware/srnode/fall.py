# Fall detector v2: an impact, a slump or a fall out of bed, judged on the posture around it, in
# integers.
#
# update() runs once per accelerometer sample and allocates nothing: small ints only, every
# product below 2^30, so a 32-bit board never makes a bignum either. A node sampling at 100 or
# 200 Hz is averaged in blocks down to the detector's own 50 Hz first (what an accelerometer's
# 50 Hz output filter does), so every rate sees the same trace. Each stage is there for daily
# activities that look like a fall on |a| alone (docs/firmware.md):
#
#  1. Impact: |a| above _TRIGGER_MG opens a candidate. A bigger impact, or one more than
#     _MERGE_MS after the peak and at least half its height, moves the candidate to it (bounces,
#     arms and knees hitting the floor are part of the fall; after a stumble, the fall that
#     follows is judged on its own impact).
#  2. _DECIDE_MS after the peak, measure from a ring of the last 5 s: the posture before
#     ([peak - 3 s, peak - 2 s]), just after the impact ([peak + 0.1 s, peak + 0.3 s]) and after
#     (the last _POST_MS), as angles to the wearer's upright and turns between them; the impact's
#     impulse (|a| above 1 g summed over the peak +- 0.5 s: about the speed the body hit at);
#     the lowest |a| and the longest free fall in the second before the peak; the motion after.
#  3. Decide, one of three fall types, never when upright afterwards (jumps, stumbles, sitting):
#     1 upright before and a hard impact (_HARD_MGS; _HARD_MG, or already turned to lying at it):
#       WEIGHTS x features + bias >= 0, the weights fitted subject-wise by bench/falls_tune.py;
#     2 upright before and a soft impact: a slump only when the body had already turned to lying
#       at the impact and then lay still; lying down is sitting first and turning after a soft
#       contact (docs/falls.md), and is not a fall;
#     3 lying before: a fall out of bed only on a drop's hard impact (_BED_MGS, _BED_PEAK_MG);
#       turning over in bed is soft.
#  4. A free fall of _DROP_MS or more is a dropped node, not a person: counted, no alarm.
#
# Upright starts at UP, the waist mount of SisFall (Y along the spine: upright reads y = -1 g),
# and is learned while the wearer walks (4 steady 1 s blocks of step-like motion), so another
# mount works once the wearer has walked. After an alarm the detector re-arms once the wearer is
# upright again: one alarm per fall.
#
# FallDetector(rate_hz, params): rate_hz a multiple of 50; params overrides trigger_mg,
# pre_max_deg, post_min_deg, weights and up by name, for tuning and evaluation; the node uses the
# defaults. The unix-port simulator compiles this file into a nearly full heap, where every new
# name costs a qstr: the code reuses short names and keeps state in a few arrays (layouts below),
# and the vector maths is a module of its own (srnode/fallmath.py).
from array import array

from micropython import const

from srnode.fallmath import cos1000, deg, isqrt

_RATE_HZ = const(50)           # the detector's own rate; 20 ms a sample
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
# The impulse (|a| - 1 g over the peak +- 0.5 s, in mg s) is about the speed of the body at
# contact: 100 mg s stops ~1 m/s. Lying down and sitting on a bed land below 125 mg s, falls from
# standing at 150-650 (FallAllD, SisFall).
_HARD_MGS = const(140)         # at least this, and _HARD_MG or _TURN_IN_DEG: a hard impact, the
_HARD_MG = const(2000)         # score decides (sitting on a bed to lie down can reach 140 mg s,
                               # not 2 g, and has not turned to lying yet)
_TURN_IN_DEG = const(60)       # turned this far by the end of the impact: it hit lying
# A slump starts upright (within _POST_MIN_DEG: standing or sitting up, not reclining), has
# turned _TURN_IN_DEG by the end of the impact, then lies still (motion_mg within _STILL_MG)
_SLUMP_LATE_DEG = const(15)    # and turns at most this much after it (lying down keeps turning)
_BED_MGS = const(200)          # from lying: ~2 m/s at contact, a drop of 20 cm or more
_BED_PEAK_MG = const(2500)     # and a floor's hard peak (turning over in bed stays below 2.5 g)

# The score: peak |a| per 100 mg (capped at 6 g), the lowest |a| in the second before the peak
# per 10 mg, degrees from upright before, after, degrees turned; then the bias. Fire at >= 0.
WEIGHTS = (66, -49, -54, -65, 87, 4887)
UP = (0, -1000, 0)             # upright in mg until learned from walking


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
        if rate_hz < _RATE_HZ or rate_hz % _RATE_HZ:
            raise ValueError("fall detector rate %d Hz: must be a multiple of 50 Hz" % rate_hz)
        self.rate_hz = rate_hz
        ms = 1000 // _RATE_HZ
        self._decide_n = _DECIDE_MS // ms
        self._merge_n = _MERGE_MS // ms
        # the ring: x, y, z of the last n samples at 50 Hz, from the posture before to the decision
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
        # [5:8] the last block's mean (8 mg); [8] steady walking blocks in a row; [9:12] upright (mg);
        # [12] node samples per detector sample, [13] of them so far, [14:17] their sums
        k = self._k = array("i", bytes(4 * 17))
        k[9] = up[0]
        k[10] = up[1]
        k[11] = up[2]
        k[12] = rate_hz // _RATE_HZ
        self.dropped = 0         # dropped-node impacts seen (no alarm)
        # features of the last candidate judged: peak_mg, ff_mg, freefall_ms, motion_mg,
        # still_ms, pre_deg, post_deg, tilt_deg, score, impulse_mgs, turn_in_deg, turn_after_deg,
        # fall_type (see features())
        self._f = [0] * 13
        self._v = array("i", bytes(36))   # scratch: the window means after, before, just after (mg)

    def update(self, x, y, z):
        """Feed one sample in milli-g; True once per detected fall (then call features())."""
        k = self._k
        n = k[12]
        if n > 1:
            # average blocks of n samples down to 50 Hz, rounded half up
            k[13] += 1
            k[14] += x
            k[15] += y
            k[16] += z
            if k[13] < n:
                return False
            x = (k[14] + (n >> 1)) // n
            y = (k[15] + (n >> 1)) // n
            z = (k[16] + (n >> 1)) // n
            k[13] = k[14] = k[15] = k[16] = 0
        b = self._buf
        j = self._j
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
        if k[0] == _RATE_HZ:
            self._block()
        x >>= 3
        y >>= 3
        z >>= 3
        m = x * x + y * y + z * z          # < 3 x 4096^2 even for int16 extremes
        a = self._age
        if a >= 0:
            a += 1
            if m > self._trig and (m > self._peak or a >= self._merge_n and m > self._peak >> 2):
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
        if 3000 <= k[4] <= 60000 and 10000 <= m <= 24400 and cos1000(x, y, z, k[5], k[6], k[7]) >= 940:
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
        elif not self._armed and deg(x, y, z, k[9] >> 3, k[10] >> 3, k[11] >> 3) <= self._lim[0]:
            self._armed = True
        self._ready = self._armed and self._seen >= t

    def _mean(self, a, n, p):
        # mean x, y, z (mg) of the n samples from age a back (age 0: the newest) into self._v[p:p+3]
        b = self._buf
        m = self._n3
        i = (self._j - 3 * (a + 1)) % m
        x = y = z = 0
        for _ in range(n):
            x += b[i]
            y += b[i + 1]
            z += b[i + 2]
            i = (i - 3) % m
        v = self._v
        v[p] = x // n
        v[p + 1] = y // n
        v[p + 2] = z // n

    def _measure(self):
        # Stage 2: the features of the candidate whose peak is _decide_n samples old, into _f.
        b = self._buf
        f = self._f
        v = self._v
        m = self._n3
        ms = 1000 // _RATE_HZ
        n = _POST_MS // ms
        self._mean(0, n, 0)
        # after: mean |dx|+|dy|+|dz| from the resting mean, and how many of the newest samples
        # are within _STILL_MG of it
        s = 0
        t = -1
        i = (self._j - 3) % m
        for k in range(n):
            d = abs(b[i] - v[0]) + abs(b[i + 1] - v[1]) + abs(b[i + 2] - v[2])
            s += d
            if t < 0 and d > _STILL_MG:
                t = k
            i = (i - 3) % m
        f[3] = s // n
        f[4] = (n if t < 0 else t) * ms
        d = self._decide_n
        self._mean(d + _PRE_TO_MS // ms, (_PRE_FROM_MS - _PRE_TO_MS) // ms, 3)
        self._mean(d - 14, 10, 6)          # just after the impact: peak + 100 ms .. + 280 ms
        # from 0.5 s after the peak back to 1 s before it: the impulse (|a| above 1 g over the
        # peak +- 0.5 s, 8 mg units) and, in the second before the peak, the lowest |a| and the
        # longest free fall ((8 mg)^2)
        e = s = t = 0
        a = self._peak
        i = (self._j - 3 * (d - 24)) % m
        for k in range(75):
            x = b[i] >> 3
            y = b[i + 1] >> 3
            z = b[i + 2] >> 3
            x = x * x + y * y + z * z      # |a|^2 of this sample
            if k < 51 and x > 15625:       # above 1 g
                e += isqrt(x) - 125
            if k >= 25:
                if x < a:
                    a = x
                if x < (_FREEFALL_MG >> 3) * (_FREEFALL_MG >> 3):
                    s += 1
                    if s > t:
                        t = s
                else:
                    s = 0
            i = (i - 3) % m
        f[9] = e * 8 * ms // 1000          # mg s
        f[0] = isqrt(self._peak) << 3
        f[1] = isqrt(a) << 3
        f[2] = t * ms
        k = self._k
        x = k[9] >> 3
        y = k[10] >> 3
        z = k[11] >> 3
        for i in range(9):
            v[i] >>= 3
        f[5] = deg(v[3], v[4], v[5], x, y, z)
        f[6] = deg(v[0], v[1], v[2], x, y, z)
        f[7] = deg(v[3], v[4], v[5], v[0], v[1], v[2])
        f[10] = deg(v[3], v[4], v[5], v[6], v[7], v[8])
        f[11] = deg(v[6], v[7], v[8], v[0], v[1], v[2])

    def _gate(self):
        # Stages 3 and 4 but the score, on the features in _f: -1 a dropped node, 0 no fall,
        # 1 the score decides, 2 a slump, 3 a fall out of bed (bench/falls_tune.py calls this too).
        f = self._f
        if f[2] >= _DROP_MS:
            return -1
        if f[6] < self._lim[1]:
            return 0
        if f[5] > self._lim[0]:
            return 3 if f[9] >= _BED_MGS and f[0] >= _BED_PEAK_MG else 0
        if f[9] >= _HARD_MGS and (f[0] >= _HARD_MG or f[10] >= _TURN_IN_DEG):
            return 1
        if f[5] <= self._lim[1] and f[10] >= _TURN_IN_DEG and f[11] <= _SLUMP_LATE_DEG and f[3] <= _STILL_MG:
            return 2
        return 0

    def _decide(self):
        # Stages 3 and 4 on the features in _f (bench/falls_tune.py calls this directly).
        f = self._f
        w = self._w
        # weights of a few hundred x features of a few thousand: far below 2^30
        f[8] = (w[0] * (min(f[0], 6000) // 100) + w[1] * (f[1] // 10) + w[2] * f[5] + w[3] * f[6]
                + w[4] * f[7] + w[5])
        t = f[12] = self._gate()
        if t < 0:
            self.dropped += 1
            return False
        if t == 0 or t == 1 and f[8] < 0:
            return False
        self._armed = self._ready = False
        return True

    def features(self):
        """Why the last fall fired, all ints: peak_mg, impulse_mgs (|a| above 1 g over the peak
        +- 0.5 s), pre_deg and post_deg (from upright, before and after), turn_in_deg and
        turn_after_deg (turned from before to just after the impact, and since), motion_mg
        (after), score, fall_type (1 a hard impact, 2 a slump, 3 out of bed). Nine, as v1: one
        more and an event's frame needs more than the 128 pieces proto.canonical() starts with
        (a 2 KB block a fragmented node heap may not have)."""
        f = self._f
        d = {}
        for k, i in (("peak_mg", 0), ("impulse_mgs", 9), ("pre_deg", 5), ("post_deg", 6), ("turn_in_deg", 10),
                     ("turn_after_deg", 11), ("motion_mg", 3), ("score", 8), ("fall_type", 12)):
            d[k] = f[i]
        return d
