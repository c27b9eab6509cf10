"""API faults: a guessing client sharing the nurses' address, hostile and empty bodies, clients that
go away, and the integration role's reads — against a real room on loopback."""

from __future__ import annotations

import asyncio
import itertools
import logging

import aiohttp
import pytest

from controller.link.nodeclient import NodeClient
from room_api.auth import FAIL_FREE
from tests.helpers import next_event, node_key, sse_events


BOOTS = itertools.count(1)  # each press is a fresh node boot, so a new connection is never a replay


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def press(server, node: str = "bedside-a", src: str = "call") -> str | None:
    """A button event from a node, stored and acked; returns the node's active call, if any."""
    client = NodeClient(node, node_key(node), boot=next(BOOTS))
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    ev = client.event_msg("button", src)
    await client.send(ev)
    await client.recv_ack(ev["s"])
    await client.close()
    return next((c["id"] for c in server.controller.snapshot()["calls"] if c["source"]["node"] == node), None)


async def test_a_guesser_behind_the_stations_address_never_locks_out_a_valid_nurse(server):
    api = server.endpoints.api_url
    call_id = await press(server)
    async with aiohttp.ClientSession() as http:
        for n in range(FAIL_FREE):  # every client is 127.0.0.1 here: one NAT, one proxy
            async with http.get(f"{api}/api/v1/room", headers=bearer("srt_guess")) as resp:
                assert resp.status == 401, f"failure {n + 1} of {FAIL_FREE} is still free"
        async with http.get(f"{api}/api/v1/room", headers=bearer("srt_guess")) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        nurse = bearer(server.tokens["nurse"])
        async with http.get(f"{api}/api/v1/room", headers=nurse) as resp:
            assert resp.status == 200
        async with http.post(f"{api}/api/v1/calls/{call_id}/ack", headers=nurse, json={"by": "Nurse Kim"}) as resp:
            assert resp.status == 200 and (await resp.json())["acknowledged_by"] == "Nurse Kim"
        async with http.get(f"{api}/api/v1/events/stream?after=0", headers=nurse) as resp:
            assert resp.status == 200
            await next_event(sse_events(resp), "call.acknowledged", call_id=call_id)
        # The nurse's success did not reset the guesser's count: its next guess still waits.
        async with http.get(f"{api}/api/v1/room", headers=bearer("srt_guess2")) as resp:
            assert resp.status == 429
        async with http.get(f"{api}/metrics", headers=bearer(server.tokens["facilities"])) as resp:
            text = await resp.text()
    assert "smartroom_auth_blocked_total 2.0" in text, "each refused guess is counted"


async def test_a_body_nested_200k_deep_is_a_400_counted_not_a_500(server, caplog):
    api = server.endpoints.api_url
    call_id = await press(server)
    nurse = bearer(server.tokens["nurse"])
    async with aiohttp.ClientSession(headers=nurse) as http:
        for body in (b"[" * 200_000, b'{"a":' * 150_000):  # both under the 1 MB body limit
            async with http.post(f"{api}/api/v1/calls/{call_id}/ack", data=body,
                                 headers={"Content-Type": "application/json"}) as resp:
                err = await resp.json()
            assert resp.status == 400 and err["error"]["code"] == "bad_json", err
            assert "nested too deeply" in err["error"]["message"]
        async with http.get(f"{api}/metrics", headers=bearer(server.tokens["facilities"])) as resp:
            text = await resp.text()
    assert 'smartroom_api_bad_bodies_total{reason="too_deep"} 2.0' in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback for bad input"
    assert [c["state"] for c in server.controller.snapshot()["calls"]] == ["raised"], "nothing was acknowledged"


@pytest.mark.parametrize("action", ["ack", "clear"])
async def test_an_empty_body_acts_in_the_tokens_name(server, action):
    api = server.endpoints.api_url
    call_id = await press(server)
    async with aiohttp.ClientSession(headers=bearer(server.tokens["nurse"])) as http:
        async with http.post(f"{api}/api/v1/calls/{call_id}/{action}") as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(f"{api}/api/v1/room/silence", data=b"") as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(f"{api}/api/v1/calls/{call_id}/ack", data=b"  ") as resp:
            assert resp.status in (404, 409), "whitespace is an empty body too; the call was handled above"
        async with http.put(f"{api}/api/v1/beds/A/fall-risk") as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (400, "bad_json"), \
                "a body that carries the change itself is still required"
    records = await server.controller.events_after(0, 100)
    by = {r.kind: r.data["by"] for r in records if "by" in r.data and r.kind != "call.raised"}
    assert by[{"ack": "call.acknowledged", "clear": "call.cleared"}[action]] == "test nurse"
    assert by["tone.silenced"] == "test nurse"


async def test_the_integration_role_reads_the_room_and_the_reports_and_changes_nothing(server):
    api = server.endpoints.api_url
    call_id = await press(server)
    async with aiohttp.ClientSession(headers=bearer(server.tokens["integration"])) as http:
        async with http.get(f"{api}/api/v1/room") as resp:
            assert resp.status == 200 and [c["id"] for c in (await resp.json())["calls"]] == [call_id]
        async with http.get(f"{api}/api/v1/reports/response-times") as resp:
            assert resp.status == 200 and [c["call_id"] for c in (await resp.json())["calls"]] == [call_id]
        async with http.post(f"{api}/api/v1/calls/{call_id}/ack", json={}) as resp:
            assert resp.status == 403
        async with http.get(f"{api}/api/v1/openapi.json") as resp:
            spec = await resp.json()
    assert "integration" in spec["paths"]["/api/v1/room"]["get"]["x-roles"]
    assert "integration" in spec["paths"]["/api/v1/reports/response-times"]["get"]["x-roles"]


async def test_a_client_leaving_the_stream_is_logged_at_debug_not_as_an_error(server, caplog):
    caplog.set_level(logging.DEBUG, logger="smartroom.api")
    api = server.endpoints.api_url
    async with aiohttp.ClientSession(headers=bearer(server.tokens["nurse"])) as http:
        resp = await http.get(f"{api}/api/v1/events/stream?endpoint=leaving")
        assert resp.status == 200
        resp.close()  # the page is closed; the next events find the socket gone
        deadline = asyncio.get_running_loop().time() + 10
        while server.controller.bus.subscriber_count:  # the stream's handler ends when a write fails
            assert asyncio.get_running_loop().time() < deadline, "the stream never noticed the client left"
            await press(server, "bath", "cord")
            await press(server, "env", "cancel")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("closed by its client" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
