"""The sensors' exceptions: one root, each also the builtin it resembles."""

from __future__ import annotations


class SensorError(Exception):
    """Something about the room's wired or Bluetooth devices is wrong."""


class WiringError(SensorError, ValueError):
    """The room file describes wiring that cannot work (a pin used twice, an input with no meaning).

    Raised by :func:`sensors.attach` before any pin is touched; the message names the node key.
    """
