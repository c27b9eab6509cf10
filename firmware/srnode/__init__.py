# smartroom node runtime (MicroPython). Protocol: docs/protocol.md
FW_VERSION = "0.1.0"
