# The event queue's drop policy: every rule of docs/protocol.md section 5, calls never dropped.
import random

from mpcheck import check, done
from srnode.equeue import EV, EVENT_QUEUE_LEN, KIND, SRC, EventQueue, entry

_seq = [0]


def ev(kind, src="x"):
    _seq[0] += 1
    return entry(_seq[0], kind, src, 1, 0)


def fill(q, events):
    for e in events:
        check("fill without drops", q.push(e) is None)


def kinds(q):
    return [(e[KIND], e[SRC]) for e in q.items]


check("capacity is 16", EVENT_QUEUE_LEN == 16)

# not full: nothing is dropped
q = EventQueue()
fill(q, [ev("button", "call") for _ in range(16)])
check("16 fit", len(q) == 16 and q.drops == 0)

# rule 1: the oldest presence event goes first, even before faults
q = EventQueue()
fill(q, [ev("fault", "sht3x"), ev("presence", "pir"), ev("presence", "pir")] +
     [ev("fall", "accel") for _ in range(13)])
oldest_presence = q.items[1]
new = ev("button", "cord")
check("rule 1 drops the oldest presence", q.push(new) is oldest_presence)
check("rule 1 queues the new event", q.items[-1] is new and len(q) == 16 and q.drops == 1)

# rule 1 counts the new event: a new presence event with none queued is the one dropped
q = EventQueue()
fill(q, [ev("fault", "sht3x")] + [ev("fall", "accel") for _ in range(15)])
new = ev("presence", "pir")
check("rule 1: new presence dropped itself", q.push(new) is new and new not in q.items and q.drops == 1)

# rule 2: then the oldest fault
q = EventQueue()
fill(q, [ev("button", "call"), ev("fault", "sht3x"), ev("fault", "mhz19b")] + [ev("fall", "accel") for _ in range(13)])
oldest_fault = q.items[1]
check("rule 2 drops the oldest fault", q.push(ev("button", "cord")) is oldest_fault)
q = EventQueue()
fill(q, [ev("fall", "accel") for _ in range(16)])
new = ev("fault", "lis3dh")
check("rule 2: new fault dropped itself", q.push(new) is new)

# rule 3: a button event from an input that already has one queued is dropped itself
q = EventQueue()
fill(q, [ev("button", "call")] + [ev("fall", "accel") for _ in range(15)])
new = ev("button", "call")
check("rule 3 drops the repeated press", q.push(new) is new and kinds(q)[0] == ("button", "call"))
check("rule 3 counted", q.drops == 1)

# beyond section 5: a full queue of repeats from one input, then another input's first press
q = EventQueue()
fill(q, [ev("button", "call") for _ in range(16)])
newest_repeat = q.items[-1]
cord = ev("button", "cord")
check("rule 4 drops the newest repeat", q.push(cord) is newest_repeat and q.items[-1] is cord)
fall = ev("fall", "accel")
check("a fall to a queue full of presses is queued", q.push(fall) is not fall and fall in q.items)

# acks free places; unknown acks change nothing
q = EventQueue()
fill(q, [ev("button", "call"), ev("presence", "pir")])
first = q.items[0]
check("ack returns the entry", q.ack(first[EV]) is first and len(q) == 1)
check("unknown ack", q.ack(99999) is None and len(q) == 1)
# an event kept from an earlier boot and one of this boot may share a number: the boot tells them apart
q2 = EventQueue()
older, newer = entry(1, "button", "call", 1, 0, None, 4), entry(1, "button", "call", 1, 0, None, 5)
fill(q2, [older, newer])
check("ack (boot 5, e 1) frees boot 5's", q2.ack(1, 5) is newer and q2.items == [older])
check("ack (boot 6, e 1) frees nothing", q2.ack(1, 6) is None and len(q2) == 1)
q.items[0][6] = 1234
check("oldest_sent_ms", q.oldest_sent_ms() == 1234)
q.unsent()
check("unsent: resend all", q.oldest_sent_ms() == -1)

# randomized: with up to 8 call inputs, a press from an input with nothing queued and a fall
# are never dropped, the queue never exceeds 16 and every drop is counted
random.seed(5)
inputs = ["in%d" % i for i in range(8)]
q = EventQueue()
dropped = 0
violations = 0
for step in range(20000):
    r = random.getrandbits(4)
    if r < 3 and q.items:
        q.ack(q.items[random.getrandbits(4) % len(q.items)][EV])
        continue
    if r < 8:
        new = ev("button", inputs[random.getrandbits(3)])
    elif r < 12:
        new = ev("presence", "pir")
    elif r < 14:
        new = ev("fault", "sht3x")
    else:
        new = ev("fall", "accel")
    had_one = any(e[KIND] == "button" and e[SRC] == new[SRC] for e in q.items)
    victim = q.push(new)
    if victim is not None:
        dropped += 1
        if victim is new and (new[KIND] == "fall" or (new[KIND] == "button" and not had_one)):
            violations += 1
        if victim[KIND] == "button" and not any(e[KIND] == "button" and e[SRC] == victim[SRC] for e in q.items):
            violations += 1  # a press was dropped and its input has none left queued
    if len(q) > EVENT_QUEUE_LEN:
        violations += 1
check("random: calls and falls never lost", violations == 0, violations)
check("random: every drop counted", q.drops == dropped and dropped > 100, (q.drops, dropped))

done()
