"""Readings stored durably per second of controller CPU: the readings path alone, as shipped.

    .venv/bin/python bench/readings.py [--nodes 50] [--values 600000] [--smoke]

``smartroom run`` in its own process (TLS and tokens on the API; the node link on plain TCP, as in
the other benchmarks), every node's readings budget past what it can send. ``--nodes`` connections
send ``--values`` values between them, in readings frames of three measures (temperature, humidity,
CO2: an environment node's usual frame), as fast as the controller takes them. Every frame is built
and tagged before the flood starts, so this process only writes bytes the kernel copies: the
controller is not kept waiting by its load generator (bench/latency.py's flood builds its frames as
it goes, and on a small machine measures the generator as much).

Measured from the first frame written to the last value stored (``readings_stored`` in
``/api/v1/gateway``): a fixed amount of work, so a backlog the controller accepted but has not yet
stored cannot flatter the figure. Printed: values stored durably per second, the controller's CPU
in that time (all its threads: the store's SQLite writer too), their ratio (values per CPU second:
the figure a one-core budget is held against), and the controller's peak memory.
Target (issue 13): >= 60,000 values per second on one core.
``--smoke`` runs it with a few nodes and values; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.broker import cpu_s  # noqa: E402
from bench.roomproc import BenchNode, RoomProcess  # noqa: E402

MEASURES_PER_FRAME = 3
CHUNK_FRAMES = 64           # frames written at once by a node before it waits for the socket to drain
POLL_S = 0.05               # how often the stored count is asked for
BUDGET = {"readings_per_s": 10_000, "readings_burst": 100_000}  # the room file's limits: no node reaches them


class FloodNode(BenchNode):
    def frames(self, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            self.seq += 1
            body = (b'{"at_ms":%d,"b":%d,"m":{"co2_ppm":%d,"rh_mpct":%d,"temp_mdegc":%d},"n":"%s","s":%d,'
                    b'"t":"reading","v":2}' % (self.seq % 2**31, self.boot, 600 + self.seq % 50,
                                               45000 + self.seq % 700, 22000 + self.seq % 300,
                                               self.node.encode(), self.seq))
            out.append(self.frame(body))
        return out

    async def discard_incoming(self) -> None:
        assert self.reader is not None
        while await self.reader.read(65536):
            pass


async def flood(node: FloodNode, chunks: list[bytes], lost: list[str]) -> None:
    assert node.writer is not None
    try:
        for chunk in chunks:
            node.writer.write(chunk)
            await node.writer.drain()
    except ConnectionError:
        lost.append(node.node)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--values", type=int, default=600_000, help="values sent in all (default 600,000)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up after this long (seconds)")
    ap.add_argument("--smoke", action="store_true", help="a few nodes and values")
    ap.add_argument("--db-dir", type=Path, default=None,
                    help="where the room database goes (default: a temporary folder; /dev/shm leaves the disk out)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.nodes, args.values = 3, 6_000
    names = [f"env-{i:03d}" for i in range(args.nodes)]
    keys = {n: os.urandom(32) for n in names}
    per_node = -(-args.values // (MEASURES_PER_FRAME * args.nodes))
    total = per_node * args.nodes * MEASURES_PER_FRAME
    work = Path(tempfile.mkdtemp(prefix="smartroom-readings-", dir=args.db_dir))
    print(f"bench: smartroom run, {args.nodes} nodes flooding {total:,} readings values "
          f"({MEASURES_PER_FRAME} a frame, built before the flood)", flush=True)
    lost: list[str] = []
    try:
        async with RoomProcess(work, {n: {} for n in names}, keys, gateway=BUDGET) as room:
            nodes = [FloodNode(n, keys[n]) for n in names]
            for i in range(0, len(nodes), 100):
                await asyncio.gather(*(node.connect(room.node_port, i + j) for j, node in enumerate(nodes[i:i + 100])))
            plans = []
            for node in nodes:
                frames = node.frames(per_node)
                plans.append([b"".join(frames[k:k + CHUNK_FRAMES]) for k in range(0, len(frames), CHUNK_FRAMES)])
            drains = [asyncio.create_task(node.discard_incoming()) for node in nodes]
            before, cpu0, t0 = (await room.get("/api/v1/gateway"))["readings_stored"], cpu_s(room.proc.pid), \
                time.monotonic()
            floods = [asyncio.create_task(flood(node, plan, lost)) for node, plan in zip(nodes, plans)]
            stored = 0
            async with asyncio.timeout(args.timeout):
                while stored < total and not lost:
                    await asyncio.sleep(POLL_S)
                    stored = (await room.get("/api/v1/gateway"))["readings_stored"] - before
            cpu, elapsed = cpu_s(room.proc.pid) - cpu0, time.monotonic() - t0
            rss = room.rss_kb()
            for task in floods + drains:
                task.cancel()
            await asyncio.gather(*floods, *drains, return_exceptions=True)
            for node in nodes:
                await node.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if lost:
        print(f"the controller closed {len(lost)} flooding connections (e.g. {lost[0]}); {stored:,} values stored")
    print(f"\nreadings stored durably: {stored / elapsed:,.0f} values/s ({stored:,} in {elapsed:.2f} s), "
          f"controller CPU "
          f"{cpu / elapsed:.0%} of a core (all threads), RSS {rss[0] / 1024:.1f} MB (peak {rss[1] / 1024:.1f} MB)")
    print(f"values per CPU second: {stored / max(cpu, 1e-9):,.0f} (target >= 60,000 on one core; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
