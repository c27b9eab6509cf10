# Fall detector v0 on the simulated accelerometer traces; its per-sample path allocates nothing.
import gc
from array import array

from hal.simaccel import trace_sample
from mpcheck import check, done
from srnode.fall import FallDetector


def run(name, samples, start=0):
    det = FallDetector(50)
    fired = []
    for k in range(start, start + samples):
        x, y, z = trace_sample(name, k)
        if det.update(x, y, z):
            fired.append((k, det.features()))
    return fired


fired = run("fall", 500)
check("fall trace fires once", len(fired) == 1, fired)
if fired:
    k, f = fired[0]
    check("fires after 2 s lying still", 65 + 100 <= k <= 65 + 250, k)
    check("peak 3-5 g", 3000 <= f["peak_mg"] <= 5000, f)
    check("still_ms", f["still_ms"] == 2000, f)
    check("tilt: upright to lying on the side", 60 <= f["tilt_deg"] <= 100, f)
    check("features are wire integers", all(type(v) is int for v in f.values()), f)
check("walk: no fall in 10 min", run("walk", 30000) == [])
check("still: no fall in 10 min", run("still", 30000) == [])

# the phases on their own do not fire: free fall without impact, impact then walking on
det = FallDetector(50)
fired = False
for k in range(50, 65):  # free fall only
    fired |= det.update(*trace_sample("fall", k))
for k in range(0, 500):
    fired |= det.update(*trace_sample("walk", k))
check("free fall without impact: no fall", not fired)
det = FallDetector(50)
for k in range(0, 69):  # walk, free fall, impact ...
    fired |= det.update(*trace_sample("fall", k))
for k in range(0, 500):  # ... and walking on
    fired |= det.update(*trace_sample("walk", k))
check("impact then walking on: no fall", not fired)

# per-sample path: 10,000 samples (walking, a fall, lying, walking) allocate nothing
n = 10000
buf = array("h", bytearray(6 * n))
for i in range(n):
    k = i % 2000
    x, y, z = trace_sample("fall", k) if k < 500 else trace_sample("walk", k)
    buf[3 * i], buf[3 * i + 1], buf[3 * i + 2] = x, y, z
det = FallDetector(50)
fires = 0
gc.collect()
before = gc.mem_alloc()
i = 0
while i < 3 * n:
    if det.update(buf[i], buf[i + 1], buf[i + 2]):
        fires += 1
    i += 3
after = gc.mem_alloc()
check("update() allocates nothing over 10,000 samples", after == before, after - before)
check("and the fall inside fired each time", fires == n // 2000, fires)

done()
