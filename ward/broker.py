"""Mosquitto for the ward: its configuration written from the rooms of a unit (listener, password
file, ACLs so a room publishes only under its own topics and only the ward sends commands, TLS,
bridges to a hospital broker), and a Mosquitto process for the demo, the benchmark and the tests.

docs/ward.md shows the files this writes; any MQTT 3.1.1/5 broker with the same users and ACLs works.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from controller.uplink.wire import Topics, check_segment, unit_filter

START_TIMEOUT_S = 10.0   # Mosquitto listens within milliseconds; a loaded CI machine gets ten seconds
STOP_TIMEOUT_S = 5.0     # SIGTERM: Mosquitto saves its persistence file and exits well within this
POLL_S = 0.02            # how often start() looks for the listening port


class BrokerError(RuntimeError):
    """Mosquitto is missing, did not start, or its configuration is wrong; the message says which."""


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        raise BrokerError("mosquitto is not installed ('apt-get install mosquitto'; 'make setup' does it)")
    return found


# --------------------------------------------------------------------------- users and ACLs


ROOM_LEAVES = ("event", "state", "status", "firmware", "result")  # what rooms publish; "cmd" is what they are told


@dataclass(frozen=True, slots=True)
class RoomUser:
    """A room controller's broker account: it may write only its own event/state/status/firmware/
    result topics and read only its own cmd topic."""

    username: str
    password: str
    topics: Topics

    def acl(self) -> list[str]:
        t = self.topics
        return [f"user {self.username}"] + [f"topic write {t.leaf(leaf)}" for leaf in ROOM_LEAVES] \
            + [f"topic read {t.cmd}"]




def _unit_acl(username: str, site: str, unit: str, *, rooms_say: str, commands: str) -> list[str]:
    """ACL lines for an account that carries a unit's topics: ``rooms_say`` ("read" or "write") for
    what the rooms publish, ``commands`` for the commands to them."""
    return ([f"user {username}"] + [f"topic {rooms_say} {unit_filter(site, unit, leaf)}" for leaf in ROOM_LEAVES]
            + [f"topic {commands} {unit_filter(site, unit, 'cmd')}"])


@dataclass(frozen=True, slots=True)
class WardUser:
    """The ward console's account: reads every room of its unit (``unit="+"``: the whole site;
    ``site="+"`` too: the hospital) and is the only one that may write commands."""

    username: str
    password: str
    site: str
    unit: str

    def acl(self) -> list[str]:
        return _unit_acl(self.username, self.site, self.unit, rooms_say="read", commands="write")


@dataclass(frozen=True, slots=True)
class BridgeUser:
    """A ward broker's account on the hospital broker: carries its unit's topics both ways."""

    username: str
    password: str
    site: str
    unit: str

    def acl(self) -> list[str]:
        return _unit_acl(self.username, self.site, self.unit, rooms_say="write", commands="read")


User = RoomUser | WardUser | BridgeUser


def acl_text(users: Iterable[User]) -> str:
    """A Mosquitto ACL file: nothing is allowed that a user's lines do not name."""
    blocks = ["# smartroom ward ACL (ward/broker.py). Anonymous clients get nothing."]
    for user in users:
        check_segment(user.username, "username")
        blocks.append("\n".join(user.acl()))
    return "\n\n".join(blocks) + "\n"


def write_password_file(path: Path, users: Iterable[User]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd -U), mode 0600."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for user in users:
            if ":" in user.username or "\n" in user.password:
                raise BrokerError(f"user {user.username!r}: no ':' in names, no newline in passwords")
            f.write(f"{user.username}:{user.password}\n")
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    done = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"mosquitto_passwd -U {path}: {done.stderr.strip() or done.stdout.strip()}")
    return path


# --------------------------------------------------------------------------- mosquitto.conf


@dataclass(frozen=True, slots=True)
class Bridge:
    """This broker forwards its unit's topics to a hospital broker (and commands back)."""

    name: str
    host: str
    port: int
    username: str
    password: str
    site: str
    unit: str
    cafile: str | None = None

    def conf(self) -> list[str]:
        prefix = f"smartroom/{self.site}/{self.unit}/"
        lines = [f"connection {self.name}", f"address {self.host}:{self.port}",
                 f"remote_username {self.username}", f"remote_password {self.password}",
                 f"remote_clientid bridge-{self.name}", "cleansession false", "bridge_protocol_version mqttv311",
                 "try_private true", "restart_timeout 1 10"]
        lines += [f"topic +/{leaf} out 1 {prefix} {prefix}" for leaf in ROOM_LEAVES]
        lines.append(f"topic +/cmd in 1 {prefix} {prefix}")
        if self.cafile:
            lines.append(f"bridge_cafile {self.cafile}")
        return lines


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    password_file: Path | None = None
    acl_file: Path | None = None     # with a password file: required (no ACL would allow everything)
    persistence_dir: Path | None = None
    certfile: Path | None = None     # TLS with the hospital's certificate
    keyfile: Path | None = None
    cafile: Path | None = None
    bridges: Sequence[Bridge] = ()
    log_file: Path | None = None
    max_queued_messages: int = 100_000  # a ward console down for minutes keeps its backlog queued
    extra: Sequence[str] = field(default_factory=tuple)

    def text(self) -> str:
        lines = ["# smartroom ward broker (ward/broker.py)", "per_listener_settings false"]
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = None
        if user:  # as root Mosquitto would switch to 'mosquitto', who cannot read files made here
            lines.append(f"user {user}")
        lines.append(f"listener {self.port} {self.host}")
        if self.certfile:
            lines += [f"certfile {self.certfile}", f"keyfile {self.keyfile}"]
            if self.cafile:
                lines.append(f"cafile {self.cafile}")
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence_dir:
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        lines += [f"max_queued_messages {self.max_queued_messages}", "max_inflight_messages 100",
                  "log_timestamp true", "log_type error", "log_type warning", "log_type notice",
                  "log_type information", "connection_messages true"]
        if self.log_file:
            lines.append(f"log_dest file {self.log_file}")
        else:
            lines.append("log_dest stderr")
        for bridge in self.bridges:
            lines += [""] + bridge.conf()
        lines += list(self.extra)
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the process


class Mosquitto:
    """One Mosquitto process on a generated configuration in ``workdir``.

    ``await start()`` returns when it listens; :meth:`kill` is SIGKILL (no goodbye, nothing saved),
    :meth:`stop` a clean shutdown; :meth:`start` again reuses the same port and files.
    """

    def __init__(self, workdir: Path, port: int, *, users: Sequence[User] = (), host: str = "127.0.0.1",
                 persistence: bool = False, bridges: Sequence[Bridge] = (), extra: Sequence[str] = (),
                 certfile: Path | None = None, keyfile: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.users = list(users)
        self.log_file = self.workdir / "mosquitto.log"
        password_file = acl_file = None
        if self.users:
            password_file = write_password_file(self.workdir / "passwords", self.users)
            acl_file = self.workdir / "acl"
            acl_file.write_text(acl_text(self.users))
        persist = self.workdir / "persist" if persistence else None
        if persist:
            persist.mkdir(exist_ok=True)
        self.config = BrokerConfig(host, port, password_file, acl_file, persist, certfile, keyfile,
                                   bridges=bridges, log_file=self.log_file, extra=extra)
        self.conf_file = self.workdir / "mosquitto.conf"
        self.conf_file.write_text(self.config.text())
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> int:
        self._proc = await asyncio.create_subprocess_exec(
            mosquitto_binary(), "-c", str(self.conf_file), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if self._proc.returncode is not None:
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                if loop.time() > deadline:
                    await self.kill()
                    raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within "
                                      f"{START_TIMEOUT_S:g} s: {self.log_tail()}") from None
                await asyncio.sleep(POLL_S)  # polling the port with a deadline: nothing to await instead
                continue
            writer.close()
            await writer.wait_closed()
            return self.port

    async def kill(self) -> None:
        await self._signal(signal.SIGKILL)

    async def stop(self) -> None:
        await self._signal(signal.SIGTERM)

    async def _signal(self, sig: int) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:]) or "(no log)"

    async def __aenter__(self) -> "Mosquitto":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
