"""`smartroom nodes provision`: give a node fresh from the box its Wi-Fi, its key and the controller's
address and certificate fingerprint over Improv on its USB serial port, and enrol it in the room's
node registry (docs/provisioning.md). The key is made here and leaves only over the cable.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .improv import STATE_PROVISIONED, ImprovError, ImprovSerialClient, Port, Trust
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
    fingerprint: str  # hex SHA-256 of the controller certificate's DER bytes


def certificate_fingerprint(cert_path: Path) -> str:
    """Hex SHA-256 of the first certificate in a PEM file (what the node pins: ``ctl_fp``)."""
    try:
        pem = cert_path.read_text()
    except OSError as exc:
        raise ProvisionError(f"cannot read the controller certificate {cert_path}: {exc.strerror}") from exc
    start = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise ProvisionError(f"{cert_path} holds no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(pem[start:end + len("-----END CERTIFICATE-----")] + "\n")
    return hashlib.sha256(der).hexdigest()


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
                 f"{req.controller_port} (certificate {req.fingerprint[:16]}...) over the cable")
        client.send_trust(Trust(req.node_id, key, req.controller_host, req.controller_port, req.fingerprint))
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
