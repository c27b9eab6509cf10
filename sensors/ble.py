"""Bluetooth LE sensors: BTHome v2 advertisements into room calls, presence and readings.

A node with ``transport = "ble"`` is one BTHome v2 device (a pendant, a motion sensor, a
thermometer) heard by the Pi's own Bluetooth adapter. One continuous scan (``bleak``) feeds every
advertisement from a configured address through ``bthome-ble``'s parser (decrypting with the
device's bind key), and what the packet carries becomes the node's events::

    [nodes.pendant-a]
    transport = "ble"
    bed = "A"
    check_in_s = 60                     # the device advertises at least this often: offline after 3 misses
    inputs = { pendant = "patient_call" }

    [nodes.pendant-a.ble]
    address = "A4:C1:38:5D:6E:01"
    bindkey = "231d39c1d7cc1ab1aee224cd096db932"   # optional; then plain adverts are refused
    button = "pendant"                  # a BTHome button press -> input "pendant" -> a patient call

A button press raises its call once: the device repeats each packet for a second or so, and
the BTHome packet id (object 0x00) tells repeats from a new press. A device not heard for
``check_in_s`` x ``[supervision] missed_heartbeats`` is "node offline" (the controller supervises
every node from ``local_seen``); heard again, it is back online. If the adapter is missing,
removed or BlueZ restarts, the room keeps working without Bluetooth: :class:`BleScanner` reports
a "bluetooth" system fault, retries with capped exponential backoff, and clears the fault when
scanning works again. Its :class:`BleStatus` is what the API can show.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from controller.room.config import NodeConfig, OptionError

from . import _options as opt
from .clock import Scheduler, sleep
from .errors import WiringError
from .meanings import input_event
from .outbox import Outbox

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
    from controller.service import RoomController

log = logging.getLogger("smartroom.sensors.ble")

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"  # BTHome's 16-bit service data UUID 0xFCD2
BTHOME_V2 = 2

# Adapter trouble: the first retry soon (BlueZ restarting takes a second or two), then doubling,
# so a Pi without a dongle does not spin, but a returned adapter is in use within a minute.
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0
# Scanner watchdog, as Home Assistant's habluetooth does it: a removed adapter or a restarted
# BlueZ ends the scan without an error, only the advertisements stop. A hospital floor always has
# some advertiser in range, so 90 s without any advertisement restarts the scan; if the adapter
# is gone, the restart fails and the subsystem is degraded.
WATCHDOG_SILENCE_S = 90.0
WATCHDOG_CHECK_S = 15.0
REJECT_LOG_EVERY = 100  # a device whose adverts we cannot read is logged once, then every 100th

BUTTON_FIELD_RE = re.compile(r"^button(_[1-9])?$")  # bthome-ble names several buttons button_1, button_2, ...
BINARY_FIELDS = ("motion", "occupancy", "door", "opening", "window")
# BTHome button events that are a press (hold_release is the end of a hold_press, not a new press)
PRESS_EVENTS = frozenset({"press", "double_press", "triple_press", "long_press", "long_double_press",
                          "long_triple_press", "hold_press"})
# BTHome sensor -> room reading (API units). Not pressure: BTHome's is barometric (hPa), the
# room's pressure_pa is the isolation room's differential pressure to the corridor.
READINGS = {"temperature": "temp_c", "humidity": "rh_pct", "carbon_dioxide": "co2_ppm"}
BATTERY_MODES = ("percent", "voltage", "none")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_OPTION_KEYS = ("address", "bindkey", "readings", "battery", "low_battery_pct", "battery_replaced_pct",
                *BINARY_FIELDS)


# --------------------------------------------------------------------------- options


def parse_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``[nodes.<id>.ble]`` table; raises ``OptionError(path, message)``.

    Returns ``address`` (upper case), ``bindkey`` (32 hex digits or None), ``events`` (BTHome
    button field -> input name), ``binary`` (BTHome binary field -> input name), ``readings``,
    ``battery``, ``low_battery_pct``, ``battery_replaced_pct``.
    """
    for key in table:
        if not BUTTON_FIELD_RE.match(key):
            opt.only({key: None}, (), _OPTION_KEYS + ("button",))
    if "address" not in table:
        raise OptionError(("address",), "missing option 'address' (the device's Bluetooth MAC, AA:BB:CC:DD:EE:FF)")
    address = opt.typed(table["address"], ("address",), str)
    if not _MAC_RE.match(address):
        raise OptionError(("address",), f"'{address}' is not a Bluetooth MAC address (AA:BB:CC:DD:EE:FF)")
    bindkey = table.get("bindkey")
    if bindkey is not None:
        bindkey = opt.typed(bindkey, ("bindkey",), str)
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", bindkey):
            raise OptionError(("bindkey",), "bindkey must be 32 hex digits (the device's 16-byte AES key)")
        bindkey = bindkey.lower()
    events = {k: opt.text(v, (k,)) for k, v in table.items() if BUTTON_FIELD_RE.match(k)}
    binary = {k: opt.text(table[k], (k,)) for k in BINARY_FIELDS if k in table}
    low = opt.integer(table, (), "low_battery_pct", 20, 1, 90)
    replaced = opt.integer(table, (), "battery_replaced_pct", max(60, low + 10), 2, 100)
    if replaced <= low:
        raise OptionError(("battery_replaced_pct",), f"battery_replaced_pct ({replaced}) must be greater than "
                                                     f"low_battery_pct ({low})")
    return {
        "address": address.upper(), "bindkey": bindkey, "events": events, "binary": binary,
        "readings": opt.typed(table.get("readings", True), ("readings",), bool),
        "battery": opt.choice(table, (), "battery", BATTERY_MODES, "percent"),
        "low_battery_pct": low, "battery_replaced_pct": replaced,
    }


@dataclass(frozen=True, slots=True)
class BleDevice:
    """One configured BTHome device, from its node's checked options."""

    node: str
    address: str
    bindkey: bytes | None
    events: Mapping[str, str]      # BTHome event field (button, button_1, ...) -> input name
    binary: Mapping[str, str]      # BTHome binary field (motion, door, ...) -> input name
    meanings: Mapping[str, str]    # input name -> meaning (the node's inputs table)
    readings: bool = True
    battery: str = "percent"
    low_battery_pct: int = 20
    battery_replaced_pct: int = 60

    @classmethod
    def from_node(cls, node: NodeConfig) -> "BleDevice":
        o = node.options
        return cls(node.id, o["address"], bytes.fromhex(o["bindkey"]) if o["bindkey"] else None,
                   dict(o["events"]), dict(o["binary"]), dict(node.inputs), o["readings"], o["battery"],
                   o["low_battery_pct"], o["battery_replaced_pct"])

    @property
    def firmware(self) -> str:
        return "BTHome v2" + (" (encrypted)" if self.bindkey else "")


def check_devices(nodes: Mapping[str, NodeConfig]) -> list[BleDevice]:
    """What one node's options cannot see: check-in interval, meanings, addresses shared by nodes."""
    devices: list[BleDevice] = []
    by_address: dict[str, str] = {}
    for node in nodes.values():
        where = f"nodes.{node.id}"
        dev = BleDevice.from_node(node)
        if node.check_in_ms is None:
            raise WiringError(f"{where}.check_in_s: a ble node needs check_in_s, how often the device advertises "
                              "at the least (without it, it would count as offline after the TCP heartbeat)")
        if dev.address in by_address:
            raise WiringError(f"{where}.ble.address: {dev.address} is also node '{by_address[dev.address]}'")
        by_address[dev.address] = node.id
        for fld, name in dev.events.items():
            if name not in node.inputs:
                raise WiringError(f"{where}.ble.{fld}: input '{name}' has no meaning in the node's 'inputs'")
        mapped = set(dev.events.values()) | set(dev.binary.values())
        for name in node.inputs:
            if name not in mapped:
                raise WiringError(f"{where}.inputs.{name}: no BTHome field is mapped to it under [{where}.ble] "
                                  f"(e.g. button = \"{name}\")")
        devices.append(dev)
    return devices


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class BleStatus:
    """The Bluetooth subsystem as the API shows it. ``adapter_faults`` counts up: a /metrics counter."""

    state: str = "stopped"          # stopped | starting | scanning | degraded
    since_ms: int = 0
    error: str | None = None
    failures: int = 0               # failed starts in a row; 0 while scanning
    retry_in_s: float | None = None
    adapter_faults: int = 0         # times the subsystem went degraded since the controller started
    watchdog_restarts: int = 0      # scans restarted after WATCHDOG_SILENCE_S without any advertisement
    adverts: int = 0                # advertisements received, any device
    rejected: int = 0               # adverts from our devices that did not decrypt (wrong key, replay, plaintext)
    devices: int = 0

    @property
    def degraded(self) -> bool:
        return self.state == "degraded"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "since_ms": self.since_ms, "error": self.error, "failures": self.failures,
                "retry_in_s": self.retry_in_s, "adapter_faults": self.adapter_faults,
                "watchdog_restarts": self.watchdog_restarts, "adverts": self.adverts, "rejected": self.rejected,
                "devices": self.devices}


@dataclass(slots=True)
class _DeviceState:
    parser: Any                     # bthome_ble.BTHomeBluetoothDeviceData
    binary: dict[str, bool] = field(default_factory=dict)
    rejected: int = 0


def _parser(bindkey: bytes | None) -> Any:
    from bthome_ble import BTHomeBluetoothDeviceData

    class _FreshValues(BTHomeBluetoothDeviceData):
        """bthome-ble's parser, reporting only what this advertisement carried.

        sensor-state-data keeps earlier values in each update (it serves entity state); a room
        wants events, so a repeat must not re-send the last packet's values.
        """

        def update(self, data: Any) -> Any:
            self._sensor_values_updates.clear()
            self._binary_sensor_values_updates.clear()
            return super().update(data)

    return _FreshValues(bindkey)


# --------------------------------------------------------------------------- the scanner


class BleScanner:
    """One continuous BLE scan for the room's BTHome devices, kept running through adapter trouble.

    ``backend`` is a bleak scanner backend class (``BaseBleakScanner`` subclass; None: the
    platform's, BlueZ on the Pi), ``adapter`` a BlueZ adapter name ("hci0"; None: the default).
    """

    def __init__(self, controller: "RoomController", devices: Sequence[BleDevice], *, outbox: Outbox,
                 scheduler: Scheduler, backend: "type[BaseBleakScanner] | None" = None,
                 adapter: str | None = None) -> None:
        self.controller = controller
        self.devices = {d.address: d for d in devices}
        self._states = {d.address: _DeviceState(_parser(d.bindkey)) for d in devices}
        self._outbox = outbox
        self._scheduler = scheduler
        self._backend = backend
        self._adapter = adapter
        self._task: asyncio.Task[None] | None = None
        self._last_advert = 0.0
        self._adverts = 0      # counted here, not in the frozen status: a busy band sends hundreds a second
        self._rejected = 0
        self._status = BleStatus(since_ms=controller.clock(), devices=len(devices))

    @property
    def status(self) -> BleStatus:
        return replace(self._status, adverts=self._adverts, rejected=self._rejected)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ble-scanner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._set(state="stopped", retry_in_s=None)

    def _set(self, **changes: Any) -> None:
        if "state" in changes and changes["state"] != self._status.state:
            changes["since_ms"] = self.controller.clock()
        self._status = replace(self._status, **changes)

    async def _run(self) -> None:
        from bleak import BleakScanner

        delay = RETRY_FIRST_S
        while True:
            if self._status.state != "degraded":
                self._set(state="starting")
            try:
                scanner = BleakScanner(self._detected, backend=self._backend,
                                       bluez={"adapter": self._adapter} if self._adapter else {})
                await scanner.start()
            except Exception as exc:  # BleakError, D-Bus errors, OSError: any of them means no scan
                self._failed(exc, delay)
                await sleep(self._scheduler, delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self._scanning()
            try:
                await self._watch()
            finally:
                try:
                    await scanner.stop()
                except Exception:  # the adapter may already be gone; we are restarting anyway
                    log.debug("bluetooth: stopping the scan failed", exc_info=True)

    def _failed(self, exc: Exception, retry_s: float) -> None:
        error = f"{type(exc).__name__}: {exc}"
        first = self._status.state != "degraded"
        self._set(state="degraded", error=error, failures=self._status.failures + 1, retry_in_s=retry_s,
                  adapter_faults=self._status.adapter_faults + first)
        if first:
            log.error("bluetooth: cannot scan (%s); the room runs without its BLE devices, retrying", error)
            detail = {"error": error, "devices": len(self.devices)}
            self._outbox.put("bluetooth fault", lambda: self.controller.system_fault("bluetooth", True, detail))
        else:
            log.info("bluetooth: still cannot scan (%s); next try in %.0f s", error, retry_s)

    def _scanning(self) -> None:
        if self._status.state == "degraded":
            log.warning("bluetooth: scanning again")
        self._set(state="scanning", error=None, failures=0, retry_in_s=None)
        self._last_advert = self._scheduler.time()
        # also clears a fault left active by a previous run of the controller (no-op otherwise)
        self._outbox.put("bluetooth ok", lambda: self.controller.system_fault("bluetooth", False))

    async def _watch(self) -> None:
        while True:
            await sleep(self._scheduler, WATCHDOG_CHECK_S)
            if self._scheduler.time() - self._last_advert >= WATCHDOG_SILENCE_S:
                log.warning("bluetooth: no advertisement for %.0f s; restarting the scan", WATCHDOG_SILENCE_S)
                self._set(watchdog_restarts=self._status.watchdog_restarts + 1)
                return

    # ------------------------------------------------------------------ advertisements
    def _detected(self, device: "BLEDevice", adv: "AdvertisementData") -> None:
        """bleak's detection callback, on the event loop."""
        self._last_advert = self._scheduler.time()
        self._adverts += 1
        dev = self.devices.get(device.address.upper())
        data = adv.service_data.get(BTHOME_UUID)
        if dev is None or not data:
            return
        try:
            self._advert(dev, device, adv, data)
        except Exception:  # one malformed advertisement must not end the scan
            log.exception("%s: could not handle an advertisement (%s)", dev.node, data.hex())

    def _advert(self, dev: BleDevice, device: "BLEDevice", adv: "AdvertisementData", data: bytes) -> None:
        from habluetooth import BluetoothServiceInfoBleak

        state = self._states[dev.address]
        info = BluetoothServiceInfoBleak.from_device_and_advertisement_data(
            device, adv, self._adapter or "local", self._scheduler.time(), False)
        update = state.parser.update(info)
        if not self._authentic(dev, state, data):
            state.rejected += 1
            self._rejected += 1
            if state.rejected % REJECT_LOG_EVERY == 1:
                log.warning("%s: advertisement from %s refused (%s); %d so far", dev.node, dev.address,
                            "wrong bind key, replay or plaintext" if dev.bindkey else "encrypted, and no bindkey",
                            state.rejected)
            return
        self._heard(dev, state, update, adv.rssi)

    @staticmethod
    def _authentic(dev: BleDevice, state: _DeviceState, data: bytes) -> bool:
        """Whether this advertisement is really from the device: a BTHome v2 packet it could have sent."""
        if (data[0] >> 5) & 7 != BTHOME_V2:
            return False
        encrypted = bool(data[0] & 0x01)
        if dev.bindkey is None:
            return not encrypted
        if not encrypted:
            return False  # a plaintext packet from a keyed device is a downgrade: refused
        counter = int.from_bytes(data[-8:-4], "little")
        return bool(state.parser.bindkey_verified) and state.parser.encryption_counter == counter

    def _heard(self, dev: BleDevice, state: _DeviceState, update: Any, rssi: int) -> None:
        node, c = dev.node, self.controller
        values = {k.key: v.native_value for k, v in update.entity_values.items()}
        binaries = {k.key: bool(v.native_value) for k, v in update.binary_entity_values.items()}
        events = {k.key: v.event_type for k, v in update.events.items()}
        batt_v = self._battery_v(dev, values)

        async def seen() -> None:
            await c.local_online(node, dev.firmware, f"BLE {dev.address}", ("ble",))
            c.local_seen(node, rssi=rssi, batt_v=batt_v)

        self._outbox.put("heard", seen)
        for fld, event_type in events.items():
            name = dev.events.get(fld)
            if name is not None and event_type in PRESS_EVENTS:
                self._outbox.put(f"{node}: {name} {event_type}",
                                 lambda n=name, e=event_type: c.local_event(node, "button", n, 1, {"press": e}))
        for fld, value in binaries.items():
            name = dev.binary.get(fld)
            if name is None or state.binary.get(fld) == value:
                continue
            state.binary[fld] = value
            event = input_event(dev.meanings.get(name), value)
            if event is not None:
                kind, val = event
                self._outbox.put(f"{node}: {name} {kind}={val}",
                                 lambda n=name, k=kind, v=val, f=fld: c.local_event(node, k, n, v, {"field": f}))
        measures = {READINGS[k]: float(v) for k, v in values.items() if k in READINGS and dev.readings}
        if dev.battery == "percent" and "battery" in values:
            measures["batt_pct"] = float(values["battery"])
        if measures:
            async def readings() -> None:
                c.local_reading(node, measures)

            self._outbox.put(f"{node}: readings", readings)

    def _battery_v(self, dev: BleDevice, values: Mapping[str, Any]) -> float | None:
        """The battery as the room judges it, in volts against ``[supervision]``'s thresholds.

        ``voltage``: the device's own reading, for a device on the firmware nodes' Li-ion cell.
        ``percent``: a coin cell's 3.0 V is no measure against a Li-ion threshold, so the
        percentage is placed on the room's scale: ``low_battery_pct`` lands on ``low_battery_v``
        and ``battery_replaced_pct`` on ``battery_replaced_v``, linearly. The percentage itself
        is stored as the ``batt_pct`` reading.
        """
        if dev.battery == "voltage" and "voltage" in values:
            return float(values["voltage"])
        if dev.battery != "percent" or "battery" not in values:
            return None
        sup = self.controller.config.supervision
        pct = float(values["battery"])
        span = (sup.battery_replaced_v - sup.low_battery_v) / (dev.battery_replaced_pct - dev.low_battery_pct)
        volts = sup.low_battery_v + (pct - dev.low_battery_pct) * span
        return round(min(max(volts, 1.5), 6.0), 3)  # inside the room's plausible battery range
