"""Issue 12, item 9: one node cannot starve the others. Each node's readings have a budget (a
token bucket); the excess is dropped and counted by node and reason; events are never limited.
The latency effect is a benchmark figure (bench/flood.py), run here in its smoke mode."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp

from controller.link.nodeclient import NodeClient
from tests.faults.linkfaults import metric, room_server
from tests.helpers import node_key
from tests.roomsim import FakeClock

RATE_PER_S, BURST = 2, 5
ROOT = Path(__file__).resolve().parents[2]


async def readings(client: NodeClient, n: int) -> None:
    """Send n readings, then a heartbeat; its ack (acks are in order) says all n were handled."""
    for i in range(n):
        await client.send(client.reading_msg(i, temp_mdegc=22_000 + i))
    hb = client.hb_msg()
    await client.send(hb)
    await client.recv_ack(hb["s"])


async def test_each_nodes_readings_have_a_budget_and_the_excess_is_counted(tmp_path):
    clock = FakeClock()
    async with room_server(tmp_path, clock, gateway={"readings_per_s": RATE_PER_S, "readings_burst": BURST}) as server:
        stats = server.gateway.stats
        flood = NodeClient("env", node_key("env"))
        await flood.connect(server.endpoints.node_host, server.endpoints.node_port)
        await readings(flood, BURST)
        assert (stats.accepted["reading"], stats.readings_dropped) == (BURST, {}), "the burst, all of it"
        await readings(flood, 1)
        assert stats.readings_dropped == {("env", "over_budget"): 1}, "one over the burst"

        # An event from the node over its budget is stored and acked all the same.
        await flood.send_event(flood.event_msg("button", "cancel"))
        assert stats.accepted["event"] == 1

        # Another node has its own budget.
        good = NodeClient("good", node_key("good"))
        await good.connect(server.endpoints.node_host, server.endpoints.node_port)
        await readings(good, BURST)
        assert stats.accepted["reading"] == 2 * BURST and stats.readings_dropped[("good", "over_budget")] == 0

        # Refill at RATE_PER_S: half a second short of a token is still none, the full half second is one.
        clock.ms += 1000 // RATE_PER_S - 1
        await readings(flood, 1)
        assert stats.readings_dropped[("env", "over_budget")] == 2
        clock.ms += 1
        await readings(flood, 1)
        assert stats.accepted["reading"] == 2 * BURST + 1
        clock.ms += 60_000  # a long quiet spell refills to the burst, never beyond
        await readings(flood, BURST + 3)
        assert stats.readings_dropped[("env", "over_budget")] == 5 and stats.accepted["reading"] == 3 * BURST + 1

        token = await server.create_token("facilities", "tech")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/api/v1/gateway") as resp:
                gateway = await resp.json()
            async with http.get(server.endpoints.api_url + "/metrics") as resp:
                text = await resp.text()
        await flood.close()
        await good.close()
    assert gateway["readings_dropped"] == {"env/over_budget": 5}
    assert gateway["accepted"]["reading"] == 3 * BURST + 1 and gateway["rejected"] == {}
    assert metric(text, "smartroom_node_readings_dropped_total", 'node="env",reason="over_budget"') == 5
    assert metric(text, "smartroom_node_readings_dropped_total", 'node="good",reason="over_budget"') is None


async def test_bench_flood_smoke_prints_others_latency_and_the_flooders_counters():
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "bench" / "flood.py"), "--smoke",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out = (await asyncio.wait_for(proc.communicate(), 90))[0].decode()
    assert proc.returncode == 0, out
    base = re.search(r"^baseline: +(\d+) calls +p50 +([\d.]+) ms +p99 +([\d.]+) ms", out, re.M)
    flood = re.search(r"^flood: +(\d+) calls +p50 +([\d.]+) ms +p99 +([\d.]+) ms", out, re.M)
    assert base and flood, out
    assert int(base.group(1)) > 0 and int(flood.group(1)) > 0, "calls went through in both phases"
    assert re.search(r"^ratio p99 flood/baseline: [\d.]+x \(target <= 2x\)$", out, re.M), out
    dropped = re.search(r"^flooding node: readings accepted (\d+), dropped \{'over_budget': (\d+)\}", out, re.M)
    assert dropped and int(dropped.group(2)) > int(dropped.group(1)), "the flood met its budget"
