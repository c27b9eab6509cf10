# drivers/adxl345.py against the register-level model in hal/simaccel.py: the init sequence, FIFO
# levels and overrun, the counts -> milli-g scale (every 13-bit value), faults, and an
# allocation-free read_mg_into.
import gc
from array import array

from drivers import NOT_ANSWERING, SensorFault
from drivers import adxl345 as drv
from hal.simadxl345 import Adxl345 as Model
from hal.simdev import SimI2C
from mpcheck import check, done

ADDR = 0x53
POWER_CTL, BW_RATE, DATA_FORMAT, DATAX0, FIFO_CTL, FIFO_STATUS = 0x2D, 0x2C, 0x31, 0x32, 0x38, 0x39


class Clock:
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now


class Recorder:
    """An I2C in front of the bus that remembers every register write, in order."""

    def __init__(self, bus):
        self.bus = bus
        self.writes = []

    def writeto_mem(self, addr, reg, buf):
        self.writes.append((reg, buf[0]))
        self.bus.writeto_mem(addr, reg, buf)

    def readfrom_mem_into(self, addr, reg, buf):
        self.bus.readfrom_mem_into(addr, reg, buf)


class FixedI2C:
    """Answers every read with the same six data bytes; allocates nothing."""

    def __init__(self):
        self.raw = bytearray(6)

    def readfrom_mem_into(self, addr, reg, buf):
        for i in range(len(buf)):
            buf[i] = self.raw[i]


def reg(bus, r):
    b = bytearray(1)
    bus.readfrom_mem_into(ADDR, r, b)
    return b[0]


def raw_sample(bus):
    b = bytearray(6)
    bus.readfrom_mem_into(ADDR, DATAX0, b)
    return [b[2 * i] | b[2 * i + 1] << 8 for i in range(3)]


def drain(acc, buf):
    n = acc.fifo_level()
    for _ in range(n):
        acc.read_mg_into(buf)
    return n


def setup(rate_hz=50):
    clock = Clock()
    bus = SimI2C()
    model = bus.devices[ADDR] = Model(clock)
    rec = Recorder(bus)
    acc = drv.Adxl345(rec, ADDR, rate_hz=rate_hz)
    return clock, bus, model, rec, acc


# --- init: DEVID, then configured in standby, measuring last
clock, bus, model, rec, acc = setup()
check("reset: standby, 100 Hz", reg(bus, POWER_CTL) == 0 and reg(bus, BW_RATE) == 0x0A)
check("reset: not sampling", reg(bus, FIFO_STATUS) == 0)
acc.init()
check("BW_RATE 50 Hz, normal power", reg(bus, BW_RATE) == 0x09, hex(reg(bus, BW_RATE)))
check("DATA_FORMAT full resolution +-16 g, right-justified", reg(bus, DATA_FORMAT) == 0x0B, hex(reg(bus, DATA_FORMAT)))
check("FIFO_CTL stream", reg(bus, FIFO_CTL) == 0x80, hex(reg(bus, FIFO_CTL)))
check("POWER_CTL measure", reg(bus, POWER_CTL) == 0x08, hex(reg(bus, POWER_CTL)))
check("standby first, measure last", rec.writes[0] == (POWER_CTL, 0) and rec.writes[-1] == (POWER_CTL, 0x08),
      rec.writes)
check("FIFO flushed (bypass) before stream", rec.writes.index((FIFO_CTL, 0)) < rec.writes.index((FIFO_CTL, 0x80)),
      rec.writes)
check("rate_hz and name", acc.rate_hz == 50 and acc.name == "accel")
for hz, code in ((25, 8), (100, 10), (200, 11), (400, 12), (800, 13)):
    _, b2, _, _, a2 = setup(hz)
    a2.init()
    check("BW_RATE code for %d Hz" % hz, reg(b2, BW_RATE) == code, hex(reg(b2, BW_RATE)))
for hz in (1, 10, 12, 1600, 3200):
    try:
        drv.Adxl345(SimI2C(), ADDR, rate_hz=hz)
        check("rate %d Hz refused" % hz, False)
    except ValueError:
        check("rate %d Hz refused" % hz, True)

# --- FIFO: level at the ODR, drained, full at 32
buf = array("h", (0, 0, 0))
clock.now += 200
n = acc.fifo_level()
check("200 ms at 50 Hz: ~10 samples", 10 <= n <= 11, n)
check("still: 1 g on z", drain(acc, buf) == n and abs(buf[2] - 1000) <= 12 and abs(buf[0] - 10) <= 12
      and abs(buf[1] + 20) <= 12, buf)
check("FIFO emptied", acc.fifo_level() == 0)
clock.now += 2000
check("FIFO full after 2 s: 32 entries", acc.fifo_level() == 32 and reg(bus, FIFO_STATUS) == 32)

# overrun drops the oldest: a ramp of x = 100 mg * sample index, played at the ODR
drain(acc, buf)
model.set_trace({"accel_mg": [[100 * i, 0, 1000] for i in range(200)], "rate_hz": 50})
clock.now += 2000       # 100 more samples: the FIFO keeps the newest 32 only
xs = []
for _ in range(acc.fifo_level()):
    acc.read_mg_into(buf)
    xs.append((buf[0] + 50) // 100)
check("overrun: the 32 newest samples, in order", xs == list(range(69, 101)), xs)
check("and nothing left", acc.fifo_level() == 0)

# --- counts: known values through the model's registers, incl. negative and full scale
for mg, raw, back in (((1000, -1000, 0), (0x0100, 0xFF00, 0), (1000, -1000, 0)),
                      ((16000, -16000, 20000), (0x0FFF, 0xF000, 0x0FFF), (15996, -16000, 15996)),
                      ((-4, 4, -2000), (0xFFFF, 0x0001, 0xFE00), (-4, 4, -2000)),
                      ((3000, -12500, 7813), (0x0300, 0xF380, 0x07D0), (3000, -12500, 7813))):
    model.set_trace({"accel_mg": [mg]})
    clock.now += 20
    drain(acc, buf)
    clock.now += 20
    got = raw_sample(bus)    # the one new sample, straight from DATAX0..DATAZ1
    check("registers for %r mg" % (mg,), got == list(raw), [hex(v) for v in got])
    clock.now += 20
    acc.read_mg_into(buf)
    check("driver mg for %r" % (mg,), list(buf) == list(back), buf)
check("one burst pops one entry", acc.fifo_level() == 0)

# bypass: writing FIFO_CTL 0 empties the FIFO; the data registers hold the newest sample
clock.now += 200
bus.writeto_mem(ADDR, FIFO_CTL, b"\x00")
check("bypass: no FIFO entries", reg(bus, FIFO_STATUS) == 0)
model.set_trace({"accel_mg": [[0, 500, 1000]]})
clock.now += 20
check("bypass: newest sample", raw_sample(bus) == [0, 128, 256])
# standby stops sampling
bus.writeto_mem(ADDR, FIFO_CTL, b"\x80")
bus.writeto_mem(ADDR, POWER_CTL, b"\x00")
clock.now += 500
check("standby: no samples", reg(bus, FIFO_STATUS) == 0)
# the model honours DATA_FORMAT: 10-bit +-16 g (31.2 mg/LSB), left-justified full resolution
bus.writeto_mem(ADDR, POWER_CTL, b"\x08")
bus.writeto_mem(ADDR, DATA_FORMAT, b"\x03")
clock.now += 20
check("10 bit at +-16 g: 1 g = 32 counts", raw_sample(bus)[2] == 32)
bus.writeto_mem(ADDR, DATA_FORMAT, b"\x0f")
clock.now += 20
check("left-justified 13 bit: 1 g = 256 << 3", raw_sample(bus)[2] == 256 << 3)
bus.writeto_mem(ADDR, 0x00, b"\x00")
check("DEVID is read-only", reg(bus, 0x00) == 0xE5)

# --- every 13-bit value: driver mg within 0.5 mg of raw * 1000 / 256
fixed = FixedI2C()
dec = drv.Adxl345(fixed, ADDR)
worst = 0
bad = None
for raw in range(-4096, 4096):
    r = raw & 0xFFFF
    fixed.raw[0], fixed.raw[1] = r & 0xFF, r >> 8
    fixed.raw[2], fixed.raw[3] = (-raw) & 0xFF, ((-raw) & 0xFFFF) >> 8
    dec.read_mg_into(buf)
    for v, mg in ((raw, buf[0]), (-raw, buf[1])):
        err = abs(mg * 256 - v * 1000)     # in units of 1/256 mg
        worst = max(worst, err)
        if err > 128 and bad is None:
            bad = (v, mg)
check("every count within 0.5 mg of 1000/256 mg/LSB", bad is None and worst <= 128, (bad, worst))
fixed.raw[:] = b"\x10\x00\xf0\xff\x00\xf0"   # 16, -16, -4096
dec.read_mg_into(buf)
check("halves round up; full scale", list(buf) == [63, -62, -16000], buf)

# --- read_mg_into allocates nothing (on an I2C that allocates nothing either)
gc.collect()
before = gc.mem_alloc()
i = 0
while i < 1000:
    dec.read_mg_into(buf)
    i += 1
check("read_mg_into allocates nothing in 1,000 calls", gc.mem_alloc() == before, gc.mem_alloc() - before)

# --- faults: a silent part, another chip at the address
clock, bus, model, rec, acc = setup()
model.set({"fault": "silent"})
try:
    acc.init()
    check("silent -> SensorFault", False)
except SensorFault as f:
    check("silent -> SensorFault", f.code == NOT_ANSWERING)
try:
    acc.fifo_level()
    check("silent FIFO read -> OSError", False)
except OSError:
    check("silent FIFO read -> OSError", True)
model.set({"fault": "none"})
model._regs[0] = 0x33
try:
    acc.init()
    check("wrong DEVID -> SensorFault", False)
except SensorFault as f:
    check("wrong DEVID -> SensorFault", f.code == NOT_ANSWERING)
try:
    drv.Adxl345(SimI2C(), 0x1D).init()
    check("nothing at 0x1D -> SensorFault", False)
except SensorFault as f:
    check("nothing at 0x1D -> SensorFault", f.code == NOT_ANSWERING)

done()
