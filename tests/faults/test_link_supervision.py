"""Issue 12, item 6: a configured node that never connects, and a node input the room file does not
map, are technical alarms with counters; the second is also a warning of `smartroom check`."""

from __future__ import annotations


import json
import logging

import aiohttp
import pytest

from controller import cli
from controller.link.nodeclient import NodeClient
from controller.sim.nodes import SimNode
from tests.faults.linkfaults import WAIT_S, firmware, metric, room_server, stored, until
from tests.helpers import node_key, write_room_files
from tests.roomsim import FakeClock

FIRST_CHECK_IN_S = 60


def alarmed(server, ctype: str) -> list[str]:
    return sorted(c["source"]["node"] for c in server.controller.snapshot()["calls"] if c["type"] == ctype)


async def test_a_configured_node_that_never_checks_in_is_a_technical_alarm(tmp_path):
    clock = FakeClock()
    async with room_server(tmp_path, clock, supervision={"first_check_in_s": FIRST_CHECK_IN_S}) as server:
        controller = server.controller
        started = clock.ms
        bedside = NodeClient("bedside-a", node_key("bedside-a"))
        await bedside.connect(server.endpoints.node_host, server.endpoints.node_port)
        clock.ms = started + FIRST_CHECK_IN_S * 1000
        await controller.tick()
        assert alarmed(server, "node_never_connected") == [], "not before its time"
        clock.ms += 1
        await controller.tick()
        never = ["bath", "env", "good", "wearable-a"]
        assert alarmed(server, "node_never_connected") == never
        assert await controller.tick() == [], "raised once, not again on every tick"
        states = {n["id"]: n["state"] for n in controller.snapshot()["nodes"]}
        assert [n for n, s in states.items() if s == "never_connected"] == never

        token = await server.create_token("facilities", "tech")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/metrics") as resp:
                text = await resp.text()
        assert metric(text, "smartroom_nodes", 'state="never_connected"') == 4
        # One of them turns up: its alarm clears, the others stay.
        bath = NodeClient("bath", node_key("bath"))
        await bath.connect(server.endpoints.node_host, server.endpoints.node_port)
        assert alarmed(server, "node_never_connected") == ["env", "good", "wearable-a"]
        await bath.close()
        await bedside.close()
    assert [d["by"] for d in stored(tmp_path / "room.db", "call.cleared")] == ["bath checked in"]


async def test_the_alarm_survives_a_restart_and_is_not_raised_twice(tmp_path):
    clock = FakeClock()
    for run in range(2):
        async with room_server(tmp_path, clock, supervision={"first_check_in_s": FIRST_CHECK_IN_S}) as server:
            clock.ms += FIRST_CHECK_IN_S * 1000 + 1
            await server.controller.tick()
            assert alarmed(server, "node_never_connected") == ["bath", "bedside-a", "env", "good", "wearable-a"]
    raised = [d["node"] for d in stored(tmp_path / "room.db", "call.raised") if d["type"] == "node_never_connected"]
    assert sorted(raised) == ["bath", "bedside-a", "env", "good", "wearable-a"]


async def test_a_press_on_an_input_the_room_file_does_not_map_is_a_technical_alarm(tmp_path):
    """A typo between the node's pin map ('cal') and the room file ('call'): the press is stored and
    acked like any other (nothing is lost), and the room raises an alarm and counts it."""
    async with room_server(tmp_path) as server:
        steps = [{"at_ms": 200, "pin": "call", "press_ms": 100}, {"at_ms": 1500, "pin": "call", "press_ms": 100}]
        cfg = firmware("bedside-a", server.endpoints.node_port, tmp_path, steps,
                       inputs=[{"name": "cal", "kind": "button", "pin": "call"}])
        async with SimNode(cfg, tmp_path / "nodes") as node:
            first = await node.wait_for("event", src="cal", timeout_s=WAIT_S)
            await node.wait_for("acked", e=first.fields["e"], timeout_s=WAIT_S)
            second = await node.wait_for("event", src="cal", start=node.lines.index(first) + 1, timeout_s=WAIT_S)
            await node.wait_for("acked", e=second.fields["e"], timeout_s=WAIT_S)
        calls = server.controller.snapshot()["calls"]
        token = await server.create_token("facilities", "tech")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/api/v1/gateway") as resp:
                gateway = await resp.json()
            async with http.get(server.endpoints.api_url + "/metrics") as resp:
                text = await resp.text()
    assert [(c["type"], c["source"], c["presses"]) for c in calls] == [
        ("unmapped_input", {"node": "bedside-a", "input": "input:cal"}, 2)]
    assert "no meaning for input 'cal'" in calls[0]["detail"]["reason"]
    assert gateway["unmapped_inputs"] == {"bedside-a/cal": 2}
    assert metric(text, "smartroom_unmapped_input_events_total", 'input="cal",node="bedside-a"') == 2
    assert [d["src"] for d in stored(tmp_path / "room.db", "node.event")] == ["cal", "cal"], "stored, not lost"


async def test_the_alarm_clears_at_start_once_the_room_file_maps_the_input(tmp_path):
    async with room_server(tmp_path) as server:
        node = NodeClient("bedside-a", node_key("bedside-a"))
        await node.connect(server.endpoints.node_host, server.endpoints.node_port)
        await node.send_event(node.event_msg("button", "cal"))
        await node.close()
        assert alarmed(server, "unmapped_input") == ["bedside-a"]
    async with room_server(tmp_path, nodes={"bedside-a": {"bed": "A", "inputs": {"cal": "patient_call"}}}) as server:
        assert alarmed(server, "unmapped_input") == []
    assert [d["by"] for d in stored(tmp_path / "room.db", "call.cleared")] == ["the room file maps bedside-a/cal now"]


def test_smartroom_check_warns_about_inputs_the_room_file_does_not_map(tmp_path, capsys):
    room, keys = write_room_files(tmp_path, "check")
    node_cfg = tmp_path / "bedside-a.json"
    node_cfg.write_text(json.dumps({"node_id": "bedside-a", "inputs": [
        {"name": "cal", "kind": "button", "pin": "call"}, {"name": "cancel", "kind": "button", "pin": "cancel"},
        {"name": "pir", "kind": "presence", "pin": "pir"}]}))
    assert cli.main(["check", "--config", str(room), "--keys", str(keys), "--node-config", str(node_cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"warning: {room}: nodes.bedside-a.inputs: the node has input 'cal', which the room file gives no meaning "
        "(did you mean 'call'?): its presses would raise the technical alarm 'input not in the room file', not a call"
        f" (node config {node_cfg})",
        f"warning: {room}: nodes.bedside-a.inputs.call: the node has no input 'call' (did you mean 'cal'?): "
        f"nothing will ever raise this patient_call (node config {node_cfg})"]
    assert out[2] == f"{room}: room check, 5 nodes: 2 warning(s)"
    assert cli.main(["check", "--config", str(room), "--node-config", str(node_cfg), "--strict"]) == 1
    capsys.readouterr()
    node_cfg.write_text(json.dumps({"node_id": "bedside-a", "inputs": [
        {"name": n, "kind": "button", "pin": n} for n in ("call", "cancel", "pir")]}))
    assert cli.main(["check", "--config", str(room), "--node-config", str(node_cfg), "--strict"]) == 0
    assert capsys.readouterr().out == f"{room}: room check, 5 nodes: ok\n"


def test_smartroom_check_warns_about_a_gpio_pin_map_and_missing_keys(tmp_path, capsys):
    room, keys = write_room_files(tmp_path, "check", )
    text = room.read_text() + ('[nodes.wired]\ntransport = "gpio"\ninputs = { call = "patient_call" }\n'
                               '[nodes.wired.gpio.inputs]\ncal = 5\n')
    room.write_text(text)
    assert cli.main(["check", "--config", str(room), "--keys", str(keys)]) == 0
    out = capsys.readouterr().out
    assert "nodes.wired.inputs: the node has input 'cal', which the room file gives no meaning" in out
    assert f"{keys}: no key for node" not in out, "a gpio node needs no key"
    text += '[nodes.spare]\ninputs = { call = "patient_call" }\n'
    room.write_text(text)
    assert cli.main(["check", "--config", str(room), "--keys", str(keys)]) == 0
    assert f"warning: {keys}: no key for node 'spare': it cannot connect" in capsys.readouterr().out


@pytest.mark.parametrize("mode, loud", [(0o600, False), (0o400, False), (0o640, True), (0o604, True),
                                         (0o620, True), (0o644, True)])
def test_a_key_file_others_can_read_is_a_warning_at_check_and_run(tmp_path, capsys, mode, loud):
    room, keys = write_room_files(tmp_path, "check")
    keys.chmod(mode)
    assert cli.main(["check", "--config", str(room), "--keys", str(keys), "--strict"]) == (1 if loud else 0)
    out = capsys.readouterr().out
    warning = f"{keys} is mode {mode:04o}: others on this machine can read the node keys"
    assert (warning in out) == loud, out
    # `smartroom run` says it too, before it starts (half a TLS pair stops it right after)
    (tmp_path / "key.pem").write_text("a key without its certificate")
    assert cli.main(["run", "--config", str(room), "--keys", str(keys), "--db", str(tmp_path / "room.db"),
                     "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "key.pem")]) == 2
    assert (warning in capsys.readouterr().err) == loud


def test_run_without_a_key_file_goes_on_to_start(tmp_path, capsys):
    """--keys is optional (provisioned nodes' keys are in the database): without it `smartroom run`
    checks no key file and goes on; here to the half TLS pair, which stops it with its own message."""
    room, _keys = write_room_files(tmp_path, "check")
    (tmp_path / "key.pem").write_text("a key without its certificate")
    assert cli.main(["run", "--config", str(room), "--db", str(tmp_path / "room.db"),
                     "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "key.pem")]) == 2
    err = capsys.readouterr().err
    assert "smartroom: TLS:" in err and "node keys" not in err, err


async def test_a_heartbeat_naming_an_unmapped_input_is_an_alarm_before_any_press(tmp_path, caplog):
    """The node's heartbeat lists its inputs: a typo ('cal' for 'call') shows at installation, not at
    the first patient press (which would raise no call)."""
    caplog.set_level(logging.WARNING, logger="smartroom.service")
    async with room_server(tmp_path) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        good = NodeClient("bath", node_key("bath"))  # maps cord and pir: nothing to say
        await good.connect(host, port)
        await good.send({**good.hb_msg(), "state": {"cord": 0, "pir": 0}})
        await good.recv_ack(good.seq)
        await good.close()
        assert alarmed(server, "unmapped_input") == []
        typo = NodeClient("bedside-a", node_key("bedside-a"))
        await typo.connect(host, port)
        for _ in range(2):  # checked once a boot: the second heartbeat adds nothing
            await typo.send({**typo.hb_msg(), "state": {"cal": 0, "cancel": 0}})
            await typo.recv_ack(typo.seq)
        await typo.close()
        calls = [c for c in server.controller.snapshot()["calls"] if c["type"] == "unmapped_input"]
    assert [(c["source"], c["detail"]["kind"]) for c in calls] == [({"node": "bedside-a", "input": "input:cal"},
                                                                     "reported")]
    assert "no press yet" in calls[0]["detail"]["reason"]
    raised = [d for d in stored(tmp_path / "room.db", "call.raised") if d["type"] == "unmapped_input"]
    assert len(raised) == 1
    logged = [r.getMessage() for r in caplog.records]
    assert any("nothing will ever raise this patient_call" in m and "bedside-a" in m for m in logged), logged
    assert not any("node=bath" in m for m in logged)


async def test_a_readable_key_file_is_a_health_reason_until_it_is_fixed(tmp_path):
    """Anyone who can read the keys can forge a node's in-room cancel and clear real calls: the room's
    health says so for as long as the file stays open (a chmod fixes it without a restart)."""
    _, keys = write_room_files(tmp_path, "check")
    keys.chmod(0o640)
    async with room_server(tmp_path, keys_path=keys) as server:  # as `smartroom run --keys` starts it
        async with aiohttp.ClientSession() as http:
            async def health() -> dict:
                async with http.get(server.endpoints.api_url + "/api/v1/health") as resp:
                    return await resp.json()

            open_ = await health()
            keys.chmod(0o600)
            fixed = await health()
    assert open_["status"] == "degraded"
    assert [r["reason"] for r in open_["reasons"]] == ["keys_readable"]
    assert "mode 0640" in open_["reasons"][0]["message"] and "chmod 600" in open_["reasons"][0]["message"]
    assert fixed["status"] == "ok" and fixed["reasons"] == []
