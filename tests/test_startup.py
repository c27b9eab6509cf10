"""Start-up order and what a start loads (controller/runner.py, docs/architecture.md "Start-up order").

A start rebuilds the room's state before a node can connect, answers the API before the optional
subsystems (voice, hospital integrations) have started, loads their libraries only where the room
file configures them, and fails loudly when a configured one cannot start.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from controller.model import NodeEvent
from controller.room.config import load_room
from controller.runner import RoomServer
from integrations.service import IntegrationService

from .helpers import keys_for, room_config

ROOT = Path(__file__).resolve().parents[1]
# Libraries of subsystems a room has only when its room file says so (or only on request: FHIR).
OPTIONAL_LIBRARIES = ("fhir", "pydantic", "hl7apy", "integrations", "zeroconf", "ifaddr", "numpy",
                      "pocketsphinx", "faster_whisper", "aiomqtt", "gpiozero", "bleak")

ROOM = """
[room]
id = "4b-12"
[[beds]]
id = "A"
[nodes.bedside-a]
bed = "A"
inputs = { call = "patient_call" }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def test_a_plain_room_starts_without_the_optional_libraries_and_loads_fhir_on_its_first_request(tmp_path):
    """In a process of its own (this one has imported everything): `smartroom run`'s imports and a
    started room with no voice, integrations, ward or mDNS load none of those libraries; the first
    FHIR request loads the FHIR models and is answered."""
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        from pathlib import Path
        import aiohttp
        from controller import cli
        cli.build_parser()
        from controller.runner import RoomServer
        from tests.helpers import keys_for, room_config

        OPTIONAL = {OPTIONAL_LIBRARIES!r}

        def loaded():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set(OPTIONAL))

        async def main():
            config = room_config()
            async with RoomServer(config, keys_for(config), Path(sys.argv[1]), api_port=0, node_port=0) as server:
                token = await server.create_token("nurse", "n")
                at_start = loaded()
                async with aiohttp.ClientSession(headers={{"Authorization": f"Bearer {{token}}"}}) as http:
                    async with http.get(server.endpoints.api_url + "/fhir/r4/Device") as resp:
                        body = await resp.json(content_type=None)
                        status = resp.status
            print(json.dumps({{"at_start": at_start, "status": status, "type": body.get("resourceType"),
                               "after_fhir": loaded()}}))

        asyncio.run(main())
    """)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "room.db")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["at_start"] == []
    assert (result["status"], result["type"]) == (200, "Bundle")
    assert "fhir" in result["after_fhir"] and "integrations" in result["after_fhir"]


async def test_no_node_connects_before_the_state_is_rebuilt(tmp_path, monkeypatch):
    config = room_config()
    node_port = free_port()
    rebuilding, release = asyncio.Event(), asyncio.Event()

    server = RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=node_port)
    rebuild = server.controller._rebuild

    async def slow_rebuild(**kwargs):
        rebuilding.set()
        await release.wait()
        return await rebuild(**kwargs)

    monkeypatch.setattr(server.controller, "_rebuild", slow_rebuild)
    starting = asyncio.create_task(server.start())
    try:
        await rebuilding.wait()
        assert await refused(node_port)  # nothing listens for nodes while the log is being replayed
        assert server.endpoints is None
        release.set()
        await starting
        assert not await refused(node_port)
        # (and once listening, the state is the log's: an event is decided and stored)
        records = await server.controller.node_event(NodeEvent("bedside-a", 1, 1, 1, "button", "call", 1, 0))
        assert "call.raised" in [r.kind for r in records]
    finally:
        release.set()
        await asyncio.gather(starting, return_exceptions=True)
        await server.stop()


async def test_the_api_answers_while_the_integrations_start(tmp_path, monkeypatch):
    room_file = tmp_path / "room.toml"
    room_file.write_text(ROOM + '[integrations]\nhl7_room = "412"\n')
    config = load_room(room_file)
    entered, release = asyncio.Event(), asyncio.Event()
    start = IntegrationService.start

    async def slow_start(self):
        entered.set()
        await release.wait()
        await start(self)

    monkeypatch.setattr(IntegrationService, "start", slow_start)
    server = RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0)
    starting = asyncio.create_task(server.start())
    try:
        await entered.wait()
        token = await server.create_token("facilities", "f")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            url = server.endpoints.api_url
            async with http.get(url + "/api/v1/health") as resp:
                assert resp.status == 200
            async with http.get(url + "/api/v1/integrations") as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "starting"
            release.set()
            await starting
            async with http.get(url + "/api/v1/integrations") as resp:
                assert resp.status == 200
                assert (await resp.json())["configured"] is True
    finally:
        release.set()
        await asyncio.gather(starting, return_exceptions=True)
        await server.stop()


async def test_a_room_without_integrations_says_so_at_once(tmp_path):
    config = room_config()
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0) as server:
        token = await server.create_token("facilities", "f")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/api/v1/integrations") as resp:
                assert (resp.status, await resp.json()) == (200, {"configured": False})


async def test_a_configured_integration_that_cannot_start_fails_the_start_and_leaves_nothing_running(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        room_file = tmp_path / "room.toml"
        room_file.write_text(ROOM + f'[integrations]\nhl7_room = "412"\n[integrations.mllp]\nhost = "127.0.0.1"\n'
                                    f'port = {port}\n')
        config = load_room(room_file)
        node_port = free_port()
        server = RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=node_port)
        with pytest.raises(OSError):
            async with server:
                pass
    assert server.endpoints is not None  # the API had started: it is stopped again
    api_port = int(server.endpoints.api_url.rsplit(":", 1)[1])
    assert await refused(api_port) and await refused(node_port)


def test_what_the_start_loaded_is_frozen_out_of_the_collectors_way_and_later_garbage_is_still_collected():
    """`smartroom run` freezes its start-up heap (controller/cli.py): a full collection walks only
    what came after, and a cycle made after the freeze is still collected."""
    import gc

    from controller.cli import _freeze_startup_heap

    loaded = {"config": [1, 2, 3]}  # stands for what the start built
    try:
        frozen = _freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is loaded for o in gc.get_objects()), "a start-up object is still walked by every collection"

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle made after the start
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
    assert any(o is loaded for o in gc.get_objects())
