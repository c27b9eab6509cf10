"""Start-up time with a long event log: ``smartroom run`` from process start to its first API answer.

    .venv/bin/python bench/startup.py [--events 1000000] [--smoke]

A room database is filled with ``--events`` log records written by the room's own rules (node
events, calls raised, repeated, escalated, acknowledged and cleared, presence, readings crossing
limits), as months of a busy room would leave them. Then ``smartroom run`` (TLS, tokens) is started
on it, each start timed from process start to the first answer of ``GET /api/v1/room``:

1. without checkpoints (a database written before them): the whole log is replayed, once, and a
   checkpoint is stored;
2. again (``--repeat`` times, the median printed): the newest checkpoint and the records after it;
3. after another ``CHECKPOINT_EVERY - 1`` records were added: the longest tail a start can meet.

Target (issue 13): start-up to the first API answer <= 1 s with 1 M stored events. The part of it
that is Python starting and importing the controller is printed too (``smartroom --help``).

The controller runs with its bytecode cached, as installed (pip writes it at install time; a source
tree writes ``__pycache__`` on its first run): a shell with ``PYTHONDONTWRITEBYTECODE`` set (CI,
this machine) would otherwise make every start compile the controller's modules again (~0.15 s).
The cache goes to a temporary folder (``PYTHONPYCACHEPREFIX``), written by the first start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.roomproc import SMARTROOM, RoomProcess, subprocess_env  # noqa: E402
from controller.model import NodeEvent  # noqa: E402
from controller.room import Room, RoomError  # noqa: E402
from controller.room.config import load_room  # noqa: E402
from controller.service import CHECKPOINT_EVERY  # noqa: E402
from controller.store import LogRecord, Store  # noqa: E402

NODES = {"bedside-a": {"call": "patient_call", "cancel": "cancel", "pir": "room_presence"},
         "bath": {"cord": "bath_emergency", "pir": "bath_presence"},
         "door": {"presence": "staff_presence", "cancel": "cancel"},
         "env": {}}
T0_MS = 1_790_000_000_000


def fill(db: Path, room_file: Path, events: int, seed: int = 1) -> int:
    """Append ``events`` records made by the room's rules (decided and applied as the controller
    does, on the state the stored log leaves) to the database's log; returns the next free id."""
    rng = random.Random(seed)
    room = Room(load_room(room_file))
    con = sqlite3.connect(db)
    for (i, ts, kind, data) in con.execute("SELECT id, ts_ms, kind, data FROM log ORDER BY id"):
        room.apply(LogRecord(i, ts, kind, json.loads(data)))
    start_id = room.cursor + 1
    now = max(T0_MS, room.last_ms)
    next_id, seq, rows = start_id, 0, []
    inputs = [(n, src) for n, table in NODES.items() for src in table] + [("env", "aux")]
    while next_id < start_id + events:
        now += rng.randint(200, 20_000)
        seq += 1
        roll = rng.random()
        try:
            if roll < 0.80:
                node, src = rng.choice(inputs)
                kind = "presence" if src == "pir" else "button"
                ev = NodeEvent(node, 1, seq, seq, kind, src, rng.randint(0, 1), now % 2**31)
                entries = room.decide_node_event(ev, now)
            elif roll < 0.88 and room.calls:
                entries = room.decide_ack(rng.choice(list(room.calls)), "Nurse Kim", now)
            elif roll < 0.93:
                entries = room.decide_reading("env", "temp_c", rng.choice([22.0, 22.5, 24.8, 21.2]), now)
            else:
                entries = []
                while more := room.decide_tick(now, 31_000):
                    entries += more
                    records = [LogRecord(next_id + i, now, e.kind, e.data) for i, e in enumerate(more)]
                    room.apply_all(records)
                    rows += [(r.id, now, r.kind, json.dumps(r.data, separators=(",", ":"))) for r in records]
                    next_id += len(records)
                continue
        except RoomError:
            continue
        records = [LogRecord(next_id + i, now, e.kind, e.data) for i, e in enumerate(entries)]
        room.apply_all(records)
        rows += [(r.id, now, r.kind, json.dumps(r.data, separators=(",", ":"))) for r in records]
        next_id += len(records)
        if len(rows) >= 50_000:
            con.executemany("INSERT INTO log (id, ts_ms, kind, data) VALUES (?, ?, ?, ?)", rows)
            con.commit()
            rows = []
    con.executemany("INSERT INTO log (id, ts_ms, kind, data) VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return next_id


async def python_start_s() -> float:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*SMARTROOM, "--help", stdout=asyncio.subprocess.DEVNULL,
                                                env=subprocess_env())
    await proc.wait()
    return time.monotonic() - t0


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="log records to start with (default 1 M)")
    ap.add_argument("--repeat", type=int, default=5, help="starts from the newest checkpoint, and `--help` runs, "
                                                          "of which the median is printed (default 5)")
    ap.add_argument("--smoke", action="store_true", help="a small log, to check that this script works")
    args = ap.parse_args(argv)
    events = 3000 if args.smoke else args.events
    if args.smoke:
        args.repeat = 2
    tail = 300 if args.smoke else CHECKPOINT_EVERY - 1
    work = Path(tempfile.mkdtemp(prefix="smartroom-startup-"))
    keys = {n: os.urandom(32) for n in NODES}
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the controller's processes: bytecode cached, as installed
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        room = RoomProcess(work, NODES, keys)
        store = Store(room.db)
        await store.open()
        await store.close()
        t0 = time.monotonic()
        next_id = fill(room.db, room.config, events)
        print(f"{next_id - 1:,} log records written by the room's rules in {time.monotonic() - t0:.0f} s "
              f"({room.db.stat().st_size / 1e6:.0f} MB)", flush=True)
        rows = []
        starts = [("no checkpoint yet (full replay, then one is stored)", 1),
                  ("from the newest checkpoint", args.repeat), (f"checkpoint + {tail:,} records after it", 1)]
        for label, times in starts:
            if label.startswith("checkpoint +"):
                next_id = fill(room.db, room.config, tail, seed=2)
            seconds = []
            for _ in range(times):
                async with room:
                    rss = room.rss_kb()[0]
                seconds.append(room.started_s)
                print(f"  start: {label}: first API answer after {room.started_s:.2f} s, "
                      f"RSS {rss / 1024:.0f} MB; {room.rebuilt}", flush=True)
            rows.append((label, statistics.median(seconds), len(seconds), room.rebuilt))
        base = statistics.median([await python_start_s() for _ in range(args.repeat)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nstart-up to the first API answer with {next_id - 1:,} stored events (target <= 1 s):")
    for label, seconds, times, rebuilt in rows:
        print(f"  {seconds:6.2f} s  {label} ({rebuilt.split(' in ')[-1]} of it rebuilding the state"
              f"{f'; the median of {times} starts' if times > 1 else ''})")
    print(f"  ({base:.2f} s of each is Python starting and importing: `smartroom --help`, the median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
