# The node's bounded queue of unacknowledged events (docs/protocol.md section 5).
from micropython import const

EVENT_QUEUE_LEN = const(16)  # section 5; more call inputs than 8 would break its guarantee

# An entry is a list: [e, kind, src, val, at_ms, x, sent_ms, b]. (b, e) name the event for good
# (section 2), whatever frame carries it: b is the boot it was made in, older than the node's
# current boot for an event recovered from the flash journal (section 9); sent_ms is the node
# time it was last sent on the current connection, or -1 when it is still to be sent.
EV = const(0)
KIND = const(1)
SRC = const(2)
VAL = const(3)
AT_MS = const(4)
X = const(5)
SENT_MS = const(6)
BOOT = const(7)


def entry(e, kind, src, val, at_ms, x=None, b=0):
    return [e, kind, src, val, at_ms, x, -1, b]


class EventQueue:
    """Events wait here, oldest first, until the controller acks them.

    push() applies the drop policy of section 5 when full, in its order:
      1. the oldest presence event (the new one counts, being the newest);
      2. the oldest fault event (likewise);
      3. the new event itself, if it is a button event from an input with one already queued.
    Section 5 assumes at most one queued button event per input, but while the queue is not
    full every press is queued, so a full queue can hold only button and fall events with no
    rule matching. Then, step 4: drop the newest queued event whose (kind, src) is queued more
    than once (a repeat; the older one still raises the call). With at most 8 button inputs and
    one fall source, 16 places always hold such a repeat, so a button event from an input with
    nothing queued and a fall event are never dropped. Every drop counts in `drops`.
    """

    def __init__(self, capacity=EVENT_QUEUE_LEN):
        self.capacity = capacity
        self.items = []
        self.drops = 0

    def __len__(self):
        return len(self.items)

    def push(self, new):
        """Queue `new`; returns the entry dropped to make room (maybe `new` itself) or None."""
        items = self.items
        victim = None
        if len(items) >= self.capacity:
            victim = self._victim(new)
            self.drops += 1
            if victim is new:
                return new
            items.remove(victim)
        items.append(new)
        return victim

    def _victim(self, new):
        items = self.items
        for kind in ("presence", "fault"):
            for e in items:
                if e[KIND] == kind:
                    return e
            if new[KIND] == kind:
                return new
        if new[KIND] == "button":
            for e in items:
                if e[KIND] == "button" and e[SRC] == new[SRC]:
                    return new
        for i in range(len(items) - 1, 0, -1):
            e = items[i]
            for j in range(i):
                if items[j][KIND] == e[KIND] and items[j][SRC] == e[SRC]:
                    return e
        return new  # unreachable: the runtime refuses configs with more inputs than section 5 allows

    def ack(self, ev, b=0):
        """Frees the entry of event (b, ev); returns it, or None if it was not queued."""
        for e in self.items:
            if e[EV] == ev and e[BOOT] == b:
                self.items.remove(e)
                return e
        return None

    def unsent(self):
        """After a reconnect: every entry is resent, oldest first, with its own event number
        (in a new frame, with a new frame seq)."""
        for e in self.items:
            e[SENT_MS] = -1

    def oldest_sent_ms(self):
        """Send time of the oldest entry still waiting for its ack, or -1."""
        for e in self.items:
            if e[SENT_MS] >= 0:
                return e[SENT_MS]
        return -1
