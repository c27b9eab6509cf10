"""One node flooding readings must not starve the others: their call latency, without and with a flood.

    .venv/bin/python bench/flood.py [--callers 5] [--seconds 10] [--every-ms 100]
    .venv/bin/python bench/flood.py --smoke          # 2 s phases, what the test suite runs

The controller runs as its own process (`smartroom run`), as on a Pi. `--callers` CPython nodes
each send a call (a button event) every `--every-ms`, jittered; a call's latency is from writing its
frame to reading its ack, which the controller sends only once the event is on disk. Phase 1 is the
baseline; in phase 2 one more authenticated node, in a process of its own, writes readings as fast
as its connection takes them. Printed: the callers' p50/p99 in each phase, the ratio of the p99s
(target: within 2x, docs/architecture.md) and the gateway's counters for the flooding node (its
readings accepted within its budget and dropped beyond it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.link.nodeclient import NodeClient  # noqa: E402

FLOOD_NODE = "flood"
SETTLE_S = 0.5  # after the flood starts, before its phase is measured: the flooder is connected and writing


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def wait_http(url: str, headers: dict[str, str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s:g} s")
            await asyncio.sleep(0.1)


async def caller(client: NodeClient, every_ms: float, stop: asyncio.Event, latencies: list[float]) -> None:
    """Sends a call every ``every_ms`` (jittered) and records send -> ack in ms."""
    while not stop.is_set():
        await asyncio.sleep(every_ms / 1000 * random.uniform(0.5, 1.5))
        event = client.event_msg("button", "call")
        t0 = time.perf_counter()
        await client.send_event(event)
        latencies.append((time.perf_counter() - t0) * 1000)


async def flood_child(port: int, key_hex: str, seconds: float) -> None:
    """The flooding node (its own process): readings, back to back, as fast as the socket takes them."""
    client = NodeClient(FLOOD_NODE, bytes.fromhex(key_hex))
    await client.connect("127.0.0.1", port)

    async def drain() -> None:  # acks and commands; never read, they would fill the socket
        while True:
            await client.recv()

    reader = asyncio.create_task(drain())
    sent, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            for _ in range(100):
                client.writer.write(client.reading_frame(sent, temp_mdegc=22000 + sent % 500, co2_ppm=600))
                sent += 1
            await client.writer.drain()
    except ConnectionError as exc:  # the controller went away: report what was sent
        print(f"flood: {exc!r}", file=sys.stderr)
    reader.cancel()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)
    await client.close()


async def phase(clients: list[NodeClient], every_ms: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(caller(c, every_ms, stop, latencies)) for c in clients]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return latencies


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--every-ms", type=float, default=100.0, help="each caller's mean time between calls")
    ap.add_argument("--smoke", action="store_true", help="short phases (the test suite runs this)")
    ap.add_argument("--flood-child", nargs=3, metavar=("PORT", "KEY_HEX", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_child:
        port, key_hex, seconds = args.flood_child
        await flood_child(int(port), key_hex, float(seconds))
        return
    if args.smoke:
        args.seconds, args.callers = 2.0, 3

    work = Path(tempfile.mkdtemp(prefix="smartroom-flood-"))
    callers = [f"caller-{i}" for i in range(args.callers)]
    keys = {n: os.urandom(32) for n in callers + [FLOOD_NODE]}
    (work / "keys.json").write_text(json.dumps({"nodes": {n: k.hex() for n, k in keys.items()}}))
    nodes_toml = "\n".join(f'[nodes.{n}]\ninputs = {{ call = "patient_call" }}' for n in callers)
    (work / "room.toml").write_text(f'[room]\nid = "flood"\n{nodes_toml}\n[nodes.{FLOOD_NODE}]\n')
    exe = Path(sys.executable).with_name("smartroom")
    token = subprocess.run([str(exe), "token", "create", "--db", str(work / "room.db"), "--role", "facilities",
                            "--name", "bench"], check=True, capture_output=True, text=True).stdout.split()[-1]
    api_port, node_port = free_port(), free_port()
    headers = {"Authorization": f"Bearer {token}"}
    print(f"flood bench: controller process, {args.callers} callers every ~{args.every_ms:g} ms, "
          f"{args.seconds:g} s per phase", flush=True)
    controller = await asyncio.create_subprocess_exec(
        str(exe), "run", "--config", str(work / "room.toml"), "--keys", str(work / "keys.json"),
        "--db", str(work / "room.db"), "--api-port", str(api_port), "--node-port", str(node_port),
        "--no-tls", "--no-advertise", stdout=asyncio.subprocess.DEVNULL)
    clients = [NodeClient(n, keys[n]) for n in callers]
    try:
        await wait_http(f"http://127.0.0.1:{api_port}/api/v1/gateway", headers)
        for client in clients:
            await client.connect("127.0.0.1", node_port)  # commands it is sent are skipped by send_event
        base = await phase(clients, args.every_ms, args.seconds)
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--flood-child", str(node_port), keys[FLOOD_NODE].hex(),
            str(args.seconds + SETTLE_S), stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(SETTLE_S)
        flood = await phase(clients, args.every_ms, args.seconds)
        flooded = json.loads((await flooder.stdout.readline()) or b"{}")
        await flooder.wait()
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"http://127.0.0.1:{api_port}/api/v1/gateway") as resp:
                gateway = await resp.json()
    finally:
        for client in clients:
            await client.close()
        controller.terminate()
        await controller.wait()

    dropped = {key.split("/", 1)[1]: n for key, n in gateway.get("readings_dropped", {}).items()
               if key.startswith(FLOOD_NODE + "/")}
    offered = flooded.get("sent", 0) / max(flooded.get("seconds", 1.0), 1e-9)
    print(f"baseline:  {len(base):5d} calls   p50 {percentile(base, .5):7.2f} ms   p99 {percentile(base, .99):7.2f} ms")
    print(f"flood:     {len(flood):5d} calls   p50 {percentile(flood, .5):7.2f} ms   p99 {percentile(flood, .99):7.2f} ms"
          f"   (one node writing {offered:,.0f} readings/s)")
    print(f"ratio p99 flood/baseline: {percentile(flood, .99) / percentile(base, .99):.2f}x (target <= 2x)")
    print(f"flooding node: readings accepted {gateway['accepted'].get('reading', 0)}, dropped {dropped} "
          f"(its budget; events are never limited)")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    asyncio.run(main())
