# ST LIS3DH accelerometer on I2C (address 0x18, or 0x19 with SA0 high): +-16 g, 12-bit high
# resolution, FIFO in stream mode so the node reads a batch of samples a few times a second.
#
#     a = Lis3dh(hal.i2c(0), 0x18, rate_hz=50); a.init()
#     buf = array.array("h", (0, 0, 0))
#     for _ in range(a.fifo_level()): a.read_mg_into(buf)   # buf = x, y, z in milli-g
from micropython import const

from drivers import NOT_ANSWERING, SensorFault

_WHO_AM_I = const(0x0F)
_CHIP_ID = const(0x33)
_CTRL_REG1 = const(0x20)
_CTRL_REG4 = const(0x23)
_CTRL_REG5 = const(0x24)
_OUT_X_L = const(0x28)
_FIFO_CTRL = const(0x2E)
_FIFO_SRC = const(0x2F)
_AUTO_INC = const(0x80)       # sub-address MSB: read several registers in one transfer
_XYZ_ENABLE = const(0x07)
_CTRL4_16G_HR = const(0xB8)   # BDU (no torn samples), FS = +-16 g, HR (12 bit)
_FIFO_ENABLE = const(0x40)
_FIFO_STREAM = const(0x80)
_FIFO_OVERRUN = const(0x40)
_FIFO_LEVEL_MASK = const(0x1F)
FIFO_DEPTH = const(32)
_MG_PER_DIGIT = const(12)     # +-16 g in high-resolution mode (datasheet table 4)
_HR_SHIFT = const(4)          # 12-bit samples are left-justified in 16 bits
_RATES_HZ = (1, 10, 25, 50, 100, 200, 400)  # CTRL_REG1 ODR codes 1..7


class Lis3dh:
    def __init__(self, i2c, addr=0x18, rate_hz=50, name="accel"):
        if rate_hz not in _RATES_HZ:
            raise ValueError("LIS3DH rate_hz must be one of %r" % (_RATES_HZ,))
        self._i2c = i2c
        self._addr = addr
        self._odr = _RATES_HZ.index(rate_hz) + 1
        self.rate_hz = rate_hz
        self.name = name
        self._raw = bytearray(6)
        self._one = bytearray(1)

    def _write(self, reg, value):
        self._one[0] = value
        self._i2c.writeto_mem(self._addr, reg, self._one)

    def init(self):
        """Checks the chip id and configures +-16 g HR at rate_hz with the FIFO streaming."""
        try:
            self._i2c.readfrom_mem_into(self._addr, _WHO_AM_I, self._one)
            if self._one[0] != _CHIP_ID:
                raise SensorFault(NOT_ANSWERING)
            self._write(_CTRL_REG4, _CTRL4_16G_HR)
            self._write(_CTRL_REG5, _FIFO_ENABLE)
            self._write(_FIFO_CTRL, _FIFO_STREAM)
            self._write(_CTRL_REG1, (self._odr << 4) | _XYZ_ENABLE)
        except OSError:
            raise SensorFault(NOT_ANSWERING)

    def fifo_level(self):
        """Samples waiting in the FIFO (32 when full: older ones are being overwritten)."""
        self._i2c.readfrom_mem_into(self._addr, _FIFO_SRC, self._one)
        src = self._one[0]
        return FIFO_DEPTH if src & _FIFO_OVERRUN else src & _FIFO_LEVEL_MASK

    def read_mg_into(self, buf):
        """Pops one sample into buf[0..2] as milli-g. Allocates nothing."""
        self._i2c.readfrom_mem_into(self._addr, _OUT_X_L | _AUTO_INC, self._raw)
        r = self._raw
        for i in range(3):
            v = r[2 * i] | (r[2 * i + 1] << 8)
            if v & 0x8000:
                v -= 0x10000
            buf[i] = (v >> _HR_SHIFT) * _MG_PER_DIGIT
