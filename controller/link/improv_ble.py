"""`smartroom nodes provision --ble`: Improv over Bluetooth LE through py-improv-ble-client (which
drives bleak), plus the node's vendor commands: CERT (the node link certificate, in chunks) and TRUST
on an encrypted link (docs/provisioning.md).

The node starts in Improv's "authorization required": the technician presses its button. The key
goes only after the link is paired and encrypted (LE Secure Connections): the node refuses TRUST on a
plain link, and Improv BLE itself is not encrypted.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

from improv_ble_client import ImprovBLEClient, State
from improv_ble_client import protocol as prot
from improv_ble_client.errors import ImprovError as BleImprovError
from improv_ble_client.models import DisconnectReason

from .improv import CMD_CERT, CMD_TRUST, Trust, cert_chunks
from .provision import ProvisionError, ProvisionRequest
from ..store.nodes import KEY_BYTES, NodeRegistry, RegistryError

# The node's button authorises for 60 s (firmware/srnode/improv_ble.py); waiting as long gives the
# technician the time to walk to it after starting the command.
AUTH_WAIT_S = 60.0
REPLY_TIMEOUT_S = 5.0  # a BLE round trip and the node's flash write


SCAN_TIMEOUT_S = 10.0  # a node advertises every 100 ms; ten seconds covers a busy radio


async def find_device(address: str) -> Any:
    """The BLEDevice at ``address`` (bleak's scanner), or None when it is not in range."""
    from bleak import BleakScanner

    return await BleakScanner.find_device_by_address(address, timeout=SCAN_TIMEOUT_S)


async def provision_address(address: str, registry: NodeRegistry, req: ProvisionRequest, actor: str, *,
                            progress: Callable[[str], None] = print) -> str:
    progress(f"looking for {address} over Bluetooth ...")
    device = await find_device(address)
    if device is None:
        raise ProvisionError(f"no Bluetooth device {address} in range (is the node powered and unprovisioned, "
                             f"and is the controller's Bluetooth on?)")
    return await provision_ble(ImprovBLEClient(device), registry, req, actor, progress=progress)


class TrustCmd(prot.Command):
    """The vendor TRUST command (0xA0) in py-improv-ble-client's command framing."""

    cmd_id = CMD_TRUST

    def __init__(self, trust: Trust) -> None:
        super().__init__([trust.node_id.encode(), trust.key.hex().encode(), trust.host.encode(),
                          str(trust.port).encode(), trust.fingerprint.encode()])

    def __str__(self) -> str:
        return "TrustCmd (key not shown)"


class _TrustRes(prot.Command):
    cmd_id = CMD_TRUST


class CertCmd(prot.Command):
    """The vendor CERT command (0xA1): offset (decimal) and the next bytes of the certificate."""

    cmd_id = CMD_CERT


async def _send_cert(client: ImprovBLEClient, certificate: bytes) -> None:
    for chunk in cert_chunks(certificate):
        answer = client.receive_response(CertCmd)
        await client.send_cmd(CertCmd(chunk))
        try:
            held = await asyncio.wait_for(answer, REPLY_TIMEOUT_S)
        except TimeoutError as exc:
            error = await client.read_characteristic(prot.CHARACTERISTIC_UUID_ERROR)
            raise ProvisionError(f"the node did not take the controller's certificate (error state: "
                                 f"{error.name})") from exc
        want = str(int(chunk[0]) + len(chunk[1])).encode()
        if held._strings != [want]:  # noqa: SLF001 - the library keeps a result's strings there
            raise ProvisionError(f"the node holds {held._strings} bytes of the certificate, not {want.decode()}")  # noqa: SLF001


async def _wait_authorized(client: ImprovBLEClient, progress: Callable[[str], None]) -> None:
    authorized = asyncio.Event()

    def on_state(state: Any) -> None:
        if state == State.AUTHORIZED:
            authorized.set()

    unsubscribe = await client.subscribe_state_updates(on_state)  # first: a quick press is not missed
    try:
        if not await client.need_authorization():
            return
        progress("press the node's button to authorise it (within 60 s) ...")
        await asyncio.wait_for(authorized.wait(), AUTH_WAIT_S)
    except TimeoutError as exc:
        raise ProvisionError(f"the node's button was not pressed within {AUTH_WAIT_S:g} s") from exc
    finally:
        unsubscribe()


async def _send_trust(client: ImprovBLEClient, bleak_client: Any, trust: Trust) -> None:
    progress_pair = getattr(bleak_client, "pair", None)
    if progress_pair is None:
        raise ProvisionError("this Bluetooth stack cannot pair: the key is not sent over a plain link")
    await bleak_client.pair()  # LE Secure Connections: from here the link is encrypted
    await _send_cert(client, trust.certificate)
    answer = client.receive_response(_TrustRes)
    await client.send_cmd(TrustCmd(trust))
    try:
        await asyncio.wait_for(answer, REPLY_TIMEOUT_S)
    except TimeoutError as exc:
        error = await client.read_characteristic(prot.CHARACTERISTIC_UUID_ERROR)
        raise ProvisionError(f"the node did not take its key (error state: {error.name}); is the link encrypted?") \
            from exc


async def provision_ble(client: ImprovBLEClient, registry: NodeRegistry, req: ProvisionRequest, actor: str, *,
                        progress: Callable[[str], None] = print,
                        clock_ms: Callable[[], int] = lambda: time.time_ns() // 10**6,
                        key: bytes | None = None) -> str:
    """One node over BLE: authorisation, device info, TRUST (encrypted), enrolment, Wi-Fi. -> hardware."""
    try:
        progress(f"connecting to {client.address} ...")
        await client.ensure_connected()
        await _wait_authorized(client, progress)
        info = await client.get_device_info()
        firmware, version, hardware, name = (info.firmware_name.decode(), info.firmware_version.decode(),
                                             info.hardware_chip.decode(), info.device_name.decode())
        progress(f"node: {name}, {firmware} {version} on {hardware}")
        key = key if key is not None else os.urandom(KEY_BYTES)
        progress(f"pairing, then sending the node link certificate, node id {req.node_id} and its key over the "
                 f"encrypted link")
        await _send_trust(client, client._client, req.trust(key))  # noqa: SLF001
        try:
            registry.enrol(req.node_id, key, actor, clock_ms(), hw=hardware, fw=version)
        except RegistryError as exc:
            raise ProvisionError(str(exc)) from exc
        progress(f"enrolled {req.node_id} in the room's registry (provisioned)")
        progress(f"joining Wi-Fi {req.ssid!r} ...")
        await client.provision(req.ssid, req.password, None)
    except BleImprovError as exc:
        raise ProvisionError(f"Improv over BLE: {type(exc).__name__} {exc}") from exc
    finally:  # the library has no public disconnect; it would otherwise hold the link for 90 s
        await client._execute_disconnect(DisconnectReason.TIMEOUT)  # noqa: SLF001
    progress(f"done: {req.node_id} is provisioned; it appears on the facilities page as waiting once it connects")
    return hardware
