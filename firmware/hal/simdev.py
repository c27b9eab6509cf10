# Simulated I2C bus, SHT3x (I2C) and MH-Z19B (UART) for the unix port, answering at the byte
# level like the real parts, so drivers/sht3x.py and drivers/mhz19b.py run unchanged on them.
# A scenario can set `fault`: "none", "silent" (never answers) or "crc" (corrupt check byte).
from micropython import const

_ENODEV = const(19)             # what machine.I2C raises when no device ACKs the address
_SHT3X_MEASURE_MS = const(15)   # high-repeatability single shot (datasheet); reading earlier NACKs


def _nack():
    raise OSError(_ENODEV)


def crc8(data, start):
    # Sensirion CRC-8 over two bytes: polynomial 0x31, init 0xFF
    crc = 0xFF
    for i in range(start, start + 2):
        crc ^= data[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SimI2C:
    """machine.I2C subset the drivers use; an address nobody answers raises OSError(ENODEV)."""

    def __init__(self):
        self.devices = {}

    def _dev(self, addr):
        if addr not in self.devices:
            raise OSError(_ENODEV)
        return self.devices[addr]

    def writeto(self, addr, buf, stop=True):
        self._dev(addr).writeto(buf)
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        self._dev(addr).readfrom_into(buf)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self._dev(addr).readfrom_mem_into(memaddr, buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._dev(addr).writeto_mem(memaddr, buf)


class Sht3x:
    kind = "sht3x"

    def __init__(self, clock):
        self._clock = clock
        self.temp_c = 22.0
        self.rh_pct = 45.0
        self.fault = "none"
        self._ready_ms = -1     # when the running measurement is done; -1: none started

    def set(self, spec):
        self.temp_c = spec.get("temp_c", self.temp_c)
        self.rh_pct = spec.get("rh_pct", self.rh_pct)
        self.fault = spec.get("fault", self.fault)

    def writeto(self, buf):
        if self.fault == "silent" or bytes(buf) != b"\x24\x00":
            _nack()  # only the single-shot, high-repeatability command is modelled
        self._ready_ms = self._clock.ticks_ms() + _SHT3X_MEASURE_MS

    def readfrom_into(self, buf):
        if self.fault == "silent" or self._ready_ms < 0 or self._clock.ticks_ms() < self._ready_ms:
            _nack()  # no measurement, or still measuring: the part NACKs its read header
        self._ready_ms = -1
        t = min(0xFFFF, max(0, round((self.temp_c + 45) * 65535 / 175)))
        rh = min(0xFFFF, max(0, round(self.rh_pct * 65535 / 100)))
        buf[0], buf[1], buf[3], buf[4] = t >> 8, t & 0xFF, rh >> 8, rh & 0xFF
        buf[2] = crc8(buf, 0)
        buf[5] = crc8(buf, 3) ^ (0x5A if self.fault == "crc" else 0)


def checksum(frame):
    # MH-Z19B: 0xFF - (byte 1 + ... + byte 7) + 1, modulo 256
    return (0xFF - (sum(frame[1:8]) & 0xFF) + 1) & 0xFF


class Mhz19b:
    """Also the UART it sits on (write, any, readinto): the node talks to nothing else there."""

    kind = "mhz19b"

    def __init__(self):
        self.co2_ppm = 600
        self.fault = "none"
        self._rx = b""      # bytes from the node, not yet a whole command
        self._tx = b""      # answer bytes the node has not read yet

    def set(self, spec):
        self.co2_ppm = spec.get("co2_ppm", self.co2_ppm)
        self.fault = spec.get("fault", self.fault)

    def write(self, data):
        self._rx += bytes(data)
        while len(self._rx) >= 9:
            cmd, self._rx = self._rx[:9], self._rx[9:]
            if cmd[0] == 0xFF and cmd[2] == 0x86 and checksum(cmd) == cmd[8] and self.fault != "silent":
                out = bytearray(9)
                out[0], out[1], out[2], out[3] = 0xFF, 0x86, self.co2_ppm >> 8, self.co2_ppm & 0xFF
                out[4] = 0x47  # temperature + 40, as the part reports it
                out[8] = checksum(out) ^ (0xFF if self.fault == "crc" else 0)
                self._tx += out
        return len(data)

    def any(self):
        return len(self._tx)

    def readinto(self, buf):
        n = min(len(buf), len(self._tx))
        buf[:n] = self._tx[:n]
        self._tx = self._tx[n:]
        return n or None
