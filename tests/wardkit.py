"""Test helpers for the ward: a real Mosquitto on 127.0.0.1 with per-room and ward accounts and
ACLs, rooms whose room file has a [ward] section, and an MQTT listener with the ward's account."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiomqtt
import pytest

from controller.room.config import parse_room
from controller.uplink.client import MqttClient
from controller.uplink.wire import Topics, parse_topic, unit_filter
from tests.helpers import ROOM_DOC
from tests.test_system import free_port
from ward.broker import Mosquitto, RoomUser, WardUser

SITE, UNIT = "general", "4b"
WARD_USER, WARD_PASSWORD = "ward-4b", "ward-secret"
ROOMS = ("4b-12", "4b-14")


def room_password(room: str) -> str:
    return f"secret-{room}"


def broker_users(rooms=ROOMS) -> list:
    return [RoomUser(room, room_password(room), Topics(SITE, UNIT, room)) for room in rooms] + \
        [WardUser(WARD_USER, WARD_PASSWORD, SITE, UNIT)]


@pytest.fixture
async def broker(tmp_path):
    """Mosquitto with an account per room of ROOMS, the ward's account and their ACLs."""
    mq = Mosquitto(tmp_path / "broker", free_port(), users=broker_users())
    await mq.start()
    yield mq
    await mq.stop()


def ward_room_doc(room: str, broker: Mosquitto, tmp: Path, *, password: str | None = None, keepalive_s: int = 6,
                  **ward: Any) -> dict:
    """ROOM_DOC as room ``room`` on ``broker``; its password file is written under ``tmp``."""
    doc = json.loads(json.dumps(ROOM_DOC))
    doc["room"] = {"id": room, "name": f"Ward 4B room {room}"}
    secret = tmp / f"{room}.password"
    secret.write_text((password if password is not None else room_password(room)) + "\n")
    doc["ward"] = {"host": broker.host, "port": broker.port, "site": SITE, "unit": UNIT,
                   "password_file": str(secret), "keepalive_s": keepalive_s, **ward}
    return doc


def ward_room(room: str, broker: Mosquitto, tmp: Path, **kw: Any):
    return parse_room(ward_room_doc(room, broker, tmp, **kw), f"{room}.toml")


@dataclass
class Message:
    room: str
    leaf: str
    payload: dict[str, Any]
    retain: bool


@dataclass
class WardListener:
    """Every message of the unit, as the ward's account sees it, in arrival order."""

    broker: Mosquitto
    username: str = WARD_USER
    password: str = WARD_PASSWORD
    messages: list[Message] = field(default_factory=list)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> "WardListener":
        self.client = MqttClient(self.broker.host, self.broker.port, username=self.username, password=self.password,
                                 protocol=aiomqtt.ProtocolVersion.V5)
        await self.client.__aenter__()
        for leaf in ("event", "state", "status", "result"):
            await self.client.subscribe(unit_filter(SITE, UNIT, leaf), qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for msg in self.client.messages:
            topics, leaf = parse_topic(str(msg.topic))
            self.messages.append(Message(topics.room, leaf, json.loads(msg.payload), bool(msg.retain)))
            self._new.set()

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    def of(self, leaf: str, room: str | None = None) -> list[Message]:
        return [m for m in self.messages if m.leaf == leaf and (room is None or m.room == room)]

    async def wait_for(self, leaf: str, match: Callable[[dict[str, Any]], bool] = lambda p: True, *,
                       room: str | None = None, timeout_s: float = 10.0, start: int = 0) -> Message:
        """The first message of ``leaf`` (from index ``start``) whose payload matches."""
        async with asyncio.timeout(timeout_s):
            seen = start
            while True:
                for msg in self.messages[seen:]:
                    if msg.leaf == leaf and (room is None or msg.room == room) and match(msg.payload):
                        return msg
                seen = len(self.messages)
                self._new.clear()
                await self._new.wait()

    async def command(self, room: str, payload: dict[str, Any]) -> None:
        await self.client.publish_checked(Topics(SITE, UNIT, room).cmd, json.dumps({"v": 1, **payload}).encode())


_BOOTS = itertools.count(1000)


async def press(server, node: str, src: str) -> None:
    """A button press from a protocol-level node; stored in the room when this returns."""
    from controller.link.nodeclient import NodeClient
    from tests.helpers import node_key

    client = NodeClient(node, node_key(node), boot=next(_BOOTS))  # a new boot each time: no replayed seq
    await client.connect(server.endpoints.node_host, server.endpoints.node_port)
    ev = client.event_msg("button", src)
    await client.send(ev)
    await client.recv_ack(ev["s"])
    await client.close()


def ward_config(broker: Mosquitto, tmp: Path, tokens: dict[str, str] | None = None, *, rooms=ROOMS,
                username: str = WARD_USER, password: str = WARD_PASSWORD, unit: str = UNIT, site: str = SITE,
                client_id: str | None = None):
    """The ward.toml a unit's console would have, as the parsed config."""
    from ward.config import parse_ward

    secret = tmp / "ward-broker.password"
    secret.write_text(password + "\n")
    doc: dict[str, Any] = {"ward": {"name": "Ward 4B", "site": site, "unit": unit, "rooms": list(rooms)},
                           "broker": {"host": broker.host, "port": broker.port, "username": username,
                                      "password_file": secret.name},
                           "http": {"host": "127.0.0.1", "port": 0}}
    if client_id:
        doc["broker"]["client_id"] = client_id
    if tokens is not None:
        (tmp / "room-tokens.json").write_text(json.dumps(tokens))
        doc["backfill"] = {"token_file": "room-tokens.json"}
    return parse_ward(doc, str(tmp / "ward.toml"), base=tmp), doc


class Cutter:
    """A TCP relay between a room and the broker that can cut the room off (connections dropped,
    new ones closed at once) and let it back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut = False
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        for task in (asyncio.create_task(pipe(reader, up_w)), asyncio.create_task(pipe(up_r, writer))):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    def cut_off(self) -> None:
        self.cut = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.cut = False

    async def stop(self) -> None:
        self.cut_off()
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()


def toml_text(doc: dict[str, Any]) -> str:
    """Enough TOML for ward.toml files in tests (tables of strings, numbers, booleans, lists)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        return json.dumps(v)

    return "".join(f"[{table}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items()) + "\n"
                   for table, body in doc.items())
