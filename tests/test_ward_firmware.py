"""Ward rollouts (docs/firmware.md, "Ward rollouts"): rooms on a real Mosquitto publish their nodes'
firmware, the ward console updates a ward's nodes room by room, and both sides keep rollouts across
restarts.

Where nodes update, they are the real firmware in MicroPython (tests/test_firmware_ota.py's boards,
booted again by :class:`Powered` whenever they reset, as a board would); where a test is about the
ward's sequencing, holds, refusals and restarts, the nodes are protocol-level clients that say they
take updates (no download happens there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from controller.runner import RoomServer
from controller.uplink.wire import Command, WireError, decode_command, decode_firmware
from tests.helpers import keys_for, node_key, room_config
from tests.test_firmware_ota import (CONFIRM_MS, NEVER_CONFIRMS_MS, OTA_HEAP, RESET_EXIT, WAIT_S, Board,  # noqa: F401
                                     bundles, node_cfg, running)
from tests.test_ward_uplink import eventually
from tests.wardkit import Cutter, broker, ward_config, ward_room  # noqa: F401
from ward.server import WardServer

NODES = ("bedside-a", "good")  # the nodes each room updates (the room file's others stay offline)
SHA = "ab" * 32


# --------------------------------------------------------------------------- helpers
class Powered:
    """A board with power: booted, and booted again each time the firmware asks for a reset."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.boots = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> "Powered":
        await self.board.boot()
        self.task = asyncio.create_task(self._keep())
        return self

    async def _keep(self) -> None:
        while True:
            node = self.board.node
            assert node is not None
            code = await node.wait_exit(3600)
            if code != RESET_EXIT:
                return  # killed, or crashed: the test sees it in the node's lines
            self.boots += 1
            await self.board.boot()

    def lines(self, tag: str, **fields: Any) -> list:
        return [ln for n in self.board.boots for ln in n.find(tag, **fields)]

    async def off(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.board.off()


async def power_on(servers: dict[str, RoomServer], tmp: Path, pub: bytes, nodes=NODES,
                   confirm_ms: int = CONFIRM_MS) -> dict[tuple[str, str], Powered]:
    """Real firmware nodes, ``nodes`` in each room, each on its own flash folder."""
    boards = {}
    for room, server in servers.items():
        for node in nodes:
            folder = tmp / room / node
            folder.mkdir(parents=True)
            cfg = node_cfg(folder, server.endpoints.node_port, pub, confirm_ms, node_id=node,
                           key_hex=keys_for(room_config())[node].hex())
            boards[(room, node)] = await Powered(Board(cfg, folder)).start()
    return boards


def room_dirs(tmp: Path, room: str, held: list) -> Path:
    folder = tmp / room / "bundles"
    folder.mkdir(parents=True, exist_ok=True)
    for name, bundle in held:
        shutil.copytree(bundle.root, folder / name)
    return folder


async def start_room(broker, tmp: Path, room: str, pub: bytes, port: int | None = None) -> RoomServer:  # noqa: F811
    class At:  # where this room reaches the broker (maybe through a Cutter)
        host = broker.host
    At.port = port or broker.port
    config = ward_room(room, At, tmp / room)
    server = RoomServer(config, keys_for(config), tmp / room / "room.db", api_port=0, node_port=0,
                        firmware_bundles=tmp / room / "bundles", firmware_public_key=pub)
    await server.start()
    server.ota.node_deadline_s = WAIT_S
    return server


@contextlib.asynccontextmanager
async def rooms_and_ward(broker, tmp: Path, holdings: dict[str, list], pub: bytes,  # noqa: F811
                         ports: dict[str, int] | None = None):
    """Rooms (each holding ``holdings[room]``: (folder name, bundle) pairs; reaching the broker on
    ``ports[room]`` if given) and a ward console with a facilities and a nurse token."""
    servers: dict[str, RoomServer] = {}
    ward: WardServer | None = None
    try:
        for room, held in holdings.items():
            room_dirs(tmp, room, held)
            servers[room] = await start_room(broker, tmp, room, pub, (ports or {}).get(room))
        config, _ = ward_config(broker, tmp, rooms=tuple(holdings))
        ward = WardServer(config, tmp / "ward.db", http_port=0)
        await ward.start()
        ward.tokens = {"facilities": await ward.create_token("facilities", "facilities desk"),
                       "nurse": await ward.create_token("nurse", "Nurse Kim")}
        yield servers, ward
    finally:
        while getattr(ward, "replaced_by", None) is not None:  # restarted by the test: stop the one running
            ward = ward.replaced_by
        if ward is not None:
            await ward.stop()
        for server in servers.values():
            await server.stop()


async def restart_ward(ward: WardServer, tmp: Path) -> WardServer:
    """The ward console stops and starts again on the same database (a new HTTP port)."""
    await ward.stop()
    again = WardServer(ward.config, tmp / "ward.db", http_port=0)
    await again.start()
    again.tokens = {"facilities": await again.create_token("facilities", "desk 2")}
    ward.replaced_by = again
    return again


async def ward_api(ward: WardServer, method: str, path: str, role: str = "facilities", body: Any = None):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, ward.url + path, json=body,
                                   headers={"Authorization": f"Bearer {ward.tokens[role]}"}) as resp:
            return resp.status, await resp.json()


async def fake_node(server: RoomServer, node: str, fw: str = "0.1.0", boot: int = 1) -> NodeClient:
    """A protocol-level node that says it takes updates (it downloads nothing)."""
    client = NodeClient(node, node_key(node), boot=boot)
    client.hello_msg = lambda: {**NodeClient.hello_msg(client), "fw": fw, "hw": "sim-esp32s3",
                                "caps": ["button", "ota"]}
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    return client


async def reports(ward: WardServer, room: str, **node_fw: str) -> None:
    """The ward has the room's firmware status with these nodes online at these versions."""
    def ok() -> bool:
        status = ward.console.firmware.get(room)
        seen = {n["node"]: n["fw"] for n in status.nodes if n["online"]} if status else {}
        return all(seen.get(n.replace("_", "-")) == v for n, v in node_fw.items())
    await eventually(ok, WAIT_S)


async def rollout_state(ward: WardServer, rollout_id: int, states: tuple[str, ...], timeout_s: float = 4 * WAIT_S):
    def ended() -> bool:
        return any(r.id == rollout_id and r.state in states for r in ward.console.ward_rollouts.rollouts)
    await eventually(ended, timeout_s)
    return ward.console.ward_rollouts.get(rollout_id)


def ward_trail(entries) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.target) for e in reversed(entries) if e.action.startswith("firmware.ward.")]


# --------------------------------------------------------------------------- the wire
def test_a_firmware_command_is_checked_at_its_edges():
    def cmd(**over: Any) -> bytes:
        return json.dumps({"v": 1, "id": "c1", "action": "firmware", "by": "Tech Tom", "ts_ms": 1, "bundle": SHA,
                           "nodes": ["a"], "rollout": "w1", **over}).encode()

    ok = decode_command(cmd())
    assert (ok.bundle, ok.nodes, ok.rollout, ok.by) == (SHA, ("a",), "w1", "Tech Tom")
    assert decode_command(Command("c2", "firmware", "T", 1, bundle=SHA, nodes=("a", "b"), rollout="w").encode()
                          ).nodes == ("a", "b")
    assert len(decode_command(cmd(nodes=[f"n{i}" for i in range(500)])).nodes) == 500
    for bad, why in [({"nodes": []}, "'nodes'"), ({"nodes": [f"n{i}" for i in range(501)]}, "'nodes'"),
                     ({"nodes": ["a", "a"]}, "'nodes'"), ({"nodes": ["x" * 65]}, "'nodes'"),
                     ({"nodes": "a"}, "'nodes'"), ({"bundle": SHA[:-1]}, "'bundle'"),
                     ({"bundle": SHA.upper()}, "'bundle'"), ({"rollout": ""}, "'rollout'")]:
        with pytest.raises(WireError, match=why):
            decode_command(cmd(**bad))


def test_a_firmware_status_is_checked():
    good = {"v": 1, "room": "r1", "ts_ms": 5, "nodes": [{"node": "a", "fw": "0.1.0"}],
            "bundles": [{"sha256": SHA, "version": "0.2.0", "board": "unix"}],
            "rollouts": [{"id": 1, "state": "running", "bundle": SHA, "ward": "k"}]}
    st = decode_firmware(json.dumps(good).encode(), "r1")
    assert st.nodes[0]["fw"] == "0.1.0" and st.rollouts[0]["ward"] == "k" and st.bad_bundles == ()
    for change, why in [({"room": "r2"}, "names room"), ({"nodes": {}}, "'nodes'"), ({"nodes": [1]}, "'nodes'"),
                        ({"bundles": [{"sha256": SHA}]}, "lacks 'version'"), ({"rollouts": [{"id": 1}]}, "lacks"),
                        ({"ts_ms": "5"}, "ts_ms")]:
        with pytest.raises(WireError, match=why):
            decode_firmware(json.dumps({**good, **change}).encode(), "r1")


# --------------------------------------------------------------------------- real firmware
async def test_a_ward_rollout_updates_every_node_room_by_room_and_survives_a_console_restart(broker, bundles,  # noqa: F811
                                                                                            tmp_path):
    new = bundles["new"]
    holdings = {"4b-12": [("v0.2.0", new)], "4b-14": [("v0.2.0", new)]}
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"]) as (servers, ward):
        boards = await power_on(servers, tmp_path, bundles["pub"])
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0", good="0.1.0")
            status, view = await ward_api(ward, "GET", "/api/v1/firmware")
            assert status == 200
            grid = {r["room"]: {n["node"]: n for n in r["nodes"]} for r in view["rooms"]}
            assert grid["4b-12"]["bedside-a"]["hw"] == "sim-esp32s3" and grid["4b-12"]["bedside-a"]["ota"] is True
            assert grid["4b-14"]["bath"]["online"] is False
            assert [(b["version"], b["rooms"]) for b in view["bundles"]] == [("0.2.0", ["4b-12", "4b-14"])]

            assert (await ward_api(ward, "POST", "/api/v1/firmware/rollouts", "nurse", {"bundle": new.sha256}))[0] == 403
            status, rollout = await ward_api(ward, "POST", "/api/v1/firmware/rollouts",
                                             body={"bundle": new.sha256[:12], "by": "Tech Tom"})
            assert status == 201, rollout
            assert [(p["room"], p["nodes"]) for p in rollout["rooms"]] == [("4b-12", list(NODES)), ("4b-14", list(NODES))]
            assert rollout["rooms"][0]["skipped"]["bath"] == "offline when the rollout started"
            assert (await ward_api(ward, "POST", "/api/v1/firmware/rollouts", body={"bundle": new.sha256}))[0] == 409

            # the canary confirms in the first room; then the ward console restarts mid-rollout
            await eventually(lambda: servers["4b-12"].ota.updates.get("bedside-a") is not None
                             and servers["4b-12"].ota.updates["bedside-a"].state == "confirmed", 2 * WAIT_S)
            assert not servers["4b-14"].ota.rollouts  # no other room is touched before the first is done
            ward = await restart_ward(ward, tmp_path)
            (again,) = ward.console.ward_rollouts.rollouts
            # the same rollout, taken up again (not restarted, not dropped); on a loaded machine the
            # restarted console may already have driven the second room to the end while starting
            # (the second room had no rollout before the restart, so only the new console began it)
            assert again.id == rollout["id"] and again.state in ("running", "held", "done")

            done = await rollout_state(ward, rollout["id"], ("done", "stopped"))
            assert (done.state, done.reason) == ("done", None)
            status, view = await ward_api(ward, "GET", "/api/v1/firmware")
            (shown,) = view["rollouts"]
            assert [(p["room"], p["state"], [(u["node"], u["state"]) for u in p["updates"]]) for p in shown["rooms"]] == [
                (room, "done", [(n, "confirmed") for n in NODES]) for room in servers]
            # (the restarted console learns each room's firmware view from the room: it may not have
            # heard from one yet)
            await eventually(lambda: all(room in ward.console.firmware and all(
                n["fw"] == "0.2.0" for n in ward.console.firmware[room].nodes if n["node"] in NODES)
                for room in servers), WAIT_S)

            # one node first, then the rest of its room, then the other room: in each room's own record
            for room, server in servers.items():
                trail = [(e.actor, e.action, e.target.split()[0]) for e in
                         reversed(await server.controller.store.read_audit(0, 200)) if e.action.startswith("firmware.")]
                assert trail[0] == ("Tech Tom", "firmware.rollout.start", "#1")
                assert trail.index(("node", "firmware.confirmed", "bedside-a")) < \
                    trail.index(("node", "firmware.accepted", "good"))
                assert trail[-1] == ("Tech Tom", "firmware.rollout.done", "#1")
                (mqtt,) = [e for e in await server.controller.store.read_audit(0, 200) if e.action == "MQTT firmware"]
                assert mqtt.actor == "Tech Tom" and mqtt.status == 200
            room_12_done = servers["4b-12"].ota.rollouts[0]
            assert room_12_done.state == "done" and servers["4b-14"].ota.rollouts[0].started_ms >= \
                max(u.at_ms for u in room_12_done.nodes.values())
            trail = ward_trail(await ward.console.store.read_audit(0, 200))
            # a restarted console whose broker connection takes a while (a loaded machine) holds for it, visibly
            assert all("no connection to the broker" in t for _, a, t in trail if a == "firmware.ward.held")
            actions = [a for _, a, _ in trail if a not in ("firmware.ward.held", "firmware.ward.going_on")]
            assert actions == ["firmware.ward.start", "firmware.ward.room_started", "firmware.ward.resumed",
                               "firmware.ward.room_done", "firmware.ward.room_started", "firmware.ward.room_done",
                               "firmware.ward.done"]
            assert {a for a, _, _ in ward_trail(await ward.console.store.read_audit(0, 200))} == {"Tech Tom"}
        finally:
            for board in boards.values():
                await board.off()


async def test_a_canary_that_never_confirms_rolls_back_and_stops_the_ward_rollout(broker, bundles, tmp_path):  # noqa: F811
    silent = bundles["silent"]  # 0.3.0 never links up: its trial misses the confirm deadline
    holdings = {"4b-12": [("v0.3.0", silent)], "4b-14": [("v0.3.0", silent)]}
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"]) as (servers, ward):
        boards = await power_on(servers, tmp_path, bundles["pub"], confirm_ms=NEVER_CONFIRMS_MS)
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0", good="0.1.0")
            status, rollout = await ward_api(ward, "POST", "/api/v1/firmware/rollouts",
                                             body={"bundle": silent.sha256, "by": "Tech Tom"})
            assert status == 201, rollout
            stopped = await rollout_state(ward, rollout["id"], ("done", "stopped"))
            assert stopped.state == "stopped"
            assert stopped.reason.startswith("room 4b-12: room rollout #1 stopped: bedside-a rolled_back (not_confirmed)")
            # the canary rolled back by itself and runs the old firmware again; nothing else was touched
            canary = boards[("4b-12", "bedside-a")]
            assert canary.lines("fw", ver="0.3.0", trial="1") and canary.lines("ota", st="rolled_back", ver="0.3.0")
            await eventually(lambda: canary.board.node is not None and canary.board.node.find("link", "up"), WAIT_S)
            assert (await running(canary.board.node)) == ("-", "-")
            assert servers["4b-12"].ota.rollouts[0].nodes["good"].state == "waiting"
            assert not servers["4b-14"].ota.rollouts
            for key, board in boards.items():
                if key != ("4b-12", "bedside-a"):
                    assert not board.lines("ota") and board.boots == 0, key
            status, view = await ward_api(ward, "GET", "/api/v1/firmware")
            (shown,) = view["rollouts"]
            assert shown["state"] == "stopped" and "rolled_back (not_confirmed)" in shown["reason"]
            assert [(p["room"], p["state"]) for p in shown["rooms"]] == [("4b-12", "stopped"), ("4b-14", "waiting")]
            assert shown["rooms"][1]["reason"] == "not started: the ward rollout stopped"
            assert dict((u["node"], u["state"]) for u in shown["rooms"][0]["updates"]) == {
                "bedside-a": "rolled_back", "good": "waiting"}
            actions = [a for _, a, _ in ward_trail(await ward.console.store.read_audit(0, 200))]
            assert actions == ["firmware.ward.start", "firmware.ward.room_started", "firmware.ward.stopped"]
        finally:
            for board in boards.values():
                await board.off()


async def test_a_bundle_for_another_board_is_refused_by_the_canary_and_stops_everything(broker, bundles, tmp_path):  # noqa: F811
    board_bundle = bundles["board"]  # for the esp32s3; the nodes here run the unix port's firmware
    holdings = {"4b-12": [("esp", board_bundle)], "4b-14": [("esp", board_bundle)]}
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"]) as (servers, ward):
        powered = await power_on(servers, tmp_path, bundles["pub"], ("bedside-a",))
        boards = list(powered.values())
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0")
            status, rollout = await ward_api(ward, "POST", "/api/v1/firmware/rollouts",
                                             body={"bundle": board_bundle.sha256, "rooms": ["4b-14", "4b-12"]})
            assert status == 201 and rollout["by"] == "facilities desk"
            stopped = await rollout_state(ward, rollout["id"], ("done", "stopped"))
            assert stopped.reason == "room 4b-14: room rollout #1 stopped: bedside-a refused (wrong_board)"
            assert not servers["4b-12"].ota.rollouts and not boards[0].lines("ota")
            assert boards[1].lines("ota", st="refused", why="wrong_board") and boards[1].boots == 0
        finally:
            for board in boards:
                await board.off()


# --------------------------------------------------------------------------- sequencing, refusals, restarts
async def test_a_room_whose_copy_fails_its_signature_check_refuses_and_the_reason_shows(broker, bundles, tmp_path):  # noqa: F811
    new, foreign = bundles["new"], bundles["foreign"]
    assert foreign.sha256 == new.sha256  # the same manifest, signed by another key
    holdings = {"4b-12": [("v0.2.0", new)], "4b-14": [("v0.2.0", foreign)]}
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"]) as (servers, ward):
        nodes = [await fake_node(servers[room], "bedside-a") for room in servers]
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0")
            status, view = await ward_api(ward, "GET", "/api/v1/firmware")
            (offered,) = view["bundles"]
            assert offered["rooms"] == ["4b-12"] and offered["missing"] == ["4b-14"]
            assert "does not verify" in offered["refused"]["4b-14"]
            status, rollout = await ward_api(ward, "POST", "/api/v1/firmware/rollouts",
                                             body={"bundle": new.sha256, "rooms": ["4b-14", "4b-12"], "by": "Tech Tom"})
            assert status == 201
            stopped = await rollout_state(ward, rollout["id"], ("done", "stopped"), WAIT_S)
            assert stopped.reason.startswith(f"room 4b-14 refused: bundle {new.sha256[:12]} (folder v0.2.0) is refused "
                                             "here: ") and "signature does not verify" in stopped.reason
            assert stopped.reason.endswith("(bundle_refused)")
            assert [p.state for p in stopped.rooms] == ["refused", "waiting"]
            assert not servers["4b-14"].ota.rollouts and not servers["4b-12"].ota.rollouts
            (mqtt,) = [e for e in await servers["4b-14"].controller.store.read_audit(0, 50) if e.action == "MQTT firmware"]
            assert (mqtt.actor, mqtt.status) == ("Tech Tom", 404)
            commands = await ward.console.store.commands(10)
            assert [(c["room"], c["action"], c["result"]["code"]) for c in commands] == [
                ("4b-14", "firmware", "bundle_refused")]
            # a bundle no room holds, and a room that never reported, are refused before anything starts
            assert (await ward_api(ward, "POST", "/api/v1/firmware/rollouts", body={"bundle": "cd" * 32}))[0] == 404
            assert (await ward_api(ward, "POST", "/api/v1/firmware/rollouts",
                                   body={"bundle": new.sha256, "rooms": ["4b-99"]}))[0] == 400
        finally:
            for node in nodes:
                await node.close()


async def test_an_offline_room_holds_the_rollout_until_it_is_back_and_a_stop_is_audited(broker, bundles, tmp_path):  # noqa: F811
    new = bundles["new"]
    holdings = {"4b-12": [("v0.2.0", new)], "4b-14": [("v0.2.0", new)]}
    cutter = Cutter(broker.host, broker.port)
    port = await cutter.start()
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"], {"4b-14": port}) as (servers, ward):
        nodes = [await fake_node(servers[room], "bedside-a") for room in servers]
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0")
            cutter.cut_off()  # the room's network goes: the broker says so with its last will
            await eventually(lambda: ward.console.rooms["4b-14"].status == "offline", WAIT_S)
            status, rollout = await ward_api(ward, "POST", "/api/v1/firmware/rollouts",
                                             body={"bundle": new.sha256, "rooms": ["4b-14", "4b-12"], "by": "Tech Tom"})
            assert status == 201
            held = await rollout_state(ward, rollout["id"], ("held",), WAIT_S)
            assert held.reason == ("room 4b-14 is offline (connection lost): waiting for it to come back; "
                                   "the room is not skipped")
            assert not servers["4b-14"].ota.rollouts and not servers["4b-12"].ota.rollouts
            status, view = await ward_api(ward, "GET", "/api/v1/firmware")
            assert view["rollouts"][0]["state"] == "held" and "4b-14 is offline" in view["rollouts"][0]["reason"]

            cutter.restore()  # back: the rollout goes on with that room, not past it
            await eventually(lambda: bool(servers["4b-14"].ota.rollouts), WAIT_S)
            (room_rollout,) = servers["4b-14"].ota.rollouts
            assert room_rollout.ward == held.key and room_rollout.actor == "Tech Tom"
            await rollout_state(ward, rollout["id"], ("running",), WAIT_S)
            await eventually(lambda: ward.console.ward_rollouts.get(rollout["id"]).rooms[0].updates.get(
                "bedside-a", {}).get("state") == "offered", WAIT_S)

            status, stopped = await ward_api(ward, "POST", f"/api/v1/firmware/rollouts/{rollout['id']}/stop",
                                             body={"by": "Tech Tom"})
            assert status == 200 and stopped["state"] == "stopped" and stopped["reason"].startswith("stopped by Tech Tom")
            assert (await ward_api(ward, "POST", f"/api/v1/firmware/rollouts/{rollout['id']}/stop", body={}))[0] == 409
            assert (await ward_api(ward, "POST", "/api/v1/firmware/rollouts/99/stop", body={}))[0] == 404
            assert not servers["4b-12"].ota.rollouts  # never started
            actions = [a for _, a, _ in ward_trail(await ward.console.store.read_audit(0, 200))]
            assert actions == ["firmware.ward.start", "firmware.ward.held", "firmware.ward.going_on",
                               "firmware.ward.room_started", "firmware.ward.stopped"]
        finally:
            for node in nodes:
                await node.close()
    await cutter.stop()


async def test_a_room_restart_interrupts_its_rollout_which_stops_the_ward_rollout_and_is_kept(broker, bundles,  # noqa: F811
                                                                                             tmp_path):
    new = bundles["new"]
    holdings = {"4b-12": [("v0.2.0", new)], "4b-14": [("v0.2.0", new)]}
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"]) as (servers, ward):
        node = await fake_node(servers["4b-12"], "bedside-a")
        other = await fake_node(servers["4b-14"], "bedside-a")
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0")
            status, rollout = await ward_api(ward, "POST", "/api/v1/firmware/rollouts", body={"bundle": new.sha256})
            assert status == 201
            await eventually(lambda: servers["4b-12"].ota.updates.get("bedside-a") is not None, WAIT_S)
            await node.send({**node.base("ota"), "st": "accepted", "ver": "0.2.0"})
            await eventually(lambda: servers["4b-12"].ota.rollouts[0].nodes["bedside-a"].state == "accepted", WAIT_S)
            await node.close()

            await servers["4b-12"].stop()  # the room controller restarts mid-rollout
            servers["4b-12"] = await start_room(broker, tmp_path, "4b-12", bundles["pub"])
            (kept,) = servers["4b-12"].ota.rollouts
            assert kept.state == "interrupted" and kept.ward is not None
            assert kept.reason == ("the room controller stopped during the rollout; not finished: bedside-a; "
                                   "start a new rollout to go on")
            assert kept.nodes["bedside-a"].state == "accepted"  # its last known state
            audit = await servers["4b-12"].controller.store.read_audit(0, 100)
            assert [e.actor for e in audit if e.action == "firmware.rollout.interrupted"] == ["controller"]

            stopped = await rollout_state(ward, rollout["id"], ("done", "stopped"), WAIT_S)
            assert stopped.reason.startswith("room 4b-12: room rollout #1 interrupted: the room controller stopped")
            assert not servers["4b-14"].ota.rollouts

            # the node comes back confirmed: the interrupted rollout shows it; a new rollout gets a new id
            node = await fake_node(servers["4b-12"], "bedside-a", fw="0.2.0", boot=2)  # its new firmware's boot
            await node.send({**node.base("ota"), "st": "confirmed", "ver": "0.2.0"})
            await eventually(lambda: servers["4b-12"].ota.rollouts[0].nodes["bedside-a"].state == "confirmed", WAIT_S)
            await eventually(lambda: any(r.get("nodes", [{}])[0].get("state") == "confirmed"
                                         for r in ward.console.firmware["4b-12"].rollouts), WAIT_S)
            api = servers["4b-12"].endpoints.api_url
            token = await servers["4b-12"].create_token("facilities", "tech")
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                async with http.get(api + "/api/v1/firmware") as resp:
                    doc = await resp.json()
            assert [(r["id"], r["state"], r["nodes"][0]["state"]) for r in doc["rollouts"]] == [
                (1, "interrupted", "confirmed")]
            await servers["4b-12"].stop()
            servers["4b-12"] = await start_room(broker, tmp_path, "4b-12", bundles["pub"])
            assert [(r.id, r.state, r.nodes["bedside-a"].state) for r in servers["4b-12"].ota.rollouts] == [
                (1, "interrupted", "confirmed")]  # interrupted once, kept as it was
        finally:
            await node.close()
            await other.close()


async def test_a_rollout_left_running_by_a_crash_is_interrupted_at_the_next_start(bundles, tmp_path):  # noqa: F811
    """The process dies mid-rollout (no clean stop): the next start finds the row 'running' and
    marks it interrupted, keeping each node's last known state."""
    from types import SimpleNamespace

    from controller.ota.server import OtaServer
    from controller.ota.store import RolloutStore

    async def send(_frame) -> None:
        pass

    hello = SimpleNamespace(caps=("ota",), fw="0.1.0", hw="sim")
    audit: list = []

    async def keep(entry) -> None:
        audit.append(entry)

    def server() -> OtaServer:
        gateway = SimpleNamespace(connections={"a": SimpleNamespace(hello=hello, sid=1, send=send)}, ota=None)
        return OtaServer(gateway, audit=keep, clock=lambda: 1000, store=RolloutStore(tmp_path / "room.db"))

    first = server()
    await first.start()
    rollout = first.start_rollout(bundles["new"], ["a", "b"], "Tech Tom", ward="k1")
    await eventually(lambda: rollout.nodes["a"].state == "offered")
    await asyncio.gather(*first._saves)
    for task in list(first._tasks):  # the process dies: its tasks end, nothing is written on the way out
        task.cancel()
    await asyncio.gather(*first._tasks, return_exceptions=True)
    await first.store.close()

    second = server()
    await second.start()
    (kept,) = second.rollouts
    assert (kept.id, kept.state, kept.ward, kept.actor) == (1, "interrupted", "k1", "Tech Tom")
    assert kept.reason == ("the room controller restarted during the rollout; not finished: a, b; "
                           "start a new rollout to go on")
    assert {n: u.state for n, u in kept.nodes.items()} == {"a": "offered", "b": "waiting"}
    assert [e.action for e in audit][-1] == "firmware.rollout.interrupted"
    assert second.start_rollout(bundles["new"], ["a"], "Tech Tom").id == 2  # ids go on from the kept ones
    await second.stop()
