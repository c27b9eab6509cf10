# Winsen MH-Z19B NDIR CO2 sensor on a UART (9600 8N1).
#
#     c = Mhz19b(hal.uart(1, 9600), hal)
#     m = {}; await c.measure(m)   # m == {"co2_ppm": 650}
from micropython import const

from drivers import BAD_CRC, IMPLAUSIBLE, NOT_ANSWERING, SensorFault

BAUDRATE = const(9600)
_CMD_READ = b"\xff\x01\x86\x00\x00\x00\x00\x00\x79"  # "read CO2 concentration"
_FRAME_BYTES = const(9)
# 9 bytes at 9600 baud take 9.4 ms and the sensor answers within a few ms more; 100 ms is
# ample, and still short against the 30 s reading period.
_ANSWER_TIMEOUT_MS = const(100)
_POLL_MS = const(10)
# Fresh outdoor air is ~420 ppm and the part's range is 0..5000 (or 10000): an indoor value
# below 300 or above 10000 is a sensor fault, not air.
_MIN_PPM = const(300)
_MAX_PPM = const(10000)


def checksum(frame):
    # 0xFF - (byte 1 + ... + byte 7) + 1, modulo 256 (datasheet section 8)
    s = 0
    for i in range(1, 8):
        s += frame[i]
    return (0xFF - (s & 0xFF) + 1) & 0xFF


class Mhz19b:
    def __init__(self, uart, clock, name="mhz19b"):
        self._uart = uart
        self._clock = clock
        self.name = name
        self._buf = bytearray(_FRAME_BYTES)

    async def measure(self, out):
        """Adds co2_ppm to `out`; raises SensorFault."""
        u = self._uart
        while u.any():
            u.readinto(self._buf)  # drop a late answer to an earlier request
        u.write(_CMD_READ)
        waited_ms = 0
        while u.any() < _FRAME_BYTES:
            if waited_ms >= _ANSWER_TIMEOUT_MS:
                raise SensorFault(NOT_ANSWERING)
            await self._clock.sleep_ms(_POLL_MS)
            waited_ms += _POLL_MS
        b = self._buf
        if u.readinto(b) != _FRAME_BYTES or b[0] != 0xFF or b[1] != 0x86 or checksum(b) != b[8]:
            raise SensorFault(BAD_CRC)
        ppm = (b[2] << 8) | b[3]
        if not _MIN_PPM <= ppm <= _MAX_PPM:
            raise SensorFault(IMPLAUSIBLE)
        out["co2_ppm"] = ppm
