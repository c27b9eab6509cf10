"""Roles and tokens: every route × every role, 401 vs 403, the failed-login back-off, the audit log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from controller.security.tokens import ROLES
from room_api.app import ROUTES
from room_api.auth import FAIL_FREE, FailedAuthLimiter

PROTECTED = [r for r in ROUTES if r.roles is not None]

# The README's role table, written out per route (not read from room_api.app.ROUTES): who may call
# it, and what an admitted role gets for this test's request (an empty JSON body, a call "nope",
# a bed "Z", a token "nobody"). None: a public route.
ALL = ("nurse", "facilities", "admin", "integration")
README_ROLES: dict[tuple[str, str], tuple[tuple[str, ...] | None, int]] = {
    ("GET", "/"): (None, 200),
    ("GET", "/facilities"): (None, 200),
    ("GET", "/api/v1/health"): (None, 200),
    ("GET", "/api/v1/openapi.json"): (None, 200),
    # nurse: see the room, the event log and stream, reports; acknowledge, clear routine calls,
    # silence the tone, set fall-risk. facilities: the room, nodes, gateway counters, event log and
    # stream, metrics; adopt, identify, rotate, replace and decommission nodes; firmware updates (versions, rollouts). admin: tokens, the configuration, the audit log; read everything.
    # integration: read-only: the room, the event feed (/api/v1/events, the stream), reports,
    # metrics, the integrations' counters and the FHIR reads (docs/integration.md).
    ("GET", "/api/v1/room"): (ALL, 200),
    ("GET", "/api/v1/readings"): (("nurse", "facilities", "admin"), 400),   # no measure named
    ("GET", "/api/v1/events"): (ALL, 200),
    ("GET", "/api/v1/events/stream"): (ALL, 200),
    ("POST", "/api/v1/calls/shown"): (("nurse",), 400),                     # no "calls" listed
    ("POST", "/api/v1/calls/{call_id}/ack"): (("nurse",), 404),
    ("POST", "/api/v1/calls/{call_id}/clear"): (("nurse",), 404),
    ("POST", "/api/v1/room/silence"): (("nurse",), 200),
    ("PUT", "/api/v1/beds/{bed}/fall-risk"): (("nurse",), 400),            # no "enabled"
    ("GET", "/api/v1/reports/response-times"): (("nurse", "admin", "integration"), 200),
    ("GET", "/api/v1/integrations"): (("facilities", "admin", "integration"), 200),
    ("GET", "/api/v1/gateway"): (("facilities", "admin"), 200),
    ("GET", "/api/v1/nodes"): (("facilities", "admin"), 200),
    ("POST", "/api/v1/nodes/{node}/assign"): (("facilities", "admin"), 400),      # no role
    ("POST", "/api/v1/nodes/{node}/identify"): (("facilities", "admin"), 404),    # node "nobody"
    ("POST", "/api/v1/nodes/{node}/rotate"): (("facilities", "admin"), 404),
    ("POST", "/api/v1/nodes/{node}/replace"): (("facilities", "admin"), 400),     # no "new"
    ("POST", "/api/v1/nodes/{node}/decommission"): (("facilities", "admin"), 404),
    ("GET", "/api/v1/firmware"): (("facilities", "admin"), 200),
    ("POST", "/api/v1/firmware/rollouts"): (("facilities", "admin"), 400),    # no bundle, no nodes
    ("GET", "/api/v1/config"): (("admin",), 200),
    ("GET", "/api/v1/tokens"): (("admin",), 200),
    ("POST", "/api/v1/tokens"): (("admin",), 400),                          # no role, no name
    ("DELETE", "/api/v1/tokens/{name}"): (("admin",), 404),
    ("GET", "/api/v1/audit"): (("admin",), 200),
    ("GET", "/metrics"): (("facilities", "admin", "integration"), 200),
    ("GET", "/fhir/r4/metadata"): (("nurse", "admin", "integration"), 200),
    ("GET", "/fhir/r4/Device"): (("nurse", "admin", "integration"), 200),
    ("GET", "/fhir/r4/Device/{id}"): (("nurse", "admin", "integration"), 404),
    ("GET", "/fhir/r4/Observation"): (("nurse", "admin", "integration"), 200),
    ("GET", "/fhir/r4/Observation/{id}"): (("nurse", "admin", "integration"), 404),
    ("GET", "/fhir/r4/Communication"): (("nurse", "admin", "integration"), 200),
    ("GET", "/fhir/r4/Communication/{id}"): (("nurse", "admin", "integration"), 404),
    ("GET", "/fhir/r4/Flag"): (("nurse", "admin", "integration"), 200),
    ("GET", "/fhir/r4/Flag/{id}"): (("nurse", "admin", "integration"), 404),
}


def _url(server, path: str) -> str:
    return server.endpoints.api_url + path.replace("{call_id}", "nope").replace("{bed}", "Z").replace(
        "{name}", "nobody").replace("{id}", "nope").replace("{node}", "nobody")


async def _status(http: aiohttp.ClientSession, server, route, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(route.method, _url(server, route.path), headers=headers, json={}) as resp:
        return resp.status  # a stream's headers are enough; leaving the block closes it


def test_the_role_table_covers_every_route():
    assert set(README_ROLES) == {(r.method, r.path) for r in ROUTES}, "a route the README's role table misses"


@pytest.mark.parametrize("role", ROLES)
async def test_every_route_admits_exactly_the_readme_roles(server, role):
    async with aiohttp.ClientSession() as http:
        for route in PROTECTED:
            roles, admitted = README_ROLES[(route.method, route.path)]
            status = await _status(http, server, route, server.tokens[role])
            expected = admitted if role in roles else 403
            assert status == expected, f"{role} got {status} on {route.method} {route.path}, expected {expected}"


async def test_no_token_or_a_wrong_one_is_401_with_a_challenge(server):
    async with aiohttp.ClientSession() as http:
        for route in PROTECTED[:FAIL_FREE - 1]:
            async with http.request(route.method, _url(server, route.path), json={}) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(_url(server, "/api/v1/room"), headers={"Authorization": "Bearer srt_wrong"}) as resp:
            assert resp.status == 401


async def test_public_routes_need_no_token(server):
    public = [key for key, (roles, _) in README_ROLES.items() if roles is None]
    async with aiohttp.ClientSession() as http:
        for method, path in public:
            async with http.request(method, _url(server, path)) as resp:
                assert resp.status == 200, path


async def test_revoked_token_stops_working_at_once(server):
    token = await server.create_token("nurse", "night shift")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(_url(server, "/api/v1/room")) as resp:
            assert resp.status == 200
        admin = {"Authorization": f"Bearer {server.tokens['admin']}"}
        async with http.delete(_url(server, "/api/v1/tokens/night shift"), headers=admin) as resp:
            assert (resp.status, (await resp.json())["active"]) == (200, False)
        async with http.get(_url(server, "/api/v1/room")) as resp:
            assert resp.status == 401


async def test_admin_creates_tokens_whose_secret_is_shown_once(server):
    admin = {"Authorization": f"Bearer {server.tokens['admin']}"}
    async with aiohttp.ClientSession(headers=admin) as http:
        async with http.post(_url(server, "/api/v1/tokens"), json={"role": "integration", "name": "HIS feed"}) as resp:
            created = await resp.json()
        assert resp.status == 201 and created["token"].startswith("srt_") and created["role"] == "integration"
        async with http.get(_url(server, "/api/v1/tokens")) as resp:
            listed = (await resp.json())["tokens"]
        assert "HIS feed" in [t["name"] for t in listed] and all("token" not in t for t in listed)
        for body in ({"role": "root", "name": "x"}, {"role": "nurse", "name": "HIS feed "}, {"role": "nurse"}):
            async with http.post(_url(server, "/api/v1/tokens"), json=body) as resp:
                assert resp.status == 400, body
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {created['token']}"}) as http:
        async with http.get(_url(server, "/api/v1/events")) as resp:
            assert resp.status == 200
        async with http.get(_url(server, "/api/v1/room")) as resp:
            assert resp.status == 200, "an integration reads what is active"
        async with http.post(_url(server, "/api/v1/room/silence"), json={}) as resp:
            assert resp.status == 403, "integration is read-only"


async def test_every_state_changing_request_is_audited_with_the_token_name(server):
    async with aiohttp.ClientSession() as http:
        nurse = {"Authorization": f"Bearer {server.tokens['nurse']}"}
        facilities = {"Authorization": f"Bearer {server.tokens['facilities']}"}
        async with http.post(_url(server, "/api/v1/room/silence"), headers=nurse, json={"by": "Kim"}) as resp:
            assert resp.status == 200
        async with http.post(_url(server, "/api/v1/room/silence"), headers=facilities, json={}) as resp:
            assert resp.status == 403
        async with http.post(_url(server, "/api/v1/calls/nope/ack"), headers=nurse, json={"by": "Kim"}) as resp:
            assert resp.status == 404
        async with http.post(_url(server, "/api/v1/room/silence"), json={}) as resp:
            assert resp.status == 401
        async with http.get(_url(server, "/api/v1/room"), headers=nurse) as resp:
            assert resp.status == 200  # reads are not audited
        admin = {"Authorization": f"Bearer {server.tokens['admin']}"}
        async with http.get(_url(server, "/api/v1/audit"), headers=admin) as resp:
            entries = (await resp.json())["entries"]
    assert [(e["actor"], e["action"], e["target"], e["status"]) for e in reversed(entries)] == [
        ("test nurse", "POST", "/api/v1/room/silence", 200),
        ("test facilities", "POST", "/api/v1/room/silence", 403),
        ("test nurse", "POST", "/api/v1/calls/nope/ack", 404),
        ("(no valid token)", "POST", "/api/v1/room/silence", 401),
    ]


async def test_repeated_failures_from_one_address_are_slowed_down(server):
    async with aiohttp.ClientSession() as http:
        for _ in range(FAIL_FREE):
            async with http.get(_url(server, "/api/v1/room"), headers={"Authorization": "Bearer srt_guess"}) as resp:
                assert resp.status == 401
        async with http.get(_url(server, "/api/v1/room"), headers={"Authorization": "Bearer srt_guess"}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "too_many_failures"


def test_backoff_doubles_and_expires_on_a_fake_clock():
    now = [0]
    limiter = FailedAuthLimiter(lambda: now[0])
    for _ in range(FAIL_FREE - 1):
        limiter.failed("10.0.0.9")
    assert limiter.retry_after_s("10.0.0.9") == 0, "a few typos are free"
    waits = []
    for _ in range(4):
        limiter.failed("10.0.0.9")
        waits.append(limiter.retry_after_s("10.0.0.9"))
    assert waits == [1, 2, 4, 8]
    assert limiter.retry_after_s("10.0.0.10") == 0, "other addresses are not affected"
    now[0] += 8_000
    assert limiter.retry_after_s("10.0.0.9") == 0
    now[0] += 60_000
    limiter.failed("10.0.0.9")
    assert limiter.retry_after_s("10.0.0.9") == 0, "old failures leave the one-minute window"


def test_token_command_creates_lists_and_revokes(tmp_path):
    exe = str(Path(sys.executable).with_name("smartroom"))
    db = str(tmp_path / "room.db")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "token", *args, "--db", db], capture_output=True, text=True)

    created = run("create", "--role", "nurse", "--name", "Station 4B")
    assert created.returncode == 0 and created.stdout.strip().splitlines()[-1].startswith("srt_")
    again = run("create", "--role", "nurse", "--name", "Station 4B")
    assert again.returncode == 2 and "exists" in again.stderr
    assert "Station 4B" in run("list").stdout
    assert run("revoke", "Station 4B").returncode == 0
    assert "Station 4B" not in run("list").stdout and "revoked" in run("list", "--all").stdout
    assert run("revoke", "Station 4B").returncode == 2
    secret = created.stdout.strip().splitlines()[-1]
    import sqlite3
    stored = sqlite3.connect(db).execute("SELECT hash FROM tokens").fetchone()[0]
    assert secret not in stored and len(stored) == 64, "only the SHA-256 is stored"
