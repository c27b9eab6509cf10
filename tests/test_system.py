"""The whole path with real processes on loopback: firmware (MicroPython) → controller → API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from controller.runner import RoomServer
from controller.security.tls import load_or_create, node_pin
from controller.sim.nodes import SimNode
from tests.helpers import next_event, node_key, sse_events, write_room_files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def firmware_config(node: str, port: int, tmp: Path, steps: list[dict], *, end_ms: int | None = None,
                    speed: float = 1, pin: dict | None = None, **extra) -> dict:
    """``pin``: the controller certificate's ctl_fp / ctl_cert (a TLS link); None: plain TCP."""
    scenario = tmp / f"{node}.scenario.json"
    scenario.write_text(json.dumps({"steps": steps, **({"end_ms": end_ms} if end_ms else {})}))
    return {"node_id": node, "key_hex": node_key(node).hex(), "controller": {"host": "127.0.0.1", "port": port}, **(pin or {"link_plain": True}),
            "hw": "sim-esp32s3", "hb_ms": 10000, "sim": {"scenario": str(scenario), "speed": speed,
                                                          "state_dir": str(tmp / "state" / node), "seed": 7},
            **extra}


BEDSIDE = {"inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"},
           "tone": {"pin": "buzzer"}}


async def test_call_from_firmware_reaches_sse_and_ack_lights_the_node(server, tmp_path):
    cfg = firmware_config("bedside-a", server.endpoints.node_port, tmp_path,
                          [{"at_ms": 300, "pin": "call", "press_ms": 200, "bounce": True}], **BEDSIDE)
    async with aiohttp.ClientSession(headers=auth(server.tokens["nurse"])) as http:
        async with http.get(server.endpoints.api_url + "/api/v1/events/stream") as stream_resp:
            stream = sse_events(stream_resp)
            async with SimNode(cfg, tmp_path / "nodes") as node:
                _, raised = await next_event(stream, "call.raised", timeout_s=20, node="bedside-a")
                await node.wait_for("indicator", pattern="received")
                await node.wait_for("tone", pattern="medium")  # the in-room tone of a patient call
                call_id = raised["data"]["call_id"]
                async with http.post(f"{server.endpoints.api_url}/api/v1/calls/{call_id}/ack",
                                     json={"by": "Nurse Kim"}) as resp:
                    assert resp.status == 200
                await next_event(stream, "call.acknowledged", call_id=call_id)
                await node.wait_for("indicator", pattern="acknowledged")
                await node.wait_for("pin", name="led", value=1)
                await node.wait_for("tone", pattern="off")  # answered: the tone stops, the light stays
    # One press with contact bounce is one event and one call.
    events = await server.controller.events_after(0, 100)
    assert [e.data["src"] for e in events if e.kind == "node.event"] == ["call"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _create_token(tmp: Path) -> str:
    """A nurse token made the way an administrator makes one: ``smartroom token create``."""
    exe = Path(sys.executable).with_name("smartroom")
    out = subprocess.run([str(exe), "token", "create", "--db", str(tmp / "room.db"), "--role", "nurse",
                          "--name", "test nurse"], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def _node_pin(tmp: Path) -> dict:
    """What provisioning gives a node: the certificate `smartroom run` made next to its database."""
    return node_pin(load_or_create(tmp / "node-link-cert.pem", tmp / "node-link-key.pem", node_link=True))


def _spawn_controller(tmp: Path, api_port: int, node_port: int, extra_toml: str = "") -> "asyncio.Future":
    room, keys = write_room_files(tmp, "kill-test", extra_toml)
    exe = Path(sys.executable).with_name("smartroom")
    return asyncio.create_subprocess_exec(
        str(exe), "run", "--config", str(room), "--keys", str(keys), "--db", str(tmp / "room.db"),
        "--api-port", str(api_port), "--node-port", str(node_port), "--no-tls", "--no-advertise",
        stdout=asyncio.subprocess.PIPE)


async def test_sigkilled_controller_loses_and_duplicates_nothing(tmp_path):
    api_port, node_port = free_port(), free_port()
    token = _create_token(tmp_path)
    proc = await _spawn_controller(tmp_path, api_port, node_port)
    await asyncio.wait_for(proc.stdout.readline(), 20)  # "room ...: API ... nodes ..." once listening
    # Presses and presence changes every 150-250 ms for 8 s: some are in flight at the kill.
    steps = [{"at_ms": 200, "pin": "call", "press_ms": 80, "every_ms": 250, "until_ms": 8000},
             {"at_ms": 300, "pin": "pir", "level": 1, "every_ms": 300, "until_ms": 8000},
             {"at_ms": 450, "pin": "pir", "level": 0, "every_ms": 300, "until_ms": 8000}]
    cfg = firmware_config("bedside-a", node_port, tmp_path, steps, pin=_node_pin(tmp_path),  # over TLS
                          inputs=[{"name": "call", "kind": "button", "pin": "call"},
                                  {"name": "pir", "kind": "presence", "pin": "pir"}], indicator={"pin": "led"})
    async with SimNode(cfg, tmp_path / "nodes") as node:
        await node.wait_for("acked", timeout_s=20)
        await node.wait_for("event", start=len(node.lines) + 8, timeout_s=20)  # a few more events first
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        down_at = len(node.lines)
        await node.wait_for("link", start=down_at, timeout_s=20)  # the node notices ("link down")
        proc = await _spawn_controller(tmp_path, api_port, node_port)
        await asyncio.wait_for(proc.stdout.readline(), 20)
        during_outage = [l for l in node.lines[down_at:] if l.tag == "event"]
        # The scenario stops making events at 8 s; wait until every event the node kept is acked.
        await node.wait_for("hb", start=down_at, timeout_s=40)
        while True:
            events = {int(l.fields["e"]) for l in node.lines if l.tag == "event"}
            done = {int(l.fields["e"]) for l in node.lines if l.tag in ("acked", "dropped")}
            if node.lines[-1].node_ms > 9000 and events <= done:
                break
            await node.wait_for(None, start=len(node.lines), timeout_s=40)  # any next line

    generated = {int(l.fields["e"]) for l in node.lines if l.tag == "event"}
    dropped = {int(l.fields["e"]) for l in node.lines if l.tag == "dropped"}
    acked = {int(l.fields["e"]) for l in node.lines if l.tag == "acked"}
    async with aiohttp.ClientSession(headers=auth(token)) as http:
        stored, after = [], 0
        while True:
            async with http.get(f"http://127.0.0.1:{api_port}/api/v1/events?after={after}&limit=1000") as resp:
                page = await resp.json()
            stored += [e["data"] for e in page["events"] if e["kind"] == "node.event"]
            after = page["next"]
            if not page["more"]:
                break
    proc.terminate()
    await proc.wait()
    seqs = [e["e"] for e in stored if e["node"] == "bedside-a"]  # event numbers: a resend keeps its own
    assert len(seqs) == len(set(seqs)), "an event was stored twice"
    # Every event the node kept is stored exactly once. A dropped presence event may be stored too
    # (sent before the kill, dropped from the full queue while the controller was down).
    assert generated - dropped <= set(seqs) <= generated, "an event was lost or invented"
    assert generated - dropped <= acked
    # A press may be dropped only as a repeat (protocol §5): an earlier press of the same input is
    # stored, so the call it asked for is raised. (A long restart under load drops repeats; that is
    # the queue working, not a loss.)
    press_src = {int(l.fields["e"]): l.fields.get("src") for l in node.lines
                 if l.tag == "event" and l.fields.get("kind") == "button"}
    for e in dropped & set(press_src):
        assert any(o < e and press_src[o] == press_src[e] and o in set(seqs) for o in press_src), \
            f"press e={e} was dropped with no earlier press of {press_src[e]} stored: its call could be lost"
    assert len(generated) >= 20
    assert during_outage, "no event was made while the controller was down: the test proved nothing"


async def test_sigkill_during_active_calls_keeps_them_and_escalation_runs_on_stored_times(tmp_path):
    api_port, node_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}/api/v1"
    token = _create_token(tmp_path)
    proc = await _spawn_controller(tmp_path, api_port, node_port, "[timers.high]\nescalate_s = 5\n")
    await asyncio.wait_for(proc.stdout.readline(), 20)
    for node, src in (("bath", "cord"), ("bedside-a", "call")):
        client = NodeClient(node, node_key(node), pin=_node_pin(tmp_path)["ctl_fp"])
        await client.connect("127.0.0.1", node_port)
        ev = client.event_msg("button", src)
        await client.send(ev)
        await client.recv_ack(ev["s"])
        await client.close()
    async with aiohttp.ClientSession(headers=auth(token)) as http:
        async with http.get(f"{api}/room") as resp:
            calls = {c["type"]: c for c in (await resp.json())["calls"]}
        async with http.post(f"{api}/calls/{calls['patient_call']['id']}/ack", json={"by": "Nurse Kim"}) as resp:
            assert resp.status == 200
        async with http.get(f"{api}/room") as resp:
            before = (await resp.json())["calls"]
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await _spawn_controller(tmp_path, api_port, node_port)
        try:
            await asyncio.wait_for(proc.stdout.readline(), 20)
            async with http.get(f"{api}/room") as resp:
                after = (await resp.json())["calls"]
            # (not the escalation level: the 5 s deadline may pass during the restart on a busy machine)
            keep = ("id", "type", "raised_at_ms", "acknowledged_at_ms", "acknowledged_by")
            assert [{k: c[k] for k in keep} for c in after] == [{k: c[k] for k in keep} for c in before]
            assert [c["acknowledged_by"] for c in after] == [None, "Nurse Kim"]
            bath = after[0]
            async with http.get(f"{api}/events/stream?after=0") as resp:
                _, escalated = await next_event(sse_events(resp), "call.escalated", timeout_s=15,
                                                call_id=bath["id"])
        finally:
            proc.terminate()
            await proc.wait()
    data = escalated["data"]
    # Counted again from the restart, the deadline would be the restart + 5 s: a later due_ms.
    assert data["due_ms"] == bath["raised_at_ms"] + 5000, "the deadline is the stored raise time + 5 s"
    assert data["at_ms"] >= data["due_ms"], "never early"
