"""A room served over https and announced on mDNS, found by `smartroom discover` (loopback only)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from controller import cli
from controller.security.discovery import browse
from controller.runner import RoomServer
from controller.security.tls import load_or_create, pin

LOOPBACK = ["127.0.0.1"]


async def test_room_serves_https_and_is_discovered_with_its_fingerprint(tmp_path, config, keys, capsys):
    tls = load_or_create(tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem", ["localhost"])
    async with RoomServer(config, keys, tmp_path / "room.db", api_port=0, node_port=0, tls=tls,
                          advertise=True, mdns_interfaces=LOOPBACK) as server:
        assert server.endpoints.api_url.startswith("https://127.0.0.1:")
        assert server.endpoints.tls_fingerprint == tls.fingerprint_sha256
        rooms = [r for r in await browse(10, LOOPBACK, expect=1) if r.room == config.room_id]
        assert rooms and rooms[0].url == server.endpoints.api_url + "/api/v1"
        assert rooms[0].fingerprint == tls.fingerprint_sha256
        async with aiohttp.ClientSession() as session:
            async with session.get(rooms[0].url + "/health", ssl=pin(rooms[0].fingerprint)) as resp:
                assert resp.status == 200

        code = await asyncio.to_thread(cli.main, ["discover", "--interface", "127.0.0.1", "--timeout", "2", "--json"])
        listed = [r for r in json.loads(capsys.readouterr().out) if r["room"] == config.room_id]
        assert code == 0 and listed[0]["state"].startswith("ok") and listed[0]["health"]["status"] == "ok"


async def test_smartroom_run_serves_https_with_a_printed_fingerprint_by_default(tmp_path, capsys):
    """The command a hospital runs: a self-signed certificate made on first start, its fingerprint
    printed; plain http is refused. Its start-up heap is frozen out of the collector's walk
    (controller/cli.py, README "Performance"), which its metrics show."""
    import re
    import sys
    from pathlib import Path

    from tests.helpers import write_room_files
    from tests.test_system import free_port

    api_port = free_port()
    room, keys = write_room_files(tmp_path, "kill-test")
    assert cli.main(["token", "create", "--role", "integration", "--name", "scraper",
                     "--db", str(tmp_path / "room.db")]) == 0
    scraper = {"Authorization": "Bearer " + capsys.readouterr().out.strip().splitlines()[-1]}
    exe = Path(sys.executable).with_name("smartroom")
    proc = await asyncio.create_subprocess_exec(
        str(exe), "run", "--config", str(room), "--keys", str(keys),
        "--db", str(tmp_path / "room.db"), "--api-port", str(api_port), "--node-port", "0", "--no-advertise",
        stdout=asyncio.subprocess.PIPE)
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(3)]
        assert lines[0].startswith(f"room kill-test: API https://127.0.0.1:{api_port}")
        fingerprint = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", "".join(lines)).group(1)
        assert (tmp_path / "tls-key.pem").stat().st_mode & 0o077 == 0, "the key is private"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{api_port}/api/v1/health", ssl=pin(fingerprint)) as resp:
                assert resp.status == 200
            async with session.get(f"https://127.0.0.1:{api_port}/metrics", ssl=pin(fingerprint),
                                   headers=scraper) as resp:
                assert resp.status == 200
                frozen = re.search(r"^smartroom_gc_frozen_objects (\S+)$", await resp.text(), re.M)
                assert frozen and float(frozen.group(1)) > 1000, "the start-up heap is not frozen"
            try:
                async with session.get(f"http://127.0.0.1:{api_port}/api/v1/health") as resp:
                    assert resp.status == 400, "plain http to a TLS port must not be served"
            except aiohttp.ClientError:
                pass  # or the connection is dropped: either way, no plain-http service
    finally:
        proc.terminate()
        await proc.wait()


async def test_two_controllers_on_loopback_are_both_discovered_with_their_state(tmp_path, keys, capsys):
    import copy

    from controller.room.config import parse_room
    from tests.helpers import ROOM_DOC

    configs = []
    for room_id in ("4b-12", "4b-14"):
        doc = copy.deepcopy(ROOM_DOC)
        doc["room"] = {"id": room_id, "name": f"Ward 4B room {room_id[-2:]}"}
        configs.append(parse_room(doc, f"{room_id}.toml"))
    async with RoomServer(configs[0], keys, tmp_path / "a.db", api_port=0, node_port=0, advertise=True,
                          mdns_interfaces=LOOPBACK) as first, \
            RoomServer(configs[1], keys, tmp_path / "b.db", api_port=0, node_port=0, advertise=True,
                       mdns_interfaces=LOOPBACK) as second:
        rooms = {r.room: r for r in await browse(10, LOOPBACK, expect=2) if r.room in ("4b-12", "4b-14")}
        assert {r: rooms[r].url for r in rooms} == {"4b-12": first.endpoints.api_url + "/api/v1",
                                                   "4b-14": second.endpoints.api_url + "/api/v1"}
        code = await asyncio.to_thread(cli.main, ["discover", "--interface", "127.0.0.1", "--timeout", "3", "--json"])
        listed = {r["room"]: r for r in json.loads(capsys.readouterr().out)}
        assert code == 0 and {"4b-12", "4b-14"} <= set(listed)
        assert listed["4b-14"]["name"] == "Ward 4B room 14" and listed["4b-14"]["state"].startswith("ok")
