# Simulated Analog Devices ADXL345 for the unix port, register level (I2C: a multi-byte access
# always auto-increments), so drivers/adxl345.py runs unchanged against it. The sample clock,
# FIFO and traces are hal/simaccel.py's.
from micropython import const

from hal.simaccel import SimAccel

_FIFO_DEPTH = const(32)
_DEVID = const(0x00)
_BW_RATE = const(0x2C)
_POWER_CTL = const(0x2D)
_DATA_FORMAT = const(0x31)
_DATAX0 = const(0x32)
_DATAZ1 = const(0x37)
_FIFO_CTL = const(0x38)
_FIFO_STATUS = const(0x39)
_ADXL_REGS = const(0x3A)
_MEASURE = const(0x08)
_SLEEP = const(0x04)
_FULL_RES = const(0x08)
_JUSTIFY = const(0x04)
_MODE_BYPASS = const(0)        # FIFO_CTL bits 7:6: 0 bypass, 1 FIFO, 2 stream, 3 trigger
_LSB_PER_G = const(256)        # 3.9 mg/LSB: full resolution, or the +-2 g range in 10 bit


class Adxl345(SimAccel):
    """BW_RATE codes 0..15 are 3200 / 2^(15 - code) Hz. DATA_FORMAT: FULL_RES keeps 3.9 mg/LSB
    (10 bit at +-2 g up to 13 bit at +-16 g), otherwise 10 bit with 3.9 << range mg/LSB;
    JUSTIFY left-aligns the bits, else right-justified and sign-extended; out-of-range values
    saturate. Switching measuring on (POWER_CTL) or a new rate while measuring restarts the
    sample clock with an empty FIFO; writing FIFO_CTL bypass empties it too. In bypass mode the
    data registers hold the newest sample; FIFO and trigger modes behave like stream mode. Not
    modelled: interrupts, offsets, self test, activity/tap, the 33rd entry in the output registers."""

    kind = "adxl345"

    def __init__(self, clock):
        super().__init__(clock)
        self._regs = bytearray(_ADXL_REGS)
        self._regs[_DEVID] = 0xE5
        self._regs[_BW_RATE] = 0x0A     # reset value: 100 Hz, normal power
        self._data = bytearray(6)       # the sample a burst of DATAX0..DATAZ1 is reading

    def _measuring(self):
        return self._regs[_POWER_CTL] & (_MEASURE | _SLEEP) == _MEASURE

    def _rate(self):
        if not self._measuring():
            return 0, 1
        return 3200, 1 << (15 - (self._regs[_BW_RATE] & 0x0F))

    def writeto_mem(self, reg, buf):
        self._answer()
        for i in range(len(buf)):
            r = reg + i
            if r == _DEVID or r == _FIFO_STATUS or _DATAX0 <= r <= _DATAZ1 or r >= _ADXL_REGS:
                continue    # read-only
            was = self._measuring()
            old_rate = self._regs[_BW_RATE] & 0x0F
            self._regs[r] = buf[i]
            if self._measuring() and (not was or (self._regs[_BW_RATE] & 0x0F) != old_rate):
                self._restart()
            if r == _FIFO_CTL and buf[i] >> 6 == _MODE_BYPASS:
                self._next_k = self._newest() + 1   # bypass: the FIFO is cleared

    def readfrom_mem_into(self, reg, buf):
        self._answer()
        popped = False
        for i in range(len(buf)):
            r = reg + i
            if _DATAX0 <= r <= _DATAZ1:
                if not popped:  # any read of the data registers pops one FIFO entry
                    self._encode(self._next_sample(self._regs[_FIFO_CTL] >> 6 != _MODE_BYPASS))
                    popped = True
                buf[i] = self._data[r - _DATAX0]
            elif r == _FIFO_STATUS:
                buf[i] = min(self._unread(), _FIFO_DEPTH) if self._regs[_FIFO_CTL] >> 6 else 0
            else:
                buf[i] = self._regs[r] if r < _ADXL_REGS else 0

    def _encode(self, mg):
        fmt = self._regs[_DATA_FORMAT]
        rng = fmt & 3
        bits = 10 + rng if fmt & _FULL_RES else 10
        den = 1000 << (0 if fmt & _FULL_RES else rng)   # counts = mg * 256 / den, rounded
        limit = 1 << (bits - 1)
        for axis in range(3):
            counts = min(limit - 1, max(-limit, (mg[axis] * _LSB_PER_G + den // 2) // den))
            raw = (counts << (16 - bits) if fmt & _JUSTIFY else counts) & 0xFFFF
            self._data[2 * axis] = raw & 0xFF
            self._data[2 * axis + 1] = raw >> 8
