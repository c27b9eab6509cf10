"""The adoption flow on the facilities page in a real browser (Debian's Chromium, headless): a
provisioned node connects and shows as waiting; a click gives it a bed and a role; the node gets its
setup over the link and its first press raises a call. The screenshot goes to tests/artifacts/."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from controller.room.config import parse_room
from controller.runner import RoomServer
from controller.security.tls import load_or_create
from tests.test_pages import ARTIFACTS, CHROMIUM, login, page  # noqa: F401 - the page fixture

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium ('make setup' installs it)")

if CHROMIUM.exists():
    from playwright.async_api import expect

ROOM = {"room": {"id": "4b-14", "name": "Ward 4B room 14"}, "beds": [{"id": "A"}, {"id": "B"}],
        "gateway": {"heartbeat_ms": 10000}, "nodes": {}}
NODE, KEY = "bed-b-call", bytes(range(1, 33))


async def test_facilities_adopt_a_waiting_node(page, tmp_path):  # noqa: F811
    config = parse_room(json.loads(json.dumps(ROOM)), "room.toml")
    node_tls = load_or_create(tmp_path / "node-link-cert.pem", tmp_path / "node-link-key.pem", ["localhost"],
                              node_link=True)  # the node link as shipped: TLS, the node pins this certificate
    async with RoomServer(config, {}, tmp_path / "room.db", api_port=0, node_port=0, node_tls=node_tls) as server:
        token = await server.create_token("facilities", "tech sam")
        server.registry.enrol(NODE, KEY, "(command line) sam", 1, hw="esp32s3-devkitc-1", fw="0.1.0")
        node = NodeClient(NODE, KEY, pin=node_tls.fingerprint_hex)
        node.hello_msg = lambda: {**node.base("hello"), "fw": "0.1.0", "hw": "esp32s3-devkitc-1",  # type: ignore
                                  "caps": ["button", "indicator", "setup", "identify", "rotate", "forget"],
                                  "hb_ms": 10000, "nonce": node.nonce}
        await node.connect(server.endpoints.node_host, server.endpoints.node_port)
        hb = {**node.hb_msg(), "state": {"call": 0, "cancel": 0}}
        await node.send(hb)
        await node.recv_ack(hb["s"])

        await login(page, f"{server.endpoints.api_url}/facilities", token)
        row = page.locator(f'tr[data-registry-node="{NODE}"]')
        await expect(row).to_contain_text("WAITING for adoption")
        await expect(row).to_contain_text("has call, cancel")
        await row.get_by_label("bed").select_option("B")
        await row.get_by_label("role").select_option("bedside")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "adoption-waiting.png"), full_page=True)
        await row.get_by_role("button", name="Adopt").click()
        await expect(row).to_contain_text("adopted")
        await expect(row).to_contain_text("call → patient call")
        await expect(page.locator("#notice")).to_contain_text(f"{NODE} adopted as bedside")

        setup = await node.recv()
        assert setup["t"] == "cmd" and setup["c"] == "setup"
        assert (setup["bed"], setup["role"], setup["inputs"]) == ("B", "bedside", {"call": "patient_call",
                                                                                   "cancel": "cancel"})
        record = server.registry.get(NODE)
        assert record.state == "adopted" and record.adopted_by == "tech sam"

        ev = node.event_msg("button", "call")
        await node.send(ev)
        seen = [await node.recv()]  # the ack, and the call's reassurance light before or after it
        while not (seen[-1]["t"] == "ack" and seen[-1]["a"] == ev["s"]):
            seen.append(await node.recv())
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(f"{server.endpoints.api_url}/api/v1/room") as resp:
                calls = (await resp.json())["calls"]
        assert [(c["type"], c["bed"]) for c in calls] == [("patient_call", "B")]

        await row.get_by_role("button", name="Identify").click()
        while seen[-1].get("c") != "identify":
            seen.append(await node.recv())
        cmds = [m for m in seen if m["t"] == "cmd"]
        assert [m["c"] for m in cmds] == ["indicator", "identify"] and cmds[0]["p"] == "received"
        await page.screenshot(path=str(ARTIFACTS / "adoption-adopted.png"), full_page=True)
        await node.close()
