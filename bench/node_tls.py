"""What TLS costs a node: link setup time and heap, the real firmware under MicroPython (mbedtls).

    .venv/bin/python bench/node_tls.py [--runs 10]     # docs/firmware.md quotes its output
    .venv/bin/python bench/node_tls.py --smoke --json  # 2 runs, a coarse heap search: what the suite runs

The room's gateway serves TLS with a self-signed EC P-256 certificate (as `smartroom run` makes) and
also takes plain TCP (`[gateway] plain_tcp`), so both kinds of node meet the same controller. Each run
starts a fresh firmware process (a board-sized heap, `--heap`, default 64wK = a 32-bit board's 64 KB)
and reads its own log: link setup is node time from `boot` to `link up` (connect, handshake, hello,
welcome), heap is the first heartbeat's `heap_free` after `gc.collect()` with the link up. Then the
smallest heap (in KiB-words) in which a TLS node still comes up, by bisection. Printed: setup p50/p90
for plain and TLS, the heap either way and the difference (what the TLS session keeps), and the
smallest heap that works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.room.config import parse_room  # noqa: E402
from controller.runner import RoomServer  # noqa: E402
from controller.security.tls import load_or_create, node_pin  # noqa: E402
from controller.sim.nodes import SimNode  # noqa: E402

NODE = "bedside-a"
KEY = bytes(range(32))
UP_TIMEOUT_S = 20.0  # a node that is not up by then (out of heap, refused) counts as failed
ROOM = {"room": {"id": "tlsbench"}, "beds": [{"id": "A"}], "gateway": {"plain_tcp": True, "heartbeat_ms": 1000},
        "nodes": {NODE: {"bed": "A", "inputs": {"call": "patient_call"}}}}


def node_config(work: Path, port: int, pin: dict[str, str] | None, run: int) -> dict:
    return {"node_id": NODE, "key_hex": KEY.hex(), "ctl_host": "127.0.0.1", "ctl_port": port, "hw": "sim",
            "hb_ms": 1000, **(pin or {"link_plain": True}),
            "inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"},
            "sim": {"speed": 1, "state_dir": str(work / "state"), "seed": run}}  # one flash: boot grows


async def one_run(work: Path, port: int, pin: dict[str, str] | None, run: int, heap: str) -> dict | None:
    """{setup_ms, heap_free} of one fresh node, or None when it never came up."""
    node = SimNode(node_config(work, port, pin, run), work / "nodes" / str(run), heap=heap)
    async with node:
        try:
            boot = await first_of(node, ("boot", "error"), 0)
            if boot.tag == "error":  # out of heap already while building
                return None
            up = await first_of(node, ("link", "error"), node.lines.index(boot))
            if up.tag != "link" or "up" not in up.raw.split():
                return None
            hb = await node.wait_for("hb", start=node.lines.index(up), timeout_s=UP_TIMEOUT_S)
        except AssertionError:  # no such line in time: refused, or hung
            return None
    return {"setup_ms": up.node_ms - boot.node_ms, "heap_free": int(hb.fields["heap_free"])}


async def first_of(node: SimNode, tags: tuple[str, ...], start: int):
    """The first line from ``start`` whose tag is one of ``tags`` (a node out of heap logs ``error``)."""
    while True:
        line = await node.wait_for(None, start=start, timeout_s=UP_TIMEOUT_S)
        if line.tag in tags:
            return line
        start = node.lines.index(line) + 1


async def smallest_heap(work: Path, port: int, pin: dict[str, str], lo: int, hi: int, step: int) -> int | None:
    """The smallest heap (KiB-words) in [lo, hi] in which a TLS node comes up, to within ``step``."""
    run = 1000
    if await one_run(work, port, pin, run, f"{hi}wK") is None:
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2
        run += 1
        if await one_run(work, port, pin, run, f"{mid}wK") is None:
            lo = mid
        else:
            hi = mid
    return hi


def pct(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="smartroom-tlsbench-"))
    material = load_or_create(work / "tls-cert.pem", work / "tls-key.pem", ["tlsbench"], node_link=True)
    pin = node_pin(material)
    config = parse_room(ROOM, "tls bench")
    async with RoomServer(config, {NODE: KEY}, work / "room.db", api_port=0, node_port=0,
                          node_tls=material) as server:
        port = server.endpoints.node_port
        results: dict[str, list[dict]] = {"plain": [], "tls": []}
        for run in range(args.runs):  # alternate, so drifting load weighs on both alike
            for mode in ("plain", "tls"):
                got = await one_run(work, port, pin if mode == "tls" else None, run * 2 + (mode == "tls"), args.heap)
                if got is None:
                    raise SystemExit(f"a {mode} node did not come up in {args.heap} (run {run})")
                results[mode].append(got)
        lo, hi = (32, 48) if args.smoke else (8, 64)
        smallest = await smallest_heap(work, port, pin, lo, hi, 8 if args.smoke else 1)
        transport = dict(server.gateway.stats.transport)
    out = {"runs": args.runs, "heap": args.heap, "transport": transport, "smallest_tls_heap_wK": smallest}
    for mode, rows in results.items():
        setup = [r["setup_ms"] for r in rows]
        out[mode] = {"setup_p50_ms": pct(setup, 0.5), "setup_p90_ms": pct(setup, 0.9),
                     "heap_free": int(statistics.median(r["heap_free"] for r in rows))}
    out["tls_keeps_bytes"] = out["plain"]["heap_free"] - out["tls"]["heap_free"]
    return out


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--heap", default="64wK", help="MicroPython heap of each node (default 64wK: a 64 KB board)")
    ap.add_argument("--smoke", action="store_true", help="2 runs and a coarse heap search (the test suite)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.smoke:
        args.runs = 2
    out = asyncio.run(main(args))
    if args.json:
        print(json.dumps(out))
        return
    for mode in ("plain", "tls"):
        r = out[mode]
        print(f"{mode:5}: link setup p50 {r['setup_p50_ms']} ms, p90 {r['setup_p90_ms']} ms; "
              f"heap free with the link up {r['heap_free']} B (of {out['heap']})")
    print(f"TLS keeps {out['tls_keeps_bytes']} B of heap while connected; the smallest heap a TLS node comes up "
          f"in: {out['smallest_tls_heap_wK']}wK ({out['runs']} runs each; gateway served {out['transport']})")


if __name__ == "__main__":
    cli()
