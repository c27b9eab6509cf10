"""The ward station and the staff view in Debian's Chromium against real rooms on a real Mosquitto:
the unit's calls in priority order with each dome light, acknowledge with a click, the room's refusal
of a remote clear shown with its reason, a room offline as a technical alarm, assignments, and an
escalation reaching the charge nurse's phone when the primary nurse declines."""

from __future__ import annotations

import pytest

from tests.test_pages import CHROMIUM, login, page, screenshot  # noqa: F401
from tests.test_ward_console import rooms_and_ward
from tests.test_ward_uplink import eventually
from tests.wardkit import ROOMS, broker, press  # noqa: F401

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

if CHROMIUM.exists():
    from playwright.async_api import async_playwright, expect


async def online(ward) -> None:
    await eventually(lambda: all(ward.console.rooms.get(r) and ward.console.rooms[r].status == "online"
                                 for r in ROOMS))


async def test_ward_station_shows_the_unit_and_the_rooms_refusal(broker, tmp_path, page):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        token = await ward.create_token("charge", "station 4B")
        await online(ward)
        await login(page, ward.url + "/", token, "Nurse Lee")
        await expect(page.locator("#link")).to_have_text("live")
        await expect(page.locator("#calls")).to_contain_text("No active calls")
        await expect(page.locator("#alarms li")).to_have_count(0)

        await press(servers["4b-12"], "bedside-a", "call")
        await press(servers["4b-14"], "bath", "cord")
        calls = page.locator("article.call")
        await expect(calls).to_have_count(2)
        await expect(calls.nth(0)).to_contain_text("Bathroom emergency")  # highest priority first
        await expect(calls.nth(0)).to_contain_text("Room Ward 4B room 4b-14")
        await expect(calls.nth(1)).to_contain_text("Patient call · Bed A")
        dome_14 = servers["4b-14"].controller.outputs()
        await expect(page.locator('.tile[data-room="4b-14"] .dome')).to_have_attribute("data-colour",
                                                                                       dome_14.dome_colour)
        await expect(page.locator('.tile[data-room="4b-12"] .dome')).to_have_attribute(
            "data-colour", servers["4b-12"].controller.outputs().dome_colour)

        await calls.nth(1).get_by_role("button", name="Acknowledge").click()
        await expect(calls.nth(1)).to_contain_text("Acknowledged by Nurse Lee")
        call_id = await calls.nth(1).get_attribute("data-call")
        assert servers["4b-12"].controller.room.calls[call_id].acknowledged_by == "Nurse Lee"

        # A bathroom emergency is cancelled at the bedside: the room refuses, the page says why.
        await calls.nth(0).get_by_role("button", name="Clear").click()
        await expect(page.locator("#notice")).to_contain_text("refused by the room (409)")
        await expect(page.locator("#notice")).to_contain_text("in the room")
        await expect(calls).to_have_count(2)
        await screenshot(page, "ward-station.png")

        # A room whose controller goes away is a technical alarm, and its tile says so.
        await servers["4b-12"].uplink.stop()
        await expect(page.locator('#alarms li[data-room="4b-12"]')).to_contain_text("OFFLINE")
        await expect(page.locator('.tile[data-room="4b-12"]')).to_have_attribute("data-status", "offline")


async def test_escalation_reaches_the_charge_nurses_phone(broker, tmp_path, page):
    async with rooms_and_ward(broker, tmp_path) as (servers, ward):
        charge = await ward.create_token("charge", "Nurse Lee")
        kim = await ward.create_token("nurse", "Nurse Kim")
        await online(ward)

        # The charge nurse assigns the shift on the ward station.
        await login(page, ward.url + "/", charge, "Nurse Lee")
        await page.locator("#assign-box summary").click()
        await page.get_by_label("Shift", exact=True).fill("day 1 Dec")
        await page.get_by_label("Charge nurse").fill("Nurse Lee")
        await page.get_by_label("Other staff").fill("Nurse Ada")
        await page.get_by_role("textbox", name="Assignments").fill("4b-12 A Nurse Kim\n4b-14 * Nurse Ada")
        await page.get_by_role("button", name="Save assignments").click()
        await expect(page.locator("#assignments")).to_contain_text("4b-12 · bed A: Nurse Kim")
        assert ward.console.shift.charge == "Nurse Lee"

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            phone_ctx = await browser.new_context(viewport={"width": 390, "height": 844})
            kim_page, lee_page = await phone_ctx.new_page(), await (await browser.new_context(
                viewport={"width": 390, "height": 844})).new_page()
            await login(kim_page, ward.url + "/staff", kim)
            await login(lee_page, ward.url + "/staff", charge)
            await expect(kim_page.locator("#who")).to_have_text("Nurse Kim")
            await expect(lee_page.locator("#who")).to_have_text("Nurse Lee · charge nurse")
            await expect(kim_page.locator("#mine")).to_contain_text("4b-12 bed A")

            await press(servers["4b-12"], "bedside-a", "call")
            kim_call = kim_page.locator("article.call")
            await expect(kim_call).to_have_count(1)
            await expect(kim_call).to_contain_text("→ primary nurse: Nurse Kim")
            await expect(lee_page.locator("article.call")).to_have_count(0)

            await kim_call.get_by_role("button", name="Decline").click()  # busy: on to the charge nurse
            lee_call = lee_page.locator("article.call")
            await expect(lee_call).to_have_count(1)
            await expect(lee_call).to_contain_text("→ charge nurse")
            await expect(lee_call).to_contain_text("Declined by Nurse Kim")
            await screenshot(lee_page, "staff-view-escalated.png")
            await lee_call.get_by_role("button", name="Accept").click()
            await expect(lee_call).to_contain_text("Acknowledged by Nurse Lee")
            call_id = await lee_call.get_attribute("data-call")
            assert servers["4b-12"].controller.room.calls[call_id].acknowledged_by == "Nurse Lee"
            await browser.close()
