"""`smartroom nodes provision`: give a node fresh from the box its Wi-Fi, its key, the controller's
address and the node link certificate it pins (fingerprint and DER) over Improv on its USB serial
port, and enrol it in the room's node registry (docs/provisioning.md). The key is made here and
leaves only over the cable.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .improv import STATE_PROVISIONED, ImprovError, ImprovSerialClient, Port, Trust
from ..security.tls import TlsError, node_pin_file
from ..store.nodes import KEY_BYTES, NodeRegistry, RegistryError

SERIAL_BAUD = 115200          # MicroPython's USB REPL speed on ESP32-S3 and Pico W
SERIAL_READ_TIMEOUT_S = 0.1   # one read's wait; the Improv client keeps its own deadlines


class ProvisionError(RuntimeError):
    """Provisioning stopped; the message says where and what to do."""


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    node_id: str
    ssid: str
    password: str
    controller_host: str
    controller_port: int
    fingerprint: str     # hex SHA-256 of the node link certificate's DER bytes (the node's ctl_fp)
    certificate: bytes   # that DER (the node's ctl_cert)

    def trust(self, key: bytes) -> Trust:
        return Trust(self.node_id, key, self.controller_host, self.controller_port, self.fingerprint, self.certificate)


def node_link_pin(cert_path: Path) -> tuple[str, bytes]:
    """The node link certificate's (fingerprint hex, DER): what `smartroom run` serves nodes with
    (node-link-cert.pem next to its database), never the API's certificate."""
    if not cert_path.exists():
        raise ProvisionError(f"{cert_path}: no node link certificate yet. Start the controller once "
                             f"(`smartroom run` with the same --db makes it next to the database), then provision "
                             f"again: the node pins that certificate")
    try:
        pin = node_pin_file(cert_path)
    except TlsError as exc:
        raise ProvisionError(f"cannot read the node link certificate: {exc}") from exc
    return pin["ctl_fp"], bytes.fromhex(pin["ctl_cert"])


def open_serial(port: str) -> Port:
    import serial  # pyserial: only the provisioning command needs it

    try:
        return serial.Serial(port, SERIAL_BAUD, timeout=SERIAL_READ_TIMEOUT_S)
    except serial.SerialException as exc:
        raise ProvisionError(f"cannot open serial port {port}: {exc} (is the node plugged in, and may you use "
                             f"the port? e.g. add yourself to the 'dialout' group)") from exc


def provision(port: Port, registry: NodeRegistry, req: ProvisionRequest, actor: str, *,
              progress: Callable[[str], None] = print, clock_ms: Callable[[], int] = lambda: time.time_ns() // 10**6,
              key: bytes | None = None) -> str:
    """Run one node's Improv session and enrol it; returns the node's hardware name."""
    client = ImprovSerialClient(port, progress=progress)
    try:
        progress("asking the node for its state ...")
        if client.current_state() == STATE_PROVISIONED:
            raise ProvisionError("the node is already provisioned: hold its reset button for 10 s (factory "
                                 "reset) or decommission it first")
        info = client.device_info()
        progress(f"node: {info.name}, {info.firmware} {info.version} on {info.hardware}")
        key = key if key is not None else os.urandom(KEY_BYTES)
        progress(f"sending node id {req.node_id}, its key and controller {req.controller_host}:"
                 f"{req.controller_port} (node link certificate {req.fingerprint[:16]}...) over the cable")
        client.send_trust(req.trust(key))
        try:
            registry.enrol(req.node_id, key, actor, clock_ms(), hw=info.hardware, fw=info.version)
        except RegistryError as exc:
            raise ProvisionError(str(exc)) from exc
        progress(f"enrolled {req.node_id} in the room's registry (provisioned)")
        progress(f"joining Wi-Fi {req.ssid!r} ...")
        state = client.send_wifi(req.ssid, req.password)
    except ImprovError as exc:
        raise ProvisionError(str(exc)) from exc
    if state != STATE_PROVISIONED:
        raise ProvisionError(f"the node joined Wi-Fi but says it is not provisioned (state {state})")
    progress(f"done: {req.node_id} is provisioned; it appears on the facilities page as waiting once it connects")
    return info.hardware
