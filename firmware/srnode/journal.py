# The flash journal of unacknowledged events (docs/firmware.md, "Journal"): an event is written
# here before it is sent and its ack after, so a node that loses power resends after boot every
# event the controller has not acknowledged, with its original (boot, e) (docs/protocol.md §9).
#
# One file, append-only. A record: magic 0xA5, type ("E" event, "A" ack), payload length (u16
# BE), payload, CRC-32 (BE) of all before it. An event's payload is canonical JSON
# [b, e, kind, src, val, at_ms, x]; an ack's is b, e as u32 BE (the event left the queue: acked,
# or dropped by protocol.md §5). A torn record (power lost mid-write) fails its length or CRC:
# the replay stops there and counts it in `torn`. store() compacts: the live events (the queue's)
# go to <file>.tmp, renamed over the file (atomic on littlefs and POSIX), so power lost during it
# leaves the old file or the new one. The file stays under `limit` bytes; an event that does not
# fit is still queued and sent, and the write says so (5), as it does when the flash fails (1).
#
# Every identifier here is an interned name in the sim's heap, where the full node config is
# within a few names of a 7 KB table growth (docs/firmware.md, Heap): this module reuses names.
import os
from binascii import crc32
from json import loads

from srnode import proto
from srnode.equeue import AT_MS, BOOT, EV, KIND, SRC, VAL, X, entry


def payload(e):
    return proto.canonical([e[BOOT], e[EV], e[KIND], e[SRC], e[VAL], e[AT_MS], e[X] or {}])


def _enc(kind, data):
    n = len(data)
    buf = bytearray(n + 8)
    buf[0] = 0xA5
    buf[1] = kind
    buf[2] = n >> 8
    buf[3] = n & 0xFF
    buf[4:n + 4] = data
    buf[n + 4:] = crc32(memoryview(buf)[:n + 4]).to_bytes(4, "big")
    return buf


class Journal:
    """`path`: the journal file (hal.flash_path("journal")); `limit`: its bound in bytes; `reset`:
    when an ack empties the queue and the file holds this many bytes, it starts afresh (empty).
    add() / ack() / store() return 0, or the fault code: 1 the flash failed, 5 an event did not
    fit. `length`: bytes in the file; `count`: records and compactions written; `torn`: records
    load() skipped."""

    # limit 4096: a sector of flash. A button event takes ~60 bytes, a fall event ~250, an ack 16;
    # the queue holds at most 16 events, so a compacted journal fits in all but contrived cases.
    # reset 64: an ack that leaves nothing queued starts an empty file once this much is written.
    # littlefs keeps a file this small inline in its metadata, where an append is a short commit,
    # not a block copy: 0.07 block erases per delivered event against 1.6 at 512 and 0.14 when
    # every such ack starts afresh (bench/journal_wear.py, docs/firmware.md).
    def __init__(self, path, limit=4096, reset=64):
        self.path = path
        self.limit = limit
        self.reset = reset
        self._f = None
        self._ready = False  # the tail is known good; until then the next write compacts
        self.length = self.count = self.torn = 0

    def load(self):
        """The events in the file that no ack record follows, oldest first (queue entries)."""
        items = []
        try:
            f = open(self.path, "rb")
        except OSError:
            return items
        with f:
            while True:
                head = f.read(4)
                if not head:
                    break
                n = head[2] << 8 | head[3] if len(head) == 4 and head[0] == 0xA5 else -1
                body = f.read(n + 4) if n >= 0 else b""
                if n < 0 or len(body) != n + 4 or \
                        crc32(body[:n], crc32(head)) != int.from_bytes(body[n:], "big"):
                    self.torn += 1
                    break
                try:
                    if head[1] == 0x45:  # "E"
                        b, e, kind, src, val, at_ms, x = loads(body[:n])
                        items.append(entry(e, kind, src, val, at_ms, x or None, b))
                    elif head[1] == 0x41 and n == 8:  # "A"
                        b = int.from_bytes(body[:4], "big")
                        e = int.from_bytes(body[4:8], "big")
                        for i in range(len(items)):
                            if items[i][EV] == e and items[i][BOOT] == b:
                                items.pop(i)
                                break
                    else:
                        raise ValueError
                except ValueError:  # a good CRC on a record this code cannot read: not ours
                    self.torn += 1
                    break
        return items

    def add(self, e, items):
        """Journal the newly queued event `e` before it is sent; `items`: the queue, `e` in it."""
        buf = _enc(0x45, payload(e))
        if not self._ready or self.length + len(buf) > self.limit:
            return self.store(items)
        return self._write(buf)

    def ack(self, b, e, items):
        """Event (b, e) left the queue; `items`: what is still queued."""
        # nothing queued and `reset` bytes written: start afresh, so the file stays small
        if not self._ready or self.length + 16 > self.limit or (not items and self.length >= self.reset):
            return self.store(items)
        return self._write(_enc(0x41, b.to_bytes(4, "big") + e.to_bytes(4, "big")))

    def _write(self, buf):
        try:
            if self._f is None:
                self._f = open(self.path, "a")  # takes bytes on both file systems; "ab" is one name more
            self._f.write(buf)
            self._f.flush()
        except OSError:
            self._ready = False  # a part of the record may be there: compact on the next write
            return 1
        self.length += len(buf)
        self.count += 1
        return 0

    def store(self, items):
        """Compaction: the queued events, oldest first, and nothing else become the journal.
        Events past `limit` are left out (5): still queued and sent, and tried again next write."""
        if self._f is not None:
            self._f.close()
            self._f = None
        new = self.path + ".tmp"
        n = code = 0
        try:
            with open(new, "wb") as f:
                for e in items:
                    buf = _enc(0x45, payload(e))
                    if n + len(buf) > self.limit:
                        code = 5
                        continue
                    f.write(buf)
                    n += len(buf)
            os.rename(new, self.path)
        except OSError:
            self._ready = False
            return 1
        self._ready = not code
        self.length = n
        self.count += 1
        return code
