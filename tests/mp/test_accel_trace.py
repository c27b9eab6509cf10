# Recorded traces (hal/simtrace.py) played by both simulated parts through their drivers: the
# file format, resampling to the part's rate (hold / skip), holding the last sample, streaming a
# long file in a small heap, errors, and the scenario step that names a trace.
#
#     micropython test_accel_trace.py WORK_DIR      (WORK_DIR: where the trace files are written)
import gc
import sys
from array import array

from drivers.adxl345 import Adxl345
from drivers.lis3dh import Lis3dh
from hal import scenario, simaccel, simadxl345
from hal.simdev import SimI2C
from hal.simtrace import TraceFile
from mpcheck import check, done

WORK = sys.argv[1]


class Clock:
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now


def write(name, text):
    path = WORK + "/" + name
    with open(path, "w") as f:
        f.write(text)
    return path


def part(kind, rate_hz):
    clock = Clock()
    bus = SimI2C()
    if kind == "lis3dh":
        model = bus.devices[0x18] = simaccel.Lis3dh(clock)
        acc = Lis3dh(bus, 0x18, rate_hz)
    else:
        model = bus.devices[0x53] = simadxl345.Adxl345(clock)
        acc = Adxl345(bus, 0x53, rate_hz)
    acc.init()
    return clock, model, acc


def play(kind, rate_hz, step, ms):
    """x (rounded to 100 mg) of every sample the driver reads over ms of node time."""
    clock, model, acc = part(kind, rate_hz)
    model.set_trace(step)
    buf = array("h", (0, 0, 0))
    xs = []
    for _ in range(ms // 100):
        clock.now += 100
        for _ in range(acc.fifo_level()):
            acc.read_mg_into(buf)
            xs.append((buf[0] + 50) // 100 if buf[0] >= 0 else -((50 - buf[0]) // 100))
    return xs


# --- the format: header, comments, blank lines, spaces, CRLF
ramp = write("ramp.csv", "x_mg,y_mg,z_mg\r\n# a ramp: x = 100 mg * index\n\n" +
             "".join("%d, 0, 1000\r\n" % (100 * i) for i in range(10)))
t = TraceFile(ramp)
check("first sample", t.sample(0) == (0, 0, 1000), t.sample(0))
check("forward", t.sample(3) == (300, 0, 1000) and t.sample(9) == (900, 0, 1000))
check("past the end: the last sample holds", t.sample(50) == (900, 0, 1000))
check("an earlier sample rewinds", t.sample(2) == (200, 0, 1000))
t.close()

# --- played by both parts at their rate: equal rates 1:1, a slower trace held, a faster one skipped
for kind in ("lis3dh", "adxl345"):
    step = {"accel": {"trace": ramp, "rate_hz": 50}}
    xs = play(kind, 50, step, 400)
    check(kind + ": 50 Hz trace at 50 Hz, then held", xs[:10] == list(range(10)) and set(xs[10:]) == {9}, xs)
    xs = play(kind, 100, {"accel": {"trace": ramp, "rate_hz": 25}}, 800)
    check(kind + ": 25 Hz trace at 100 Hz: each sample 4 times", xs[:40] == [i // 4 for i in range(40)], xs)
    xs = play(kind, 25, {"accel": {"trace": ramp, "rate_hz": 100}}, 400)
    check(kind + ": 100 Hz trace at 25 Hz: every 4th sample", xs[:3] == [0, 4, 8] and set(xs[3:]) == {9}, xs)

# a trace with negative and large values: the part's scale and saturation apply
big = write("big.csv", "-2000,16000,-20000\n")
for kind in ("lis3dh", "adxl345"):
    clock, model, acc = part(kind, 50)
    model.set_trace({"accel": {"trace": big}})
    clock.now += 100
    buf = array("h", (0, 0, 0))
    for _ in range(acc.fifo_level()):
        acc.read_mg_into(buf)
    check(kind + ": negative and full scale", abs(buf[0] + 2000) < 12 and abs(buf[1] - 16000) < 12, buf)
    if kind == "adxl345":   # 13 bit saturates at -4096 counts (the LIS3DH's 12 mg/digit reaches 24 g)
        check(kind + ": saturated", buf[2] == -16000, buf)

# a new trace replaces the old one; samples taken before it still come from the old one
clock, model, acc = part("adxl345", 50)
model.set_trace({"accel": {"trace": ramp, "rate_hz": 50}})
played = model._trace[0]
clock.now += 100        # samples 0..4 taken (0, 20 .. 80 ms); the one at 100 ms is the new trace's
model.set_trace({"accel": "still"})
clock.now += 100
buf = array("h", (0, 0, 0))
xs = []
for _ in range(acc.fifo_level()):
    acc.read_mg_into(buf)
    xs.append(buf[0])
check("trace then still: samples before the switch from the trace", len(xs) == 11 and
      [(x + 50) // 100 for x in xs[:5]] == list(range(5)) and all(abs(x - 10) <= 12 for x in xs[5:]), xs)
check("the previous trace file stays open for those", played._f is not None)
model.set_trace({"accel": "walk"})
check("the one before the previous trace is closed", played._f is None and model._prev[0] == "still")

# --- a long trace streams: 20,000 samples (4 min at 50 Hz; ~1 MB as a list of tuples here)
with open(WORK + "/long.csv", "w") as f:
    for i in range(20000):
        f.write("%d,%d,%d\n" % (i % 1000, -(i % 700), 1000 + i % 37))
clock, model, acc = part("adxl345", 50)
model.set_trace({"accel": {"trace": WORK + "/long.csv", "rate_hz": 50}})
buf = array("h", (0, 0, 0))
n = 0
gc.collect()
before = gc.mem_alloc()
grew = 0
while n < 20000:
    clock.now += 200
    for _ in range(acc.fifo_level()):
        acc.read_mg_into(buf)
        n += 1
    if n % 2000 < 10:
        gc.collect()
        grew = max(grew, gc.mem_alloc() - before)
check("all 20,000 samples read", n >= 20000, n)
check("and the last one is right", abs(buf[0] - 19999 % 1000) <= 2 and abs(buf[1] + 19999 % 700) <= 2, buf)
check("heap after gc stays flat while streaming", grew < 1024, grew)

# --- errors: a bad line names file and line, an empty file, a missing one
bad = write("bad.csv", "1,2,3\n4,5\n")
t = TraceFile(bad)
try:
    t.sample(1)
    check("bad line -> ValueError", False)
except ValueError as e:
    check("bad line -> ValueError with file:line", "bad.csv:2" in str(e), str(e))
for name, text in (("empty.csv", "x_mg,y_mg,z_mg\n# nothing\n"), ("words.csv", "1,2,3\nx,y,z\n")):
    path = write(name, text)
    try:
        TraceFile(path).sample(5)
        check(name + " refused", False)
    except ValueError:
        check(name + " refused", True)
try:
    simaccel.Lis3dh(Clock()).set_trace({"accel": {"trace": WORK + "/missing.csv"}})
    check("missing file -> OSError", False)
except OSError:
    check("missing file -> OSError", True)

# --- scenario: a relative trace path is from the scenario's folder; a missing file fails at load
doc_path = write("scenario.json", '{"steps": [{"at_ms": 1000, "accel": {"trace": "ramp.csv", "rate_hz": 50}},'
                 ' {"at_ms": 0, "adxl345": {"fault": "none"}}]}')
doc = scenario.load(doc_path)
check("relative path resolved", doc["steps"][0]["accel"]["trace"] == WORK + "/ramp.csv", doc["steps"][0])
for text in ('{"steps": [{"at_ms": 0, "accel": {"trace": "nope.csv"}}]}',
             '{"steps": [{"at_ms": 0, "accel": {"rate_hz": 50}}]}',
             '{"steps": [{"at_ms": 0, "accel": {"trace": "ramp.csv", "rate_hz": 0}}]}',
             '{"steps": [{"at_ms": 0, "accel": "jog"}]}'):
    try:
        scenario.load(write("bad_scenario.json", text))
        check("scenario refused: " + text, False)
    except (OSError, ValueError):
        check("scenario refused: " + text, True)


class Hal:
    def __init__(self, parts):
        self.parts = parts


clock = Clock()
parts = [simaccel.Lis3dh(clock), simadxl345.Adxl345(clock)]
scenario._apply(Hal(parts), doc["steps"][0])
check("the step reaches both parts", all(hasattr(p._trace[0], "sample") for p in parts))
scenario._apply(Hal(parts), {"at_ms": 0, "adxl345": {"fault": "silent"}})
check("a part step reaches its part only", parts[1].fault == "silent" and parts[0].fault == "none")

done()
