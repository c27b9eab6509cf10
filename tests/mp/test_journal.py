# The flash journal (firmware/srnode/journal.py) on a directory as the flash: round trip, torn
# records, compaction, the bound at, under and over its edge, a failing flash, an unfinished
# compaction. Usage: micropython test_journal.py <empty directory>
import os
import sys

from mpcheck import check, done
from srnode.equeue import BOOT, EV, KIND, SRC, VAL, AT_MS, X, entry
from srnode.journal import Journal

DIR = sys.argv[1]
_n = [0]


def fresh(limit=4096):
    _n[0] += 1
    return DIR + "/j%d" % _n[0], limit


def ev(e, kind="button", src="call", b=1, x=None):
    return entry(e, kind, src, 1, 1000 + e, x, b)


def same(a, b):
    return [(e[BOOT], e[EV], e[KIND], e[SRC], e[VAL], e[AT_MS], e[X]) for e in a] == \
           [(e[BOOT], e[EV], e[KIND], e[SRC], e[VAL], e[AT_MS], e[X]) for e in b]


def size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def journal_of(events, acks, limit=4096):
    """A journal that took `events`, then the acks of `acks` (event numbers), as a node does."""
    path, limit = fresh(limit)
    j = Journal(path, limit)
    live = []
    for e in events:
        live.append(e)
        check("add %d" % e[EV], j.add(e, live) == 0)
    for n in acks:
        e = [x for x in live if x[EV] == n][0]
        live.remove(e)
        check("ack %d" % n, j.ack(e[BOOT], n, live) == 0)
    return path, j, live


# --- round trip: what was added and not acked comes back, with every field and its own boot
fall_x = {"peak_mg": 4210, "impulse_mgs": 180, "fall_type": 1}
events = [ev(1, b=4), ev(2, "fall", "accel", b=4, x=fall_x), ev(3, "presence", "pir", b=4), ev(1, b=5)]
path, j, live = journal_of(events, [2])
back = Journal(path)
got = back.load()
check("unacked events come back, oldest first", same(got, [events[0], events[2], events[3]]), got)
check("a clean file has nothing torn", back.torn == 0)
path, j, live = journal_of([events[1]], [])
check("a fall's features come back", same(Journal(path).load(), [events[1]]))
# an ack names (boot, e): boot 5's e=1 acked leaves boot 4's e=1
path, j, live = journal_of([ev(1, b=4), ev(1, b=5)], [])
live.pop(1)
check("ack (5, 1)", j.ack(5, 1, live) == 0)
got = Journal(path).load()
check("the other boot's e=1 is still held", same(got, [ev(1, b=4)]), got)
check("no file: nothing held", Journal(DIR + "/absent").load() == [])

# --- a torn last record at every length: skipped, counted, the earlier ones intact
path, j, live = journal_of([ev(1), ev(2), ev(3)], [])
whole = open(path, "rb").read()
path2, j2, live2 = journal_of([ev(1), ev(2)], [])
two = size(path2)
cut_ok = True
for cut in range(two + 1, len(whole)):
    with open(path, "wb") as f:
        f.write(whole[:cut])
    jt = Journal(path)
    got = jt.load()
    if not (same(got, [ev(1), ev(2)]) and jt.torn == 1):
        cut_ok = False
        print("FAIL torn at", cut, got, jt.torn)
check("a record cut anywhere is skipped and counted", cut_ok)
for i in range(two, len(whole)):  # any byte of the last record flipped
    bad = bytearray(whole)
    bad[i] ^= 0x10
    with open(path, "wb") as f:
        f.write(bad)
    jt = Journal(path)
    got = jt.load()
    if not (same(got, [ev(1), ev(2)]) and jt.torn == 1):
        cut_ok = False
        print("FAIL flipped byte", i, got, jt.torn)
check("a flipped byte fails the CRC: skipped and counted", cut_ok)
for tail in (b"\xa5", b"\xa5E", b"\xa5E\x00", b"\x00\x00\x00\x00"):  # a head cut short; no magic
    with open(path, "wb") as f:
        f.write(whole + tail)
    jt = Journal(path)
    check("tail %r skipped" % tail, same(jt.load(), [ev(1), ev(2), ev(3)]) and jt.torn == 1)
with open(path, "wb") as f:
    f.write(whole + b"\xff\xff\xff")  # erased flash after the last record
jt = Journal(path)
check("erased bytes after the records", same(jt.load(), [ev(1), ev(2), ev(3)]) and jt.torn == 1)
# the next write after a torn tail compacts, so nothing is appended behind the garbage
jt = Journal(path)
live = jt.load()
live.append(ev(4))
check("write after a torn tail", jt.add(ev(4), live) == 0 and jt.count == 1)
jt2 = Journal(path)
check("the garbage is gone and the new event kept", same(jt2.load(), [ev(1), ev(2), ev(3), ev(4)]) and jt2.torn == 0)
# a torn ack: the event it acked comes back (resent; the controller dedupes it)
path, j, live = journal_of([ev(1), ev(2)], [1])
data = open(path, "rb").read()
with open(path, "wb") as f:
    f.write(data[:-3])
jt = Journal(path)
check("a torn ack brings its event back", same(jt.load(), [ev(1), ev(2)]) and jt.torn == 1)

# --- appends: one record per event and per ack; an ack that empties the queue starts afresh
path, j, live = journal_of([ev(1)], [])
check("the first write of a boot compacts (one write)", j.count == 1)
one = j.length
live.append(ev(2))
j.add(ev(2), live)
check("the second event is an append", j.count == 2 and size(path) == j.length)
live.pop(0)
j.ack(1, 1, live)
check("an ack with events still queued is a 16-byte append", j.count == 3 and j.length == size(path) == 2 * one + 16)

# reset edge: nothing queued after the ack and the file at `reset` bytes or more -> rewritten
# empty; under it -> the ack appended; events still queued -> appended whatever the size
for reset, expect_empty in ((one + 1, False), (one, True), (one - 1, True)):
    path, limit = fresh()
    j = Journal(path, limit, reset)
    check("add", j.add(ev(1), [ev(1)]) == 0 and j.length == one)
    j.ack(1, 1, [])
    check("reset at %d (file %d)" % (reset, one), (size(path) == 0) == expect_empty, (size(path), one))
    check("reset keeps nothing held", Journal(path).load() == [])
path, limit = fresh()
j = Journal(path, limit, 1)
j.add(ev(1), [ev(1)])
j.add(ev(2), [ev(1), ev(2)])
j.ack(1, 1, [ev(2)])
check("no reset while events are queued", size(path) == 2 * one + 16 and same(Journal(path).load(), [ev(2)]))
check("the default reset is 64 bytes", Journal(DIR + "/x").reset == 64)

# --- compaction keeps the unacked ones, and the file never passes its bound
path, limit = fresh(600)
j = Journal(path, limit)
live = []
held_ok = bound_ok = True
for n in range(1, 200):
    e = ev(n, "button", "call" if n % 3 else "cord")
    live.append(e)
    j.add(e, live)
    if n % 4:  # three of four are acked; every fourth stays queued until the queue holds five
        live.remove(e)
        j.ack(1, n, live)
    while len(live) > 5:
        old = live.pop(0)
        j.ack(1, old[EV], live)
    if size(path) > limit or j.length != size(path):
        bound_ok = False
    if not same(Journal(path).load(), live):
        held_ok = False
check("the file stays within its bound", bound_ok)
check("after every write the file holds exactly the queued events", held_ok)
check("compactions happened", j.count > 0)

# --- the bound at, under and over its edge: an event that does not fit is left out, loudly (5)
path, j, live = journal_of([ev(1)], [])
rec = j.length
for limit, code in ((3 * rec, 0), (3 * rec - 1, 5)):
    path, lim = fresh(limit)
    j = Journal(path, lim)
    live = []
    codes = []
    for n in (1, 2, 3):
        live.append(ev(n))
        codes.append(j.add(ev(n), live))
    check("limit %d: third event code" % limit, codes == [0, 0, code], codes)
    got = Journal(path).load()
    check("limit %d: what fits is kept" % limit, same(got, live if code == 0 else live[:2]), got)
    check("limit %d: within the bound" % limit, size(path) <= limit)
    if code:
        live.pop(0)  # an ack frees a place: the event left out goes in with the next write
        check("after room is made, the next write is 0", j.ack(1, 1, live) == 0)
        check("and the event left out is kept now", same(Journal(path).load(), live))
path, lim = fresh(rec - 1)
j = Journal(path, lim)
check("an event bigger than the whole journal: 5", j.add(ev(1), [ev(1)]) == 5)

# --- the flash fails: 1, then everything is written once it works again
path = DIR + "/missing/j"
j = Journal(path)
live = [ev(1)]
check("a write the flash refuses returns 1", j.add(ev(1), live) == 1)
live.append(ev(2))
check("and again", j.add(ev(2), live) == 1)
os.mkdir(DIR + "/missing")
live.append(ev(3))
check("the flash works again: 0", j.add(ev(3), live) == 0)
check("every queued event is on flash", same(Journal(path).load(), live))

# --- an append the flash fails halfway: 1, and the next write compacts over the half record
class HalfWrite:
    def __init__(self, f):
        self.f = f

    def write(self, buf):
        self.f.write(buf[:5])
        self.f.flush()
        raise OSError(28)  # ENOSPC

    def flush(self):
        self.f.flush()

    def close(self):
        self.f.close()


path, j, live = journal_of([ev(1)], [])
j._f = HalfWrite(open(path, "a"))  # the journal's append handle, failing
live.append(ev(2))
check("a failed append returns 1", j.add(ev(2), live) == 1)
live.append(ev(3))
check("the next write works", j.add(ev(3), live) == 0)
jt = Journal(path)
check("and left no half record behind", same(jt.load(), live) and jt.torn == 0, jt.torn)

# --- a compaction cut short: the .tmp is ignored, the file is whole
path, j, live = journal_of([ev(1), ev(2)], [])
with open(path + ".tmp", "wb") as f:
    f.write(b"\xa5E\x00")
check("an unfinished compaction leaves the old file", same(Journal(path).load(), [ev(1), ev(2)]))
live.append(ev(3))
j2 = Journal(path)
l2 = j2.load()
l2.append(ev(3))
check("the next compaction replaces the .tmp", j2.add(ev(3), l2) == 0 and same(Journal(path).load(), l2))

done()
