# Analog Devices ADXL345 accelerometer on I2C (address 0x53 with SDO/ALT ADDRESS low, 0x1D with it
# high; CS tied high selects I2C): +-16 g at full resolution (13 bit, 3.9 mg/LSB), FIFO in stream
# mode so the node reads a batch of samples a few times a second. Same interface as lis3dh.py.
#
#     a = Adxl345(hal.i2c(0), 0x53, rate_hz=50); a.init()
#     buf = array.array("h", (0, 0, 0))
#     for _ in range(a.fifo_level()): a.read_mg_into(buf)   # buf = x, y, z in milli-g
from micropython import const

from drivers import NOT_ANSWERING, SensorFault

_DEVID = const(0x00)
_CHIP_ID = const(0xE5)
_BW_RATE = const(0x2C)
_POWER_CTL = const(0x2D)
_DATA_FORMAT = const(0x31)
_DATAX0 = const(0x32)         # X0 X1 Y0 Y1 Z0 Z1; on I2C a multi-byte read auto-increments
_FIFO_CTL = const(0x38)
_FIFO_STATUS = const(0x39)
_STANDBY = const(0x00)
_MEASURE = const(0x08)
_FULL_RES_16G = const(0x0B)   # FULL_RES, right-justified, range +-16 g, INT active high, no self test
_FIFO_BYPASS = const(0x00)    # writing bypass empties the FIFO (no stale samples after a re-init)
_FIFO_STREAM = const(0x80)
_ENTRIES_MASK = const(0x3F)
FIFO_DEPTH = const(32)
# Counts to milli-g. Full resolution keeps 3.9 mg/LSB in every range: the datasheet's typical
# sensitivity is 256 LSB/g, so 1 LSB = 1000/256 = 125/32 mg exactly. mg = (raw*125 + 16) >> 5
# rounds that to the nearest mg (the shift floors, also for negatives, so +16 is round half up):
# error <= 0.5 mg against the nominal scale, integer only, and raw*125 stays a small int
# (|raw| <= 4096 -> 512,000). raw * 39 // 10 would be 0.16 % low (25 mg at 16 g) and floor
# negatives away from zero. The part's own tolerance (230..282 LSB/g) is far larger than either;
# calibrate per unit if it matters.
_MG_NUM = const(125)
_MG_SHIFT = const(5)
_MG_HALF = const(16)
# BW_RATE codes with an integer rate (codes below 8 are 0.1..12.5 Hz). On I2C the datasheet
# recommends at most 200 Hz at 100 kHz and 800 Hz at 400 kHz (1600/3200 Hz need SPI); the
# 32-deep FIFO emptied every 200 ms holds up to 160 Hz (sensing.py).
_RATES_HZ = (25, 50, 100, 200, 400, 800)   # codes 8..13
_RATE_CODE_25HZ = const(8)


class Adxl345:
    def __init__(self, i2c, addr=0x53, rate_hz=50, name="accel"):
        if rate_hz not in _RATES_HZ:
            raise ValueError("ADXL345 rate_hz must be one of %r" % (_RATES_HZ,))
        self._i2c = i2c
        self._addr = addr
        self._code = _RATES_HZ.index(rate_hz) + _RATE_CODE_25HZ
        self.rate_hz = rate_hz
        self.name = name
        self._raw = bytearray(6)
        self._one = bytearray(1)

    def _write(self, reg, value):
        self._one[0] = value
        self._i2c.writeto_mem(self._addr, reg, self._one)

    def init(self):
        """Checks DEVID and configures +-16 g full resolution at rate_hz with the FIFO streaming.
        Configured in standby, measuring switched on last (datasheet's recommended order)."""
        try:
            self._i2c.readfrom_mem_into(self._addr, _DEVID, self._one)
            if self._one[0] != _CHIP_ID:
                raise SensorFault(NOT_ANSWERING)
            self._write(_POWER_CTL, _STANDBY)
            self._write(_BW_RATE, self._code)       # LOW_POWER off: less noise
            self._write(_DATA_FORMAT, _FULL_RES_16G)
            self._write(_FIFO_CTL, _FIFO_BYPASS)
            self._write(_FIFO_CTL, _FIFO_STREAM)
            self._write(_POWER_CTL, _MEASURE)
        except OSError:
            raise SensorFault(NOT_ANSWERING)

    def fifo_level(self):
        """Samples waiting in the FIFO (32 when full: older ones are being overwritten)."""
        self._i2c.readfrom_mem_into(self._addr, _FIFO_STATUS, self._one)
        return min(self._one[0] & _ENTRIES_MASK, FIFO_DEPTH)

    def read_mg_into(self, buf):
        """Pops one sample into buf[0..2] as milli-g. Allocates nothing. The six data registers
        are read in one burst: any read of them pops the FIFO entry (and the 5 us the datasheet
        asks between the end of this read and the next FIFO read is shorter than an I2C start)."""
        self._i2c.readfrom_mem_into(self._addr, _DATAX0, self._raw)
        r = self._raw
        for i in range(3):
            v = r[2 * i] | (r[2 * i + 1] << 8)   # right-justified, sign-extended to 16 bits
            if v & 0x8000:
                v -= 0x10000
            buf[i] = (v * _MG_NUM + _MG_HALF) >> _MG_SHIFT
