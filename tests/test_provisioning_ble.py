"""Provisioning over Bluetooth LE: the controller side (py-improv-ble-client, bleak) against the
firmware's own Improv BLE service (firmware/srnode/improv_ble.py in MicroPython, tests/mp/ble_bridge.py),
joined by a fake bleak client backend that carries GATT reads, writes and notifications over the
bridge's stdin/stdout. Nothing is mocked between py-improv-ble-client and the node's code but the radio."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import bleak
import pytest
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from improv_ble_client import ImprovBLEClient

from controller.link.improv_ble import provision_ble
from controller.link.provision import ProvisionError, ProvisionRequest
from controller.store.nodes import NodeRegistry
from tests.nodepeer import FIRMWARE, MICROPYTHON, ROOT, WAIT_S

SERVICE = "00467768-6228-2272-4663-277478268000"
CHARS = {"00467768-6228-2272-4663-277478268005": ["read"],
         "00467768-6228-2272-4663-277478268001": ["read", "notify"],
         "00467768-6228-2272-4663-277478268002": ["read", "notify"],
         "00467768-6228-2272-4663-277478268003": ["write"],
         "00467768-6228-2272-4663-277478268004": ["read", "notify"]}
ADDRESS = "AA:BB:CC:DD:EE:01"


@pytest.fixture(scope="module")
def req(tmp_path_factory) -> ProvisionRequest:
    """What `nodes provision --ble` sends: the node link certificate's pin (fingerprint and DER)."""
    from controller.security.tls import load_or_create, node_pin

    d = tmp_path_factory.mktemp("ctl")
    pin = node_pin(load_or_create(d / "node-link-cert.pem", d / "node-link-key.pem", ["localhost"], node_link=True))
    return ProvisionRequest("bed-b-call", "ward-4b", "correct horse", "10.20.4.12", 7700, pin["ctl_fp"],
                            bytes.fromhex(pin["ctl_cert"]))


class Bridge:
    """The MicroPython process holding the node's GATT service."""

    def __init__(self, flash: Path) -> None:
        self.flash = flash
        self.proc: asyncio.subprocess.Process | None = None
        self.subscribers: dict[str, Any] = {}
        self.writes: list[tuple[str, bytes]] = []  # what went over the air, for the test to inspect
        self.encrypted = False
        # one request at a time: the technician's press and the provisioning flow share the pipe
        # (two readers of one stdout raise "readuntil() called while another coroutine is waiting")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.flash.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"}
        self.proc = await asyncio.create_subprocess_exec(
            str(MICROPYTHON), str(ROOT / "tests" / "mp" / "ble_bridge.py"), str(self.flash), env=env,
            cwd=str(ROOT / "tests" / "mp"), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)

    async def stop(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def request(self, op: str, **fields: Any) -> bytes | None:
        async with self._lock:
            return await self._request(op, **fields)

    async def _request(self, op: str, **fields: Any) -> bytes | None:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await self.proc.stdin.drain()
        while True:
            line = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), WAIT_S))
            if "notify" in line:
                callback = self.subscribers.get(line["notify"])
                if callback is not None:
                    callback(bytearray.fromhex(line["hex"]))
                continue
            return bytes.fromhex(line["hex"]) if line.get("hex") else None


class FakeBleakClient(BaseBleakClient):
    """A bleak client backend whose "radio" is the bridge."""

    bridge: Bridge

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=kwargs.get("disconnected_callback"),
                         timeout=10.0)
        self._connected = False

    @property
    def name(self) -> str:
        return "srnode-esp32s3"

    @property
    def mtu_size(self) -> int:
        return 247

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        await self.bridge.request("connect")
        services = BleakGATTServiceCollection()
        service = BleakGATTService(None, 1, SERVICE)
        services.add_service(service)
        for handle, (uuid, props) in enumerate(CHARS.items(), start=2):
            char = BleakGATTCharacteristic(None, handle, uuid, props, lambda: 244, service)  # type: ignore[arg-type]
            services.add_characteristic(char)
        self.services = services
        self._connected = True

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            await self.bridge.request("disconnect")

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        self.bridge.encrypted = True
        await self.bridge.request("encrypt")

    async def unpair(self) -> None:
        pass

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        return bytearray(await self.bridge.request("read", uuid=characteristic.uuid) or b"")

    async def read_gatt_descriptor(self, descriptor: Any, **kwargs: Any) -> bytearray:
        raise NotImplementedError

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any, response: bool) -> None:
        self.bridge.writes.append((characteristic.uuid, bytes(data)))
        await self.bridge.request("write", uuid=characteristic.uuid, hex=bytes(data).hex())

    async def write_gatt_descriptor(self, descriptor: Any, data: Any) -> None:
        raise NotImplementedError

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: Any, **kwargs: Any) -> None:
        self.bridge.subscribers[characteristic.uuid] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self.bridge.subscribers.pop(characteristic.uuid, None)


@pytest.fixture
async def bridge(tmp_path, monkeypatch):
    b = Bridge(tmp_path / "flash")
    await b.start()
    FakeBleakClient.bridge = b
    monkeypatch.setattr(bleak, "get_platform_client_backend_type", lambda: (FakeBleakClient, "fake"))
    yield b
    await b.stop()


async def press_when_asked(bridge: Bridge, lines: list[str]) -> None:
    """The technician: presses the node's button once the command asks for it."""
    while not any("press the node's button" in line for line in lines):
        await asyncio.sleep(0.01)
    await bridge.request("press")


async def test_ble_provisioning_with_the_button_and_an_encrypted_key(bridge, tmp_path, req):
    registry = NodeRegistry(tmp_path / "room.db")
    client = ImprovBLEClient(BLEDevice(ADDRESS, "srnode-esp32s3", None))
    lines: list[str] = []
    presser = asyncio.create_task(press_when_asked(bridge, lines))
    hw = await asyncio.wait_for(provision_ble(client, registry, req, "tech sam", progress=lines.append), WAIT_S)
    await presser
    assert hw == "esp32s3-devkitc-1"
    flash = json.loads((bridge.flash / "provision.json").read_text())
    record = registry.get("bed-b-call")
    assert record is not None and record.state == "provisioned" and record.hw == "esp32s3-devkitc-1"
    assert flash["key_hex"] == record.key.hex() and flash["wifi_ssid"] == "ward-4b"
    assert (flash["ctl_host"], flash["ctl_port"], flash["ctl_fp"]) == ("10.20.4.12", 7700, req.fingerprint)
    assert flash["ctl_cert"] == req.certificate.hex()  # the node link certificate, whole, from its chunks
    # the key crossed the air only after pairing, and only once
    rpc = "00467768-6228-2272-4663-277478268003"
    trust = [data for uuid, data in bridge.writes if uuid == rpc and data[0] == 0xA0]
    assert len(trust) == 1 and record.key.hex().encode() in trust[0] and bridge.encrypted
    chunks = [data for uuid, data in bridge.writes if uuid == rpc and data[0] == 0xA1]
    assert len(chunks) == -(-len(req.certificate) // 120) and all(len(c) <= 3 + 5 + 1 + 120 + 1 for c in chunks)
    assert "node: srnode-esp32s3-devkitc-1, srnode 0.1.0 on esp32s3-devkitc-1" in lines
    registry.close()


async def test_ble_provisioning_stops_when_nobody_presses_the_button(bridge, tmp_path, monkeypatch, req):
    import controller.link.improv_ble as mod

    monkeypatch.setattr(mod, "AUTH_WAIT_S", 0.3)
    registry = NodeRegistry(tmp_path / "room.db")
    client = ImprovBLEClient(BLEDevice(ADDRESS, "srnode-esp32s3", None))
    with pytest.raises(ProvisionError, match="button was not pressed"):
        await provision_ble(client, registry, req, "tech sam", progress=lambda line: None)
    assert registry.get("bed-b-call") is None
    assert not (bridge.flash / "provision.json").exists()
    registry.close()


async def test_the_node_refuses_the_key_on_a_plain_link(bridge, tmp_path, monkeypatch, req):
    """A BLE stack that does not encrypt on pair(): the node keeps the key out, the command says why."""
    async def no_encryption(self: FakeBleakClient, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(FakeBleakClient, "pair", no_encryption)
    registry = NodeRegistry(tmp_path / "room.db")
    client = ImprovBLEClient(BLEDevice(ADDRESS, "srnode-esp32s3", None))
    lines: list[str] = []
    presser = asyncio.create_task(press_when_asked(bridge, lines))
    with pytest.raises(ProvisionError, match="NOT_AUTHORIZED"):
        await provision_ble(client, registry, req, "tech sam", progress=lines.append)
    await presser
    assert registry.get("bed-b-call") is None
    assert not (bridge.flash / "provision.json").exists()
    registry.close()


def test_cli_ble_reports_a_node_out_of_range(tmp_path, monkeypatch, capsys):
    import controller.link.improv_ble as mod
    from controller.cli import main as cli
    from controller.security.tls import load_or_create

    async def nothing(address: str) -> None:
        return None

    monkeypatch.setattr(mod, "find_device", nothing)
    load_or_create(tmp_path / "node-link-cert.pem", tmp_path / "node-link-key.pem", ["localhost"], node_link=True)
    monkeypatch.setenv("SMARTROOM_WIFI_PASSWORD", "x")
    code = cli(["nodes", "provision", "--ble", ADDRESS, "--node-id", "bed-b-call", "--controller", "h",
                "--wifi-ssid", "ward-4b", "--db", str(tmp_path / "room.db")])
    assert code == 1
    assert f"no Bluetooth device {ADDRESS} in range" in capsys.readouterr().err
    assert cli(["nodes", "list", "--db", str(tmp_path / "room.db")]) == 0
    assert "bed-b-call" not in capsys.readouterr().out
