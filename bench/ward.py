"""The ward at scale: N rooms publishing through Mosquitto to the ward console, measured at its stream.

    .venv/bin/python bench/ward.py [--rooms 300] [--seconds 60] [--mean-gap-s 20] [--burst-every-s 15]
    .venv/bin/python bench/ward.py --smoke        # 10 rooms, 5 s: what the test suite runs

A real Mosquitto (per-room accounts and ACLs) and the real ward console (`smartroom ward`, its own
process, so its CPU and memory are its own) run on this machine. The rooms are light: each is one
MQTT connection publishing the uplink's wire format (`controller/uplink/wire.py`) with a last will,
retained status and a retained state after its events; events come at `--mean-gap-s` on average per
room (Poisson) and in bursts: every `--burst-every-s` a tenth of the rooms send 5 events at once (a
call with its repeats and escalation). A client reads the console's live stream (SSE).

Printed, in one run: room event published -> on the ward stream p50/p99/max (target p99 <= 100 ms),
events lost and duplicated on the stream (target 0), and the console's CPU (% of one core) and RSS.
`--json` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.uplink.client import MqttClient  # noqa: E402
from controller.uplink.wire import RoomEvent, RoomStatus, Topics, encode_state  # noqa: E402
from ward.broker import Mosquitto, RoomUser, WardUser  # noqa: E402

SITE, UNIT = "bench", "ward"
TICK_S = os.sysconf("SC_CLK_TCK")
PAGE_S = 4096


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STORED_US: dict = {}  # debug: event published -> stored by the ward (its ms clock)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / TICK_S
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_S
    return cpu_s, rss


class Room:
    def __init__(self, room: str, port: int) -> None:
        self.topics = Topics(SITE, UNIT, room)
        self.port = port
        self.cursor = 0
        self.sent: dict[int, int] = {}  # cursor -> time published (ns)

    async def run(self, stop: asyncio.Event, mean_gap_s: float, bursts: asyncio.Queue) -> None:
        t = self.topics
        will = aiomqtt.Will(t.status, RoomStatus(t.room, "offline", "connection lost", 0).encode(), qos=1,
                            retain=True)
        async with MqttClient("127.0.0.1", self.port, username=t.room, password=f"pw-{t.room}",
                              identifier=f"bench-{t.room}", protocol=aiomqtt.ProtocolVersion.V5, will=will,
                              keepalive=6) as client:
            await client.publish_checked(t.status, RoomStatus(t.room, "online", "started", _ms()).encode(), retain=True)
            rng = random.Random(t.room)
            while not stop.is_set():
                burst = 0
                try:
                    burst = await asyncio.wait_for(bursts.get(), rng.expovariate(1 / mean_gap_s))
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
                for _ in range(max(1, burst)):
                    await self.publish(client)
                await client.publish_checked(t.state, encode_state(t.room, {"cursor": self.cursor, "calls": []},
                                                                   _ms()), retain=True)
            await client.publish_checked(t.status, RoomStatus(t.room, "offline", "stopped", _ms()).encode(),
                                         retain=True)

    async def publish(self, client: MqttClient) -> None:
        self.cursor += 1
        sent = time.time_ns()
        self.sent[self.cursor] = sent
        ev = RoomEvent(self.topics.room, self.cursor, sent // 1_000_000, "call.repeated",
                       {"call_id": "c1", "presses": self.cursor, "sent_ns": sent})
        await client.publish_checked(self.topics.event, ev.encode())


def _ms() -> int:
    return time.time_ns() // 1_000_000


async def read_stream(url: str, token: str, got: dict[tuple[str, int], list[int]], ready: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "0"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url + "/api/v1/events/stream",
                                                                        headers=headers) as resp:
        ready.set()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            now = time.time_ns()
            record = json.loads(line[5:])
            d = record["data"]
            if record["kind"] == "call.repeated" and "sent_ns" in d:
                got.setdefault((d["room"], d["cursor"]), []).append((now - d["sent_ns"]) // 1000)
                STORED_US[(d["room"], d["cursor"])] = record["ts_ms"] * 1000 - d["sent_ns"] // 1000


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rooms", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--mean-gap-s", type=float, default=20.0, help="mean time between a room's events")
    ap.add_argument("--burst-every-s", type=float, default=15.0)
    ap.add_argument("--smoke", action="store_true", help="10 rooms for 5 s (the test suite's run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.rooms, args.seconds, args.mean_gap_s, args.burst_every_s = 10, 5.0, 1.0, 2.0
    work = Path(tempfile.mkdtemp(prefix="smartroom-ward-bench-"))
    names = [f"r{i:03d}" for i in range(args.rooms)]
    users = [RoomUser(n, f"pw-{n}", Topics(SITE, UNIT, n)) for n in names] + [WardUser("ward", "ward-pw", SITE, UNIT)]
    broker = Mosquitto(work / "broker", free_port(), users=users, extra=["max_connections -1"])
    await broker.start()
    (work / "ward.password").write_text("ward-pw\n")
    http_port = free_port()
    (work / "ward.toml").write_text(
        f'[ward]\nname = "bench"\nsite = "{SITE}"\nunit = "{UNIT}"\n[broker]\nhost = "127.0.0.1"\n'
        f'port = {broker.port}\nusername = "ward"\npassword_file = "ward.password"\n[http]\nport = {http_port}\n')
    exe = Path(sys.executable).with_name("smartroom")
    token = (await _run([str(exe), "ward", "token", "create", "--db", str(work / "ward.db"), "--role", "admin",
                         "--name", "bench"])).strip().splitlines()[-1]
    prefix = [str(exe)]
    if os.environ.get("WARD_BENCH_PROFILE"):  # debug: profile the console (cProfile output to that file)
        prefix = [sys.executable, "-m", "cProfile", "-o", os.environ["WARD_BENCH_PROFILE"], "-m", "controller.cli"]
    ward = await asyncio.create_subprocess_exec(*prefix, "ward", "--config", str(work / "ward.toml"), "--db",
                                                str(work / "ward.db"), stdout=asyncio.subprocess.PIPE,
                                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        await asyncio.wait_for(ward.stdout.readline(), 30)
        url = f"http://127.0.0.1:{http_port}"
        got: dict[tuple[str, int], list[int]] = {}
        ready = asyncio.Event()
        reader = asyncio.create_task(read_stream(url, token, got, ready))
        await ready.wait()
        rooms = [Room(n, broker.port) for n in names]
        stop = asyncio.Event()
        queues = [asyncio.Queue() for _ in rooms]
        tasks = [asyncio.create_task(r.run(stop, args.mean_gap_s, q)) for r, q in zip(rooms, queues)]
        cpu0, _ = proc_usage(ward.pid)
        t0 = time.monotonic()
        rss_max = 0
        rng = random.Random(1)
        next_burst = t0 + args.burst_every_s
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(0.5)  # the load's own pace and the RSS sampling period
            rss_max = max(rss_max, proc_usage(ward.pid)[1])
            if time.monotonic() >= next_burst:
                for q in rng.sample(queues, max(1, len(queues) // 10)):
                    q.put_nowait(5)
                next_burst += args.burst_every_s
        stop.set()
        for q in queues:
            q.put_nowait(0)
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        sent = {(r.topics.room, c) for r in rooms for c in r.sent}
        deadline = time.monotonic() + 10
        while set(got) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the last events' way through; bounded
        cpu1, rss = proc_usage(ward.pid)
        reader.cancel()
        latencies_ms = [v[0] / 1000 for k, v in got.items() if k in sent]
        if os.environ.get("WARD_BENCH_DEBUG"):
            sent_at = {(r.topics.room, c): t for r in rooms for c, t in r.sent.items()}
            t0_ns = min(sent_at.values())
            for k, v in sorted(got.items(), key=lambda kv: sent_at.get(kv[0], 0)):
                if v[0] > 100_000:
                    print(f"slow {k} at {(sent_at[k] - t0_ns) / 1e9:.2f} s: {v[0] / 1000:.0f} ms "
                          f"(stored after {STORED_US.get(k, 0) / 1000:.0f} ms)", file=sys.stderr)
        result = {
            "rooms": args.rooms, "seconds": round(elapsed, 1), "events": len(sent),
            "events_per_s": round(len(sent) / elapsed, 1),
            "p50_ms": round(percentile(latencies_ms, 0.5), 2) if latencies_ms else None,
            "p99_ms": round(percentile(latencies_ms, 0.99), 2) if latencies_ms else None,
            "max_ms": round(max(latencies_ms), 2) if latencies_ms else None,
            "mean_ms": round(statistics.fmean(latencies_ms), 2) if latencies_ms else None,
            "lost": len(sent - set(got)), "duplicated": sum(len(v) - 1 for v in got.values()),
            "ward_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1), "ward_rss_mb": round(max(rss, rss_max) / 2**20, 1),
        }
    finally:
        ward.terminate()
        await ward.wait()
        await broker.stop()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['rooms']} rooms, {result['seconds']} s, {result['events']} events "
              f"({result['events_per_s']}/s): room event -> ward stream p50 {result['p50_ms']} ms, "
              f"p99 {result['p99_ms']} ms (target <= 100), max {result['max_ms']} ms; lost {result['lost']}, "
              f"duplicated {result['duplicated']}; ward console CPU {result['ward_cpu_pct']} % of a core, "
              f"RSS {result['ward_rss_mb']} MB")


async def _run(cmd: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, _ = await proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{cmd[1:3]} failed")
    return out.decode()


if __name__ == "__main__":
    asyncio.run(main())
