# Synthetic accelerometer scenarios for the fall detector (firmware/srnode/fall.py), run under
# MicroPython by tests/test_fall_detector.py:
#
#   micropython fall_traces.py            every scenario, then the cost checks
#   micropython fall_traces.py NAME ...   only those
#
# One JSON line per scenario: {"name", "rate", "fires": [[sample, features], ...], "marks":
# {"impact": sample, ...}, "dropped": n}; {"name": "rates_agree", "fires": [[rate, sample at
# 50 Hz, features], ...]}; and {"name": "cost_<rate>", "detector_bytes", "alloc_bytes", "updates",
# "fires"}. Samples are generated and fed one at a time (nothing is stored), so ten-minute traces
# fit in a board-sized heap.
#
# Axes are those of fall.py's default mount (SisFall's waist mount): upright reads y = -1 g,
# lying on the back z = +1 g, lying on the side x = +1 g. MOUNT_Z is the simulated board's
# mount (hal/simaccel.py: upright reads z = +1 g).
import gc
import json
import sys
from array import array
from math import pi, sin, sqrt

from srnode.fall import FallDetector

MOUNT_Y = {"up": (0, -1000, 0), "back": (0, 0, 1000), "side": (1000, 0, 0)}
MOUNT_Z = {"up": (0, 0, 1000), "back": (0, 1000, 0), "side": (1000, 0, 0)}


def _unit(v):
    n = sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) or 1.0
    return (v[0] / n, v[1] / n, v[2] / n)


def _mix(a, b, t):
    # the direction t of the way from a to b (0..1), as a unit vector
    return _unit((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t))


class Trace:
    """Feeds a detector one generated sample at a time; records its alarms and named marks."""

    def __init__(self, det, rate_hz, mount=MOUNT_Y, record=None, clip_mg=None):
        self.det = det
        self.rate = rate_hz
        self.m = mount
        self.n = 0
        self.fires = []
        self.marks = {}
        self.record = record     # an array('h') to keep the first samples in, or None
        self.clip = clip_mg      # a part's range: every axis clipped to +-clip_mg, or None
        self._seed = 12345

    def pose(self, name, back_deg=0):
        """A unit vector: "up", "back", "side", or up tilted back_deg towards lying on the back."""
        if name != "up" or not back_deg:
            return _unit(self.m[name])
        t = back_deg * pi / 180
        u = self.m["up"]
        b = self.m["back"]
        return _unit((u[0] * _cos(t) + b[0] * sin(t), u[1] * _cos(t) + b[1] * sin(t), u[2] * _cos(t) + b[2] * sin(t)))

    def _noise(self, mg):
        self._seed = (self._seed * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._seed >> 16) % (2 * mg + 1) - mg

    def emit(self, v, mag, noise=6):
        x = int(v[0] * mag) + self._noise(noise)
        y = int(v[1] * mag) + self._noise(noise)
        z = int(v[2] * mag) + self._noise(noise)
        c = self.clip
        if c is not None:
            x = max(-c, min(c, x))
            y = max(-c, min(c, y))
            z = max(-c, min(c, z))
        r = self.record
        if r is not None and 3 * self.n < len(r):
            r[3 * self.n] = x
            r[3 * self.n + 1] = y
            r[3 * self.n + 2] = z
        if self.det.update(x, y, z):
            self.fires.append([self.n, self.det.features()])
        self.n += 1

    def samples(self, seconds):
        return max(1, int(seconds * self.rate + 0.5))

    # --- segments
    def still(self, pose, seconds, breathing=True, noise=6):
        """Resting in a pose; a person breathes (15 mg at 0.25 Hz), a node on the floor does not."""
        for k in range(self.samples(seconds)):
            b = 15 * sin(2 * pi * 0.25 * k / self.rate) if breathing else 0
            self.emit(pose, 1000 + b, noise)

    def walk(self, seconds, step_hz=1.8, bounce_mg=300, sway_mg=120):
        """Upright walking: |a| 1 g +- bounce_mg along the spine at the step rate, sway sideways."""
        up = self.pose("up")
        side = _unit(self.m["side"])
        back = _unit(self.m["back"])
        for k in range(self.samples(seconds)):
            t = k / self.rate
            v = 1000 + bounce_mg * sin(2 * pi * step_hz * t)
            s = sway_mg * sin(pi * step_hz * t)
            f = 0.4 * bounce_mg * sin(2 * pi * step_hz * t + 1.0)
            self.emit((up[0] * v + side[0] * s + back[0] * f, up[1] * v + side[1] * s + back[1] * f,
                       up[2] * v + side[2] * s + back[2] * f), 1)

    def move(self, a, b, seconds, low_mg=1000):
        """Turning from pose a to pose b; |a| dips to low_mg in the middle (a fall: well below 1 g)."""
        n = self.samples(seconds)
        for k in range(n):
            t = (k + 1) / n
            self.emit(_mix(a, b, t), 1000 - (1000 - low_mg) * sin(pi * t))

    def impact(self, pose, peak_mg, ms=60, mark="impact"):
        """A triangular pulse of peak_mg lasting ms, along pose; marks its highest sample."""
        n = max(1, ms * self.rate // 1000)
        for k in range(n):
            h = 1 - abs(2 * (k + 0.5) / n - 1)        # 0..1..0
            if k == (n - 1) // 2:
                self.marks[mark] = self.n
            self.emit(pose, 1000 + (peak_mg - 1000) * h)

    def settle(self, pose, seconds, wobble_mg=250):
        """Coming to rest after an impact: a damped wobble."""
        n = self.samples(seconds)
        for k in range(n):
            self.emit(pose, 1000 + wobble_mg * (1 - k / n) * sin(2 * pi * 4 * k / self.rate))

    # --- whole events
    def fall(self, to="back", peak_mg=4000, mark="impact"):
        """A fall from walking: 0.6 s going down (|a| dips to 0.35 g), an impact, lying."""
        self.move(self.pose("up"), _mix(self.pose("up"), self.pose(to), 0.7), 0.6, low_mg=350)
        self.impact(self.pose(to), peak_mg, mark=mark)
        self.settle(self.pose(to), 0.4)

    def get_up(self):
        self.move(self.pose("back"), self.pose("up", 20), 1.0)
        self.move(self.pose("up", 20), self.pose("up"), 1.0)


def _cos(t):
    return sin(t + pi / 2)


# ------------------------------------------------------------------------------ scenarios
def clean_fall(tr):
    tr.walk(10)
    tr.fall()
    tr.still(tr.pose("back"), 20)


def fall_get_up_walk_away(tr):
    # Down for 5 s: the alarm stands (the patient cancels with "I'm OK"); then a second fall
    # after walking again must alarm again.
    tr.walk(10)
    tr.fall()
    tr.still(tr.pose("back"), 5)
    tr.get_up()
    tr.walk(30)
    tr.fall(mark="impact2")
    tr.still(tr.pose("back"), 10)


def stumble_recovered(tr):
    # Down on one knee and straight back up: upright again within a second, no alarm.
    tr.walk(10)
    tr.move(tr.pose("up"), tr.pose("up", 40), 0.3, low_mg=600)
    tr.impact(tr.pose("up", 40), 2500)
    tr.move(tr.pose("up", 40), tr.pose("up"), 0.5)
    tr.walk(20)


def sit_down_hard(tr):
    tr.walk(5)
    tr.still(tr.pose("up"), 1)
    tr.move(tr.pose("up"), tr.pose("up", 25), 0.4, low_mg=500)
    tr.impact(tr.pose("up", 25), 2800)
    tr.settle(tr.pose("up", 25), 0.3)
    tr.still(tr.pose("up", 25), 20)


def jumping(tr):
    tr.walk(5)
    for _ in range(5):
        tr.still(tr.pose("up"), 1.5)
        tr.move(tr.pose("up"), tr.pose("up", 15), 0.2, low_mg=700)      # crouch
        tr.impact(tr.pose("up", 10), 2000, ms=150)                        # push off
        for _ in range(tr.samples(0.3)):                                  # flight
            tr.emit(tr.pose("up"), 30)
        tr.impact(tr.pose("up", 10), 4500, ms=80)                         # landing
        tr.settle(tr.pose("up"), 0.4)
    tr.still(tr.pose("up"), 5)


def dropped_node(tr):
    # Worn while walking, then the node comes off and falls alone from the waist (~1 m):
    # 0.45 s of true free fall while it tumbles, a hard hit, a bounce, then it lies flat.
    tr.walk(10)
    n = tr.samples(0.45)
    for k in range(n):
        tr.emit(_mix(tr.pose("up"), tr.pose("back"), (k + 1) / n), 20)
    tr.impact(tr.pose("back"), 14000, ms=40)
    tr.impact(tr.pose("back"), 2000, ms=40, mark="bounce")
    tr.still(tr.pose("back"), 60, breathing=False, noise=3)


def lie_down_in_bed(tr):
    # Sit on the bed, lie back, later roll onto the side with a bump: lying before, no alarm.
    tr.walk(5)
    tr.still(tr.pose("up"), 1)
    tr.move(tr.pose("up"), tr.pose("up", 20), 1.0)
    tr.still(tr.pose("up", 20), 10)
    tr.move(tr.pose("up", 20), tr.pose("back"), 2.0)
    tr.still(tr.pose("back"), 30)
    tr.move(tr.pose("back"), tr.pose("side"), 1.0)
    tr.impact(tr.pose("side"), 1900)
    tr.still(tr.pose("side"), 30)


def lie_down_on_a_bed(tr):
    # FallAllD's "Lying down": walk to the bed, sit on its edge with a bump (the candidate), then
    # lie back over 1.5 s and settle: turned little at the contact, turning after it.
    tr.walk(8)
    tr.still(tr.pose("up"), 1)
    tr.move(tr.pose("up"), tr.pose("up", 15), 0.5, low_mg=750)
    tr.impact(tr.pose("up", 15), 2300, ms=160)
    tr.move(tr.pose("up", 15), tr.pose("back"), 1.5)
    tr.still(tr.pose("back"), 20)


def lie_down_hard_sit(tr):
    # The same with a harder sit (the impulse of a fall, ~150 mg s, below 2 g) and a quicker lie
    # back: not turned to lying at the contact, so still not a hard impact.
    tr.walk(8)
    tr.still(tr.pose("up"), 1)
    tr.move(tr.pose("up"), tr.pose("up", 15), 0.4, low_mg=600)
    tr.impact(tr.pose("up", 15), 1900, ms=340)
    tr.move(tr.pose("up", 15), tr.pose("back"), 1.0)
    tr.still(tr.pose("back"), 20)


def slump(tr):
    # Fainting while standing: the knees give, the body folds down to the floor in 1.2 s and lands
    # softly (1.9 g, ~50 mg s: no hard impact), already lying, then lies still.
    tr.walk(10)
    tr.still(tr.pose("up"), 2)
    tr.move(tr.pose("up"), tr.pose("back"), 1.2, low_mg=650)
    tr.impact(tr.pose("back"), 1900, ms=100)
    tr.still(tr.pose("back"), 20)


def slump_then_moving(tr):
    # The same soft landing, then still turning and moving on the floor for seconds: lying down
    # looks like this (docs/falls.md: not a slump, no alarm).
    tr.walk(10)
    tr.still(tr.pose("up"), 2)
    tr.move(tr.pose("up"), tr.pose("up", 70), 1.2, low_mg=650)
    tr.impact(tr.pose("up", 70), 1900, ms=100)
    tr.move(tr.pose("up", 70), tr.pose("side"), 1.5)
    tr.move(tr.pose("side"), tr.pose("back"), 1.5)
    tr.still(tr.pose("back"), 20)


def lie_back_after_contact(tr):
    # Half lying at the contact (an elbow on the mattress, 65 degrees, a soft bump), then turning
    # 25 degrees more onto the back before lying still: turning after the contact is lying down.
    tr.walk(8)
    tr.still(tr.pose("up"), 1)
    tr.move(tr.pose("up"), tr.pose("up", 65), 1.0, low_mg=800)
    tr.impact(tr.pose("up", 65), 1800, ms=100)
    tr.move(tr.pose("up", 65), tr.pose("back"), 0.7)
    tr.still(tr.pose("back"), 20)


def flop_from_reclined(tr):
    # Sitting reclined in bed (40 degrees), letting oneself fall sideways onto the mattress with
    # a soft bump, then still: it started reclining, not upright, so it is lying down, not a slump.
    tr.still(tr.pose("up", 40), 10)
    tr.move(tr.pose("up", 40), tr.pose("side"), 0.6, low_mg=700)
    tr.impact(tr.pose("side"), 1800, ms=100)
    tr.still(tr.pose("side"), 20)


def lie_down_then_settle(tr):
    # Lying down onto the back with a soft bump, then seconds of shifting and settling in place
    # (no turn): moving after a soft contact is lying down, not a slump.
    tr.walk(8)
    tr.still(tr.pose("up"), 1)
    tr.move(tr.pose("up"), tr.pose("back"), 1.2, low_mg=700)
    tr.impact(tr.pose("back"), 1800, ms=100)
    tr.settle(tr.pose("back"), 3.0, wobble_mg=500)
    tr.still(tr.pose("back"), 20)


def fall_out_of_bed(tr):
    # Lying on the back in bed, rolling onto the side and off the edge: 0.4 s of dropping, a hard
    # landing on the floor (4.5 g, ~210 mg s), lying on the side.
    tr.still(tr.pose("back"), 30)
    tr.move(tr.pose("back"), tr.pose("side"), 0.4, low_mg=250)
    tr.impact(tr.pose("side"), 4500, ms=120)
    tr.settle(tr.pose("side"), 0.4)
    tr.still(tr.pose("side"), 20)


def roll_over_in_bed_hard(tr):
    # Turning over in bed with a firm bump (2.2 g, ~70 mg s) onto the other side: no drop.
    tr.still(tr.pose("back"), 30)
    tr.move(tr.pose("back"), tr.pose("side"), 0.8)
    tr.impact(tr.pose("side"), 2200, ms=120)
    tr.still(tr.pose("side"), 20)


def fall_then_knock(tr):
    # A fall, then 1.3 s later an arm knocks the floor (1.8 g, less than half the impact): part
    # of the same fall, judged on the impact, alarmed 2 s after it; not 2 s after the knock.
    tr.walk(10)
    tr.fall()
    tr.still(tr.pose("back"), 0.9)
    tr.impact(tr.pose("back"), 1800, mark="knock")
    tr.still(tr.pose("back"), 20)


def clipped_fall(tr):
    # A hard fall (12 g) on a +-8 g part: every axis of the impact clipped at 8 g.
    tr.walk(10)
    tr.fall(peak_mg=12000)
    tr.still(tr.pose("back"), 20)


def walk_10_min(tr):
    tr.walk(600)


def jog_2_min(tr):
    tr.walk(120, step_hz=2.8, bounce_mg=1600, sway_mg=300)


def still_10_min(tr):
    tr.still(tr.pose("up"), 600)


def mount_z_after_walking(tr):
    # The simulated board's mount: the detector learns upright from 30 s of walking.
    tr.walk(30)
    tr.fall(to="side")
    tr.still(tr.pose("side"), 10)


def mount_z_no_walking(tr):
    # The same fall with no walking first: upright is still the default mount's, the posture
    # before the fall reads as lying, and no alarm is raised (documented limitation).
    tr.still(tr.pose("up"), 10)
    tr.fall(to="side")
    tr.still(tr.pose("side"), 10)


def sim_walk_then_fall(tr):
    # hal/simaccel.py's own "walk" and "fall" traces at 50 Hz, as the simulated node plays them.
    from hal.simaccel import trace_sample
    for k in range(3000):
        _feed(tr, trace_sample("walk", k))
    for k in range(500):
        if k == 66:
            tr.marks["impact"] = tr.n
        _feed(tr, trace_sample("fall", k))


def _feed(tr, xyz):
    if tr.det.update(xyz[0], xyz[1], xyz[2]):
        tr.fires.append([tr.n, tr.det.features()])
    tr.n += 1


# name: (rate_hz, scenario, mount, params)
SCENARIOS = {
    "clean_fall": (50, clean_fall, MOUNT_Y, None),
    "clean_fall_100hz": (100, clean_fall, MOUNT_Y, None),
    "clean_fall_200hz": (200, clean_fall, MOUNT_Y, None),
    "clipped_fall": (50, clipped_fall, MOUNT_Y, None),
    "fall_then_knock": (50, fall_then_knock, MOUNT_Y, None),
    "lie_down_on_a_bed": (50, lie_down_on_a_bed, MOUNT_Y, None),
    "lie_down_on_a_bed_200hz": (200, lie_down_on_a_bed, MOUNT_Y, None),
    "lie_down_hard_sit": (50, lie_down_hard_sit, MOUNT_Y, None),
    "slump": (50, slump, MOUNT_Y, None),
    "slump_100hz": (100, slump, MOUNT_Y, None),
    "slump_then_moving": (50, slump_then_moving, MOUNT_Y, None),
    "lie_back_after_contact": (50, lie_back_after_contact, MOUNT_Y, None),
    "flop_from_reclined": (50, flop_from_reclined, MOUNT_Y, None),
    "lie_down_then_settle": (50, lie_down_then_settle, MOUNT_Y, None),
    "fall_out_of_bed": (50, fall_out_of_bed, MOUNT_Y, None),
    "fall_out_of_bed_200hz": (200, fall_out_of_bed, MOUNT_Y, None),
    "roll_over_in_bed_hard": (50, roll_over_in_bed_hard, MOUNT_Y, None),
    "fall_get_up_walk_away": (50, fall_get_up_walk_away, MOUNT_Y, None),
    "stumble_recovered": (50, stumble_recovered, MOUNT_Y, None),
    "sit_down_hard": (50, sit_down_hard, MOUNT_Y, None),
    "jumping": (50, jumping, MOUNT_Y, None),
    "jumping_100hz": (100, jumping, MOUNT_Y, None),
    "dropped_node": (50, dropped_node, MOUNT_Y, None),
    "dropped_node_100hz": (100, dropped_node, MOUNT_Y, None),
    "lie_down_in_bed": (50, lie_down_in_bed, MOUNT_Y, None),
    "walk_10_min": (50, walk_10_min, MOUNT_Y, None),
    "jog_2_min": (50, jog_2_min, MOUNT_Y, None),
    "jog_2_min_100hz": (100, jog_2_min, MOUNT_Y, None),
    "still_10_min": (50, still_10_min, MOUNT_Y, None),
    "mount_z_after_walking": (50, mount_z_after_walking, MOUNT_Z, None),
    "mount_z_no_walking": (50, mount_z_no_walking, MOUNT_Z, None),
    "mount_z_configured": (50, mount_z_no_walking, MOUNT_Z, {"up": (0, 0, 1000)}),
    "sim_walk_then_fall": (50, sim_walk_then_fall, MOUNT_Z, None),
}


def run(name):
    rate, scenario, mount, params = SCENARIOS[name]
    tr = Trace(FallDetector(rate, params), rate, mount, clip_mg=8000 if name.startswith("clipped") else None)
    scenario(tr)
    return {"name": name, "rate": rate, "samples": tr.n, "fires": tr.fires, "marks": tr.marks,
            "dropped": tr.det.dropped}


UPDATES = 10000     # update() calls per 50 Hz of the rate: 10,000 at 50 Hz, 40,000 at 200 Hz
REPLAYED = 3000     # samples at 50 Hz (60 s, 3 falls) recorded and replayed: 18 KB, taken first
gc.collect()        # the compiler's garbage
_REC = array("h", bytes(6 * REPLAYED))      # runs fragment the heap; this array stays whole


def cost(rate):
    """Heap held by a detector, and bytes allocated by update() over 200 s of samples that
    include falls: walking, a fall, lying, getting up, ... recorded once at 50 Hz, then replayed
    at the rate (each sample rate/50 times: the detector averages them back to the same trace)."""
    rec = _REC
    tr = Trace(FallDetector(50), 50, MOUNT_Y, rec)
    while tr.n < REPLAYED:
        tr.walk(8)
        tr.fall()
        tr.still(tr.pose("back"), 6)
        tr.get_up()
    n3 = 3 * REPLAYED
    rep = rate // 50
    del tr
    gc.collect()
    before = gc.mem_alloc()
    det = FallDetector(rate)
    gc.collect()
    size = gc.mem_alloc() - before
    fires = 0
    i = 0
    r = 0
    gc.collect()
    before = gc.mem_alloc()
    k = 0
    while k < UPDATES * rep:
        if det.update(rec[i], rec[i + 1], rec[i + 2]):
            fires += 1
        r += 1
        if r == rep:
            r = 0
            i += 3
            if i == n3:
                i = 0
        k += 1
    alloc = gc.mem_alloc() - before
    return {"name": "cost_%d" % rate, "detector_bytes": size, "alloc_bytes": alloc, "updates": k,
            "fires": fires}


class _Tee:
    """A detector at 200 Hz and one at 50 Hz fed the 200 Hz samples' block means (rounded half up,
    as fall.py averages): the 200 Hz detector must decide exactly as the 50 Hz one."""

    def __init__(self):
        self.fast = FallDetector(200)
        self.slow = FallDetector(50)
        self.sums = [0, 0, 0, 0]
        self.n = 0
        self.fires = []          # [detector, sample index at 50 Hz, features]
        self.dropped = 0

    def update(self, x, y, z):
        if self.fast.update(x, y, z):
            self.fires.append(["200", self.n // 4, self.fast.features()])
        s = self.sums
        s[0] += x
        s[1] += y
        s[2] += z
        s[3] += 1
        if s[3] == 4:
            if self.slow.update((s[0] + 2) // 4, (s[1] + 2) // 4, (s[2] + 2) // 4):
                self.fires.append(["50", self.n // 4, self.slow.features()])
            s[0] = s[1] = s[2] = s[3] = 0
        self.n += 1
        return False


def rates_agree():
    tee = _Tee()
    tr = Trace(tee, 200)
    clean_fall(tr)
    slump(tr)
    lie_down_on_a_bed(tr)
    fall_out_of_bed(tr)
    return {"name": "rates_agree", "fires": tee.fires, "samples": tr.n}


def main(names):
    for name in names or list(SCENARIOS) + ["rates_agree", "cost_50", "cost_100", "cost_200"]:
        if name == "rates_agree":
            out = rates_agree()
        else:
            out = cost(int(name[5:])) if name.startswith("cost_") else run(name)
        print(json.dumps(out))
        gc.collect()


main(sys.argv[1:])
