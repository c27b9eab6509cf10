"""The pages during a storage failure, in Debian's Chromium: the nurse page says at once that
events cannot be recorded and names the inputs waiting (the stream's status event, no reload),
while the active call keeps its place, dome light and tone; the facilities page shows the database
FAILED. The failure is the room database turning read-only (``PRAGMA query_only``)."""

from __future__ import annotations

import pytest

from controller.link.nodeclient import NodeClient
from tests.faults.test_storage_alarm import read_only
from tests.helpers import node_key
from tests.test_pages import CHROMIUM, login, page, press, screenshot  # noqa: F401 (page is a fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium ('make setup' installs it)")

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_the_nurse_page_shows_a_storage_failure_at_once_and_the_call_keeps_signalling(server, page):
    await login(page, server.endpoints.api_url + "/", server.tokens["nurse"], "Nurse Kim")
    await expect(page.locator("#link")).to_have_text("live")
    await press(server, "bedside-a", "call")
    await expect(page.locator("article.call")).to_have_count(1)
    banner = page.locator("#degraded")
    await expect(banner).to_be_hidden()

    await read_only(server.controller)
    bath = NodeClient("bath", node_key("bath"))
    await bath.connect(server.endpoints.node_host, server.endpoints.node_port)
    cord = bath.event_msg("button", "cord")
    await bath.send(cord)  # not stored, so not acked: the node keeps it
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("cannot record events")
    await expect(banner).to_contain_text("Check in person: bath/cord (bath_emergency)")
    calls = page.locator("article.call")
    await expect(calls).to_have_count(2)
    await expect(calls.first).to_contain_text("Patient call")  # the call keeps its place at the top
    await expect(calls.nth(1)).to_contain_text("System fault")
    await expect(calls.nth(1)).to_contain_text("storage: OperationalError: attempt to write a readonly database")
    await expect(page.locator("#dome-text")).to_have_text("Dome: white, steady")
    await expect(page.locator("#tone-text")).to_have_text("In-room tone: ◆ medium")
    await screenshot(page, "nurse-page-storage-failed.png")

    facilities = await page.context.new_page()
    await login(facilities, server.endpoints.api_url + "/facilities", server.tokens["facilities"])
    await expect(facilities.locator("#degraded")).to_contain_text("bath/cord (bath_emergency)")
    await expect(facilities.locator("#gateway tr", has_text="room database")).to_contain_text("FAILED")
    await expect(facilities.locator('#alarms [data-type="system_fault"]')).to_contain_text("readonly database")
    await screenshot(facilities, "facilities-page-storage-failed.png")

    await read_only(server.controller, False)
    await bath.send(bath.event_msg("button", "cord", seq=cord["s"]))  # the node's resend
    await bath.recv_ack(cord["s"])
    await bath.close()
    await expect(banner).to_be_hidden()
    await expect(calls).to_have_count(2)
    await expect(calls.first).to_contain_text("Bathroom emergency")
    await expect(page.locator('#history li[data-kind="call.cleared"]')).to_contain_text("System fault")
