"""The simulated room: the firmware build, real firmware running in MicroPython processes, the demo."""
