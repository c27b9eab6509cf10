"""Start and stop the room's Pi-attached devices together: wired GPIO nodes and the BLE scan.

    async with sensors.attach(controller) as devices:      # after controller.start()
        ...                                                  # devices.ble_status for the API

Configuration mistakes a node's own options cannot show (an input with no meaning, a pin used by
two nodes, a BLE node without check_in_s) raise :class:`~sensors.errors.WiringError` before any
pin is touched. Hardware trouble does not stop the room: GPIO that cannot be opened is a "gpio"
system fault, a missing Bluetooth adapter a "bluetooth" one (retried until it works), and the
rest of the room runs on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from controller.room.config import RoomConfig

from .ble import BleScanner, BleStatus, check_devices
from .clock import Scheduler
from .outbox import Outbox
from .wired import WiredNode, check_wiring

if TYPE_CHECKING:
    from bleak.backends.scanner import BaseBleakScanner
    from controller.service import RoomController

log = logging.getLogger("smartroom.sensors")


class Attachment:
    """The wired nodes and the BLE scanner of one room; ``start()``/``stop()`` or ``async with``."""

    def __init__(self, controller: "RoomController", config: RoomConfig | None = None, *, pin_factory: Any = None,
                 ble_backend: "type[BaseBleakScanner] | None" = None, ble_adapter: str | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.controller = controller
        self.config = config or controller.config
        self.pin_factory = pin_factory
        self.ble_backend = ble_backend
        self.ble_adapter = ble_adapter
        self._scheduler = scheduler
        self.outbox: Outbox | None = None
        self.wired: dict[str, WiredNode] = {}
        self.gpio_errors: dict[str, str] = {}
        self.ble: BleScanner | None = None

    @property
    def ble_status(self) -> BleStatus | None:
        """The Bluetooth subsystem's state (None: the room has no BLE nodes)."""
        return self.ble.status if self.ble is not None else None

    def to_json(self) -> dict[str, Any]:
        """For the API: which wired nodes run, which could not open their pins, the BLE subsystem."""
        return {"gpio": {"nodes": sorted(self.wired), "errors": dict(self.gpio_errors)},
                "ble": self.ble.status.to_json() if self.ble is not None else None}

    async def start(self) -> "Attachment":
        nodes = self.config.nodes
        gpio = {n: c for n, c in nodes.items() if c.transport == "gpio"}
        ble = {n: c for n, c in nodes.items() if c.transport == "ble"}
        check_wiring(gpio)
        devices = check_devices(ble)
        scheduler = self._scheduler or asyncio.get_running_loop()
        self.outbox = Outbox(scheduler)
        self.outbox.start()
        for node in gpio.values():
            wired = WiredNode(self.controller, node, outbox=self.outbox, scheduler=scheduler,
                              pin_factory=self.pin_factory)
            try:
                wired.open()
            except Exception as exc:  # no GPIO chip, pin busy, no pin factory on this machine: a system fault
                log.exception("gpio: cannot open the pins of node %s", node.id)
                self.gpio_errors[node.id] = f"{type(exc).__name__}: {exc}"
                continue
            self.wired[node.id] = wired
            wired.report_start()
        if gpio:
            self._report_gpio()
        if devices:
            self.ble = BleScanner(self.controller, devices, outbox=self.outbox, scheduler=scheduler,
                                  backend=self.ble_backend, adapter=self.ble_adapter)
            await self.ble.start()
        return self

    def _report_gpio(self) -> None:
        faulty = bool(self.gpio_errors)
        detail = {"nodes": sorted(self.gpio_errors), "error": next(iter(self.gpio_errors.values()))} if faulty else {}
        assert self.outbox is not None
        self.outbox.put("gpio " + ("fault" if faulty else "ok"),
                        lambda: self.controller.system_fault("gpio", faulty, detail))

    async def settle(self) -> None:
        """Wait until every input seen so far is stored by the controller."""
        if self.outbox is not None:
            await self.outbox.settle()

    async def stop(self) -> None:
        if self.ble is not None:
            await self.ble.stop()
        for wired in self.wired.values():
            wired.close()
        self.wired = {}
        if self.outbox is not None:
            await self.outbox.stop()

    async def __aenter__(self) -> "Attachment":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def attach(controller: "RoomController", config: RoomConfig | None = None, *, pin_factory: Any = None,
           ble_backend: "type[BaseBleakScanner] | None" = None, ble_adapter: str | None = None,
           scheduler: Scheduler | None = None) -> Attachment:
    """The room's Pi-attached devices for ``controller`` (not started: ``await`` its start, or ``async with``).

    ``pin_factory``: a gpiozero pin factory (None: gpiozero's default, lgpio on a Pi 5);
    ``ble_backend``: a bleak scanner backend class (None: BlueZ); ``scheduler``: time for
    debouncing, patterns and retries (None: the running event loop).
    """
    return Attachment(controller, config, pin_factory=pin_factory, ble_backend=ble_backend, ble_adapter=ble_adapter,
                      scheduler=scheduler)
