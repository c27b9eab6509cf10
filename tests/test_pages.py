"""The nurse page and the facilities page in a real browser (Debian's Chromium, headless) against a
running room: a call raised by the real firmware, acknowledged with a click; the page riding out a
controller restart without a reload or a lost event; login, 401/403/429; the facilities view.

Screenshots go to tests/artifacts/ (not committed). Waits are Playwright's auto-waiting
``expect``; the only sleep is a protocol-level node's heartbeat period, not a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from controller.room.config import parse_room
from controller.link.nodeclient import NodeClient
from controller.runner import RoomServer
from controller.sim.nodes import SimNode
from tests.helpers import ROOM_DOC, next_event, node_key, sse_events
from tests.test_system import BEDSIDE, firmware_config, free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).with_name("artifacts")
FIRMWARE_BOOT_TIMEOUT_MS = 20_000  # a MicroPython node starts, connects and presses within a few seconds

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium ('make setup' installs it)")

if CHROMIUM.exists():
    from playwright.async_api import Page, async_playwright, expect


@pytest.fixture
async def page():
    """A fresh browser page; any uncaught script error on it fails the test."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = await context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        await context.close()
        await browser.close()
    assert not errors, f"script errors on the page: {errors}"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_json(url: str, token: str):
    async with aiohttp.ClientSession(headers=auth(token)) as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def press(server: RoomServer, node: str, src: str) -> None:
    """A button press sent by a protocol-level node (the firmware path is covered by the first test)."""
    client = NodeClient(node, node_key(node))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    ev = client.event_msg("button", src)
    await client.send(ev)
    await client.recv_ack(ev["s"])
    await client.close()


async def login(page: Page, url: str, token: str, name: str | None = None) -> None:
    await page.goto(url)
    await page.get_by_label("API token").fill(token)
    if name is not None:
        await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Log in").click()


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name, full_page=True, animations="disabled")


async def test_firmware_call_appears_and_acknowledge_changes_the_room(server, tmp_path, page):
    await login(page, server.endpoints.api_url + "/", server.tokens["nurse"], "Nurse Kim")
    await expect(page.locator("#link")).to_have_text("live")
    await expect(page.locator("#calls")).to_contain_text("No active calls")
    await page.get_by_role("button", name="Enable sound").click()

    cfg = firmware_config("bedside-a", server.endpoints.node_port, tmp_path,
                          [{"at_ms": 300, "pin": "call", "press_ms": 200, "bounce": True}], **BEDSIDE)
    async with SimNode(cfg, tmp_path / "nodes") as node:
        call = page.locator("article.call")
        await expect(call).to_have_count(1, timeout=FIRMWARE_BOOT_TIMEOUT_MS)
        await expect(call.locator(".badge")).to_have_text("◆ MEDIUM")
        await expect(call).to_contain_text("Patient call · Bed A")
        await expect(call).to_contain_text("Waiting for a nurse")  # annunciated: the page confirmed it shows it
        await expect(call).to_contain_text("since raised")
        await expect(call).to_contain_text("Escalation level 1: primary nurse")
        await expect(page.locator("#dome")).to_have_attribute("data-colour", "white")
        await expect(page.locator("#dome-text")).to_have_text("Dome: white, steady")
        await expect(page.locator("#tone-text")).to_have_text("In-room tone: ◆ medium")
        await expect(page.locator("#sound-last")).to_contain_text("◆ MEDIUM cue")
        await expect(page.locator('#history li[data-kind="call.raised"]')).to_contain_text(
            "Patient call (bed A) raised by bedside-a/call")
        await screenshot(page, "nurse-page-call.png")

        await call.get_by_role("button", name="Acknowledge").click()
        await expect(call).to_contain_text("Acknowledged by Nurse Kim")
        await expect(call.get_by_role("button", name="Acknowledge")).to_have_count(0)
        await expect(call.get_by_role("button", name="Clear")).to_be_visible()  # a routine call
        await expect(page.locator("#tone-text")).to_have_text("In-room tone: off")
        await node.wait_for("indicator", pattern="acknowledged")  # the node's reassurance light follows

    room = await get_json(server.endpoints.api_url + "/api/v1/room", server.tokens["nurse"])
    [acked] = room["calls"]
    assert (acked["type"], acked["state"], acked["acknowledged_by"]) == ("patient_call", "acknowledged", "Nurse Kim")
    assert acked["annunciated_at_ms"] is not None

    await page.get_by_role("button", name="Fall risk: off").click()
    await expect(page.locator('#beds [data-bed="A"] button')).to_have_attribute("aria-pressed", "true")
    await expect(page.locator('#history li[data-kind="bed.fall_risk"]')).to_contain_text("fall risk on (Nurse Kim)")
    room = await get_json(server.endpoints.api_url + "/api/v1/room", server.tokens["nurse"])
    assert room["fall_risk"] == {"A": True}
    await screenshot(page, "nurse-page-acknowledged.png")


async def test_a_page_that_displays_a_call_records_it_shown_and_a_stream_reader_does_not(server, page):
    url, nurse = server.endpoints.api_url, server.tokens["nurse"]
    async with aiohttp.ClientSession(headers=auth(nurse)) as http, \
            http.get(url + "/api/v1/events/stream?endpoint=raw%20reader") as resp:
        events = sse_events(resp)
        await press(server, "bath", "cord")
        _, raised = await next_event(events, "call.raised")
        call_id = raised["data"]["call_id"]
        # What the stream's delivery caused would be stored, and streamed, before this later event.
        async with http.put(url + "/api/v1/beds/A/fall-risk", json={"enabled": True}) as put:
            assert put.status == 200
        _, _ = await next_event(events, "bed.fall_risk")
        assert server.controller.room.calls[call_id].annunciated_at_ms is None, "a stream reader is no screen"

        # A page whose receipt does not arrive shows the call, but it is not recorded as shown.
        await page.route("**/api/v1/calls/shown", lambda route: route.abort())
        async with page.expect_request("**/api/v1/calls/shown") as receipt:
            await login(page, url + "/", nurse, "Nurse Kim")
        assert json.loads((await receipt.value).post_data) == {"calls": [call_id], "by": "nurse page (Nurse Kim)"}
        row = page.locator(f'article.call[data-call-id="{call_id}"]')
        await expect(row).to_contain_text("Raised — not yet on a screen")
        assert server.controller.room.calls[call_id].annunciated_at_ms is None

        # Its receipt gets through at the next render: now the call is shown, by that page.
        await page.unroute("**/api/v1/calls/shown")
        async with http.put(url + "/api/v1/beds/A/fall-risk", json={"enabled": False}) as put:
            assert put.status == 200
        await expect(row).to_contain_text("Waiting for a nurse")
        _, shown = await next_event(events, "call.annunciated")
    assert (shown["data"]["call_id"], shown["data"]["by"]) == (call_id, "nurse page (Nurse Kim)")
    assert server.controller.room.calls[call_id].annunciated_by == "nurse page (Nurse Kim)"


async def test_page_rides_out_a_controller_restart_without_losing_events(tmp_path, config, keys, page):
    api_port, db = free_port(), tmp_path / "room.db"
    server = RoomServer(config, keys, db, api_port=api_port, node_port=0)
    await server.start()
    try:
        token = await server.create_token("nurse", "station 4B")
        await login(page, server.endpoints.api_url + "/", token, "Nurse Ada")
        await expect(page.locator("#link")).to_have_text("live")
        start_cursor = server.controller.room.cursor
        await page.evaluate("window.notReloaded = true")

        await press(server, "bedside-a", "call")
        await expect(page.locator("article.call")).to_have_count(1)
        # While the controller is down and until the second call is stored, the page cannot reach
        # the stream: the second call is certainly one it missed and must get by Last-Event-ID.
        await page.route("**/api/v1/events/stream*", lambda route: route.abort())
        await server.stop()
        await expect(page.locator("#link")).to_contain_text("reconnecting")
        server = RoomServer(config, keys, db, api_port=api_port, node_port=0)
        await server.start()
        await press(server, "bath", "cord")
        await page.unroute("**/api/v1/events/stream*")

        calls = page.locator("article.call")
        await expect(calls).to_have_count(2, timeout=15_000)  # the backoff has grown during the outage
        await expect(page.locator("#link")).to_have_text("live")
        await expect(calls.first.locator(".badge")).to_have_text("▲ HIGH")  # highest priority first
        await expect(calls.first).to_contain_text("Bathroom emergency")
        await expect(calls.first).to_contain_text("Waiting for a nurse")  # confirmed by the page once shown
        assert await page.evaluate("window.notReloaded === true")

        # The page's history holds every room event since it logged in, each once.
        log = await server.controller.events_after(start_cursor, 1000)
        expected = [str(e.id) for e in log if e.kind != "node.event"]
        shown = page.locator("#history li")
        await expect(shown).to_have_count(len(expected))
        ids = await shown.evaluate_all("items => items.map(li => li.dataset.eventId)")
        assert sorted(ids, key=int) == expected
        raised = page.locator('#history li[data-kind="call.raised"]')
        await expect(raised).to_have_count(2)
        await expect(raised.nth(0)).to_contain_text("Bathroom emergency")
        await expect(raised.nth(1)).to_contain_text("Patient call")
    finally:
        await server.stop()


async def test_login_errors_and_a_forbidden_acknowledge(server, page):
    url = server.endpoints.api_url + "/"
    await page.goto(url)
    await expect(page.get_by_label("API token")).to_be_visible()  # no token: the login form, no room data
    await expect(page.locator("#app")).to_be_hidden()

    # A facilities token may look at the nurse page but may not acknowledge: the 403 is shown.
    await press(server, "bedside-a", "call")
    await login(page, url, server.tokens["facilities"], "Sam Facilities")
    call = page.locator("article.call")
    await expect(call).to_have_count(1)
    await call.get_by_role("button", name="Acknowledge").click()
    await expect(page.locator("#notice")).to_contain_text("Not allowed (403)")
    await expect(page.locator("#notice")).to_contain_text("the facilities role may not do this")
    room = await get_json(server.endpoints.api_url + "/api/v1/room", server.tokens["nurse"])
    assert room["calls"][0]["acknowledged_at_ms"] is None

    await page.get_by_role("button", name="Log out").click()
    await expect(page.locator("#login-error")).to_have_text("You are logged out.")
    assert await page.evaluate("sessionStorage.getItem('smartroom.token')") is None

    # A wrong token: an error, still the login form.
    await login(page, url, "srt_not-a-token", "Nurse Kim")
    await expect(page.locator("#login-error")).to_contain_text("not accepted (401)")
    await expect(page.locator("#app")).to_be_hidden()
    # Guessing on: the controller makes this address wait, and the page says how long.
    submit = page.get_by_role("button", name="Log in")
    for _ in range(10):
        await page.get_by_label("API token").fill("srt_still-wrong")
        await submit.click()
        await expect(page.locator("#login-error")).not_to_have_text("")
        if "429" in await page.locator("#login-error").inner_text():
            break
    await expect(page.locator("#login-error")).to_contain_text("try again in")
    await expect(submit).to_be_disabled()


async def readings_answer(route) -> None:
    """GET /api/v1/readings for temp_c: 24 h with a 3 h hole; any other measure has no history."""
    query = parse_qs(urlsplit(route.request.url).query)
    if query["measure"] != ["temp_c"]:
        await route.fulfill(status=404, json={"error": {"status": 404, "code": "not_found", "message": "none"}})
        return
    to_ms = int(query["to"][0])
    step = 3_600_000
    start = to_ms - 24 * step
    buckets = [{"start_ms": start + h * step, "n": 60, "min": 21.5 + h % 3 * 0.2, "max": 23.0 + h % 4 * 0.4,
                "mean": 22.3 + h % 3 * 0.2} for h in range(24) if not 10 <= h < 13]
    await route.fulfill(json={"measure": "temp_c", "node": None, "from_ms": start, "to_ms": to_ms, "step_ms": step,
                              "source": "raw", "buckets": buckets, "limits": {"low": 21.0, "high": 24.0}})


def supervised_room(heartbeat_ms: int, missed: int):
    doc = json.loads(json.dumps(ROOM_DOC))
    doc["gateway"]["heartbeat_ms"] = heartbeat_ms
    doc["supervision"] = {"missed_heartbeats": missed}
    return parse_room(doc, "facilities-test.toml")


async def test_facilities_page_shows_nodes_alarms_and_environment(tmp_path, keys, page):
    # The shortest supervision the configuration allows, so a node goes offline within 3 s.
    config = supervised_room(heartbeat_ms=1000, missed=2)
    async with RoomServer(config, keys, tmp_path / "room.db", api_port=0, node_port=0) as server:
        facilities = await server.create_token("facilities", "facilities desk")
        nurse = await server.create_token("nurse", "station")
        host, port = server.endpoints.node_host, server.endpoints.node_port
        url = server.endpoints.api_url + "/facilities"

        # A nurse token is refused by this page.
        await login(page, url, nurse)
        await expect(page.locator("#login-error")).to_contain_text("needs a facilities or admin token (403)")

        bedside = NodeClient("bedside-a", node_key("bedside-a"))
        await bedside.connect(host, port)
        bath = NodeClient("bath", node_key("bath"))
        await bath.connect(host, port)
        await bath.send({**bath.hb_msg(), "rssi": -71, "batt_mv": 3300})  # below 3.45 V: low battery
        # Above the 24 °C limit; shown to the sensors' precision (0.1 °C, 1 %, 10 ppm), not 26.549.
        await bedside.send(bedside.reading_msg(0, temp_mdegc=26_549, rh_mpct=44_612, co2_ppm=623))

        async def keep_alive() -> None:
            while True:
                await bedside.send({**bedside.hb_msg(), "rssi": -55, "batt_mv": 4100})
                await asyncio.sleep(0.3)  # a node's heartbeat period, not a test wait

        beating = asyncio.create_task(keep_alive())
        try:
            await login(page, url, facilities)
            await expect(page.locator("#link")).to_have_text("live")
            nodes = page.locator("#nodes tbody")
            await expect(nodes.locator('tr[data-node="bedside-a"]')).to_contain_text("online")
            await expect(nodes.locator('tr[data-node="bedside-a"]')).to_contain_text("4.10 V")
            await expect(nodes.locator('tr[data-node="bedside-a"]')).to_contain_text("-55 dBm")
            await expect(nodes.locator('tr[data-node="bath"]')).to_contain_text("3.30 V")
            alarms = page.locator("#alarms")
            await expect(alarms.locator('[data-type="low_battery"]')).to_contain_text("battery 3.30 V")
            await expect(alarms.locator('[data-type="low_battery"] .badge')).to_have_text("● LOW")
            await expect(alarms.get_by_role("button")).to_have_count(0)  # read-only: nurses acknowledge

            temp = page.locator('[data-measure="temp_c"]')
            await expect(temp.locator(".current .now")).to_contain_text(re.compile(r"^26\.5 °C"))
            await expect(page.locator('[data-measure="rh_pct"] .current .now')).to_contain_text(re.compile(r"^45 %"))
            await expect(page.locator('[data-measure="co2_ppm"] .current .now')).to_contain_text(
                re.compile(r"^620 ppm"))
            await expect(temp.locator(".current")).to_contain_text("out of range")
            await expect(temp.locator(".current")).to_contain_text("limits 21–24 °C")
            # Each chart settles: drawn, or saying there is no history (yet).
            await expect(page.locator(".plot-box", has_text="loading")).to_have_count(0)
            gateway = page.locator("#gateway")
            await expect(gateway).to_contain_text("nodes connected")
            await expect(gateway.locator("tr", has_text="Bluetooth")).to_contain_text("not used in this room")
            await expect(gateway.locator("tr", has_text="wired (GPIO) nodes")).to_contain_text("none")
            await expect(gateway.locator("tr", has_text="room database")).to_contain_text("ok")
            for junk in ("[object Object]", "null", "undefined"):
                await expect(gateway).not_to_contain_text(junk)

            await bath.close()  # silent from now on: offline after two missed heartbeats
            await expect(nodes.locator('tr[data-node="bath"]')).to_contain_text("OFFLINE", timeout=10_000)
            await expect(alarms.locator('[data-type="node_offline"]')).to_contain_text("node bath")
            await expect(nodes.locator('tr[data-node="bedside-a"]')).to_contain_text("online")
            await expect(nodes.locator('tr[data-node="env"]')).to_contain_text("NEVER SEEN")

            # The stored reading on the chart, from the controller's readings history.
            # (heartbeats add battery rows too: any positive count will do)
            await expect(page.locator("#gateway tr", has_text="readings stored")).to_contain_text(
                re.compile(r"stored\s*[1-9]"))
            await page.get_by_role("button", name="Reload charts").click()
            await expect(temp.locator("svg.plot circle.point")).to_have_count(1)
            await expect(temp.locator("svg.plot .limit-label")).to_have_text(["low 21.0 °C", "high 24.0 °C"])
            await expect(page.locator('[data-measure="noise_db"] .plot-box')).to_have_text(
                "no readings in the last 24 h")

            # The chart, from an answer of the readings endpoint's documented shape.
            await page.route("**/api/v1/readings?*", readings_answer)
            await page.get_by_role("button", name="Reload charts").click()
            chart = temp.locator("svg.plot")
            await expect(chart.locator("polygon.band")).to_have_count(2)  # no band across the gap
            await expect(chart.locator("polyline.mean")).to_have_count(2)
            await expect(chart.locator(".limit-label")).to_have_text(["low 21.0 °C", "high 24.0 °C"])
            await expect(page.locator('[data-measure="co2_ppm"] .plot-box')).to_have_text("no history yet")
            await screenshot(page, "facilities-page.png")
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await bedside.close()


async def test_sse_parser_and_reconnect_backoff(server, page):
    """The page's own SSE parser and backoff, run in the browser: lines split anywhere, CRLF,
    comments (the server's pings), multi-line data; doubling waits up to the cap."""
    await page.goto(server.endpoints.api_url + "/")
    result = await page.evaluate("""async () => {
        const { SseParser, backoffMs, BACKOFF_MAX_MS } = await import("/static/stream.js");
        const parser = new SseParser();
        const events = [];
        for (const chunk of ["id: 7\\r", "\\ndata: {\\"a\\"", ":1}\\r\\n\\r\\n: ping\\n\\nid:8\\ndata: x\\ndata: y\\n", "\\n"]) {
            events.push(...parser.push(chunk));
        }
        return { events, waits: [1, 2, 3, 6, 30].map((n) => backoffMs(n, 250, () => 0.5)), max: BACKOFF_MAX_MS };
    }""")
    assert result["events"] == [{"id": "7", "event": "message", "data": '{"a":1}'},
                                {"id": "8", "event": "message", "data": "x\ny"}]
    assert result["waits"] == [250, 500, 1000, 8000, result["max"]]
