"""One node flooding readings must not starve the others: their call latency, without and with a flood.

    .venv/bin/python bench/flood.py [--callers 5] [--seconds 10] [--every-ms 100]
    .venv/bin/python bench/flood.py --smoke          # 2 s phases, what the test suite runs

The controller runs as its own process (`smartroom run`), as on a Pi. `--callers` CPython nodes
each send a call (a button event) every `--every-ms`, jittered; a call's latency is from writing its
frame to reading its ack, which the controller sends only once the event is on disk. Baseline and
flood alternate in `--rounds` pairs (so a machine whose load drifts weighs on both alike); during a
flood one more authenticated node, in a process of its own, writes readings as fast as its
connection takes them. Printed: the callers' p50/p99 without and with the flood, the ratio of the
p99s (target: within 2x, docs/architecture.md), the controller process's CPU in each, and the
gateway's counters for the flooding node (readings accepted within its budget, dropped beyond it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
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
FLOOD_SNDBUF_BYTES = 16 * 1024
SETTLE_S = 0.5  # after the flooder says it writes, before the flood is measured: its first burst is in


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


async def flood_child(port: int, key_hex: str, seconds: float, boot: int) -> None:
    """The flooding node (its own process): readings, back to back, as fast as the socket takes them."""
    client = NodeClient(FLOOD_NODE, bytes.fromhex(key_hex), boot=boot)
    await client.connect("127.0.0.1", port)
    # What the node has written is read by the controller even after it hangs up; a small send buffer
    # (a sensor node has little memory) keeps the flood to what the connection takes while it runs.
    client.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FLOOD_SNDBUF_BYTES)
    print("flooding", flush=True)  # started up (imports and all): the measured time starts now

    async def drain() -> None:  # acks and commands; never read, they would fill the socket
        while True:
            await client.recv()

    reader = asyncio.create_task(drain())
    sent, t0 = 0, time.monotonic()
    try:
        async with asyncio.timeout(seconds):  # drain() waits on the controller, which reads it slowly
            while True:
                for _ in range(100):
                    client.writer.write(client.reading_frame(sent, temp_mdegc=22000 + sent % 500, co2_ppm=600))
                    sent += 1
                await client.writer.drain()
    except TimeoutError:
        pass
    except ConnectionError as exc:  # the controller went away: report what was sent
        print(f"flood: {exc!r}", file=sys.stderr)
    reader.cancel()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)
    client.writer.transport.abort()  # gone at once: a graceful close would wait for the controller to read it all


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
    ap.add_argument("--seconds", type=float, default=10.0, help="time measured without, and again with, the flood")
    ap.add_argument("--rounds", type=int, default=5, help="baseline/flood pairs the time is split into")
    ap.add_argument("--every-ms", type=float, default=100.0, help="each caller's mean time between calls")
    ap.add_argument("--smoke", action="store_true", help="short phases (the test suite runs this)")
    ap.add_argument("--flood-child", nargs=4, metavar=("PORT", "KEY_HEX", "SECONDS", "BOOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_child:
        port, key_hex, seconds, boot = args.flood_child
        await flood_child(int(port), key_hex, float(seconds), int(boot))
        return
    if args.smoke:
        args.seconds, args.callers, args.rounds = 2.0, 3, 1

    work = Path(tempfile.mkdtemp(prefix="smartroom-flood-"))
    callers = [f"caller-{i}" for i in range(args.callers)]
    keys = {n: os.urandom(32) for n in callers + [FLOOD_NODE]}
    (work / "keys.json").write_text(json.dumps({"nodes": {n: k.hex() for n, k in keys.items()}}))
    (work / "keys.json").chmod(0o600)  # as keygen writes it: wider is a warning and a health reason
    nodes_toml = "\n".join(f'[nodes.{n}]\ninputs = {{ call = "patient_call" }}' for n in callers)
    (work / "room.toml").write_text(f'[room]\nid = "flood"\n[gateway]\nplain_tcp = true  # CPython nodes, plain TCP\n'
                                    f'{nodes_toml}\n[nodes.{FLOOD_NODE}]\n')
    exe = Path(sys.executable).with_name("smartroom")
    token = subprocess.run([str(exe), "token", "create", "--db", str(work / "room.db"), "--role", "facilities",
                            "--name", "bench"], check=True, capture_output=True, text=True).stdout.split()[-1]
    api_port, node_port = free_port(), free_port()
    headers = {"Authorization": f"Bearer {token}"}
    print(f"flood bench: controller process, {args.callers} callers every ~{args.every_ms:g} ms, "
          f"{args.seconds:g} s without and {args.seconds:g} s with one node flooding, in {args.rounds} rounds",
          flush=True)
    controller = await asyncio.create_subprocess_exec(
        str(exe), "run", "--config", str(work / "room.toml"), "--keys", str(work / "keys.json"),
        "--db", str(work / "room.db"), "--api-port", str(api_port), "--node-port", str(node_port),
        "--no-tls", "--no-advertise", stdout=asyncio.subprocess.DEVNULL)
    clients = [NodeClient(n, keys[n]) for n in callers]
    try:
        await wait_http(f"http://127.0.0.1:{api_port}/api/v1/gateway", headers)
        for client in clients:
            await client.connect("127.0.0.1", node_port)  # commands it is sent are skipped by send_event
        base: list[float] = []
        flood: list[float] = []
        cpu = {"baseline": 0.0, "flood": 0.0}
        sent = sent_s = 0.0
        segment_s = args.seconds / args.rounds
        for round_no in range(args.rounds):
            await flood_gone(api_port, headers)  # the baseline is measured with no flood left at all
            t = cpu_s(controller.pid)
            base += await phase(clients, args.every_ms, segment_s)
            cpu["baseline"] += cpu_s(controller.pid) - t
            flooder = await asyncio.create_subprocess_exec(  # a new boot each round: its frames start again at 1
                sys.executable, __file__, "--flood-child", str(node_port), keys[FLOOD_NODE].hex(),
                str(segment_s + SETTLE_S), str(round_no + 1), stdout=asyncio.subprocess.PIPE)
            await flooder.stdout.readline()  # "flooding"
            await asyncio.sleep(SETTLE_S)
            t = cpu_s(controller.pid)
            flood += await phase(clients, args.every_ms, segment_s)
            cpu["flood"] += cpu_s(controller.pid) - t
            flooded = json.loads((await flooder.stdout.readline()) or b"{}")
            sent, sent_s = sent + flooded.get("sent", 0), sent_s + flooded.get("seconds", 0.0)
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
    offered = sent / max(sent_s, 1e-9)
    print(f"baseline:  {len(base):5d} calls   p50 {percentile(base, .5):7.2f} ms   p99 {percentile(base, .99):7.2f} ms")
    print(f"flood:     {len(flood):5d} calls   p50 {percentile(flood, .5):7.2f} ms   p99 {percentile(flood, .99):7.2f} ms"
          f"   (one node writing {offered:,.0f} readings/s)")
    print(f"ratio p99 flood/baseline: {percentile(flood, .99) / percentile(base, .99):.2f}x (target <= 2x)")
    print(f"controller CPU: baseline {100 * cpu['baseline'] / args.seconds:.0f} % of a core, "
          f"flood {100 * cpu['flood'] / args.seconds:.0f} %")
    print(f"flooding node: readings accepted {gateway['accepted'].get('reading', 0)}, dropped {dropped} "
          f"(its budget; events are never limited)")


async def flood_gone(api_port: int, headers: dict[str, str], timeout_s: float = 30.0) -> None:
    """Until the controller has read the last flood to its end (what the node had sent is still read)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            async with http.get(f"http://127.0.0.1:{api_port}/api/v1/gateway") as resp:
                if FLOOD_NODE not in (await resp.json())["nodes_connected"]:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the flooding node still connected after {timeout_s:g} s")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    asyncio.run(main())
