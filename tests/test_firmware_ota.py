"""Firmware updates end to end: the real firmware in MicroPython, updated by a real room controller.

The node's flash is a folder (the sim's state dir); "power cuts" are SIGKILLs of the node process
at named steps of an update (``SMARTROOM_CUT_AT``, firmware/hal/simota.py); after each one the
node is booted again and must run the old bundle or the new one, and call. Bundles are built with
mpy-cross once per module: the repo's firmware as 0.2.0, 0.0.9 (older), for another board, signed
by another key, and a 0.3.0 that never links up (it takes no controller message but protocol 3's).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.link import protocol as p
from controller.ota import bundle as fwb
from controller.runner import RoomServer
from tests.helpers import keys_for, room_config
from tests.nodepeer import FIRMWARE, ROOT, FirmwareNode

NODE = "bedside-a"
RESET_EXIT = 3   # firmware/hal/simota.py
WAIT_S = 60.0


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundles")
    fwb.generate_key(tmp / "fw.pem")
    key = fwb.load_key(tmp / "fw.pem")
    fwb.generate_key(tmp / "other.pem")
    other = fwb.load_key(tmp / "other.pem")
    broken_src = tmp / "src-broken"
    shutil.copytree(FIRMWARE, broken_src, ignore=shutil.ignore_patterns("__pycache__"))
    proto = broken_src / "srnode" / "proto.py"  # it refuses every controller message: never welcomed
    text = proto.read_text()
    assert "PROTOCOL_VERSION = const(2)" in text
    proto.write_text(text.replace("PROTOCOL_VERSION = const(2)", "PROTOCOL_VERSION = const(3)"))
    out = tmp / "out"
    return {
        "pub": fwb.public_bytes(key),
        "new": fwb.build_bundle(out / "new", key, board="unix", version="0.2.0"),
        "next": fwb.build_bundle(out / "next", key, board="unix", version="0.2.1"),
        "old": fwb.build_bundle(out / "old", key, board="unix", version="0.0.9"),
        "board": fwb.build_bundle(out / "board", key, board="esp32s3", version="0.2.0"),
        "foreign": fwb.build_bundle(out / "foreign", other, board="unix", version="0.2.0"),
        "silent": fwb.build_bundle(out / "silent", key, board="unix", version="0.3.0", src=broken_src),
    }


# The new bundle's deadline to reach the controller after its first boot, on the node's clock (speed
# 2: 20 s of wall time). A loaded machine (two test workers and other work on two cores) took over
# the 4 s an 8 s deadline left to boot, link up and be welcomed, and rolled a good bundle back; a
# bundle that never confirms is given NEVER_CONFIRMS_MS, since only its deadline's length is waited.
CONFIRM_MS = 40_000
NEVER_CONFIRMS_MS = 8_000


def node_cfg(tmp: Path, port: int, pub: bytes, confirm_ms: int = CONFIRM_MS, **extra: Any) -> dict[str, Any]:
    scenario = tmp / "scenario.json"
    scenario.write_text(json.dumps({"steps": [{"at_ms": 1500, "pin": "call", "press_ms": 200}]}))
    return {"node_id": NODE, "key_hex": keys_for(room_config())[NODE].hex(), "link_plain": True,  # in-process gateway
            "controller": {"host": "127.0.0.1", "port": port}, "hw": "sim-esp32s3", "hb_ms": 10000,
            "inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"}, "tone": {"pin": "buzzer"},
            "ota": {"pub_hex": pub.hex(), "confirm_ms": confirm_ms},
            "sim": {"scenario": str(scenario), "speed": 2, "state_dir": str(tmp / "flash"), "seed": 1}, **extra}


# A node that takes updates holds the update code, Ed25519 and a download's buffers beside the
# flash journal and the link: 96 KB on a 32-bit board (docs/firmware.md, Heap). An ESP32-S3 gives
# MicroPython well over 100 KB without PSRAM and a Pico W ~170 KB; the 64wK of the other node tests
# is the budget of the smallest node without updates.
OTA_HEAP = "96wK"


class Board:
    """The node across boots: each boot is a new MicroPython process on the same flash folder."""

    def __init__(self, cfg: dict[str, Any], tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.boots: list[FirmwareNode] = []
        self.node: FirmwareNode | None = None

    async def boot(self, cut_at: str | None = None) -> FirmwareNode:
        await self.off()
        if cut_at:
            os.environ["SMARTROOM_CUT_AT"] = cut_at
        try:
            self.node = FirmwareNode(self.cfg, self.tmp / f"boot{len(self.boots)}", heap=OTA_HEAP)
            await self.node.__aenter__()
        finally:
            os.environ.pop("SMARTROOM_CUT_AT", None)
        self.boots.append(self.node)
        return self.node

    async def off(self) -> None:
        """Power off: kill the process wherever it is."""
        if self.node is not None:
            await self.node.__aexit__(None, None, None)
            self.node = None

    def boot_state(self) -> dict[str, Any]:
        return json.loads((self.tmp / "flash" / "fw" / "boot.json").read_text())


async def running(node: FirmwareNode) -> tuple[str, str]:
    """After a boot: (slot, version) the loader chose, once the node has linked up."""
    await node.wait_line("link", "up", timeout_s=WAIT_S)
    (fw,) = [ln for ln in node.find("fw") if "slot" in ln.fields]
    return fw.fields["slot"], fw.fields["ver"]


async def resets(node: FirmwareNode) -> None:
    """The node asks for a reset (to boot a new bundle, or after missing its confirm deadline)."""
    code = await node.wait_exit(WAIT_S)
    assert code == RESET_EXIT, node.tail(40)


async def calls(node: FirmwareNode) -> None:
    """The node delivers its scenario's press: the controller acks it."""
    ev = await node.wait_line("event", kind="button", src="call", timeout_s=WAIT_S)
    await node.wait_line("acked", e=ev.fields["e"], timeout_s=WAIT_S)


@pytest.fixture
async def room(tmp_path):
    config = room_config()
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as srv:
        srv.ota.node_deadline_s = WAIT_S
        yield srv


async def test_update_end_to_end_then_the_new_bundle_runs_and_calls(room, bundles, tmp_path):
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot()
    assert await running(node) == ("-", "-")  # the flashed firmware
    assert "ota" in room.gateway.connections[NODE].hello.caps
    await room.ota.offer(NODE, bundles["new"])
    await node.wait_line("ota", st="staged", ver="0.2.0", timeout_s=WAIT_S)
    await node.wait_line("reset", timeout_s=WAIT_S)
    await resets(node)
    assert board.boot_state() == {"next": "a", "count": 0}
    staged = tmp_path / "flash" / "fw" / "a"
    for f in bundles["new"].files:  # byte for byte what was built
        assert (staged / f.path).read_bytes() == (bundles["new"].root / f.path).read_bytes()
    node = await board.boot()
    assert await running(node) == ("a", "0.2.0")
    await node.wait_line("ota", st="confirmed", ver="0.2.0", timeout_s=WAIT_S)
    assert room.gateway.connections[NODE].hello.fw == "0.2.0"
    update = await room.ota.wait_final(NODE, "0.2.0", WAIT_S)
    assert update.state == "confirmed" and update.chunks >= sum(-(-f.size // 480) for f in bundles["new"].files)
    assert board.boot_state()["active"] == "a" and board.boot_state()["next"] is None
    await calls(node)
    # confirmed is for good: a later boot runs it again without a trial
    node = await board.boot()
    assert await running(node) == ("a", "0.2.0")
    assert not node.find("fw", trial="1")
    audit = await room.controller.store.read_audit(0, 50)
    assert {"firmware.confirmed", "firmware.staged", "firmware.accepted"} <= {e.action for e in audit}
    await board.off()


async def test_a_bundle_that_never_confirms_rolls_back_by_itself(room, bundles, tmp_path):
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"], NEVER_CONFIRMS_MS), tmp_path)
    node = await board.boot()
    await running(node)
    await room.ota.offer(NODE, bundles["silent"])
    await resets(node)
    node = await board.boot()  # the trial: it refuses every welcome (protocol 3), so it never confirms
    fw = await node.wait_line("fw", timeout_s=WAIT_S)
    assert (fw.fields["slot"], fw.fields["ver"], fw.fields["trial"]) == ("a", "0.3.0", "1")
    await node.wait_line("fw", "confirm_timeout", timeout_s=WAIT_S)
    await resets(node)
    node = await board.boot()  # rolled back, by the node alone
    await node.wait_line("fw", "rollback", timeout_s=WAIT_S)
    assert await running(node) == ("-", "-")
    await node.wait_line("ota", st="rolled_back", ver="0.3.0", timeout_s=WAIT_S)
    update = await room.ota.wait_final(NODE, "0.3.0", WAIT_S)
    assert (update.state, update.reason) == ("rolled_back", "not_confirmed")
    assert room.ota.refused[(NODE, "not_confirmed")] == 1
    await calls(node)
    await board.off()


@pytest.mark.parametrize("which, why", [("old", "downgrade"), ("board", "wrong_board"),
                                        ("foreign", "bad_signature"), ("tampered", "bad_hash")])
async def test_bad_bundles_are_refused_reported_and_the_node_keeps_running(room, bundles, tmp_path, which, why):
    bundle = bundles.get(which)
    if which == "tampered":  # a file changed after signing: its hash no longer matches the manifest
        root = tmp_path / "tampered"
        shutil.copytree(bundles["new"].root, root)
        victim = root / bundles["new"].files[-1].path
        victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
        bundle = fwb.Bundle(root, "0.2.0", "unix", bundles["new"].files, bundles["new"].manifest,
                            bundles["new"].signature)
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot()
    await running(node)
    await room.ota.offer(NODE, bundle)
    await node.wait_line("ota", st="refused", why=why, timeout_s=WAIT_S)
    update = await room.ota.wait_final(NODE, bundle.version, WAIT_S)
    assert (update.state, update.reason) == ("refused", why)
    assert room.ota.refused[(NODE, why)] == 1
    assert not (tmp_path / "flash" / "fw" / "boot.json").exists()  # nothing switched
    await calls(node)  # and it still calls
    assert node.proc.returncode is None
    await board.off()


def chunks_of(bundle: fwb.Bundle) -> list[int]:
    """How many ota_data chunks each item of the bundle takes: the manifest (item 0), then each file."""
    return [-(-len(bundle.data(i)) // p.OTA_CHUNK_BYTES) for i in range(len(bundle.files) + 1)]


# Each step of the update at which the power goes: (cut point, the version the next boot runs,
# the chunks the stage still holds then). A download goes on from its stage when the controller
# offers the bundle again, which it does on its own when the node comes back: a manifest is staged
# whole once verified (one chunk of it is not kept), a file's chunks as they come, and a stage
# already renamed to its slot is gone.
ALL = -1
CUTS = [("chunk:1", "-", 0), ("chunk:40", "-", 40), ("staged", "-", ALL), ("cleared", "-", ALL), ("renamed", "-", 0),
        ("switched", "0.2.0", None)]


@pytest.mark.parametrize("cut, runs, kept", CUTS)
async def test_power_cut_at_each_step_boots_old_or_new_and_calls(room, bundles, tmp_path, cut, runs, kept):
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot(cut_at=cut)
    await running(node)
    await room.ota.offer(NODE, bundles["new"])
    await node.wait_line("cut", step=cut, timeout_s=WAIT_S)
    await board.off()  # SIGKILL, frozen exactly at that step
    node = await board.boot()
    slot, version = await running(node)
    assert version == runs
    await calls(node)
    if runs == "-":  # the old firmware: offered the bundle again, it fetches only what it lacks
        await node.wait_line("ota", st="accepted", ver="0.2.0", timeout_s=WAIT_S)
        await resets(node)
        assert room.ota.updates[NODE].state == "staged"
        full = sum(chunks_of(bundles["new"]))
        assert room.ota.updates[NODE].chunks == (0 if kept == ALL else full - kept)
        node = await board.boot()
    assert await running(node) == ("a", "0.2.0")
    await node.wait_line("ota", st="confirmed", timeout_s=WAIT_S)
    await board.off()


async def test_a_staged_file_that_is_not_the_start_of_its_file_is_fetched_whole_again(room, bundles, tmp_path):
    """What the stage kept is checked by the whole file's hash: a kept part that is not the file's
    start (a flash bit gone bad) costs that file's chunks again, never a refused update."""
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot(cut_at="chunk:40")
    await running(node)
    await room.ota.offer(NODE, bundles["new"])
    await node.wait_line("cut", step="chunk:40", timeout_s=WAIT_S)
    await board.off()
    stage = tmp_path / "flash" / "fw" / "stage"
    kept = sorted((f for f in stage.rglob("*") if f.is_file() and f.name != "manifest.json" and f.stat().st_size),
                  key=lambda f: f.stat().st_size)
    spoilt = kept[-1]
    data = bytearray(spoilt.read_bytes())
    data[0] ^= 0xFF
    spoilt.write_bytes(bytes(data))
    node = await board.boot()
    await running(node)
    await resets(node)
    path = str(spoilt.relative_to(stage))
    item = 1 + [f.path for f in bundles["new"].files].index(path)
    assert node.find("stage", f=item, kept=len(data)), node.tail(30)
    full = sum(chunks_of(bundles["new"]))
    assert room.ota.updates[NODE].chunks == full - 40 + -(-len(data) // p.OTA_CHUNK_BYTES)
    assert not node.find("ota", st="refused")
    node = await board.boot()
    assert await running(node) == ("a", "0.2.0")
    await node.wait_line("ota", st="confirmed", timeout_s=WAIT_S)
    await board.off()


async def test_a_link_drop_during_a_download_is_waited_out_and_the_download_goes_on(room, bundles, tmp_path):
    """The controller's side of the node's connection goes (a switch restarted, Wi-Fi roamed) in the
    middle of a download: the node links up again, is offered the same bundle, and asks at once for
    the chunk it was waiting for; no chunk is fetched twice but that one, and nothing fails."""
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot()
    await running(node)
    full = sum(chunks_of(bundles["new"]))
    serve, dropped = room.ota._serve, []

    async def drop_at_half(conn, msg):  # the link goes as the chunk at half the bundle is asked for
        if not dropped and room.ota.updates[NODE].chunks == full // 2:
            dropped.append((msg.item, msg.offset))
            conn.writer.transport.abort()
            return
        await serve(conn, msg)

    room.ota._serve = drop_at_half
    await room.ota.offer(NODE, bundles["new"])
    down = await node.wait_line("link", "down", timeout_s=WAIT_S)
    await node.wait_line("link", "up", start=node.lines.index(down) + 1, timeout_s=WAIT_S)
    await node.wait_line("ota", st="staged", ver="0.2.0", timeout_s=WAIT_S)
    await resets(node)
    assert not node.find("ota", st="failed")
    assert not node.find("stage", "timed_out"), "the chunk it waited for was not asked for again at once"
    assert dropped
    assert room.ota.updates[NODE].chunks == full - full // 2, "served since the offer after the reconnect"
    node = await board.boot()
    assert await running(node) == ("a", "0.2.0")
    assert (await room.ota.wait_final(NODE, "0.2.0", WAIT_S)).state == "confirmed"
    await calls(node)
    await board.off()


async def test_power_cut_during_the_first_boot_of_the_new_bundle_rolls_back(room, bundles, tmp_path):
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot()
    await running(node)
    await room.ota.offer(NODE, bundles["new"])
    await resets(node)
    node = await board.boot()
    await node.wait_line("fw", slot="a", trial="1", timeout_s=WAIT_S)
    await board.off()  # the power goes before the new firmware has confirmed
    node = await board.boot()
    await node.wait_line("fw", "rollback", timeout_s=WAIT_S)
    assert await running(node) == ("-", "-")
    await calls(node)
    await board.off()


# ------------------------------------------------------------------ staged rollouts: API, CLI, facilities
@pytest.fixture
async def ward_room(tmp_path, bundles):
    """A room offering the module's bundles folder (the foreign-signed one fails to verify there)."""
    config = room_config()
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0,
                          firmware_bundles=bundles["new"].root.parent, firmware_public_key=bundles["pub"]) as srv:
        srv.ota.node_deadline_s = WAIT_S
        srv.tokens = {role: await srv.create_token(role, f"{role} tester") for role in ("facilities", "nurse")}
        yield srv


def two_boards(room: RoomServer, bundles, tmp_path: Path) -> list[Board]:
    boards = []
    for node in (NODE, "good"):
        cfg = node_cfg(tmp_path / node, room.endpoints.node_port, bundles["pub"], node_id=node,
                       key_hex=keys_for(room_config())[node].hex())
        boards.append(Board(cfg, tmp_path / node))
    return boards


async def api(room: RoomServer, method: str, path: str, role: str = "facilities", body: Any = None):
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.request(method, room.endpoints.api_url + path, json=body,
                                   headers={"Authorization": f"Bearer {room.tokens[role]}"}) as resp:
            return resp.status, await resp.json()


async def test_staged_rollout_updates_one_node_first_then_the_rest(ward_room, bundles, tmp_path):
    room = ward_room
    (tmp_path / NODE).mkdir()
    (tmp_path / "good").mkdir()
    boards = two_boards(room, bundles, tmp_path)
    nodes = [await b.boot() for b in boards]
    for n in nodes:
        await running(n)
    status, doc = await api(room, "GET", "/api/v1/firmware")
    assert status == 200
    assert {n["node"]: (n["fw"], n["ota"]) for n in doc["nodes"] if n["online"]} == {
        NODE: ("0.1.0", True), "good": ("0.1.0", True)}
    assert {b["name"] for b in doc["bundles"]} == {"new", "next", "old", "board", "silent"}
    assert [b["folder"] for b in doc["bad_bundles"]] == ["foreign"]  # signed by another key: never offered
    assert (await api(room, "POST", "/api/v1/firmware/rollouts", "nurse", {"bundle": "new", "nodes": [NODE]}))[0] == 403
    assert (await api(room, "POST", "/api/v1/firmware/rollouts", body={"bundle": "new", "nodes": []}))[0] == 400
    assert (await api(room, "POST", "/api/v1/firmware/rollouts", body={"bundle": "new", "nodes": ["x"]}))[0] == 400
    assert (await api(room, "POST", "/api/v1/firmware/rollouts", body={"bundle": "foreign", "nodes": [NODE]}))[0] == 404
    status, rollout = await api(room, "POST", "/api/v1/firmware/rollouts",
                                body={"bundle": bundles["new"].sha256[:12], "nodes": [NODE, "good"]})
    assert status == 201 and rollout["stages"] == [[NODE], ["good"]] and rollout["actor"] == "facilities tester"
    assert (await api(room, "POST", "/api/v1/firmware/rollouts", body={"bundle": "new", "nodes": [NODE]}))[0] == 409
    # the first node alone: the second is not offered anything until the first has confirmed
    await resets(nodes[0])
    assert not nodes[1].find("ota")
    nodes[0] = await boards[0].boot()
    await nodes[0].wait_line("ota", st="confirmed", timeout_s=WAIT_S)
    await resets(nodes[1])
    nodes[1] = await boards[1].boot()
    await nodes[1].wait_line("ota", st="confirmed", timeout_s=WAIT_S)
    for _ in range(100):
        status, doc = await api(room, "GET", "/api/v1/firmware")
        if doc["rollouts"][0]["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert doc["rollouts"][0]["state"] == "done"
    assert {n["node"]: n["fw"] for n in doc["nodes"] if n["online"]} == {NODE: "0.2.0", "good": "0.2.0"}
    audit = list(reversed(await room.controller.store.read_audit(0, 100)))
    trail = [(e.actor, e.action, e.target.split()[0]) for e in audit if e.action.startswith("firmware.")]
    assert trail[0] == ("facilities tester", "firmware.rollout.start", "#1")
    assert trail.index(("node", "firmware.confirmed", NODE)) < trail.index(("node", "firmware.accepted", "good"))
    assert trail[-1] == ("facilities tester", "firmware.rollout.done", "#1")
    assert [(e.actor, e.status) for e in audit if (e.action, e.target) == ("POST", "/api/v1/firmware/rollouts")] == [
        ("nurse tester", 403), ("facilities tester", 400), ("facilities tester", 400), ("facilities tester", 404),
        ("facilities tester", 201), ("facilities tester", 409)]
    for b in boards:
        await b.off()


async def test_a_rollout_stops_at_the_first_node_that_does_not_confirm(ward_room, bundles, tmp_path):
    room = ward_room
    (tmp_path / NODE).mkdir()
    (tmp_path / "good").mkdir()
    boards = two_boards(room, bundles, tmp_path)
    nodes = [await b.boot() for b in boards]
    for n in nodes:
        await running(n)
    # from the command line, as a technician would; the bundle for another board is refused by the first node
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "firmware", "rollout", "--url", room.endpoints.api_url,
        "--token", room.tokens["facilities"], "--bundle", "board", "--nodes", f"{NODE},good",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1, (out, err)
    assert "stopped" in out.decode() and f"{NODE} refused (wrong_board)" in out.decode()
    (rollout,) = room.ota.rollouts
    assert rollout.state == "stopped" and rollout.nodes["good"].state == "waiting"
    assert not nodes[1].find("ota")  # never offered
    await calls(nodes[0])
    await calls(nodes[1])
    audit = await room.controller.store.read_audit(0, 100)
    assert any(e.action == "firmware.rollout.stopped" and "wrong_board" in e.target for e in audit)
    for b in boards:
        await b.off()


@pytest.mark.parametrize("cut", ["cleared", "renamed"])
async def test_a_second_update_goes_to_the_other_slot_and_a_cut_boots_the_first(room, bundles, tmp_path, cut):
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot()
    await running(node)
    await room.ota.offer(NODE, bundles["new"])
    await resets(node)
    node = await board.boot(cut_at=cut)
    assert await running(node) == ("a", "0.2.0")
    await node.wait_line("ota", st="confirmed", timeout_s=WAIT_S)
    await room.ota.offer(NODE, bundles["next"])
    await node.wait_line("cut", step=cut, timeout_s=WAIT_S)
    await board.off()  # the power goes while slot b is replaced: slot a, running, is untouched
    node = await board.boot()
    assert await running(node) == ("a", "0.2.0")
    await calls(node)
    await room.ota.offer(NODE, bundles["next"])
    await resets(node)
    node = await board.boot()
    assert await running(node) == ("b", "0.2.1")
    await node.wait_line("ota", st="confirmed", ver="0.2.1", timeout_s=WAIT_S)
    assert board.boot_state()["active"] == "b"
    await board.off()


async def test_a_malformed_offer_is_a_bad_command_and_a_good_one_still_works(room, bundles, tmp_path):
    from controller.link import protocol as p
    board = Board(node_cfg(tmp_path, room.endpoints.node_port, bundles["pub"]), tmp_path)
    node = await board.boot()
    await running(node)
    conn = room.gateway.connections[NODE]
    b = bundles["new"]
    good = {"ver": b.version, "board": b.board, "mh": b.sha256, "msz": len(b.manifest), "sig": b.signature.hex()}
    for bad in ({"sig": "zz" * 64}, {"sig": b.signature.hex()[:-2]}, {"mh": b.sha256[:-1]}, {"msz": "2272"},
                {"ver": 2}):
        await conn.send(lambda s, f={**good, **bad}: p.command(conn.sid, s, "ota", **f))
    await room.ota.offer(NODE, b)  # after them, in order: nothing was left half-started by a bad one
    await node.wait_line("ota", st="staged", timeout_s=WAIT_S)
    assert len(node.find("reject", reason="bad_command", c="ota")) == 5
    assert [ln.fields["st"] for ln in node.find("ota")] == ["accepted", "staged"]
    await board.off()


async def test_a_simulated_node_that_asks_for_a_reset_is_booted_again(bundles, tmp_path):
    """controller/sim/nodes.py (the demo's nodes) restarts a node that exits for a reset, as a board
    boots again: here a staged bundle that cannot reach any controller misses its deadline, resets,
    and the next boot rolls back."""
    from controller.sim.nodes import SimNode
    flash = tmp_path / "flash"
    shutil.copytree(bundles["new"].root, flash / "fw" / "a")
    (flash / "fw" / "boot.json").write_text(json.dumps({"active": None, "next": "a", "count": 0}))
    cfg = node_cfg(tmp_path, 9, bundles["pub"])  # port 9 (discard): nothing answers
    cfg["ota"]["confirm_ms"] = 3000
    async with SimNode(cfg, tmp_path / "run") as node:
        await node.wait_for("fw", slot="a", trial="1")
        reset = await node.wait_for("reset", timeout_s=WAIT_S)
        await node.wait_for("fw", start=node.lines.index(reset), slot="-", trial="0", timeout_s=WAIT_S)
        assert [ln.raw.split(" ", 1)[1] for ln in node.lines if ln.tag == "fw" and "rollback" in ln.raw] == [
            "fw rollback from=a ver=0.2.0"]
        assert node.proc.returncode is None  # running again
