"""``smartroom firmware rollout`` follows a rollout through a controller restart: it keeps asking
for a while, says so, and reports the rollout as the restarted controller shows it (interrupted)."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from aiohttp import web

from controller.ota import cli

ROLLOUT = {"id": 1, "version": "0.2.0", "reason": "", "nodes": [{"node": "bedside-a", "state": "sending", "chunks": 3}]}


class FakeController:
    """The firmware API as a restarting controller answers it: after the rollout starts, the GETs
    numbered in ``gone`` lose their connection (the process is restarting), the others answer."""

    def __init__(self, gone: set[int], after: str) -> None:
        self.gone, self.after, self.gets = gone, after, 0

    async def start(self, request: web.Request) -> web.Response:
        return web.json_response({"id": 1}, status=201)

    async def firmware(self, request: web.Request) -> web.Response:
        self.gets += 1
        if self.gets in self.gone or "all" in self.gone:
            assert request.transport is not None
            request.transport.close()  # the connection ends without an answer
            raise web.HTTPInternalServerError  # (never seen: the client has lost the connection)
        state = "running" if self.gets == 1 else self.after
        return web.json_response({"rollouts": [dict(ROLLOUT, state=state)]})


async def _run(fake: FakeController, capsys) -> tuple[int, str, str]:
    app = web.Application()
    app.router.add_post("/api/v1/firmware/rollouts", fake.start)
    app.router.add_get("/api/v1/firmware", fake.firmware)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    args = argparse.Namespace(url=f"http://127.0.0.1:{port}", token="t", bundle="new", nodes="bedside-a",
                              insecure=False)
    try:
        code = await asyncio.to_thread(cli._rollout, args)  # (it runs its own event loop)
    finally:
        await runner.cleanup()
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(cli, "ROLLOUT_POLL_S", 0.001)


async def test_a_restart_while_following_a_rollout_is_waited_out_and_its_outcome_shown(capsys):
    fake = FakeController(gone=set(range(2, 10)), after="interrupted")  # (aiohttp may resend a GET once)
    code, out, err = await _run(fake, capsys)
    assert code == 1, err  # the rollout did not finish: not done, and not a failure of the command
    assert [line.split()[3] for line in out.splitlines()] == ["running", "interrupted"]
    assert err.count("the controller does not answer") == 1 and err.count("the controller answers again") == 1
    assert fake.gets == 10


async def test_a_controller_gone_longer_than_the_limit_ends_the_command_with_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(cli, "ROLLOUT_UNREACHABLE_S", 0.05)
    fake = FakeController(gone={"all"}, after="running")
    code, out, err = await _run(fake, capsys)
    assert code == 2
    assert "has not answered for" in err and "smartroom firmware status" in err
    assert fake.gets >= 2  # asked again before giving up


async def test_a_rollout_the_controller_no_longer_lists_is_an_error_not_a_traceback(capsys):
    fake = FakeController(gone=set(), after="running")

    async def forgotten(request: web.Request) -> web.Response:
        return web.json_response({"rollouts": []})

    fake.firmware = forgotten  # type: ignore[method-assign]
    code, out, err = await _run(fake, capsys)
    assert code == 2 and "no longer lists rollout #1" in err
