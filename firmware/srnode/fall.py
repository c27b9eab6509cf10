# Fall detector v0: free fall, then an impact, then lying still.
#
# A simple threshold detector to have the whole path working; a later issue replaces it with
# one measured on recorded falls. update() runs once per accelerometer sample (50 Hz) and
# allocates nothing; features() is called once after it fired.
from math import acos, sqrt
from micropython import const

_FREEFALL_MG = const(500)      # |a| below 0.5 g: the body is falling (1 g at rest)
_IMPACT_MG = const(3000)       # |a| above 3 g: hitting the floor (walking stays below ~2 g)
_IMPACT_WINDOW_MS = const(1000)  # a fall from standing lasts well under 1 s
_STILL_MS = const(2000)        # then lying still this long: not someone who tripped and got up
_SETTLE_MS = const(3000)       # stillness must begin this soon after the impact
_STILL_BAND_MG = const(200)    # |a| within 1 g +- 0.2 g counts as still (noise, breathing)
_STILL_STEP_MG = const(150)    # and |dx|+|dy|+|dz| between samples below this (no rolling over)
# Squared magnitudes are taken in units of (8 mg)^2, so even +-24 g on all axes stays a small
# int on 32-bit ports (3 * 3071^2 < 2^30): no bignum allocation in the sample path.
_SHIFT = const(3)
_FREEFALL_SQ = const((_FREEFALL_MG >> _SHIFT) * (_FREEFALL_MG >> _SHIFT))
_IMPACT_SQ = const((_IMPACT_MG >> _SHIFT) * (_IMPACT_MG >> _SHIFT))
_STILL_LO_SQ = const(((1000 - _STILL_BAND_MG) >> _SHIFT) * ((1000 - _STILL_BAND_MG) >> _SHIFT))
_STILL_HI_SQ = const(((1000 + _STILL_BAND_MG) >> _SHIFT) * ((1000 + _STILL_BAND_MG) >> _SHIFT))
_REF_SHIFT = const(4)          # orientation before the fall: average over ~16 samples (0.3 s)

_IDLE = const(0)
_FALLING = const(1)
_IMPACT = const(2)


class FallDetector:
    def __init__(self, rate_hz=50):
        self._period_ms = 1000 // rate_hz
        self._t_ms = 0
        self._state = _IDLE
        self._mark_ms = 0          # time of the free fall, then of the impact
        self._peak_sq = 0
        self._still_n = 0
        self._rx = self._ry = 0    # upright orientation (running average while idle)
        self._rz = 1000
        self._sx = self._sy = self._sz = 0  # sum of the still samples: resting orientation
        self._px = self._py = self._pz = 0  # previous sample

    def update(self, x, y, z):
        """Feed one sample in milli-g; True when a fall is confirmed (then call features())."""
        self._t_ms += self._period_ms
        a = x >> _SHIFT
        b = y >> _SHIFT
        c = z >> _SHIFT
        m_sq = a * a + b * b + c * c
        state = self._state
        fired = False
        if state == _IDLE:
            self._rx += (x - self._rx) >> _REF_SHIFT
            self._ry += (y - self._ry) >> _REF_SHIFT
            self._rz += (z - self._rz) >> _REF_SHIFT
            if m_sq < _FREEFALL_SQ:
                self._state = _FALLING
                self._mark_ms = self._t_ms
        elif state == _FALLING:
            if m_sq > _IMPACT_SQ:
                self._state = _IMPACT
                self._mark_ms = self._t_ms
                self._peak_sq = m_sq
                self._still_n = 0
            elif self._t_ms - self._mark_ms > _IMPACT_WINDOW_MS:
                self._state = _IDLE
        else:
            if m_sq > self._peak_sq:
                self._peak_sq = m_sq
            step = abs(x - self._px) + abs(y - self._py) + abs(z - self._pz)
            if _STILL_LO_SQ < m_sq < _STILL_HI_SQ and step < _STILL_STEP_MG:
                if self._still_n == 0:
                    self._sx = self._sy = self._sz = 0
                self._still_n += 1
                self._sx += x
                self._sy += y
                self._sz += z
                if self._still_n * self._period_ms >= _STILL_MS:
                    self._state = _IDLE
                    fired = True
            else:
                self._still_n = 0
                if self._t_ms - self._mark_ms > _SETTLE_MS:
                    self._state = _IDLE
        self._px = x
        self._py = y
        self._pz = z
        return fired

    def features(self):
        """What made the last fall fire: peak_mg, still_ms, tilt_deg (upright vs resting)."""
        n = self._still_n or 1
        rest = (self._sx / n, self._sy / n, self._sz / n)
        ref = (self._rx, self._ry, self._rz)
        norm = sqrt(sum(v * v for v in rest)) * sqrt(sum(v * v for v in ref))
        tilt = 0
        if norm > 0:
            cos_t = sum(rest[i] * ref[i] for i in range(3)) / norm
            tilt = int(acos(max(-1.0, min(1.0, cos_t))) * 180 / 3.141592653589793 + 0.5)
        return {"peak_mg": int(sqrt(self._peak_sq)) << _SHIFT,
                "still_ms": self._still_n * self._period_ms, "tilt_deg": tilt}
