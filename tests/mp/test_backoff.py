# Reconnect backoff: capped exponential, each wait uniform in [d/2, d], reset on welcome.
import random

from mpcheck import check, done
from srnode.link import BACKOFF_MAX_MS, BACKOFF_MIN_MS, Backoff

check("bounds from the protocol", BACKOFF_MIN_MS == 250 and BACKOFF_MAX_MS == 30000)


def nominal(n):
    d = BACKOFF_MIN_MS
    out = []
    for _ in range(n):
        out.append(d)
        d = min(d * 2, BACKOFF_MAX_MS)
    return out


# the extremes of the jitter are reachable and never exceeded
low = Backoff(lambda n: 0)
high = Backoff(lambda n: n - 1)
for d in nominal(12):
    lo = low.next_ms()
    hi = high.next_ms()
    check("lowest wait is d/2 for d=%d" % d, lo == d // 2, lo)
    check("highest wait is d for d=%d" % d, hi == d, hi)

# the sequence doubles from 250 ms up to the 30 s cap, then stays there
check("doubling then capped", nominal(10) == [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000])

random.seed(3)
b = Backoff(lambda n: random.getrandbits(30) % n)
waits = [b.next_ms() for _ in range(20)]
check("random waits in [d/2, d]", all(d // 2 <= w <= d for w, d in zip(waits, nominal(20))), waits)
check("jitter: not in lockstep", len(set(waits[8:])) > 5, waits)
b.reset()
w = b.next_ms()
check("reset starts over at 250 ms", 125 <= w <= 250, w)

done()
