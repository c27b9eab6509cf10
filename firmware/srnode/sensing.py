# The node's periodic sensing, loaded only when the config fits sensors: climate readings
# (SHT3x, MH-Z19B) and accelerometer sampling (LIS3DH or ADXL345) into the fall detector.
from array import array
from micropython import const

from drivers import NOT_ANSWERING, SensorFault
from srnode import proto

_FIRST_READING_MS = const(2000)   # the MH-Z19B answers about 1 s after power-up
_ACCEL_POLL_MS = const(200)       # the FIFO holds 640 ms at 50 Hz: empty it three times as often
_ACCEL_RETRY_MS = const(10000)    # re-probe a missing or failed accelerometer this often


def build(cfg, hal, caps):
    """The climate sensors and the accelerometer the config fits; adds their caps."""
    env = []
    for spec in cfg.get("i2c", ()):
        if spec["part"] != "sht3x":
            raise ValueError("unknown i2c part " + spec["part"])
        from drivers.sht3x import Sht3x
        env.append(Sht3x(hal.i2c(spec.get("bus", 0)), hal, spec.get("addr", 0x44), spec.get("name", "sht3x")))
        caps += ["temp_mdegc", "rh_mpct"]
    for spec in cfg.get("uart", ()):
        if spec["part"] != "mhz19b":
            raise ValueError("unknown uart part " + spec["part"])
        from drivers.mhz19b import BAUDRATE, Mhz19b
        env.append(Mhz19b(hal.uart(spec.get("bus", 1), BAUDRATE), hal, spec.get("name", "mhz19b")))
        caps.append("co2_ppm")
    spec = cfg.get("accel")
    acc = None
    if spec:
        part = spec.get("part", "lis3dh")
        if part == "lis3dh":
            from drivers.lis3dh import Lis3dh as Part
            addr = 0x18
        elif part == "adxl345":
            from drivers.adxl345 import Adxl345 as Part
            addr = 0x53
        else:
            raise ValueError("unknown accel part " + part)
        acc = Part(hal.i2c(spec.get("bus", 0)), spec.get("addr", addr), spec.get("rate_hz", 50),
                   spec.get("name", "accel"))
        caps.append("fall")
    return env, acc


async def readings(node, hal, sensors, period_ms):
    """Every period_ms: one `reading` with what every sensor measured; failures become faults."""
    await hal.sleep_ms(_FIRST_READING_MS)
    while True:
        m = {}
        for sensor in sensors:
            try:
                await sensor.measure(m)
                node.clear_fault(sensor.name)
            except SensorFault as f:
                node.fault(sensor.name, f.code)
        if m:
            hal.log("reading", " ".join("%s=%d" % (k, m[k]) for k in sorted(m)))
            node.link.post(proto.reading(node.node_id, node.boot, node.uptime_ms(), m))
        await hal.sleep_ms(period_ms)


async def accel(node, hal, acc):
    """Empties the accelerometer FIFO a few times a second into the fall detector."""
    from srnode.fall import FallDetector
    det = FallDetector(acc.rate_hz)
    buf = array("h", (0, 0, 0))
    while True:
        try:
            acc.init()
            node.clear_fault(acc.name)
            while True:
                await hal.sleep_ms(_ACCEL_POLL_MS)
                n = acc.fifo_level()
                while n > 0:
                    n -= 1
                    acc.read_mg_into(buf)
                    if det.update(buf[0], buf[1], buf[2]):
                        node.emit("fall", acc.name, 1, hal.ticks_ms(), det.features())
        except SensorFault as f:
            node.fault(acc.name, f.code)
        except OSError:
            node.fault(acc.name, NOT_ANSWERING)
        await hal.sleep_ms(_ACCEL_RETRY_MS)
