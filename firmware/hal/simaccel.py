# Simulated accelerometers for the unix port, register level, so the drivers run unchanged
# against them: the ST LIS3DH here (ODR, FS/HR scaling), the Analog Devices ADXL345 in
# hal/simadxl345.py (its own module: a node loads the code and names of its part only, which on
# the unix port live in the 64wK heap), each with its 32-sample stream-mode FIFO (overrun drops
# the oldest). Samples come from a trace on the node clock: "still", "walk", "fall", inline
# milli-g samples, or a recorded trace file streamed by hal/simtrace.py.
from math import pi, sin
from micropython import const

_ENODEV = const(19)
_FIFO_DEPTH = const(32)

# Built-in traces, one sample per 20 ms. Walking: one step per 560 ms (~107 steps/min), 1 g
# +- 0.33 g vertically. "fall": 1 s walking, 300 ms free fall, a ~4 g impact, 500 ms settling,
# then lying on the side (gravity on x) for good.
_TRACE_MS = const(20)
_STEP = const(28)
_SIN = [int(1000 * sin(2 * pi * i / _STEP)) for i in range(_STEP)]
_IMPACT = ((-1800, 1200, 2600), (2900, -1500, -2300), (1600, 900, 1800), (-900, 400, 1400))
_LYING = (990, 70, 120)


def _noise(k, axis):
    # deterministic noise in -8..8 mg, below one LSB at +-16 g
    return ((k * 1103515245 + axis * 12345 + 2531011) >> 16) % 17 - 8


def _walk(k):
    p = k % _STEP
    return (150 * _SIN[(p + 7) % _STEP] // 1000 + _noise(k, 0), 60 * _SIN[2 * p % _STEP] // 1000 + _noise(k, 1),
            1000 + 330 * _SIN[p] // 1000 + _noise(k, 2))


def trace_sample(name, k):
    """Sample k (20 ms apart) of a built-in trace, in milli-g."""
    if name == "walk" or (name == "fall" and k < 50):
        return _walk(k)
    if name == "still":
        return (10 + _noise(k, 0), -20 + _noise(k, 1), 1000 + _noise(k, 2))
    if name != "fall":
        raise ValueError("unknown accel trace " + name)
    if k < 65:
        return (40 + _noise(k, 0), -30 + _noise(k, 1), 150 + _noise(k, 2))
    if k < 69:
        return _IMPACT[k - 65]
    wobble = 0 if k >= 94 else (94 - k) * 24 * _SIN[5 * k % _STEP] // 1000
    return (_LYING[0] + wobble + _noise(k, 0), _LYING[1] - wobble // 2 + _noise(k, 1),
            _LYING[2] + wobble // 3 + _noise(k, 2))


class SimAccel:
    """What both parts share: the trace the scenario plays and the sample clock with its FIFO.
    A part's output data rate is num/den Hz (den > 1 for the ADXL345's fractional rates); sample
    k is taken at t0 + k / rate, and sample 0 as soon as the clock starts."""

    def __init__(self, clock):
        self._clock = clock
        self.fault = "none"
        self._trace = self._prev = ("still", 50, 0)   # (source, rate_hz, start_ms)
        self._t0_ms = 0     # when the sample clock started
        self._next_k = 0    # next sample the FIFO hands out

    def set(self, spec):
        self.fault = spec.get("fault", self.fault)

    def set_trace(self, step):
        """{"accel": "fall"}, {"accel_mg": [[x, y, z], ...], "rate_hz": 50} or
        {"accel": {"trace": "/path/trace.csv", "rate_hz": 50}}. The new trace plays from now on;
        samples still in the FIFO from before keep coming from the previous one."""
        acc = step.get("accel")
        if isinstance(acc, dict):
            from hal.simtrace import TraceFile
            src, rate_hz = TraceFile(acc["trace"]), acc.get("rate_hz", 50)
        elif acc is not None:
            trace_sample(acc, 0)    # unknown names fail here, not at the first read
            src, rate_hz = acc, 50
        else:
            src, rate_hz = step["accel_mg"], step.get("rate_hz", 50)
        if rate_hz <= 0:
            raise ValueError("accel rate_hz must be > 0")
        if hasattr(self._prev[0], "close"):
            self._prev[0].close()   # at most two trace files open: current and previous
        self._prev = self._trace
        self._trace = (src, rate_hz, self._clock.ticks_ms())

    def _rate(self):
        # (num, den): output data rate in Hz as a fraction; num 0 when not sampling
        raise NotImplementedError

    def _restart(self):
        # a new data rate or measuring switched on: the sample clock starts again, FIFO empty
        self._t0_ms = self._clock.ticks_ms()
        self._next_k = 0

    def _newest(self):
        # index of the newest sample taken, -1 when not sampling
        num, den = self._rate()
        if not num:
            return -1
        return (self._clock.ticks_ms() - self._t0_ms) * num // (1000 * den)

    def _unread(self):
        newest = self._newest()
        if newest - self._next_k + 1 > _FIFO_DEPTH:   # stream mode overwrites the oldest
            self._next_k = newest - _FIFO_DEPTH + 1
        return max(0, newest - self._next_k + 1)

    def _next_sample(self, fifo):
        # milli-g of the next FIFO sample (fifo and one is waiting) or else of the newest one
        if fifo and self._unread():
            k = self._next_k
            self._next_k += 1
        else:
            k = max(0, self._newest())
        num, den = self._rate()
        t_ms = self._t0_ms + (k * 1000 * den // num if num else 0)
        src, rate_hz, start_ms = self._trace if t_ms >= self._trace[2] else self._prev
        dt = max(0, t_ms - start_ms)
        if isinstance(src, str):
            return trace_sample(src, dt // _TRACE_MS)
        i = dt * rate_hz // 1000   # the trace's rate against the part's: hold or skip samples
        if isinstance(src, list):
            return src[min(i, len(src) - 1)]   # then the last sample for good
        return src.sample(i)

    def _answer(self):
        if self.fault == "silent":
            raise OSError(_ENODEV)


# --- ST LIS3DH
_WHO_AM_I = const(0x0F)
_CTRL_REG1 = const(0x20)
_CTRL_REG4 = const(0x23)
_CTRL_REG5 = const(0x24)
_OUT_X_L = const(0x28)
_FIFO_CTRL = const(0x2E)
_FIFO_SRC = const(0x2F)
_ODR_HZ = (0, 1, 10, 25, 50, 100, 200, 400)        # CTRL_REG1 ODR code -> Hz
# mg per digit by [mode][FS] and left-justification by mode (datasheet table 4):
# mode 0 low power (8 bit), 1 normal (10 bit), 2 high resolution (12 bit)
_MG_PER_DIGIT = ((16, 32, 64, 192), (4, 8, 16, 48), (1, 2, 4, 12))
_SHIFT = (8, 6, 4)


class Lis3dh(SimAccel):
    kind = "lis3dh"

    def __init__(self, clock):
        super().__init__(clock)
        self._regs = bytearray(0x40)
        self._regs[_WHO_AM_I] = 0x33
        self._regs[_CTRL_REG1] = 0x07   # reset value: power-down, XYZ enabled

    def _rate(self):
        return _ODR_HZ[self._regs[_CTRL_REG1] >> 4 & 7], 1

    def writeto_mem(self, reg, buf):
        self._answer()
        for i in range(len(buf)):
            r = (reg & 0x7F) + i
            if r == _CTRL_REG1 and buf[i] >> 4 != self._regs[r] >> 4:
                self._regs[r] = buf[i]
                self._restart()
            if r != _WHO_AM_I and r != _FIFO_SRC:
                self._regs[r] = buf[i]

    def readfrom_mem_into(self, reg, buf):
        self._answer()
        for i in range(len(buf)):
            r = (reg & 0x7F) + (i if reg & 0x80 else 0)   # sub-address MSB: auto-increment
            if r == _OUT_X_L:
                self._pop(buf, i)
            elif r == _FIFO_SRC:
                n = self._unread()  # FSS = stored samples; OVRN_FIFO when all 32 are full
                buf[i] = (0x40 if n >= _FIFO_DEPTH else 0) | (0x20 if n == 0 else 0) | min(n, 31)
            elif not _OUT_X_L < r <= _OUT_X_L + 5:
                buf[i] = self._regs[r]

    def _pop(self, buf, at):
        # Fills OUT_X_L..OUT_Z_H (those of the 6 that fit in buf) with the next sample.
        mg = self._next_sample(self._regs[_CTRL_REG5] & 0x40 and self._regs[_FIFO_CTRL] >> 6 == 2)
        r4 = self._regs[_CTRL_REG4]
        mode = 2 if r4 & 0x08 else (0 if self._regs[_CTRL_REG1] & 0x08 else 1)
        per_digit = _MG_PER_DIGIT[mode][r4 >> 4 & 3]
        limit = 1 << (15 - _SHIFT[mode])
        for axis in range(3):
            counts = min(limit - 1, max(-limit, mg[axis] // per_digit))
            raw = (counts << _SHIFT[mode]) & 0xFFFF
            for b in range(2):
                if at + 2 * axis + b < len(buf):
                    buf[at + 2 * axis + b] = raw >> (8 * b) & 0xFF
