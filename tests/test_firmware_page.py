"""The facilities page's firmware panel in Chromium: versions, bundles on offer, a rollout started
from the page, refused by the node and stopped; a screenshot in tests/artifacts/."""

from __future__ import annotations

import shutil

import pytest

from controller.link.nodeclient import NodeClient
from controller.ota import bundle as fwb
from controller.runner import RoomServer
from tests.helpers import keys_for, node_key, room_config
from tests.test_pages import ARTIFACTS, CHROMIUM, login, page  # noqa: F401 (the page fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_facilities_page_shows_versions_and_runs_a_rollout(tmp_path, page):  # noqa: F811
    fwb.generate_key(tmp_path / "fw.pem")
    key = fwb.load_key(tmp_path / "fw.pem")
    bundle = fwb.build_bundle(tmp_path / "bundles" / "v0.2.0", key, board="unix", version="0.2.0")
    shutil.copytree(bundle.root, tmp_path / "bundles" / "tampered")
    (tmp_path / "bundles" / "tampered" / "manifest.sig").write_bytes(bytes(64))
    config = room_config()
    async with RoomServer(config, keys_for(config), tmp_path / "room.db", api_port=0, node_port=0,
                          firmware_bundles=tmp_path / "bundles", firmware_public_key=fwb.public_bytes(key)) as server:
        token = await server.create_token("facilities", "facilities desk")
        node = NodeClient("bedside-a", node_key("bedside-a"))
        node.hello_msg = lambda: {**NodeClient.hello_msg(node), "fw": "0.1.0", "caps": ["button", "ota"]}
        await node.connect(server.endpoints.node_host, server.endpoints.node_port)
        try:
            await login(page, server.endpoints.api_url + "/facilities", token)
            row = page.locator('#fw-nodes tr[data-node="bedside-a"]')
            await expect(row).to_contain_text("0.1.0")
            await expect(row).to_contain_text("yes")
            await expect(page.locator('#fw-nodes tr[data-node="bath"]')).to_contain_text("offline")
            await expect(page.locator("#fw-bundle")).to_contain_text("v0.2.0: 0.2.0 for unix")
            await expect(page.locator("#fw-bad")).to_contain_text("tampered")

            # a node that is not connected first: the rollout stops at once, the others untouched
            await page.locator("#fw-order").fill("bath, bedside-a")
            await page.get_by_role("button", name="Start rollout").click()
            await expect(page.locator('#fw-rollouts li[data-rollout="1"]')).to_contain_text(
                "STOPPED — bath unreachable (not connected)")
            assert server.ota.rollouts[0].nodes["bedside-a"].state == "waiting"

            # the connected node first: offered, then it refuses (its own report), and the rollout stops
            await page.locator("#fw-order").fill("bedside-a, bath")
            await page.get_by_role("button", name="Start rollout").click()
            await expect(row).to_contain_text("offered 0.2.0")
            await expect(page.locator('#fw-rollouts li[data-rollout="2"]')).to_contain_text("RUNNING")
            await node.send({**node.base("ota"), "st": "refused", "ver": "0.2.0", "why": "wrong_board"})
            await expect(row).to_contain_text("REFUSED 0.2.0 — wrong_board")
            await expect(page.locator('#fw-rollouts li[data-rollout="2"]')).to_contain_text(
                "STOPPED — bedside-a refused (wrong_board)")
            await expect(page.locator("#fw-refused")).to_contain_text("bedside-a: wrong_board ×1")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.locator("#fw-title").scroll_into_view_if_needed()
            await page.screenshot(path=str(ARTIFACTS / "facilities-firmware.png"), full_page=True)
        finally:
            await node.close()
