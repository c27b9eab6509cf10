"""Provisioning end to end: the real firmware (MicroPython, a node fresh from the box) on one end of a
pseudo-terminal, `smartroom nodes provision --serial` on the other; then adoption, first call,
identify, key rotation, replace and decommission in the real controller, and a copied node id refused.
Tests await log lines, registry states and API answers; none sleeps."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import tty
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest

from controller.cli import main as cli
from controller.link import protocol as p
from controller.link.nodeclient import NodeClient
from controller.room.config import parse_room
from controller.runner import RoomServer
from controller.security.tls import load_or_create, node_pin
from controller.store.nodes import NodeRegistry
from tests.nodepeer import BOARD_HEAP, FIRMWARE, MICROPYTHON, WAIT_S, Line

SSID, PASSWORD = "ward-4b", "correct horse"
NODE = "bed-a-call"
RESTART_EXIT = 3  # the sim's "a board would reset now" (firmware/hal/simprov.py)
EMPTY_ROOM = {"room": {"id": "4b-12", "name": "Ward 4B room 12"}, "beds": [{"id": "A"}, {"id": "B"}],
              "gateway": {"heartbeat_ms": 2000}, "nodes": {}}
FACTORY = {"hw": "sim-esp32s3", "pinmap": "esp32s3-devkitc-1",
           "inputs": [{"name": "call", "kind": "button", "pin": "call"},
                      {"name": "cancel", "kind": "button", "pin": "cancel"}],
           "indicator": {"pin": "led"}, "reset": {"pin": "reset"}}


class PtyNode:
    """The firmware with its stdin/stdout on a pty master; the slave's path is the node's "USB port"."""

    def __init__(self, workdir: Path, name: str = "node", steps: list[dict[str, Any]] | None = None) -> None:
        self.workdir = workdir / name
        self.flash = self.workdir / "flash"
        self.steps = steps or []
        self.lines: list[Line] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.exits: list[int] = []  # exit codes of the boots so far (RESTART_EXIT: the board reset itself)
        self._changed = asyncio.Condition()
        self._buf = b""

    async def __aenter__(self) -> "PtyNode":
        self.workdir.mkdir(parents=True, exist_ok=True)
        scenario = self.workdir / "scenario.json"
        scenario.write_text(json.dumps({"steps": self.steps}))
        cfg = {**FACTORY, "sim": {"state_dir": str(self.flash), "speed": 1, "seed": 7, "scenario": str(scenario),
                                  "networks": [[SSID, -52, True, PASSWORD], ["guest", -70, False, ""]]}}
        path = self.workdir / "config.json"
        path.write_text(json.dumps(cfg))
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # before the node writes: no echo, no ^C from an Improv type byte
        self.port = os.ttyname(self.slave)
        self._config = path
        await self._boot()
        self._power = asyncio.create_task(self._resets())
        return self

    async def _boot(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(MICROPYTHON), "-X", f"heapsize={BOARD_HEAP}", str(FIRMWARE / "sim_main.py"), str(self._config),
            stdin=self.master, stdout=self.master, stderr=asyncio.subprocess.DEVNULL)

    async def _resets(self) -> None:
        """A board comes back after a reset (the sim exits 3: after provisioning, after a forget)."""
        while True:
            assert self.proc is not None
            code = await self.proc.wait()
            self.exits.append(code)
            if code != RESTART_EXIT:
                return
            await self._boot()

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self._power.cancel()
        asyncio.get_running_loop().remove_reader(self.slave)
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        os.close(self.master)
        os.close(self.slave)

    def watch(self) -> None:
        """Read the node's log from the port (once the provisioning tool has let go of it)."""
        os.set_blocking(self.slave, False)
        asyncio.get_running_loop().add_reader(self.slave, self._on_readable)

    def unwatch(self) -> None:
        """Let the provisioning tool have the port alone (two readers would steal each other's bytes)."""
        asyncio.get_running_loop().remove_reader(self.slave)
        os.set_blocking(self.slave, True)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.slave, 4096)
        except (BlockingIOError, OSError):
            return
        self._buf += chunk
        *whole, self._buf = self._buf.split(b"\n")
        for raw in whole:
            line = Line.parse(raw.decode(errors="replace").strip("\r"))
            if line is not None:
                self.lines.append(line)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def find(self, tag: str, *words: str, start: int = 0, **fields: Any) -> list[Line]:
        return [ln for ln in self.lines[start:] if ln.tag == tag and all(w in ln.words for w in words)
                and all(ln.fields.get(k) == str(v) for k, v in fields.items())]

    async def wait_line(self, tag: str, *words: str, start: int = 0, **fields: Any) -> Line:
        async def find() -> Line:
            async with self._changed:
                while not (found := self.find(tag, *words, start=start, **fields)):
                    await self._changed.wait()
                return found[0]
        try:
            return await asyncio.wait_for(find(), WAIT_S)
        except TimeoutError:
            tail = "\n".join(ln.raw for ln in self.lines[-15:])
            raise AssertionError(f"no '{tag} {words} {fields}' from the node:\n{tail}") from None

    def flash_doc(self) -> dict[str, Any]:
        return json.loads((self.flash / "provision.json").read_text())


async def provision(node: PtyNode, db: Path, ctl: str, *, node_id: str = NODE, password: str = PASSWORD,
                    capsys: Any = None) -> int:
    pw = node.workdir / "wifi.txt"
    pw.write_text(password + "\n")
    argv = ["nodes", "provision", "--serial", node.port, "--node-id", node_id, "--controller", ctl,
            "--wifi-ssid", SSID, "--wifi-password-file", str(pw), "--db", str(db)]
    return await asyncio.to_thread(cli, argv)


def certificate(tmp: Path) -> Any:
    """The controller's two certificates as `smartroom run` leaves them next to its database: the API's
    and the node link's. -> the node link's, the one nodes must pin."""
    load_or_create(tmp / "tls-cert.pem", tmp / "tls-key.pem", ["localhost"])
    return load_or_create(tmp / "node-link-cert.pem", tmp / "node-link-key.pem", ["localhost"], node_link=True)


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll an observable condition (a registry row, an API answer) until it holds, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- serial only


async def test_serial_provisioning_stores_trust_on_flash_and_enrols(tmp_path, capsys):
    tls = certificate(tmp_path)
    db = tmp_path / "room.db"
    async with PtyNode(tmp_path) as node:
        # a wrong password: the node cannot join, says so, and stays unprovisioned
        assert await provision(node, db, "127.0.0.1:1", password="wrong") == 1
        err = capsys.readouterr().err
        assert "unable to connect to the Wi-Fi network" in err
        assert "wifi_ssid" not in node.flash_doc()
        # the right one: provisioned, trust and Wi-Fi on flash, enrolled in the registry
        assert await provision(node, db, "127.0.0.1:1") == 0
        out = capsys.readouterr().out
        assert "node: bed-a-call, srnode" in out and "provisioned" in out  # named by the first attempt's trust
        doc = node.flash_doc()
        registry = NodeRegistry(db)
        record = registry.get(NODE)
        assert record is not None and record.state == "provisioned" and record.hw == "sim-esp32s3"
        assert doc["key_hex"] == record.key.hex()
        assert doc["ctl_fp"] == tls.fingerprint_hex and doc["ctl_host"] == "127.0.0.1" and doc["ctl_port"] == 1
        assert doc["ctl_cert"] == node_pin(tls)["ctl_cert"]  # the node link's certificate, whole: its trust anchor
        assert doc["ctl_fp"] != load_or_create(tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem").fingerprint_hex
        assert doc["wifi_ssid"] == SSID and doc["wifi_password"] == PASSWORD and doc["node_id"] == NODE
        assert [a.action for a in registry.audit(NODE)] == ["provision", "provision"]  # wrong password, then right
        registry.close()
        await eventually(lambda: node.exits == [RESTART_EXIT], "the node restarts once provisioned")
        # once provisioned the node runs its link (nothing listens here) and no longer offers Improv
        node.watch()
        await node.wait_line("link", "down")  # connecting to a controller that is not there
        assert not any(record.key.hex() in ln.raw for ln in node.lines)  # the key is never logged
        node.unwatch()
        assert await provision(node, db, "127.0.0.1:1") == 1
        assert "no answer" in capsys.readouterr().err


async def test_provision_reports_a_port_without_a_node(tmp_path, capsys):
    certificate(tmp_path)
    master, slave = pty.openpty()  # nobody on the other end
    tty.setraw(slave)
    pw = tmp_path / "pw"
    pw.write_text("x")
    try:
        code = await asyncio.to_thread(cli, ["nodes", "provision", "--serial", os.ttyname(slave), "--node-id", NODE,
                                             "--controller", "h", "--wifi-ssid", SSID, "--wifi-password-file",
                                             str(pw), "--db", str(tmp_path / "room.db")])
    finally:
        os.close(master)
        os.close(slave)
    assert code == 1
    assert "no answer in 3 s" in capsys.readouterr().err
    assert NodeRegistry(tmp_path / "room.db").get(NODE) is None  # nothing enrolled


def test_provision_refuses_a_missing_certificate_and_port(tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("x")
    args = ["nodes", "provision", "--node-id", NODE, "--controller", "h", "--wifi-ssid", SSID,
            "--wifi-password-file", str(pw), "--db", str(tmp_path / "room.db")]
    # the API's certificate alone is not what a node pins: the technician is told to start the controller
    load_or_create(tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem", ["localhost"])
    assert cli([*args, "--serial", "/dev/null-no-such-port"]) == 1
    err = capsys.readouterr().err
    assert "node-link-cert.pem: no node link certificate yet" in err and "Start the controller once" in err
    assert not (tmp_path / "node-link-cert.pem").exists()  # not made here, under another user's umask
    (tmp_path / "node-link-cert.pem").write_text("not a certificate\n")
    assert cli([*args, "--serial", "/dev/null-no-such-port"]) == 1
    assert "cannot read the node link certificate" in capsys.readouterr().err
    (tmp_path / "node-link-cert.pem").unlink()
    certificate(tmp_path)
    assert cli([*args, "--serial", str(tmp_path / "no-such-port")]) == 1
    assert "cannot open serial port" in capsys.readouterr().err


# --------------------------------------------------------------------------- the whole way, in the room


@pytest.fixture
async def room(tmp_path) -> AsyncIterator[Any]:
    config = parse_room(json.loads(json.dumps(EMPTY_ROOM)), "empty-room.toml")
    node_tls = certificate(tmp_path)  # as shipped: the node link is TLS, nodes pin this certificate
    async with RoomServer(config, {}, tmp_path / "room.db", api_port=0, node_port=0, node_tls=node_tls) as srv:
        srv.token = await srv.create_token("facilities", "tech sam")
        srv.api = aiohttp.ClientSession(srv.endpoints.api_url, headers={"Authorization": f"Bearer {srv.token}"})
        yield srv
        await srv.api.close()


async def api(srv: Any, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with srv.api.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


async def node_state(srv: Any, node: str) -> str | None:
    _, doc = await api(srv, "GET", "/api/v1/nodes")
    return next((n["state"] for n in doc["nodes"] if n["node"] == node), None)


async def waiting(srv: Any, node: str) -> None:
    """The node connected (after its restart from provisioning) and waits for adoption. Both: the
    registry says "waiting" at the node's hello, a moment before its welcome attaches the connection."""
    async def is_waiting() -> bool:
        _, doc = await api(srv, "GET", "/api/v1/nodes")
        listed = next((n for n in doc["nodes"] if n["node"] == node), {})
        return listed.get("state") == "waiting" and bool(listed.get("connected"))
    await eventually(is_waiting, f"{node} connected and waiting for adoption")


async def calls_from(srv: Any, node: str) -> list[dict[str, Any]]:
    _, doc = await api(srv, "GET", "/api/v1/room")
    return [c for c in doc["calls"] if c["source"]["node"] == node]


async def calls_from_with(srv: Any, node: str, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return [c for c in await calls_from(srv, node) if match(c)]


PRESSES = [{"at_ms": 500, "pin": "call", "press_ms": 150, "every_ms": 1000}]  # someone keeps pressing


async def adopted_node(srv: Any, tmp_path: Path, name: str = "node", node_id: str = NODE) -> PtyNode:
    node = PtyNode(tmp_path, name, PRESSES)
    await node.__aenter__()
    ctl = f"127.0.0.1:{srv.endpoints.node_port}"
    assert await provision(node, tmp_path / "room.db", ctl, node_id=node_id) == 0
    node.watch()  # its "link up" may have gone to the provisioning tool: callers watch the registry
    return node


async def test_box_to_first_call(room, tmp_path):
    node = await adopted_node(room, tmp_path)
    try:
        await waiting(room, NODE)
        _, doc = await api(room, "GET", "/api/v1/nodes")
        listed = doc["nodes"][0]
        assert listed["hw"] == "sim-esp32s3" and listed["connected"] and "setup" in listed["caps"]
        assert "key" not in json.dumps(listed).replace("wrong_key", "")
        await eventually(lambda: room.registry.get(NODE).input_names, "input names from a heartbeat")
        # waiting: presses go nowhere (the node belongs to no bed yet) and raise no alarm
        await node.wait_line("ignored", src="call")
        assert await calls_from(room, NODE) == []
        # facilities assign it; the controller pushes the setup over the link
        status, rec = await api(room, "POST", f"/api/v1/nodes/{NODE}/assign", {"bed": "A", "role": "bedside"})
        assert status == 200 and rec["state"] == "adopted" and rec["adopted_by"] == "tech sam"
        assert rec["inputs"] == {"call": "patient_call", "cancel": "cancel"}  # the names its heartbeat showed
        await node.wait_line("cmd", c="setup")
        assert node.flash_doc()["setup"]["inputs"] == {"call": "patient_call", "cancel": "cancel"}
        calls = await eventually(lambda: calls_from(room, NODE), "first call raised")
        assert calls[0]["type"] == "patient_call" and calls[0]["bed"] == "A"
        audit = room.registry.audit(NODE)
        assert [a.action for a in reversed(audit)] == ["provision", "waiting", "assign"]
        assert audit[0].actor == "tech sam" and audit[0].detail["bed"] == "A"
        assert room.controller.config.nodes[NODE].inputs == {"call": "patient_call", "cancel": "cancel"}
    finally:
        await node.__aexit__(None, None, None)


async def test_assign_refuses_bad_beds_roles_and_meanings(room, tmp_path):
    node = await adopted_node(room, tmp_path)
    try:
        await waiting(room, NODE)
        for body, words in (({"bed": "Z", "role": "bedside"}, "not a bed"),
                            ({"bed": "A", "role": "kitchen"}, "role"),
                            ({"bed": None, "role": "bedside"}, "belongs to a bed"),
                            ({"bed": "A", "role": "bedside", "inputs": {"call": "pizza"}}, "not one of")):
            status, doc = await api(room, "POST", f"/api/v1/nodes/{NODE}/assign", body)
            assert status == 400 and words in doc["error"]["message"], doc
        assert await node_state(room, NODE) == "waiting"
        status, _ = await api(room, "POST", "/api/v1/nodes/nobody/assign", {"bed": "A", "role": "bedside"})
        assert status == 404
    finally:
        await node.__aexit__(None, None, None)


async def test_identify_rotate_and_decommission(room, tmp_path):
    node = await adopted_node(room, tmp_path)
    try:
        await waiting(room, NODE)
        await api(room, "POST", f"/api/v1/nodes/{NODE}/assign", {"bed": "A", "role": "bedside"})
        await node.wait_line("cmd", c="setup")
        # identify: the light flashes fast
        assert (await api(room, "POST", f"/api/v1/nodes/{NODE}/identify"))[0] == 200
        await node.wait_line("indicator", pattern="identify")
        # rotation: a nonce on the wire, the same new key derived on both sides, no restart
        old = room.registry.get(NODE).key
        start = len(node.lines)
        status, rec = await api(room, "POST", f"/api/v1/nodes/{NODE}/rotate")
        assert status == 200 and rec["rotation_pending"]
        await node.wait_line("link", "down", start=start, reason="rekey")
        await node.wait_line("link", "up", start=start)
        new = await eventually(lambda: (r := room.registry.get(NODE)).pending_key is None and r.key, "rotated")
        assert new != old and node.flash_doc()["key_hex"] == new.hex()
        # the old key no longer gets in
        stale = NodeClient(NODE, old, boot=999, pin=room.node_tls.fingerprint_hex)
        await stale.connect("127.0.0.1", room.endpoints.node_port, expect_welcome=False)
        with pytest.raises(asyncio.IncompleteReadError):
            await stale.recv()
        await stale.close()
        # presses still arrive on the new key
        presses = (await eventually(lambda: calls_from(room, NODE), "a call"))[0]["presses"]
        await eventually(lambda: calls_from_with(room, NODE, lambda c: c["presses"] > presses), "press after rotation")
        # decommission: refused at once, told to forget, back to factory state
        status, rec = await api(room, "POST", f"/api/v1/nodes/{NODE}/decommission")
        assert status == 200 and rec["state"] == "decommissioned"
        mark = len(node.lines)
        await node.wait_line("cmd", c="forget")
        await node.wait_line("improv", "waiting", start=mark)  # reset, and offers Improv again: factory state
        assert node.exits == [RESTART_EXIT, RESTART_EXIT]  # after provisioning; after the forget
        assert not (node.flash / "provision.json").exists()
        assert NODE not in room.controller.config.nodes and NODE not in room.controller.room.nodes
        # its key (still on a copy, say) is refused and the node is told to forget again
        copy = NodeClient(NODE, new, boot=1000, pin=room.node_tls.fingerprint_hex)
        await copy.connect("127.0.0.1", room.endpoints.node_port, expect_welcome=False)
        msg = await copy.recv()
        assert msg["t"] == "cmd" and msg["c"] == "forget"
        await copy.close()
        assert room.gateway.stats.rejected["decommissioned"] >= 1
        status, _ = await api(room, "POST", f"/api/v1/nodes/{NODE}/identify")
        assert status == 409
    finally:
        await node.__aexit__(None, None, None)


async def test_replace_keeps_bed_and_role(room, tmp_path):
    broken = await adopted_node(room, tmp_path, "old", "bed-a-old")
    try:
        await waiting(room, "bed-a-old")
        await api(room, "POST", "/api/v1/nodes/bed-a-old/assign",
                  {"bed": "A", "role": "bedside", "inputs": {"call": "patient_call"}})
        await broken.wait_line("cmd", c="setup")
    finally:
        await broken.__aexit__(None, None, None)  # it breaks
    fresh = await adopted_node(room, tmp_path, "new", "bed-a-new")
    try:
        await waiting(room, "bed-a-new")
        status, rec = await api(room, "POST", "/api/v1/nodes/bed-a-old/replace", {"new": "bed-a-new"})
        assert status == 200, rec
        assert (rec["node"], rec["bed"], rec["role"], rec["state"]) == ("bed-a-new", "A", "bedside", "adopted")
        assert rec["inputs"] == {"call": "patient_call"}
        assert room.registry.get("bed-a-old").state == "decommissioned"
        await fresh.wait_line("cmd", c="setup")
        calls = await eventually(lambda: calls_from(room, "bed-a-new"), "call from the replacement")
        assert calls[0]["bed"] == "A"
        assert set(room.controller.config.nodes) == {"bed-a-new"}
    finally:
        await fresh.__aexit__(None, None, None)


async def test_copied_node_id_with_the_wrong_key_is_refused_and_alarmed(room, tmp_path):
    room.registry.enrol(NODE, bytes(range(32)), "test", 1)
    rogue = NodeClient(NODE, bytes(32), pin=room.node_tls.fingerprint_hex)  # the id, not the key
    for i in range(3):
        rogue.boot = i + 1
        await rogue.connect("127.0.0.1", room.endpoints.node_port, expect_welcome=False)
        with pytest.raises(asyncio.IncompleteReadError):
            await rogue.recv()
        await rogue.close()
        await room.lifecycle.settle()
        assert room.lifecycle.wrong_key[NODE] == i + 1
        alarms = [c for c in room.controller.snapshot()["calls"] if c["source"]["input"] == f"system:wrong_key:{NODE}"]
        if i < 2:
            assert alarms == []  # one or two can be a glitch
    await eventually(lambda: [c for c in room.controller.snapshot()["calls"]
                              if c["source"]["input"] == f"system:wrong_key:{NODE}"], "wrong-key alarm")
    assert room.gateway.stats.rejected["bad_mac"] == 3
    assert room.registry.get(NODE).state == "provisioned"  # the real node is untouched
    _, doc = await api(room, "GET", "/api/v1/nodes")
    assert doc["nodes"][0]["wrong_key"] == 3


async def test_a_node_provisioned_again_elsewhere_is_let_in_with_its_new_key(room, tmp_path):
    """`nodes provision` runs in another process: the controller reads the registry again on a hello."""
    room.registry.enrol(NODE, bytes(range(32)), "test", 1)
    first = NodeClient(NODE, bytes(range(32)), pin=room.node_tls.fingerprint_hex)
    assert (await first.connect("127.0.0.1", room.endpoints.node_port))["t"] == "welcome"
    await first.close()
    other = NodeRegistry(tmp_path / "room.db")  # the command line's own connection
    other.enrol(NODE, bytes(range(1, 33)), "(command line) sam", 2)  # a factory reset, then provisioned again
    other.close()
    again = NodeClient(NODE, bytes(range(1, 33)), boot=2, pin=room.node_tls.fingerprint_hex)
    assert (await again.connect("127.0.0.1", room.endpoints.node_port))["t"] == "welcome"
    await again.close()
    old = NodeClient(NODE, bytes(range(32)), boot=3, pin=room.node_tls.fingerprint_hex)
    await old.connect("127.0.0.1", room.endpoints.node_port, expect_welcome=False)
    with pytest.raises(asyncio.IncompleteReadError):
        await old.recv()
    await old.close()


async def test_a_provisioned_node_refuses_a_controller_with_another_certificate(tmp_path):
    """Provisioned with this room's node link certificate, the node meets a controller presenting another
    (an impostor on the address, or a controller whose certificate was replaced): no session, no event."""
    certificate(tmp_path)  # the one `nodes provision` hands out, next to the database
    other = load_or_create(tmp_path / "other" / "cert.pem", tmp_path / "other" / "key.pem", ["localhost"],
                           node_link=True)
    config = parse_room(json.loads(json.dumps(EMPTY_ROOM)), "empty-room.toml")
    async with RoomServer(config, {}, tmp_path / "room.db", api_port=0, node_port=0, node_tls=other) as srv:
        node = PtyNode(tmp_path, "node", PRESSES)
        await node.__aenter__()
        try:
            assert await provision(node, tmp_path / "room.db", f"127.0.0.1:{srv.endpoints.node_port}") == 0
            node.watch()
            await node.wait_line("link", "down", reason="tls_pin", n=2)
            await eventually(lambda: srv.gateway.stats.rejected["tls_handshake"] >= 2, "the gateway saw it")
            assert not node.find("link", "up") and not node.find("sent")
            assert srv.gateway.stats.accepted == {} and srv.registry.get(NODE).state == "provisioned"
        finally:
            await node.__aexit__(None, None, None)


def test_trust_carries_only_a_certificate_that_matches_its_fingerprint(tmp_path):
    import hashlib

    from controller.link.improv import CERT_CHUNK, MAX_CERT, Trust, cert_chunks

    der = bytes.fromhex(node_pin(certificate(tmp_path))["ctl_cert"])
    chunks = cert_chunks(der)
    assert b"".join(c[1] for c in chunks) == der and all(0 < len(c[1]) <= CERT_CHUNK for c in chunks)
    assert [int(c[0]) for c in chunks] == list(range(0, len(der), CERT_CHUNK))
    fp = hashlib.sha256(der).hexdigest()
    Trust(NODE, bytes(32), "h", 1, fp, der)
    with pytest.raises(ValueError, match="does not match"):
        Trust(NODE, bytes(32), "h", 1, fp, der[:-1])
    for size, ok in ((MAX_CERT - 1, True), (MAX_CERT, True), (MAX_CERT + 1, False), (0, False)):
        blob = bytes(size)
        if ok:
            Trust(NODE, bytes(32), "h", 1, hashlib.sha256(blob).hexdigest(), blob)
        else:
            with pytest.raises(ValueError, match="a node takes"):
                Trust(NODE, bytes(32), "h", 1, hashlib.sha256(blob).hexdigest(), blob)


def test_the_client_stops_when_the_node_holds_other_bytes_than_it_sent():
    """A node that answers a CERT chunk with another count (a chunk lost or taken twice): no TRUST follows."""
    import hashlib

    from controller.link import improv as im

    class Node:
        def __init__(self) -> None:
            self.written: list[bytes] = []
            self.out = b""

        def write(self, data: bytes) -> None:
            self.written.append(data)
            if data[9] == im.CMD_CERT:  # answer every chunk with "7 bytes held"
                self.out += im.packet(im.TYPE_RESULT, bytes((im.CMD_CERT, 2)) + im.strings(["7"]))

        def read(self, size: int = 1) -> bytes:
            out, self.out = self.out[:size], self.out[size:]
            return out

    der = bytes(300)
    node = Node()
    client = im.ImprovSerialClient(node)
    with pytest.raises(im.ImprovError, match="holds \\['7'\\] bytes of the certificate, not 120"):
        client.send_trust(im.Trust(NODE, bytes(32), "h", 1, hashlib.sha256(der).hexdigest(), der))
    assert [w[9] for w in node.written] == [im.CMD_CERT]  # stopped at once: the key never left
