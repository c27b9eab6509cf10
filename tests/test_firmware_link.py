"""The firmware's link and runtime, end to end: a real MicroPython node process on simulated
hardware against tests/nodepeer.py on loopback. Tests await the node's log lines and the
peer's frames; none of them sleeps."""

from __future__ import annotations

import json
import socket
import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.nodepeer import FirmwareNode, Line, NodePeer

NODE = "bedside-a"
KEY = bytes(range(32))
BEDSIDE = {"inputs": [{"name": "call", "kind": "button", "pin": "call"},
                      {"name": "pir", "kind": "presence", "pin": "pir"}],
           "indicator": {"pin": "led"}, "tone": {"pin": "buzzer"}}
FULL = {"inputs": [{"name": "call", "kind": "button", "pin": "call"},
                   {"name": "cancel", "kind": "button", "pin": "cancel"},
                   {"name": "pir", "kind": "presence", "pin": "pir"}],
        "indicator": {"pin": "led"}, "tone": {"pin": "buzzer"},
        "i2c": [{"part": "sht3x", "bus": 0, "addr": 0x44}], "uart": [{"part": "mhz19b", "bus": 1}],
        "accel": {"part": "lis3dh", "bus": 0, "addr": 0x18, "rate_hz": 50},
        "pinmap": "esp32s3-devkitc-1"}


def node_config(tmp: Path, port: int, steps: list[dict[str, Any]], *, end_ms: int | None = None,
                speed: float = 5, state: str = "state", **sections: Any) -> dict[str, Any]:
    scenario = tmp / "scenario.json"
    scenario.write_text(json.dumps({"steps": steps, **({"end_ms": end_ms} if end_ms else {})}))
    return {"node_id": NODE, "key_hex": KEY.hex(), "controller": {"host": "127.0.0.1", "port": port},
            "link_plain": True,
            "hw": "sim-esp32s3", "hb_ms": 10000, **sections,
            "sim": {"scenario": str(scenario), "speed": speed, "state_dir": str(tmp / state), "seed": 1}}


def presses(node: FirmwareNode, pins: tuple[str, ...]) -> list[Line]:
    """The scenario's press edges (active-low buttons: level 0) on these pins."""
    return [ln for ln in node.lines if ln.tag == "edge" and ln.fields["pin"] in pins and ln.fields["level"] == "0"]


def no_errors(node: FirmwareNode) -> None:
    assert not node.find("error"), node.tail()
    assert not any("Error" in line for line in node.other), node.other


async def test_hello_welcome_events_and_heartbeats_acked(tmp_path):
    steps = [{"at_ms": 300, "pin": "call", "press_ms": 200, "bounce": True}, {"at_ms": 600, "pin": "pir", "level": 1}]
    async with NodePeer({NODE: KEY}, hb_ms=2000) as peer:
        cfg = node_config(tmp_path, peer.port, steps, **BEDSIDE)
        async with FirmwareNode(cfg, tmp_path) as node:
            boot = await node.wait_line("boot")
            await node.wait_line("link", "up")
            press = await node.wait_line("event", kind="button", src="call")
            await node.wait_line("acked", e=press.fields["e"])
            pir = await node.wait_line("event", kind="presence", src="pir", val=1)
            await node.wait_line("acked", e=pir.fields["e"])
            hb = await node.wait_line("hb", start=node.lines.index(pir))
            pir_s = next(f["s"] for _, f in peer.frames("event") if f["e"] == pir.int("e"))
            _, hb_frame = await peer.wait_frame(lambda c, f: f["t"] == "hb" and f["s"] > pir_s)
    _, hello = peer.frames("hello")[0]
    assert hello["n"] == NODE and hello["b"] == boot.int("boot") == 1 and hello["s"] == 1
    assert hello["hb_ms"] == 10000 and {"button", "presence", "indicator", "tone"} <= set(hello["caps"])
    events = [f for _, f in peer.frames("event")]
    assert [(e["k"], e["src"], e["val"], e["e"], e["b"]) for e in events] == [
        ("button", "call", 1, press.int("e"), 1), ("presence", "pir", 1, pir.int("e"), 1)]
    assert [press.int("e"), pir.int("e")] == [1, 2], "events are numbered from 1 in every boot"
    frames = [f["s"] for _, f in peer.frames()]
    assert frames == sorted(frames) and len(set(frames)) == len(frames), "s grows in the order frames leave"
    sent = {ln.int("e"): ln.int("s") for ln in node.find("sent")}
    assert [sent[e["e"]] for e in events] == [e["s"] for e in events], "the sent line names the frame"
    assert 300 <= events[0]["at_ms"] < 400, "at_ms is the edge, not the end of the debounce"
    assert len(node.find("event", kind="button")) == 1, "bounce made more than one event"
    # the welcome's hb_ms was adopted; the heartbeat carries the input levels
    assert hb.node_ms - pir.node_ms <= 5000, "every 2 s (the welcome's), not every 10 s (the node's own)"
    assert hb_frame["state"] == {"call": 0, "pir": 1} and hb_frame["drop"] == 0 and hb_frame["heap"] > 0
    assert peer.errors == []
    no_errors(node)


async def test_commands_drive_indicator_and_tone(tmp_path):
    async with NodePeer({NODE: KEY}) as peer:
        async with FirmwareNode(node_config(tmp_path, peer.port, [], **BEDSIDE), tmp_path) as node:
            await node.wait_line("link", "up")
            await peer.send_cmd("indicator", p="acknowledged")
            at = (await node.wait_line("indicator", pattern="acknowledged")).node_ms
            await node.wait_line("pin", name="led", value=1)
            await node.wait_line("cmd", c="indicator", p="acknowledged")
            await peer.send_cmd("indicator", p="received")  # slow blink: the light goes off and on
            start = len(node.lines)
            await node.wait_line("indicator", pattern="received", start=start)
            await node.wait_line("pin", name="led", value=0, start=start)
            await node.wait_line("pin", name="led", value=1, start=start)
            await peer.send_cmd("tone", p="high")
            await node.wait_line("pin", name="buzzer", value=1)
            await peer.send_cmd("tone", p="loud")
            await node.wait_line("reject", reason="bad_command")
            await peer.send_cmd("config", hb_ms=2000)
            await node.wait_line("cmd", c="config")
            await node.wait_line("hb", start=len(node.lines))
    assert at > 0 and peer.errors == []
    no_errors(node)


async def test_ack_timeout_reconnects_and_resends_the_same_event_in_a_new_frame(tmp_path):
    steps = [{"at_ms": 200, "pin": "call", "press_ms": 100}]
    async with NodePeer({NODE: KEY}) as peer:
        peer.ack_events = False
        async with FirmwareNode(node_config(tmp_path, peer.port, steps, speed=10, **BEDSIDE), tmp_path) as node:
            event = await node.wait_line("event", kind="button")
            await peer.wait_frame(lambda c, f: f["t"] == "event")
            peer.ack_events = True
            down = await node.wait_line("link", "down", reason="ack_timeout")
            backoff = await node.wait_line("backoff", start=node.lines.index(down))
            await node.wait_line("acked", e=event.fields["e"])
    sent = [(conn, f["b"], f["e"]) for conn, f in peer.frames("event")]
    assert sent == [(0, 1, event.int("e")), (1, 1, event.int("e"))], "the same event, on the new connection"
    first, again = [f["s"] for _, f in peer.frames("event")]
    assert 5000 <= down.node_ms - event.node_ms <= 5600, "ACK_TIMEOUT_MS is 5 s"
    assert 125 <= backoff.int("ms") <= 250, "first backoff is drawn from [250/2, 250]"
    hello_seqs = [f["s"] for _, f in peer.frames("hello")]
    assert hello_seqs[0] < first < hello_seqs[1] < again, "every frame takes a new s, a resent event too"
    no_errors(node)


async def test_closed_connection_reconnects_and_resends(tmp_path):
    steps = [{"at_ms": 200, "pin": "call", "press_ms": 100}]
    async with NodePeer({NODE: KEY}) as peer:
        peer.close_on_events = 3  # three connections die on the event, the fourth acks it
        async with FirmwareNode(node_config(tmp_path, peer.port, steps, speed=10, **BEDSIDE), tmp_path) as node:
            event = await node.wait_line("event", kind="button")
            await node.wait_line("acked", e=event.fields["e"])
    assert [conn for conn, _ in peer.frames("event")] == [0, 1, 2, 3]
    assert {(f["b"], f["e"]) for _, f in peer.frames("event")} == {(1, event.int("e"))}
    assert len({f["s"] for _, f in peer.frames("event")}) == 4, "each resend is a new frame"
    assert [ln.fields["reason"] for ln in node.find("link", "down")] == ["closed"] * 3
    # every connection got a welcome, which resets the backoff to its first step
    assert all(125 <= ln.int("ms") <= 250 for ln in node.find("backoff"))
    no_errors(node)


async def test_backoff_doubles_to_the_cap_without_a_controller(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = node_config(tmp_path, port, [], end_ms=240_000, speed=60, **BEDSIDE)
    async with FirmwareNode(cfg, tmp_path) as node:
        await node.wait_line("end", timeout_s=20)
    waits = [ln.int("ms") for ln in node.find("backoff")]
    nominal = [min(250 * 2**i, 30_000) for i in range(len(waits))]
    assert len(waits) >= 10 and nominal[-1] == 30_000
    assert all(d // 2 <= w <= d for w, d in zip(waits, nominal)), list(zip(waits, nominal))
    assert {ln.fields["reason"] for ln in node.find("link", "down")} == {"io_error"}


@pytest.mark.parametrize("fault", ["tag", "sid"])
async def test_welcome_that_fails_verification_is_not_accepted(tmp_path, fault):
    steps = [{"at_ms": 100, "pin": "call", "press_ms": 100}]
    async with NodePeer({NODE: KEY}) as peer:
        peer.bad_welcomes = [fault]
        async with FirmwareNode(node_config(tmp_path, peer.port, steps, speed=10, **BEDSIDE), tmp_path) as node:
            reject = await node.wait_line("reject")
            down = await node.wait_line("link", "down", reason="welcome_timeout")
            up = await node.wait_line("link", "up")
            event = await node.wait_line("event", kind="button")
            await node.wait_line("acked", e=event.fields["e"])
    assert reject.fields["reason"] == ("bad_mac" if fault == "tag" else "bad_message")
    assert len(node.find("link", "up")) == 1 and node.lines.index(up) > node.lines.index(down)
    assert [f["t"] for f in peer.conns[0].frames] == ["hello"], "nothing streamed before a good welcome"
    no_errors(node)


async def test_failing_sensors_become_fault_events_recover_and_the_node_carries_on(tmp_path):
    steps = [{"at_ms": 0, "sht3x": {"fault": "crc"}}, {"at_ms": 0, "mhz19b": {"co2_ppm": 700}},
             {"at_ms": 0, "lis3dh": {"fault": "silent"}},
             {"at_ms": 5_000, "sht3x": {"fault": "none", "temp_c": 21.0}}]
    sensors = {k: FULL[k] for k in ("i2c", "uart", "accel")}
    async with NodePeer({NODE: KEY}) as peer:
        cfg = node_config(tmp_path, peer.port, steps, speed=10, reading_ms=2000, **sensors)
        async with FirmwareNode(cfg, tmp_path) as node:
            crc = await node.wait_line("fault", src="sht3x", code=2)
            await node.wait_line("fault", src="accel", code=1)
            first = await node.wait_line("reading")
            healed = await node.wait_line("reading", start=node.lines.index(first) + 1, temp_mdegc=21000)
            await peer.wait_frame(lambda c, f: f["t"] == "event" and f["k"] == "fault" and f["src"] == "accel")
            await peer.wait_frame(lambda c, f: f["t"] == "event" and f["k"] == "fault" and f["src"] == "sht3x"
                                  and f["val"] == 0)
    assert node.lines.index(crc) < node.lines.index(first) and "temp_mdegc" not in first.fields and first.int("co2_ppm") == 700
    assert healed.int("co2_ppm") == 700
    faults = sorted((f["src"], f["val"]) for _, f in peer.frames("event") if f["k"] == "fault")
    assert faults == [("accel", 1), ("sht3x", 0), ("sht3x", 2)], \
        "one event per fault, not one per failed reading, and one (val 0) when the part works again"
    no_errors(node)


async def test_boot_counter_increments_across_runs(tmp_path):
    async with NodePeer({NODE: KEY}) as peer:
        boots = []
        for run in range(2):
            cfg = node_config(tmp_path, peer.port, [], end_ms=300, speed=2, **BEDSIDE)
            async with FirmwareNode(cfg, tmp_path / f"run{run}") as node:
                boots.append((await node.wait_line("boot")).int("boot"))
                await node.wait_line("end")
                assert await node.wait_exit() == 0
    assert boots == [1, 2]
    assert [f["b"] for _, f in peer.frames("hello")] == [1, 2]
    assert [f["s"] for _, f in peer.frames("hello")] == [1, 1], "seq starts at 1 on every boot"


async def test_soak_ten_simulated_minutes_in_a_board_sized_heap(tmp_path):
    end_ms = 600_000
    steps = [{"at_ms": 0, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}}, {"at_ms": 0, "co2_ppm": 620},
             {"at_ms": 0, "accel": "walk"},
             {"at_ms": 5_000, "pin": "call", "press_ms": 300, "bounce": True, "every_ms": 20_000},
             {"at_ms": 12_000, "pin": "cancel", "press_ms": 200, "bounce": True, "every_ms": 45_000},
             {"at_ms": 8_000, "pin": "pir", "level": 1, "every_ms": 15_000},
             {"at_ms": 15_000, "pin": "pir", "level": 0, "every_ms": 15_000},
             {"at_ms": 60_000, "sht3x": {"temp_c": 24.9, "rh_pct": 51.5}, "every_ms": 120_000},
             {"at_ms": 120_000, "sht3x": {"temp_c": 22.4, "rh_pct": 44.0}, "every_ms": 120_000},
             {"at_ms": 90_000, "co2_ppm": 950, "every_ms": 90_000},
             {"at_ms": 100_000, "accel": "fall", "every_ms": 150_000},
             {"at_ms": 110_000, "accel": "walk", "every_ms": 150_000}]
    async with NodePeer({NODE: KEY}) as peer:
        cfg = node_config(tmp_path, peer.port, steps, end_ms=end_ms, speed=60, **FULL)
        async with FirmwareNode(cfg, tmp_path) as node:
            await node.wait_line("end", timeout_s=40)
            code = await node.wait_exit()
    assert code == 0, node.tail()
    no_errors(node)
    assert peer.errors == []
    hbs = node.find("hb")
    assert len(hbs) >= 55
    third = len(hbs) // 3
    first = statistics.median(ln.int("heap_alloc") for ln in hbs[:third])
    last = statistics.median(ln.int("heap_alloc") for ln in hbs[-third:])
    assert last - first <= 1024, f"heap after gc grew from {first} to {last} bytes"
    events = node.find("event")
    pressed = presses(node, ("call", "cancel"))
    assert len(pressed) == 30 + 14
    for edge in pressed:  # every press is one event, before the next press of that button
        made = node.find("event", kind="button", src=edge.fields["pin"], start=node.lines.index(edge))
        later = [e for e in pressed if e.fields["pin"] == edge.fields["pin"] and e.node_ms > edge.node_ms]
        assert made and (not later or made[0].node_ms < later[0].node_ms), f"press lost: {edge.raw}"
    assert len([e for e in events if e.fields["kind"] == "button"]) == len(pressed)
    assert len([e for e in events if e.fields["kind"] == "presence"]) == 40 + 39  # the 40th "0" is at end_ms
    assert len([e for e in events if e.fields["kind"] == "fall"]) == 4
    assert not node.find("fault"), "healthy sensors reported a fault"
    readings = node.find("reading")
    assert len(readings) >= 19 and {"temp_mdegc", "rh_mpct", "co2_ppm"} <= set(readings[-1].fields)
    acked = {ln.int("e") for ln in node.find("acked")}
    assert {e.int("e") for e in events[:-3]} <= acked, "events not acked by the end"
