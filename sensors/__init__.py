"""The room controller's own devices: wired GPIO inputs and outputs, Bluetooth LE sensors, and the
microphones of voice calls (``sensors.voice``, loaded only for rooms that listen).

``sensors.attach(controller)`` starts them for the room's ``transport = "gpio"`` and
``transport = "ble"`` nodes (docs/sensors.md; wiring in hardware/).
"""

from .attach import Attachment, attach
from .errors import SensorError, WiringError

__all__ = ["Attachment", "SensorError", "WiringError", "attach"]
