# Runs the firmware's fall detector on trials sent by controller/fall_eval/evaluate.py.
#
# A MicroPython script (not imported by CPython): micropython -X heapsize=64wK mp_runner.py,
# with MICROPYPATH holding firmware/, so it imports the very srnode/fall.py a node runs.
# One process serves a whole evaluation. Protocol, one request after the other:
#
#   stdin  {"rate_hz": 50, "params": null}\n         once, first: detector settings
#   stdin  T <n>\n + n samples                       a trial: x, y, z milli-g as int16 LE,
#   stdout {"n": n, "fires": [[i, {features}], ...]}  a fresh detector; i = sample index
#   stdin  B <n> <updates> <runs>\n + n samples       cost: the trace is looped <updates> times
#   stdout {"bench": {...}}                           per run (see bench() below)
#   stdin  EOF                                        exit 0
#
# An error (the detector raised, a short read) goes to stderr and exits 1.
import gc
import json
import sys
from array import array
from micropython import const
from time import ticks_diff, ticks_us

from srnode.fall import FallDetector

_CHUNK = const(256)           # samples per read: 1.5 KB, whatever the trial's length
_ALLOC_BLOCK = const(500)     # updates between collections while counting allocated bytes

stdin = sys.stdin.buffer
stdout = sys.stdout


def read_exact(view):
    got = stdin.readinto(view)   # loops over partial pipe reads until full or EOF
    if got != len(view) * 2:
        raise EOFError("short read: %d of %d bytes" % (got or 0, len(view) * 2))


def make(rate_hz, params):
    # v0 takes no params: pass them only when the evaluation was given some
    if params is None:
        return FallDetector(rate_hz)
    try:
        return FallDetector(rate_hz, params)
    except TypeError as exc:
        raise TypeError("FallDetector(rate_hz, params) failed (does this detector take params?): %s" % exc)


def run_trial(n, rate_hz, params, buf, view):
    det = make(rate_hz, params)
    fires = []
    i = 0
    while i < n:
        m = min(_CHUNK, n - i)
        read_exact(view[:3 * m])
        j = 0
        while j < 3 * m:
            if det.update(buf[j], buf[j + 1], buf[j + 2]):
                fires.append([i + j // 3, det.features()])
            j += 3
        i += m
    stdout.write(json.dumps({"n": n, "fires": fires}))
    stdout.write("\n")


def loop_us(det, trace, updates):
    # The same loop with and without the call: the difference is the detector's own time.
    n3 = len(trace)
    j = 0
    k = 0
    if det is None:
        t0 = ticks_us()
        while k < updates:
            x = trace[j]
            y = trace[j + 1]
            z = trace[j + 2]
            j += 3
            if j >= n3:
                j = 0
            k += 1
        return ticks_diff(ticks_us(), t0)
    update = det.update
    t0 = ticks_us()
    while k < updates:
        update(trace[j], trace[j + 1], trace[j + 2])
        j += 3
        if j >= n3:
            j = 0
        k += 1
    return ticks_diff(ticks_us(), t0)


def alloc_bytes(det, trace, updates):
    # Bytes allocated by update() over `updates` calls, in blocks with a collection before
    # each, so that garbage from one block cannot trigger a collection that hides it. The
    # harness itself allocates nothing (small ints, array reads).
    n3 = len(trace)
    total = 0
    j = 0
    k = 0
    while k < updates:
        gc.collect()
        before = gc.mem_alloc()
        stop = min(updates, k + _ALLOC_BLOCK)
        while k < stop:
            det.update(trace[j], trace[j + 1], trace[j + 2])
            j += 3
            if j >= n3:
                j = 0
            k += 1
        total += gc.mem_alloc() - before
    return total


def version():
    v = sys.implementation.version           # (1, 29, 0, "preview") on a development build
    text = "%d.%d.%d" % v[:3]
    return text + "-" + v[3] if len(v) > 3 and v[3] else text


def bench(n, updates, runs, rate_hz, params):
    trace = array("h", bytes(6 * n))
    read_exact(memoryview(trace))
    gc.collect()
    before = gc.mem_alloc()
    det = make(rate_hz, params)
    gc.collect()
    size = gc.mem_alloc() - before
    alloc = alloc_bytes(det, trace, updates)
    with_us = []
    bare_us = []
    for _ in range(runs):
        gc.collect()
        bare_us.append(loop_us(None, trace, updates))
        with_us.append(loop_us(make(rate_hz, params), trace, updates))
    stdout.write(json.dumps({"bench": {
        "updates": updates, "with_us": with_us, "bare_us": bare_us, "detector_bytes": size,
        "alloc_bytes": alloc, "heap_bytes": gc.mem_alloc() + gc.mem_free(),
        "micropython": version()}}))
    stdout.write("\n")


def main():
    setup = json.loads(stdin.readline())
    rate_hz = setup["rate_hz"]
    params = setup.get("params")
    buf = array("h", bytes(6 * _CHUNK))
    view = memoryview(buf)
    while True:
        line = stdin.readline()
        if not line:
            return
        words = line.split()
        if words[0] == b"T":
            run_trial(int(words[1]), rate_hz, params, buf, view)
        elif words[0] == b"B":
            bench(int(words[1]), int(words[2]), int(words[3]), rate_hz, params)
        else:
            raise ValueError("unknown request %r" % line)


try:
    main()
except Exception as exc:
    sys.print_exception(exc, sys.stderr)
    sys.exit(1)
