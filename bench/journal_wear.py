"""Flash wear of the node's event journal (firmware/srnode/journal.py), measured on littlefs.

    .venv/bin/python bench/journal_wear.py [--events 2000] [--limits 4096/64,4096/512] [--json out.json]
    .venv/bin/python bench/journal_wear.py --smoke        # 200 events, what the test suite runs

The real journal runs in MicroPython on littlefs v2 (`vfs.VfsLfs2`, the file system MicroPython
puts on an ESP32-S3's and a Pico W's flash) mounted on a RAM block device of 4 KB erase blocks
(256 blocks: 1 MB, about an ESP32-S3 firmware's file system; a Pico W has 848 KB) that counts
every block erase and every byte programmed. Workloads, each a node's life in events:
  - `delivered`: each press acked before the next (a working link: the common case);
  - `outage`: presses in bursts of 8 while the link is down, then all acked;
  - `full queue`: 16 held (the queue's capacity), each new press acked in turn, oldest first.
`--limits` pairs the journal's bound with its reset size (bytes; the firmware's is 4096/64, the
others are for comparison). Printed per event: journal writes (appended records and compactions),
bytes the journal wrote, block erases and bytes programmed by littlefs (its metadata included);
the most-erased block after the run; and the events the flash lasts at 100,000 erase cycles a
block (NOR flash datasheets' endurance) if littlefs levels the erases over all blocks (it moves a
metadata pair after `block_cycles` erases, so a short run's most-erased block says little). The
same journal on a directory (the sim's flash) makes the same writes: the counts of writes and
bytes are the file system's input either way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MICROPYTHON = Path(sys.executable).with_name("micropython")
LIMITS = "4096/64,4096/512,4096/4096"  # the firmware's bound/reset, then resetting later, never
BLOCKS = 256
ENDURANCE_CYCLES = 100_000  # erase cycles per block a NOR flash datasheet guarantees (e.g. W25Q, GD25Q)

MP_SCRIPT = r'''
import sys, vfs, json
from srnode.equeue import entry
from srnode.journal import Journal

BLOCK = 4096
BLOCKS = 0  # set by the bench

class CountingFlash:
    """A RAM block device with littlefs's extended interface; counts erases and programmed bytes."""
    def __init__(self, blocks):
        self.data = bytearray(blocks * BLOCK)
        self.blocks = blocks
        self.erases = [0] * blocks
        self.programmed = 0
    def readblocks(self, n, buf, off=0):
        a = n * BLOCK + off
        buf[:] = self.data[a:a + len(buf)]
    def writeblocks(self, n, buf, off=None):
        if off is None:  # the simple interface: erase, then program the whole block
            self.erases[n] += 1
            off = 0
        a = n * BLOCK + off
        self.data[a:a + len(buf)] = buf
        self.programmed += len(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        if op == 6:  # erase
            self.erases[arg] += 1
            a = arg * BLOCK
            self.data[a:a + BLOCK] = b"\xff" * BLOCK
            return 0
        return 0

def run(workload, events, limit, reset):
    import gc
    gc.collect()
    flash = CountingFlash(BLOCKS)
    vfs.VfsLfs2.mkfs(flash)
    vfs.mount(vfs.VfsLfs2(flash), "/flash")
    j = Journal("/flash/journal", limit, reset)
    j.load()
    live = []
    base_erases, base_prog = sum(flash.erases), flash.programmed
    written = [0]
    real_write = j._write
    def counting_write(buf):
        written[0] += len(buf)
        return real_write(buf)
    j._write = counting_write
    real_store = j.store
    def counting_store(items):
        code = real_store(items)
        written[0] += j.length
        return code
    j.store = counting_store
    codes = 0
    for n in range(1, events + 1):
        e = entry(n, "button", "call" if n % 2 else "cancel", 1, n * 1000, None, 3)
        live.append(e)
        codes += j.add(e, live)
        if workload == "delivered":
            acked = [live[0]]
        elif workload == "outage":
            acked = list(live) if n % 8 == 0 else []
        else:  # full queue: 16 held, the oldest acked as each new one comes
            acked = [live[0]] if len(live) > 16 else []
        for a in acked:
            live.remove(a)
            codes += j.ack(a[7], a[0], live)
    held = Journal("/flash/journal", limit).load()
    vfs.umount("/flash")
    print(json.dumps({"workload": workload, "limit": limit, "reset": reset, "events": events, "codes": codes,
                      "held_ok": [x[0] for x in held] == [x[0] for x in live],
                      "writes": j.count, "written_bytes": written[0],
                      "erases": sum(flash.erases) - base_erases, "programmed_bytes": flash.programmed - base_prog,
                      "max_block_erases": max(flash.erases)}))

events = int(sys.argv[1])
for pair in sys.argv[2].split(","):
    limit, reset = [int(x) for x in pair.split("/")]
    for workload in ("delivered", "outage", "full queue"):
        run(workload, events, limit, reset)
'''


def measure(events: int, limits: str = LIMITS) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "wear.py"
        script.write_text(MP_SCRIPT.replace("BLOCKS = 0", f"BLOCKS = {BLOCKS}"))
        env = {**os.environ, "MICROPYPATH": f"{ROOT / 'firmware'}:.frozen"}
        out = subprocess.run([str(MICROPYTHON), "-X", "heapsize=16M", str(script), str(events), limits], env=env,
                             capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"micropython failed:\n{out.stdout}{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="200 events (the test suite's run)")
    ap.add_argument("--limits", default=LIMITS, help="journal bounds to measure, bytes, comma-separated")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    events = 200 if args.smoke else args.events
    rows = measure(events, args.limits)
    print(f"journal wear on littlefs v2, 4 KB blocks x 256, {events} events per workload")
    print(f"{'workload':<11} {'bound/reset':>11} {'writes/ev':>9} {'bytes/ev':>8} {'erases/ev':>9} "
          f"{'prog B/ev':>9} {'max blk':>7} {'events to 100k cycles, levelled':>32}")
    for r in rows:
        n = r["events"]
        r["per_event"] = {"writes": r["writes"] / n, "written_bytes": r["written_bytes"] / n,
                          "erases": r["erases"] / n, "programmed_bytes": r["programmed_bytes"] / n}
        pe = r["per_event"]
        r["events_to_endurance"] = int(ENDURANCE_CYCLES * BLOCKS / pe["erases"]) if r["erases"] else None
        life = f"{r['events_to_endurance']:,}" if r["events_to_endurance"] else "-"
        print(f"{r['workload']:<11} {r['limit']:>6}/{r['reset']:<4} {pe['writes']:>9.2f} {pe['written_bytes']:>8.1f} "
              f"{pe['erases']:>9.3f} {pe['programmed_bytes']:>9.0f} {r['max_block_erases']:>7} {life:>32}"
              + ("" if r["held_ok"] and r["codes"] == 0 else "  MISMATCH"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not all(r["held_ok"] and r["codes"] == 0 for r in rows):
        raise SystemExit("the journal lost or refused events")


if __name__ == "__main__":
    main()
