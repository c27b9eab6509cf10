"""REST API and event stream against a real server on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from tests.helpers import next_event, node_key, sse_events


@pytest.fixture
async def http(server):
    """A client with the nurse's token."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.tokens['nurse']}"}) as session:
        yield session


async def press(server, node="bedside-a", src="call", client=None) -> NodeClient:
    client = client or NodeClient(node, node_key(node))
    if client.writer is None:
        await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    ev = client.event_msg("button", src)
    await client.send(ev)
    await client.recv_ack(ev["s"])
    return client


def api(server, path: str) -> str:
    return server.endpoints.api_url + path


async def test_room_lists_calls_highest_priority_first_then_oldest(server, http):
    bedside = await press(server, "bedside-a", "call")
    await press(server, "bath", "cord")
    await press(server, "wearable-a", "pendant")
    async with http.get(api(server, "/api/v1/room")) as resp:
        room = await resp.json()
    assert resp.status == 200
    assert [(c["type"], c["source"]["node"], c["priority"]) for c in room["calls"]] == [
        ("bath_emergency", "bath", "high"),
        ("patient_call", "bedside-a", "medium"),
        ("patient_call", "wearable-a", "medium"),
    ]
    # A repeated press from the same source is counted on its call, not raised again.
    await press(server, client=bedside)
    async with http.get(api(server, "/api/v1/room")) as resp:
        room = await resp.json()
    assert [c["presses"] for c in room["calls"]] == [1, 2, 1]


async def test_events_are_paged_by_cursor(server, http):
    await press(server)
    await press(server, "bath", "cord")
    seen, after = [], 0
    while True:
        async with http.get(api(server, f"/api/v1/events?after={after}&limit=2")) as resp:
            page = await resp.json()
        seen += page["events"]
        after = page["next"]
        if not page["more"]:
            break
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    kinds = [e["kind"] for e in seen]
    assert kinds.count("call.raised") == 2 and kinds.count("node.event") == 2


async def test_ack_flow_and_error_shape(server, http):
    await press(server)
    call = server.controller.snapshot()["calls"][0]
    async with http.post(api(server, f"/api/v1/calls/{call['id']}/ack"), json={"by": "Nurse Kim"}) as resp:
        acked = await resp.json()
    assert resp.status == 200
    assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "Nurse Kim")
    # Acknowledging never clears: the call is still active.
    assert [c["state"] for c in server.controller.snapshot()["calls"]] == ["acknowledged"]

    cases = [
        (f"/api/v1/calls/{call['id']}/ack", {"by": "Nurse Lee"}, 409, "already_acknowledged"),
        ("/api/v1/calls/nope/ack", {"by": "Nurse Lee"}, 404, "call_not_found"),
        (f"/api/v1/calls/{call['id']}/ack", {"by": ""}, 400, "bad_parameter"),
        (f"/api/v1/calls/{call['id']}/ack", ["by"], 400, "bad_json"),
    ]
    for path, body, status, code in cases:
        async with http.post(api(server, path), json=body) as resp:
            err = await resp.json()
        assert resp.status == status
        assert err == {"error": {"status": status, "code": code, "message": err["error"]["message"]}}
        assert err["error"]["message"]
    async with http.post(api(server, f"/api/v1/calls/{call['id']}/ack"), data=b"{not json") as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "bad_json")
    async with http.get(api(server, "/api/v1/nothing-here")) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "not_found")
    async with http.get(api(server, "/api/v1/events?limit=0")) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "bad_parameter")


async def test_cancel_button_in_the_room_clears_calls(server, http):
    await press(server, "bedside-a", "call")
    await press(server, "bath", "cord")
    await press(server, "env", "cancel")
    assert server.controller.snapshot()["calls"] == []
    events = await server.controller.events_after(0, 100)
    cleared = [e.data for e in events if e.kind == "call.cleared"]
    assert len(cleared) == 2 and all(c["how"] == "in_room_cancel" and "env/cancel" in c["by"] for c in cleared)


async def test_stream_delivers_live_events(server, http):
    async with http.get(api(server, "/api/v1/events/stream")) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        stream = sse_events(resp)
        await press(server)
        event_id, event = await next_event(stream, "call.raised")
        assert event["id"] == event_id and event["data"]["node"] == "bedside-a"


async def test_stream_resume_with_last_event_id_misses_nothing(server, http):
    bedside = await press(server)
    async with http.get(api(server, "/api/v1/events/stream?after=0")) as resp:
        stream = sse_events(resp)
        first_id, _ = await next_event(stream, "call.raised")
    # Disconnected: meanwhile more happens.
    await press(server, "bath", "cord")
    await press(server, client=bedside)
    await press(server, "env", "cancel")
    stored = [r.id for r in await server.controller.events_after(first_id, 1000)]
    assert len(stored) >= 6
    async with http.get(api(server, "/api/v1/events/stream"), headers={"Last-Event-ID": str(first_id)}) as resp:
        stream = sse_events(resp)
        got = []
        async for event_id, _ in stream:
            got.append(event_id)
            if len(got) == len(stored):
                break
        # and it goes on live from there, still without gap or duplicate
        await press(server, client=bedside)
        async for event_id, _ in stream:
            got.append(event_id)
            if event_id == server.controller.room.cursor:
                break
    assert got == list(range(first_id + 1, server.controller.room.cursor + 1))


async def test_bad_last_event_id_is_a_clear_error(server, http):
    async with http.get(api(server, "/api/v1/events/stream"), headers={"Last-Event-ID": "yesterday"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_parameter"


async def test_dashboard_page_is_served(server, http):
    async with http.get(api(server, "/")) as resp:
        page = await resp.text()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html") and "<title>" in page
    # What the page does is tested in a real browser: tests/test_pages.py.


async def test_remote_clear_is_refused_for_cancel_at_origin_calls_with_the_reason(server, http):
    await press(server, "bath", "cord")
    await press(server, "bedside-a", "call")
    calls = {c["type"]: c for c in server.controller.snapshot()["calls"]}
    async with http.post(api(server, f"/api/v1/calls/{calls['bath_emergency']['id']}/clear"),
                         json={"by": "Nurse Kim"}) as resp:
        err = (await resp.json())["error"]
    assert (resp.status, err["code"]) == (409, "cancel_at_origin")
    assert "cancel button in the room" in err["message"]
    async with http.post(api(server, f"/api/v1/calls/{calls['patient_call']['id']}/clear"),
                         json={"by": "Nurse Kim"}) as resp:
        assert (resp.status, (await resp.json())["state"]) == (200, "cleared")
    assert [c["type"] for c in server.controller.snapshot()["calls"]] == ["bath_emergency"]
    async with http.post(api(server, "/api/v1/calls/nope/clear"), json={"by": "Nurse Kim"}) as resp:
        assert resp.status == 404


async def test_silence_and_fall_risk_endpoints(server, http):
    await press(server, "bedside-a", "call")
    async with http.get(api(server, "/api/v1/room")) as resp:
        outputs = (await resp.json())["outputs"]
    assert (outputs["dome"]["colour"], outputs["tone"]["pattern"]) == ("white", "medium")
    async with http.post(api(server, "/api/v1/room/silence"), json={"by": "Nurse Kim"}) as resp:
        silenced = await resp.json()
    assert silenced["tone"] == {"pattern": "off", "silenced": True} and silenced["dome"]["colour"] == "white"
    async with http.put(api(server, "/api/v1/beds/A/fall-risk"), json={"enabled": True, "by": "Nurse Kim"}) as resp:
        assert (resp.status, await resp.json()) == (200, {"bed": "A", "fall_risk": True})
    for path, body, status, code in [
        ("/api/v1/beds/Z/fall-risk", {"enabled": True, "by": "Nurse Kim"}, 404, "bed_not_found"),
        ("/api/v1/beds/A/fall-risk", {"enabled": "yes", "by": "Nurse Kim"}, 400, "bad_parameter"),
        ("/api/v1/beds/A/fall-risk", {"enabled": True, "by": ""}, 400, "bad_parameter"),
    ]:
        async with http.put(api(server, path), json=body) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (status, code)


async def shown(server, http, ids, by="station-4B", status=200):
    async with http.post(api(server, "/api/v1/calls/shown"), json={"calls": ids, "by": by}) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def test_a_screen_receipt_annunciates_the_call_once(server, http):
    await press(server)
    [call] = server.controller.snapshot()["calls"]
    assert call["state"] == "raised"
    assert await shown(server, http, [call["id"], call["id"]]) == {"shown": [call["id"]], "already_shown": [],
                                                                   "not_active": []}
    assert await shown(server, http, [call["id"], "c-no-such"], by="phone 12") == {
        "shown": [], "already_shown": [call["id"]], "not_active": ["c-no-such"]}
    async with http.get(api(server, "/api/v1/events/stream?after=0")) as resp:
        _, annunciated = await next_event(sse_events(resp), "call.annunciated")
    assert (annunciated["data"]["call_id"], annunciated["data"]["by"]) == (call["id"], "station-4B")
    events = await server.controller.events_after(0, 100)
    assert [e.data["by"] for e in events if e.kind == "call.annunciated"] == ["station-4B"]
    assert server.controller.snapshot()["calls"][0]["state"] == "annunciated"
    # Without "by", the screen is named by the token.
    await press(server, "bath", "cord")
    bath = next(c for c in server.controller.snapshot()["calls"] if c["type"] == "bath_emergency")
    async with http.post(api(server, "/api/v1/calls/shown"), json={"calls": [bath["id"]]}) as resp:
        assert resp.status == 200
    assert server.controller.room.calls[bath["id"]].annunciated_by == "test nurse"


async def test_a_stream_delivery_is_not_annunciation(server, http):
    async with http.get(api(server, "/api/v1/events/stream?endpoint=station-4B")) as resp:
        stream = sse_events(resp)
        await press(server)
        _, raised = await next_event(stream, "call.raised")
        # A later event on the same stream: anything stored for the call before it would have come first.
        async with http.put(api(server, "/api/v1/beds/A/fall-risk"), json={"enabled": True}) as put:
            assert put.status == 200
        kinds = []
        async for _, event in stream:
            kinds.append(event["kind"])
            if event["kind"] == "bed.fall_risk":
                break
    assert "call.annunciated" not in kinds
    assert server.controller.snapshot()["calls"][0]["state"] == "raised"
    assert await server.controller.events_after(0, 100) and not [
        e for e in await server.controller.events_after(0, 100) if e.kind == "call.annunciated"]


async def test_only_a_nurse_confirms_a_call_shown_and_bad_receipts_are_400(server, http):
    await press(server)
    [call] = server.controller.snapshot()["calls"]
    for role in ("facilities", "integration", "admin"):
        other = {"Authorization": f"Bearer {server.tokens[role]}"}
        async with http.post(api(server, "/api/v1/calls/shown"), json={"calls": [call["id"]]}, headers=other) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (403, "forbidden")
    for body in ({}, {"calls": call["id"]}, {"calls": []}, {"calls": [call["id"]] * 101}, {"calls": [7]},
                 {"calls": [""]}, {"calls": ["c" * 65]}, {"calls": [call["id"]], "by": "x" * 65}, ["c1"]):
        async with http.post(api(server, "/api/v1/calls/shown"), json=body) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (400, "bad_parameter" if body != ["c1"]
                                                                           else "bad_json"), body
    assert server.controller.snapshot()["calls"][0]["state"] == "raised"
    ids = [call["id"]] * 100
    assert (await shown(server, http, ids))["shown"] == [call["id"]], "100 ids is the limit, and allowed"
    audit = await server.controller.store.read_audit(0, 100)
    assert [(e.action, e.target, e.status) for e in audit if e.target == "/api/v1/calls/shown"][0] == \
        ("POST", "/api/v1/calls/shown", 200), "a receipt is audited like any state change"


async def test_health_is_ok_with_no_reasons_when_nothing_is_wrong(server, http):
    async with aiohttp.ClientSession() as anonymous, anonymous.get(api(server, "/api/v1/health")) as resp:
        health = await resp.json()
    assert (resp.status, health["status"], health["reasons"], health["nurse_streams"]) == (200, "ok", [], 0)


async def test_response_time_report(server, http):
    await press(server, "bedside-a", "call")
    await press(server, "bath", "cord")
    calls = {c["type"]: c for c in server.controller.snapshot()["calls"]}
    await server.controller.acknowledge(calls["bath_emergency"]["id"], "Nurse Kim")
    await press(server, "env", "cancel")
    async with http.get(api(server, "/api/v1/reports/response-times")) as resp:
        report = await resp.json()
    assert resp.status == 200
    rows = {r["type"]: r for r in report["calls"]}
    bath = rows["bath_emergency"]
    assert (bath["acknowledged_by"], bath["cleared_how"], bath["present_by"]) == \
        ("Nurse Kim", "in_room_cancel", "in-room cancel (env/cancel)")
    assert 0 <= bath["to_ack_s"] <= bath["to_present_s"] <= bath["to_clear_s"]
    assert rows["patient_call"]["to_ack_s"] is None and rows["patient_call"]["to_clear_s"] is not None
    assert report["tiers"]["high"]["count"] == 1 and report["tiers"]["medium"]["count"] == 1
    assert report["responders"]["Nurse Kim"]["acknowledged"] == 1
    # The window is honoured: a window that ends before the calls has none of them.
    raised_at = min(r["raised_at_ms"] for r in report["calls"])
    async with http.get(api(server, f"/api/v1/reports/response-times?from=2026-01-01&to={raised_at}")) as resp:
        assert (await resp.json())["calls"] == []
    for query in ("from=yesterday", "from=2026-02-01&to=2026-01-01"):
        async with http.get(api(server, f"/api/v1/reports/response-times?{query}")) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (400, "bad_parameter")


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not in /metrics")


async def test_metrics_follow_the_room(server, http):
    scrape = {"Authorization": f"Bearer {server.tokens['integration']}"}

    async def metrics() -> str:
        async with http.get(api(server, "/metrics"), headers=scrape) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            return await resp.text()

    before = await metrics()
    assert _metric(before, "smartroom_active_calls", 'priority="high"') == 0
    assert _metric(before, "smartroom_call_delivery_seconds_count") == 0
    async with http.get(api(server, "/api/v1/events/stream")) as resp:
        stream = sse_events(resp)
        text = await metrics()
        assert _metric(text, "smartroom_event_stream_subscribers") == 1
        assert _metric(text, "smartroom_nurse_streams") == 1
        await press(server, "bath", "cord")
        _, raised = await next_event(stream, "call.raised")
        assert _metric(await metrics(), "smartroom_call_delivery_seconds_count") == 0, "a stream is not a screen"
        await shown(server, http, [raised["data"]["call_id"]])
    # A frame that fails its MAC is rejected and counted by reason.
    bad = NodeClient("bath", bytes(32))
    await bad.connect(server.endpoints.node_host, server.endpoints.node_port, expect_welcome=False)
    assert await bad.reader.read() == b"", "the gateway closes a connection whose MAC is wrong"
    await bad.close()
    text = await metrics()
    assert _metric(text, "smartroom_active_calls", 'priority="high"') == 1
    assert _metric(text, "smartroom_call_delivery_seconds_count") == 1
    assert _metric(text, "smartroom_calls_not_displayed") == 0
    assert _metric(text, "smartroom_nodes", 'state="online"') == 1
    assert _metric(text, "smartroom_node_messages_rejected_total", 'reason="bad_mac"') == 1
    assert _metric(text, "smartroom_node_messages_accepted_total", 'type="event"') == 1
