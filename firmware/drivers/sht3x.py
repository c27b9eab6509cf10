# Sensirion SHT3x temperature / humidity sensor on I2C (address 0x44, or 0x45 with ADDR high).
#
#     s = Sht3x(hal.i2c(0), hal, 0x44)
#     m = {}; await s.measure(m)   # m == {"temp_mdegc": 22100, "rh_mpct": 45000}
from micropython import const

from drivers import BAD_CRC, IMPLAUSIBLE, NOT_ANSWERING, SensorFault

_CMD_SINGLE_SHOT = b"\x24\x00"  # high repeatability, no clock stretching (datasheet table 9)
# High-repeatability single shot takes at most 15 ms (datasheet table 4); reading earlier NACKs.
_MEASURE_MS = const(16)
# Plausible for a patient room: the part reads -40..125 C, but below -10 C or above 60 C
# indoors means a broken sensor or a sensor next to a heater, not the room.
_MIN_TEMP_MDEGC = const(-10000)
_MAX_TEMP_MDEGC = const(60000)


def crc8(buf, start):
    # CRC-8 over two bytes: polynomial 0x31, init 0xFF (datasheet section 4.12)
    crc = 0xFF
    for i in range(start, start + 2):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class Sht3x:
    def __init__(self, i2c, clock, addr=0x44, name="sht3x"):
        self._i2c = i2c
        self._clock = clock
        self._addr = addr
        self.name = name
        self._buf = bytearray(6)

    async def measure(self, out):
        """Adds temp_mdegc and rh_mpct to `out`; raises SensorFault."""
        try:
            self._i2c.writeto(self._addr, _CMD_SINGLE_SHOT)
            await self._clock.sleep_ms(_MEASURE_MS)
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError:
            raise SensorFault(NOT_ANSWERING)
        b = self._buf
        if crc8(b, 0) != b[2] or crc8(b, 3) != b[5]:
            raise SensorFault(BAD_CRC)
        # datasheet section 4.13, in integers, rounded to the nearest milli-unit
        temp_mdegc = -45000 + (175000 * ((b[0] << 8) | b[1]) + 32767) // 65535
        rh_mpct = (100000 * ((b[3] << 8) | b[4]) + 32767) // 65535
        if not _MIN_TEMP_MDEGC <= temp_mdegc <= _MAX_TEMP_MDEGC:
            raise SensorFault(IMPLAUSIBLE)
        out["temp_mdegc"] = temp_mdegc
        out["rh_mpct"] = rh_mpct
