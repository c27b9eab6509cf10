"""Latency and throughput of the whole path: firmware button edge → controller → SSE client.

    .venv/bin/python bench/latency.py [--load-nodes 50] [--rate-hz 10] [--button-nodes 3] [--seconds 30]

The controller runs as its own process (`smartroom run`), as on a Pi. In this process:
`--load-nodes` CPython load generators speak the node protocol and stream readings at `--rate-hz` each;
`--button-nodes` real firmware nodes (MicroPython, 64 KB heap) press their call button every
`--press-every-ms`; an SSE client takes delivery. Printed: edge→SSE p50/p90/p99/max over all
presses, and readings/s the controller stored durably (committed to SQLite) over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.link.nodeclient import NodeClient  # noqa: E402
from controller.sim.nodes import SimNode  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)


async def load_node(name: str, key: bytes, host: str, port: int, rate_hz: float, stop: asyncio.Event,
                    sent: list[int]) -> None:
    client = NodeClient(name, key)
    await client.connect(host, port)

    async def drain() -> None:  # acks and commands for the load node; not measured
        while True:
            await client.recv()

    drainer = asyncio.create_task(drain())
    period = 1.0 / rate_hz
    next_t = time.monotonic() + random.random() * period
    t0 = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        next_t += period
        up_ms = int((time.monotonic() - t0) * 1000)
        await client.send(client.reading_msg(up_ms, temp_mdegc=22000 + random.randint(-300, 300),
                                             rh_mpct=45000, co2_ppm=600 + random.randint(0, 50)))
        sent[0] += 1
    drainer.cancel()
    await client.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-nodes", type=int, default=50)
    ap.add_argument("--rate-hz", type=float, default=10.0)
    ap.add_argument("--button-nodes", type=int, default=3)
    ap.add_argument("--press-every-ms", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--api-port", type=int, default=18080)
    ap.add_argument("--node-port", type=int, default=17700)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="smartroom-bench-"))
    load_names = [f"load-{i:03d}" for i in range(args.load_nodes)]
    button_names = [f"button-{i}" for i in range(args.button_nodes)]
    keys = {n: os.urandom(32) for n in load_names + button_names}
    (work / "keys.json").write_text(json.dumps({"nodes": {n: k.hex() for n, k in keys.items()}}))
    (work / "keys.json").chmod(0o600)  # as keygen writes it: wider is a warning and a health reason
    nodes_toml = "\n".join(f'[nodes.{n}]\ninputs = {{ call = "patient_call" }}' for n in button_names) + "\n" + \
        "\n".join(f"[nodes.{n}]" for n in load_names)
    # Each load node streams at --rate-hz: give it the budget for that (bench/flood.py measures the budget itself).
    budget = f"readings_per_s = {max(10.0, 2 * args.rate_hz):g}\nreadings_burst = {max(20, int(4 * args.rate_hz))}\n"
    # plain_tcp: the CPython load nodes and the firmware nodes here are plain TCP (TLS costs only the handshake)
    (work / "room.toml").write_text(f'[room]\nid = "bench"\n[gateway]\nheartbeat_ms = 10000\nplain_tcp = true\n'
                                    f'{budget}{nodes_toml}\n')
    api = f"http://127.0.0.1:{args.api_port}"
    print(f"bench: controller process, {args.load_nodes} load nodes x {args.rate_hz:g} Hz readings, "
          f"{args.button_nodes} firmware nodes pressing every {args.press_every_ms} ms, {args.seconds:g} s",
          flush=True)
    # The API wants a token (the stream and the gateway counters: the facilities role), made the way
    # an administrator makes one; plain http on loopback, as the tests run it.
    token = subprocess.run([str(Path(sys.executable).with_name("smartroom")), "token", "create", "--db",
                            str(work / "room.db"), "--role", "facilities", "--name", "bench"],
                           check=True, capture_output=True, text=True).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    controller = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("smartroom")), "run", "--config", str(work / "room.toml"),
        "--keys", str(work / "keys.json"), "--db", str(work / "room.db"), "--api-port", str(args.api_port),
        "--node-port", str(args.node_port), "--no-tls", "--no-advertise", stdout=asyncio.subprocess.DEVNULL)
    stop = asyncio.Event()
    received: dict[tuple[str, int], int] = {}  # (node, event number) -> SSE receive wall time, µs
    try:
        await wait_http(api + "/api/v1/health")

        async def sse() -> None:
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.get(api + "/api/v1/events/stream") as resp:
                    async for raw in resp.content:
                        line = raw.decode()
                        if line.startswith("data:"):
                            ev = json.loads(line[5:])
                            if ev["kind"] == "node.event" and ev["data"]["kind"] == "button":
                                received[(ev["data"]["node"], ev["data"]["e"])] = time.time_ns() // 1000

        sse_task = asyncio.create_task(sse())
        sent = [0]
        loaders = [asyncio.create_task(load_node(n, keys[n], "127.0.0.1", args.node_port, args.rate_hz, stop, sent))
                   for n in load_names]
        sims = []
        for i, name in enumerate(button_names):
            scenario = work / f"{name}.scenario.json"
            scenario.write_text(json.dumps({"steps": [{"at_ms": 1500 + 97 * i, "pin": "call", "press_ms": 150,
                                                       "every_ms": args.press_every_ms}]}))
            cfg = {"node_id": name, "key_hex": keys[name].hex(), "link_plain": True,
                   "controller": {"host": "127.0.0.1", "port": args.node_port}, "hw": "sim", "hb_ms": 10000,
                   "inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"},
                   "sim": {"scenario": str(scenario), "speed": 1, "state_dir": str(work / "state" / name), "seed": i}}
            sims.append(SimNode(cfg, work / "nodes"))
        for sim in sims:
            await sim.start()
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(api + "/api/v1/gateway") as resp:
                stored_before = (await resp.json())["readings_stored"]
            t_start = time.monotonic()
            for second in range(int(args.seconds)):
                await asyncio.sleep(1.0)
                if (second + 1) % 10 == 0:
                    print(f"  {second + 1:>4} s: {sent[0]} readings sent, {len(received)} presses delivered",
                          flush=True)
            async with http.get(api + "/api/v1/gateway") as resp:
                gw = await resp.json()
            elapsed = time.monotonic() - t_start
        stop.set()
        await asyncio.gather(*loaders, return_exceptions=True)
        for sim in sims:
            await sim.stop()
        await asyncio.sleep(0.5)  # let the last deliveries arrive before the stream closes
        sse_task.cancel()

        latencies_ms: list[float] = []
        missing = 0
        for sim in sims:
            edge_us = None  # the press edge (active-low call input: level 0) not yet paired with its event
            for line in sim.lines:
                if line.tag == "edge" and line.fields.get("pin") == "call" and line.fields.get("level") == "0":
                    edge_us = int(line.fields["wall_us"]) if edge_us is None else edge_us
                elif line.tag == "event" and line.fields.get("kind") == "button" and edge_us is not None:
                    got = received.get((sim.node_id, int(line.fields["e"])))
                    if got is None:
                        missing += 1
                    else:
                        latencies_ms.append((got - edge_us) / 1000)
                    edge_us = None
        readings_per_s = (gw["readings_stored"] - stored_before) / elapsed
        print(f"\nbutton edge -> SSE delivery over {len(latencies_ms)} presses ({missing} not delivered before stop):")
        if latencies_ms:
            print(f"  p50 {percentile(latencies_ms, .5):7.1f} ms   p90 {percentile(latencies_ms, .9):7.1f} ms   "
                  f"p99 {percentile(latencies_ms, .99):7.1f} ms   max {max(latencies_ms):7.1f} ms   "
                  f"mean {statistics.fmean(latencies_ms):7.1f} ms")
        print(f"readings stored durably: {readings_per_s:,.0f} readings/s "
              f"(offered {args.load_nodes * args.rate_hz * 3:,.0f}/s: {args.load_nodes} nodes x {args.rate_hz:g} Hz "
              f"x 3 measures); rejected {gw['rejected']}")
    finally:
        controller.terminate()
        await controller.wait()


if __name__ == "__main__":
    asyncio.run(main())
