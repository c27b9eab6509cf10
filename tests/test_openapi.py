"""The OpenAPI description is complete and true: every route is described with its roles, and
schemathesis, run against a live controller process with each role's token, finds no server
error and no response that breaks the description."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from controller.security.tokens import ROLES
from room_api import openapi
from room_api.app import ROUTES
from tests.helpers import write_room_files

EXE = Path(sys.executable).with_name("smartroom")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
STREAMING = {"/api/v1/events/stream"}  # never ends by itself: tested in tests/test_api.py instead


def test_every_route_is_described_with_its_roles():
    spec = openapi.build(ROUTES)
    assert openapi.described(spec) == {(r.method, r.path) for r in ROUTES}
    for route in ROUTES:
        op = spec["paths"][route.path][route.method.lower()]
        if route.roles is None:
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert op["x-roles"] == sorted(route.roles) and {"401", "403"} <= set(op["responses"])


async def test_served_description_matches_the_app_router(server):
    from room_api.app import create_app

    app = create_app(server.controller)
    routed = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and not r.resource.canonical.startswith("/static")}
    assert routed == openapi.described(openapi.build(ROUTES))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A controller process with one token per role."""
    tmp = tmp_path_factory.mktemp("openapi")
    room, keys = write_room_files(tmp, "api-test")
    tokens = {}
    for role in ROLES:
        out = subprocess.run([str(EXE), "token", "create", "--db", str(tmp / "room.db"), "--role", role,
                              "--name", f"schemathesis {role}"], check=True, capture_output=True, text=True)
        tokens[role] = out.stdout.strip().splitlines()[-1]
    port = _free_port()
    proc = subprocess.Popen([str(EXE), "run", "--config", str(room), "--keys", str(keys),
                             "--db", str(tmp / "room.db"), "--api-port", str(port), "--node-port", "0",
                             "--no-tls", "--no-advertise"],
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # printed once the API listens
        yield f"http://127.0.0.1:{port}", tokens
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("role", [None, *ROLES])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(live, role):
    base, tokens = live
    with urllib.request.urlopen(base + "/api/v1/openapi.json") as resp:
        spec = json.load(resp)
    ops = [op["operationId"] for path, methods in spec["paths"].items() if path not in STREAMING
           for op in methods.values() if (role in op.get("x-roles", [])) or (role is None and not op["security"])]
    assert ops, f"no operation for {role}"
    cmd = [str(SCHEMATHESIS), "run", base + "/api/v1/openapi.json", "--max-examples", "15", "--seed", "7",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_schema_conformance,response_headers_conformance",
           "--generation-database", "none", "--no-color", "--workers", "1"]
    for op in ops:
        cmd += ["--include-operation-id", op]
    if role:
        cmd += ["-H", f"Authorization: Bearer {tokens[role]}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
