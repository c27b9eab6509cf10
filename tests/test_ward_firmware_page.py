"""The ward's firmware page (/firmware) in Debian's Chromium: every room's nodes with board, version
and update state, a ward rollout started from the page, its progress per node live, and a room
refusing the bundle stopping it with the room's reason; a nurse's token is turned away. A screenshot
in tests/artifacts/ward-firmware.png."""

from __future__ import annotations

import pytest

from tests.test_pages import CHROMIUM, login, page, screenshot  # noqa: F401 (the page fixture)
from tests.test_ward_firmware import bundles, fake_node, reports, rooms_and_ward  # noqa: F401
from tests.wardkit import broker  # noqa: F401

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_the_firmware_page_runs_a_ward_rollout_and_shows_a_rooms_refusal(broker, bundles, tmp_path,  # noqa: F811
                                                                              page):  # noqa: F811
    new = bundles["new"]
    holdings = {"4b-12": [("v0.2.0", new)], "4b-14": []}  # 4b-14 does not hold the bundle
    async with rooms_and_ward(broker, tmp_path, holdings, bundles["pub"]) as (servers, ward):
        nodes = {room: await fake_node(servers[room], "bedside-a") for room in servers}
        try:
            for room in servers:
                await reports(ward, room, bedside_a="0.1.0")
            await login(page, ward.url + "/firmware", ward.tokens["nurse"], "Nurse Kim")
            await expect(page.locator("#login-error")).to_contain_text("403")

            await login(page, ward.url + "/firmware", ward.tokens["facilities"], "Tech Tom")
            row = page.locator('.fw-room[data-room="4b-12"] tr[data-node="bedside-a"]')
            await expect(row).to_contain_text("sim-esp32s3")
            await expect(row).to_contain_text("0.1.0")
            await expect(page.locator('.fw-room[data-room="4b-14"] tr[data-node="bath"]')).to_contain_text("offline")
            await expect(page.locator("#fw-bundle")).to_contain_text("0.2.0 for unix")
            await expect(page.locator("#fw-bundle")).to_contain_text("in 1 of 2 rooms")
            await expect(page.locator("#fw-holders")).to_contain_text("not held by 4b-14")

            await page.get_by_role("button", name="Start ward rollout").click()
            item = page.locator('#fw-rollouts li[data-rollout="1"]')
            await expect(item).to_contain_text("RUNNING")
            await expect(item.locator('li[data-room="4b-12"]')).to_contain_text("bedside-a offered")  # live: the page polls while a rollout runs
            await expect(item.locator('li[data-room="4b-14"]')).to_contain_text("waiting")
            await expect(row).to_contain_text("offered 0.2.0")
            node = nodes["4b-12"]  # the canary says how it goes (a real node would download and restart first)
            await node.send({**node.base("ota"), "st": "accepted", "ver": "0.2.0"})
            await expect(row).to_contain_text("downloading 0.2.0")
            await node.send({**node.base("ota"), "st": "confirmed", "ver": "0.2.0"})
            await expect(item.locator('li[data-room="4b-12"]')).to_contain_text("4b-12: done")
            await expect(item).to_contain_text("STOPPED — room 4b-14 refused: bundle")
            await expect(item.locator('li[data-room="4b-14"]')).to_contain_text("is not in this room's bundles folder")
            await expect(item.get_by_role("button", name="Stop rollout")).to_have_count(0)
            assert servers["4b-14"].ota.rollouts == []
            await screenshot(page, "ward-firmware.png")
            audit = await ward.console.store.read_audit(0, 100)
            assert [(e.actor, e.status) for e in audit if (e.action, e.target) == ("POST", "/api/v1/firmware/rollouts")
                    ] == [("facilities desk", 201)]
            assert {e.actor for e in audit if e.action.startswith("firmware.ward.")} == {"Tech Tom"}
        finally:
            for client in nodes.values():
                await client.close()
