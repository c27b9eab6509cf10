"""Latency of a call under load, and readings stored durably: the whole path, as shipped.

    .venv/bin/python bench/latency.py [--load-nodes 500] [--rate-hz 10] [--seconds 30] [--smoke]

The controller is ``smartroom run`` in its own process (TLS and API tokens as shipped, as on a Pi).
In this process, against it:

* ``--load-nodes`` nodes (CPython, protocol v2) each send a reading (temp, humidity, CO2) at
  ``--rate-hz``;
* ``--button-nodes`` nodes run the real firmware (MicroPython, 64 KB heap) on simulated hardware
  and press their call button (with contact bounce, through the firmware's 30 ms debounce) every
  ``--press-every-ms``;
* ``--probe-nodes`` CPython nodes press a call button every ``--press-every-ms`` too, stamping the
  send time into the event: from the frame leaving the node to the nurse stream is the
  controller's own share of a call's latency (decide, store with fsync, publish, stream);
* a nurse's event stream (Server-Sent Events over HTTPS with a nurse token) takes delivery.

The probe nodes and the nurse's stream run in a process of their own (the measurer), so what they
time is the controller and the kernel, not this process's loop serving 500 load nodes: in one
process, a probe's stamp and its delivery each waited behind the load generator's callbacks.

Printed: button edge -> nurse stream p50/p90/p99/max over the firmware presses; the controller's
share p50/p99 over the probe presses; the controller's processor use under that load (and per
reading frame received); its memory with all nodes connected. Then a
flood: every load node sends readings as fast as the controller takes them for ``--flood-seconds``;
printed are the values stored durably per second and the controller's processor use. The bench
room gives each node a readings budget past what it can send (``readings_per_s = 10000``), so the
flood measures what the readings path can store; with the shipped budget (10/s a node) it would
measure the budget, which bench/flood.py does.

Targets (issue 13): edge -> stream p99 <= 40 ms at 500 nodes x 10 Hz, debounce included; the
controller's share p99 <= 5 ms; readings >= 60k values/s stored durably on one core; RSS <= 80 MB
at 200 nodes. ``--smoke`` runs it all for a moment with a few nodes; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.broker import cpu_s  # noqa: E402
from bench.roomproc import BenchNode, RoomProcess, commit_ms, percentile  # noqa: E402
from controller.sim.nodes import SimNode  # noqa: E402

T_MOD = 2**31     # send times travel as int32 microseconds (the node protocol's integers)
DRAIN_S = 1.0     # after the run, deliveries still in flight may take this long
FLOOD_WINDOW = 32  # readings a flooding node writes before it waits for the socket to drain
FLOOD_BUDGET = {"readings_per_s": 10_000, "readings_burst": 100_000}  # the room file's limits: no node reaches them


def now_us() -> int:
    return time.time_ns() // 1000 % T_MOD


class RawNode(BenchNode):
    """A load node: readings or stamped presses."""

    async def connect(self, port: int) -> None:  # type: ignore[override]
        await super().connect(port, random.randrange(2**31))

    def reading(self) -> bytes:
        self.seq += 1
        body = (b'{"at_ms":%d,"b":%d,"m":{"co2_ppm":%d,"rh_mpct":45000,"temp_mdegc":%d},"n":"%s","s":%d,'
                b'"t":"reading","v":2}' % (self.seq % T_MOD, self.boot, 600 + self.seq % 50,
                                           22000 + self.seq % 300, self.node.encode(), self.seq))
        return self.frame(body)

    def press(self) -> bytes:
        self.seq += 1
        self.event_no += 1
        body = (b'{"at_ms":%d,"b":%d,"e":%d,"k":"button","n":"%s","s":%d,"src":"call","t":"event","v":2,"val":1,'
                b'"x":{"t_us":%d}}' % (self.seq % T_MOD, self.boot, self.event_no, self.node.encode(), self.seq,
                                        now_us()))
        return self.frame(body)

    async def discard_incoming(self) -> None:
        assert self.reader is not None
        while await self.reader.read(65536):
            pass


async def load(node: RawNode, rate_hz: float, stop: asyncio.Event, sent: list[int]) -> None:
    period = 1.0 / rate_hz
    next_t = time.monotonic() + random.random() * period
    while not stop.is_set():
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        next_t += period
        node.writer.write(node.reading())
        sent[0] += 1


async def flood(node: RawNode, stop: asyncio.Event, lost: list[str]) -> None:
    try:
        while not stop.is_set():
            node.writer.writelines([node.reading() for _ in range(FLOOD_WINDOW)])
            await node.writer.drain()
            await asyncio.sleep(0)  # drain() returns at once while the kernel takes it all: let the others run
    except ConnectionError:
        lost.append(node.node)


async def probe(node: RawNode, every_s: float, stop: asyncio.Event, offset_s: float) -> None:
    await asyncio.sleep(offset_s)
    while not stop.is_set():
        node.writer.write(node.press())
        await asyncio.sleep(every_s)


def firmware_node(name: str, key: bytes, port: int, work: Path, i: int, every_ms: int) -> SimNode:
    scenario = work / f"{name}.scenario.json"
    scenario.write_text(json.dumps({"steps": [{"at_ms": 1500 + 97 * i, "pin": "call", "press_ms": 150,
                                               "every_ms": every_ms}]}))
    cfg = {"node_id": name, "key_hex": key.hex(), "link_plain": True, "controller": {"host": "127.0.0.1", "port": port},
           "hw": "sim", "hb_ms": 10000, "inputs": [{"name": "call", "kind": "button", "pin": "call"}],
           "indicator": {"pin": "led"},
           "sim": {"scenario": str(scenario), "speed": 1, "state_dir": str(work / "state" / name), "seed": i}}
    return SimNode(cfg, work / "nodes")


async def stream(api_url: str, ssl: object, headers: dict[str, str], received: dict[tuple[str, int], int],
                 probe_ms: list[float], ready: asyncio.Event) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(api_url + "/api/v1/events/stream?endpoint=bench", ssl=ssl,
                            headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            resp.raise_for_status()
            ready.set()
            async for raw in resp.content:
                if not raw.startswith(b"data:") or b'"kind":"node.event"' not in raw:
                    continue
                got = time.time_ns() // 1000
                data = json.loads(raw[5:])["data"]
                if "t_us" in data["x"]:
                    probe_ms.append((got % T_MOD - data["x"]["t_us"]) % T_MOD / 1000)
                elif data["kind"] == "button":
                    received[(data["node"], data["e"])] = got


def measurer(conn: "multiprocessing.connection.Connection", api_url: str, fingerprint: str, token: str,
             node_port: int, probes: list[tuple[str, bytes]], every_s: float) -> None:
    """The measuring side, in its own process: the nurse's stream and the probe nodes. Sends
    "ready" once both are up, presses from "start" to "stop", then sends (received, probe_ms)."""
    from controller.security.tls import pin

    async def run() -> None:
        loop = asyncio.get_running_loop()
        received: dict[tuple[str, int], int] = {}
        probe_ms: list[float] = []
        ready = asyncio.Event()
        sse = asyncio.create_task(stream(api_url, pin(fingerprint), {"Authorization": f"Bearer {token}"},
                                         received, probe_ms, ready))
        await asyncio.wait_for(ready.wait(), 30)
        nodes = [RawNode(name, key) for name, key in probes]
        await asyncio.gather(*(node.connect(node_port) for node in nodes))
        drains = [asyncio.create_task(n.discard_incoming()) for n in nodes]
        conn.send("ready")

        async def told(word: str) -> None:
            said = await loop.run_in_executor(None, conn.recv)
            if said != word:
                raise RuntimeError(f"the measuring process was told {said!r}, not {word!r}")

        await told("start")
        stop = asyncio.Event()
        tasks = [asyncio.create_task(probe(n, every_s, stop, 0.5 + 0.37 * i)) for i, n in enumerate(nodes)]
        await told("stop")
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(DRAIN_S)  # the last deliveries
        for task in drains + [sse]:
            task.cancel()
        await asyncio.gather(*drains, sse, return_exceptions=True)
        for node in nodes:
            await node.close()
        conn.send((received, probe_ms))

    asyncio.run(run())


class Measurer:
    """:func:`measurer` in a child process, driven from this one's event loop."""

    def __init__(self, room: RoomProcess, probes: list[tuple[str, bytes]], every_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop and threads
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=measurer, name="latency-measurer", daemon=True,
                                args=(child, room.api_url, room.fingerprint, room.token, room.node_port,
                                      probes, every_s))

    async def _recv(self, timeout_s: float) -> object:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._conn.poll, timeout_s):
            raise RuntimeError(f"the measuring process did not answer in {timeout_s:g} s "
                               f"(exit code {self.proc.exitcode})")
        return self._conn.recv()

    async def start(self) -> None:
        self.proc.start()
        if await self._recv(60) != "ready":
            raise RuntimeError("the measuring process did not get ready")

    def press(self) -> None:
        self._conn.send("start")

    async def results(self) -> tuple[dict[tuple[str, int], int], list[float]]:
        self._conn.send("stop")
        received, probe_ms = await self._recv(60 + DRAIN_S)  # type: ignore[misc]
        self.proc.join(10)
        return received, probe_ms

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()


def edge_latencies(sims: list[SimNode], received: dict[tuple[str, int], int]) -> tuple[list[float], int]:
    latencies, missing = [], 0
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
                    latencies.append((got - edge_us) / 1000)
                edge_us = None
    return latencies, missing


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"p50 {percentile(values, .5):6.1f} ms   p90 {percentile(values, .9):6.1f} ms   "
            f"p99 {percentile(values, .99):6.1f} ms   max {max(values):6.1f} ms   "
            f"mean {statistics.fmean(values):6.1f} ms   (n={len(values)})")


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load-nodes", type=int, default=500)
    ap.add_argument("--rate-hz", type=float, default=10.0)
    ap.add_argument("--button-nodes", type=int, default=3)
    ap.add_argument("--probe-nodes", type=int, default=2)
    ap.add_argument("--press-every-ms", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--flood-seconds", type=float, default=10.0)
    ap.add_argument("--smoke", action="store_true", help="a few nodes for a few seconds")
    ap.add_argument("--db-dir", type=Path, default=None,
                    help="where the room database goes (default: a temporary folder; /dev/shm leaves the disk out)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.load_nodes, args.button_nodes, args.probe_nodes = 5, 1, 1
        args.seconds, args.flood_seconds, args.press_every_ms = 2.5, 0.5, 800

    work = Path(tempfile.mkdtemp(prefix="smartroom-latency-", dir=args.db_dir))
    load_names = [f"load-{i:03d}" for i in range(args.load_nodes)]
    button_names = [f"button-{i}" for i in range(args.button_nodes)]
    probe_names = [f"probe-{i}" for i in range(args.probe_nodes)]
    keys = {n: os.urandom(32) for n in load_names + button_names + probe_names}
    nodes = {n: {"call": "patient_call"} for n in button_names + probe_names} | {n: {} for n in load_names}
    print(f"bench: smartroom run (TLS, tokens), {args.load_nodes} load nodes x {args.rate_hz:g} Hz readings, "
          f"{args.button_nodes} firmware + {args.probe_nodes} probe nodes pressing every {args.press_every_ms} ms, "
          f"{args.seconds:g} s, then a {args.flood_seconds:g} s readings flood", flush=True)
    try:
        async with RoomProcess(work, nodes, keys, gateway=FLOOD_BUDGET) as room:
            measure = Measurer(room, [(n, keys[n]) for n in probe_names], args.press_every_ms / 1000)
            try:
                await measure.start()
                loaders = [RawNode(n, keys[n]) for n in load_names]
                for i in range(0, len(loaders), 100):
                    await asyncio.gather(*(node.connect(room.node_port) for node in loaders[i:i + 100]))
                drains = [asyncio.create_task(n.discard_incoming()) for n in loaders]
                sims = [firmware_node(n, keys[n], room.node_port, work, i, args.press_every_ms)
                        for i, n in enumerate(button_names)]
                for sim in sims:
                    await sim.start()
                stop, sent = asyncio.Event(), [0]
                tasks = [asyncio.create_task(load(n, args.rate_hz, stop, sent)) for n in loaders]
                measure.press()
                before = await room.get("/api/v1/gateway")
                stored_before, accepted_before = before["readings_stored"], before["accepted"].get("reading", 0)
                t0, load_cpu0 = time.monotonic(), cpu_s(room.proc.pid)
                await asyncio.sleep(args.seconds)
                elapsed, load_cpu = time.monotonic() - t0, cpu_s(room.proc.pid) - load_cpu0
                gw = await room.get("/api/v1/gateway")
                rss = room.rss_kb()
                stop.set()
                await asyncio.gather(*tasks)
                for sim in sims:
                    await sim.stop()
                received, probe_ms = await measure.results()  # after its last deliveries
            finally:
                measure.kill()

            # The flood: readings as fast as the controller takes them. Measured over a window
            # while it runs (the sockets hold a backlog; what is stored in the window counts).
            stop = asyncio.Event()
            lost: list[str] = []
            floods = [asyncio.create_task(flood(n, stop, lost)) for n in loaders]
            await asyncio.sleep(min(1.0, args.flood_seconds))  # up to speed
            before, cpu0, t1 = (await room.get("/api/v1/gateway"))["readings_stored"], cpu_s(room.proc.pid), \
                time.monotonic()
            await asyncio.sleep(args.flood_seconds)
            after, cpu1, flood_s = (await room.get("/api/v1/gateway"))["readings_stored"], cpu_s(room.proc.pid), \
                time.monotonic() - t1
            for task in floods:
                task.cancel()
            await asyncio.gather(*floods, return_exceptions=True)
            for node in loaders:
                node.writer.transport.abort()  # the backlog is not wanted any more
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            for node in loaders:
                await node.close()
        disk = commit_ms(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    edges, missing = edge_latencies(sims, received)
    print(f"\nbutton edge -> nurse stream, firmware nodes ({missing} presses not delivered before stop; "
          f"target p99 <= 40 ms):\n  {summary(edges)}")
    print(f"controller's share (probe frame sent -> nurse stream; target p99 <= 5 ms):\n  {summary(probe_ms)}")
    stored = gw["readings_stored"] - stored_before
    print(f"readings under load: {stored / elapsed:,.0f} values/s stored (offered "
          f"{args.load_nodes * args.rate_hz * 3:,.0f}/s: {args.load_nodes} nodes x {args.rate_hz:g} Hz x 3 measures); "
          f"rejected {gw['rejected']}; the controller at {load_cpu / elapsed:.0%} of a core "
          f"({load_cpu / max(1, gw['accepted'].get('reading', 0) - accepted_before) * 1e6:,.0f} us per reading frame received)")
    print(f"controller RSS with {len(nodes)} nodes connected: {rss[0] / 1024:.1f} MB (peak {rss[1] / 1024:.1f} MB)")
    flood_cpu = (cpu1 - cpu0) / flood_s
    if lost:
        print(f"readings flood: the controller closed {len(lost)} flooding connections (e.g. {lost[0]})")
    print(f"readings flood: {(after - before) / flood_s:,.0f} values/s stored durably, controller at "
          f"{flood_cpu:.0%} of a core ({(after - before) / max(cpu1 - cpu0, 1e-9):,.0f} values per CPU second; "
          f"target >= 60,000 values/s on one core)")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; an fsynced SQLite commit where the "
          f"room database was took p50 {disk[0]:.2f} ms, p99 {disk[1]:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
