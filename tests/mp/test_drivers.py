# Drivers against the simulated parts, register / byte level: SHT3x, MH-Z19B, LIS3DH.
import asyncio
import gc
from array import array

from drivers import BAD_CRC, IMPLAUSIBLE, NOT_ANSWERING, SensorFault
from drivers import lis3dh as lis_drv
from drivers import mhz19b as mhz_drv
from drivers import sht3x as sht_drv
from hal.simaccel import Lis3dh as Lis3dhModel
from hal.simdev import Mhz19b as Mhz19bModel
from hal.simdev import Sht3x as Sht3xModel
from hal.simdev import SimI2C
from mpcheck import FakeClock, check, done


async def measure(clock, sensor):
    m = {}
    result = await clock.run(sensor.measure(m))
    if result[0] == "raised":
        return result[1].code if isinstance(result[1], SensorFault) else result[1]
    return m


async def sht3x_tests(clock):
    check("crc8 datasheet example 0xBEEF -> 0x92", sht_drv.crc8(b"\xbe\xef", 0) == 0x92)
    bus = SimI2C()
    model = bus.devices[0x44] = Sht3xModel(clock)
    sensor = sht_drv.Sht3x(bus, clock, 0x44)
    model.set({"temp_c": 22.1, "rh_pct": 45.0})
    m = await measure(clock, sensor)
    check("sht3x temp", abs(m["temp_mdegc"] - 22100) <= 10, m)
    check("sht3x rh", abs(m["rh_mpct"] - 45000) <= 10, m)
    model.set({"temp_c": -5.5, "rh_pct": 99.0})
    m = await measure(clock, sensor)
    check("sht3x below zero", abs(m["temp_mdegc"] + 5500) <= 10 and abs(m["rh_mpct"] - 99000) <= 10, m)
    model.set({"temp_c": 90.0})
    check("sht3x implausible", await measure(clock, sensor) == IMPLAUSIBLE)
    model.set({"temp_c": 22.0, "fault": "crc"})
    check("sht3x bad crc", await measure(clock, sensor) == BAD_CRC)
    model.set({"fault": "silent"})
    check("sht3x silent", await measure(clock, sensor) == NOT_ANSWERING)
    absent = sht_drv.Sht3x(bus, clock, 0x45)
    check("sht3x absent address", await measure(clock, absent) == NOT_ANSWERING)
    # reading before the measurement is done NACKs: the driver waits long enough
    model.set({"fault": "none"})
    bus.writeto(0x44, b"\x24\x00")
    try:
        bus.readfrom_into(0x44, bytearray(6))
        check("sht3x model NACKs an early read", False)
    except OSError:
        check("sht3x model NACKs an early read", True)


async def mhz19b_tests(clock):
    check("mhz19b read command checksum", mhz_drv.checksum(b"\xff\x01\x86\x00\x00\x00\x00\x00\x79") == 0x79)
    model = Mhz19bModel()
    sensor = mhz_drv.Mhz19b(model, clock)
    model.set({"co2_ppm": 650})
    check("mhz19b ppm", await measure(clock, sensor) == {"co2_ppm": 650})
    model.set({"co2_ppm": 2400})
    check("mhz19b high byte", await measure(clock, sensor) == {"co2_ppm": 2400})
    model.set({"fault": "crc"})
    check("mhz19b bad checksum", await measure(clock, sensor) == BAD_CRC)
    model.set({"fault": "silent"})
    check("mhz19b silent", await measure(clock, sensor) == NOT_ANSWERING)
    model.set({"fault": "none", "co2_ppm": 50})
    check("mhz19b implausible", await measure(clock, sensor) == IMPLAUSIBLE)
    model.set({"co2_ppm": 700})
    model.write(b"\xff\x01\x86\x00\x00\x00\x00\x00\x79")  # a stale answer waiting in the buffer
    check("mhz19b skips a stale answer", await measure(clock, sensor) == {"co2_ppm": 700})


def reg(bus, r):
    b = bytearray(1)
    bus.readfrom_mem_into(0x18, r, b)
    return b[0]


async def lis3dh_tests(clock):
    bus = SimI2C()
    model = bus.devices[0x18] = Lis3dhModel(clock)
    acc = lis_drv.Lis3dh(bus, 0x18, rate_hz=50)
    acc.init()
    check("lis3dh CTRL_REG1 50 Hz xyz", reg(bus, 0x20) == 0x47, hex(reg(bus, 0x20)))
    check("lis3dh CTRL_REG4 bdu 16g hr", reg(bus, 0x23) == 0xB8, hex(reg(bus, 0x23)))
    check("lis3dh FIFO stream", reg(bus, 0x24) & 0x40 and reg(bus, 0x2E) >> 6 == 2)
    await clock.advance(200)
    n = acc.fifo_level()
    check("lis3dh 200 ms at 50 Hz: ~10 samples", 9 <= n <= 11, n)
    buf = array("h", (0, 0, 0))
    for _ in range(n):
        acc.read_mg_into(buf)
    check("lis3dh still: 1 g on z", abs(buf[2] - 1000) <= 24 and abs(buf[0]) <= 30 and abs(buf[1] + 20) <= 30, buf)
    check("lis3dh FIFO emptied", acc.fifo_level() == 0)
    await clock.advance(2000)
    check("lis3dh FIFO full after 2 s", acc.fifo_level() == 32)
    model.set_trace({"accel_mg": [[3000, -2000, 16000]], "rate_hz": 50})
    await clock.advance(100)
    for _ in range(acc.fifo_level()):
        acc.read_mg_into(buf)
    check("lis3dh +-16 g scaling, 12 mg/digit", abs(buf[0] - 3000) < 12 and abs(buf[1] + 2000) < 12 and
          abs(buf[2] - 16000) < 12, buf)
    # read_mg_into allocates nothing (on an I2C that allocates nothing either)
    fixed = FixedI2C(b"\x10\xf0\x00\x01\xf0\x3e")
    acc2 = lis_drv.Lis3dh(fixed, 0x18)
    acc2.read_mg_into(buf)
    check("lis3dh decode", list(buf) == [-255 * 12, 16 * 12, 1007 * 12], buf)
    gc.collect()
    before = gc.mem_alloc()
    i = 0
    while i < 1000:
        acc2.read_mg_into(buf)
        i += 1
    check("lis3dh read_mg_into allocates nothing", gc.mem_alloc() == before, gc.mem_alloc() - before)
    model.fault = "silent"
    try:
        acc.init()
        check("lis3dh silent -> fault", False)
    except SensorFault as f:
        check("lis3dh silent -> fault", f.code == NOT_ANSWERING)
    model.fault = "none"
    model._regs[0x0F] = 0x32  # some other ST part at this address
    try:
        acc.init()
        check("lis3dh wrong chip id -> fault", False)
    except SensorFault as f:
        check("lis3dh wrong chip id -> fault", f.code == NOT_ANSWERING)


class FixedI2C:
    def __init__(self, raw):
        self._raw = raw

    def readfrom_mem_into(self, addr, reg, buf):
        for i in range(len(buf)):
            buf[i] = self._raw[i]


async def main():
    clock = FakeClock()
    await sht3x_tests(clock)
    await mhz19b_tests(clock)
    await lis3dh_tests(clock)


asyncio.run(main())
done()
