"""Webhooks out: signed POSTs of the room's events, retried until the receiver takes them, from a
durable cursor. The receiver is a real HTTP server on 127.0.0.1; the room runs on a fake clock."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from integrations.config import Integrations, WebhookOptions
from integrations.service import IntegrationService
from integrations.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from tests.hl7peer import until
from tests.roomsim import RoomSim, rules_config

SECRET = b"0123456789abcdef0123456789abcdef"


class Receiver:
    """Answers ``status`` to every POST and records what it got; ``down()`` closes the port."""

    def __init__(self) -> None:
        self.status = 200
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status)


def options(port: int, events: tuple[str, ...] = ()) -> Integrations:
    return Integrations(webhooks=(WebhookOptions("pager", f"http://127.0.0.1:{port}/hook", SECRET, events,
                                                 timeout_s=5, retry_first_s=0.01, retry_max_s=0.05),))


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.up()
    yield r
    await r.down()


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


async def test_events_are_signed_and_delivered_in_order(receiver, room):
    async with IntegrationService(room.c, options(receiver.port, ("call.",))) as service:
        await room.press("bedside-a", "call")
        await room.press("door", "cancel")
        await until(lambda: service.webhooks[0].stats.delivered == 4, "raised, shown, present, cleared")
    events = [e for _, body in receiver.posts for e in json.loads(body)["events"]]
    assert [e["kind"] for e in events] == ["call.raised", "call.annunciated", "call.present", "call.cleared"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    for headers, body in receiver.posts:
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify(b"another secret of 32 bytes......", headers[TIMESTAMP_HEADER], body,
                          headers[SIGNATURE_HEADER])
        assert not verify(SECRET, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
        first, last = json.loads(body)["events"][0]["id"], json.loads(body)["events"][-1]["id"]
        assert headers[DELIVERY_HEADER] == f"4b-12:{first}-{last}"


async def test_the_receiver_down_then_up_gets_everything_once_in_order(receiver, room):
    port = receiver.port
    await receiver.down()
    async with IntegrationService(room.c, options(port)) as service:
        hook = service.webhooks[0]
        await room.press("bedside-a", "call")
        await room.press("bath", "cord")
        await until(lambda: hook.stats.failures >= 3, "retries while the receiver is down")
        await receiver.up()                              # back on the same port
        await until(lambda: hook.stats.cursor == room.c.room.cursor and hook.stats.delivered > 0,
                    "delivery after the outage")
    ids = [e["id"] for _, body in receiver.posts for e in json.loads(body)["events"]]
    assert ids == [r.id for r in await room.c.events_after(0, 1000)]  # every event, once, in order


async def test_an_error_answer_is_retried_with_the_same_events(receiver, room):
    receiver.status = 503
    async with IntegrationService(room.c, options(receiver.port, ("call.raised",))) as service:
        await room.press("bedside-a", "call")
        await until(lambda: len(receiver.posts) >= 3, "retries after 503")
        receiver.status = 200
        await until(lambda: service.webhooks[0].stats.delivered == 1, "taken")
    bodies = {body for _, body in receiver.posts}
    assert len(bodies) == 1                               # the same batch every time
    assert service.webhooks[0].stats.failures == len(receiver.posts) - 1


async def test_the_cursor_survives_a_restart(receiver, room):
    async with IntegrationService(room.c, options(receiver.port, ("call.raised",))) as service:
        await room.press("bedside-a", "call")
        await until(lambda: service.webhooks[0].stats.delivered == 1, "the first call")
    await room.press("bedside-b", "call")                 # while the webhook is not running
    await room.restart()
    async with IntegrationService(room.c, options(receiver.port, ("call.raised",))) as service:
        await until(lambda: service.webhooks[0].stats.delivered == 1, "the second call")
    raised = [e["data"]["node"] for _, body in receiver.posts for e in json.loads(body)["events"]]
    assert raised == ["bedside-a", "bedside-b"]


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    import hashlib
    import hmac

    assert sign(b"k" * 16, 1700000000, b"{}") == "sha256=" + hmac.new(b"k" * 16, b"1700000000.{}",
                                                                      hashlib.sha256).hexdigest()
    assert not verify(b"k" * 16, "not a number", b"{}", sign(b"k" * 16, 1, b"{}"))
