"""Write a bundle and the loader onto a board over USB with mpremote (``smartroom firmware flash``).

The MicroPython runtime itself is flashed first, once per board, with esptool (ESP32-S3) or by
copying a UF2 file (Pico W): hardware/flashing.md. This writes MicroPython's files: the loader
(``main.py``, ``bootsel.py``), the bundle's ``.mpy`` files and manifest at the root (the
"flashed" firmware that bootsel.py falls back to), the node's ``config.json`` and its pin map.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..sim.firmware import firmware_dir
from .bundle import MANIFEST, SIGNATURE, Bundle

LOADER = ("main.py", "bootsel.py")
MPREMOTE_TIMEOUT_S = 60.0  # one file over USB serial: a 10 KB .mpy takes ~1 s; a stuck board never answers


class FlashError(RuntimeError):
    """The board could not be flashed: no port, no mpremote, or mpremote failed (its message included)."""


@dataclass(frozen=True, slots=True)
class Copy:
    local: Path
    remote: str   # path on the board, from its root


def mpremote() -> str:
    """mpremote: $SMARTROOM_MPREMOTE, beside this Python (a venv's bin/), or on PATH."""
    env = os.environ.get("SMARTROOM_MPREMOTE")
    if env:
        return env
    beside = Path(sys.executable).with_name("mpremote")
    found = str(beside) if beside.exists() else shutil.which("mpremote")
    if not found:
        raise FlashError("no mpremote: pip install 'smartroom[firmware]' (or pip install mpremote)")
    return found


def plan(bundle: Bundle, config: Path | None, pinmaps: Path, public_key: bytes,
         staging: Path) -> list[Copy]:
    """What goes where; ``config`` gets the firmware key's public half (``ota.pub_hex``) written in."""
    copies = [Copy(firmware_dir() / name, name) for name in LOADER]
    copies += [Copy(bundle.root / f.path, f.path) for f in bundle.files]
    copies += [Copy(bundle.root / MANIFEST, MANIFEST), Copy(bundle.root / SIGNATURE, SIGNATURE)]
    if config is not None:
        cfg = json.loads(config.read_text())
        for key in ("node_id", "key_hex", "controller", "wifi", "pinmap"):
            if key not in cfg:
                raise FlashError(f"{config}: a board's config needs {key!r} (docs/firmware.md)")
        cfg.setdefault("ota", {})["pub_hex"] = public_key.hex()
        cfg.pop("sim", None)
        written = staging / "config.json"
        written.write_text(json.dumps(cfg, sort_keys=True))
        copies.append(Copy(written, "config.json"))
        pinmap = pinmaps / f"{cfg['pinmap']}.json"
        if not pinmap.is_file():
            raise FlashError(f"{config}: pin map {cfg['pinmap']!r} is not in {pinmaps}")
        copies.append(Copy(pinmap, f"pinmaps/{pinmap.name}"))
    return copies


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise FlashError(f"mpremote did not finish in {MPREMOTE_TIMEOUT_S:g} s: is the board in its bootloader, "
                         "or another program (a serial console) holding the port?") from exc
    except OSError as exc:
        raise FlashError(f"cannot run mpremote: {exc}") from exc


def flash(port: str, bundle: Bundle, copies: list[Copy], progress: Callable[[str], None] = print) -> None:
    """Copy every file with mpremote, one per call (so each one shows), then reset the board."""
    if bundle.board == "unix":
        raise FlashError("this bundle is for the unix port (the simulator): build one with --board esp32s3 or "
                         "--board rp2-pico-w")
    if "://" not in port and not Path(port).exists():
        raise FlashError(f"no serial port {port}: is the board plugged in (a data cable, not a charge-only "
                         "one)? See `ls /dev/ttyUSB* /dev/ttyACM*`; hardware/flashing.md")
    tool = mpremote()
    dirs = sorted({str(Path(c.remote).parent) for c in copies} - {"."}, key=lambda d: (d.count("/"), d))
    for d in dirs:
        result = _run([tool, "connect", port, "fs", "mkdir", f":{d}"])
        if result.returncode != 0 and "EEXIST" not in result.stderr + result.stdout:
            raise FlashError(f"mpremote could not make {d} on {port}:\n{(result.stderr or result.stdout).strip()}")
    total = sum(c.local.stat().st_size for c in copies)
    done = 0
    for i, c in enumerate(copies, 1):
        result = _run([tool, "connect", port, "fs", "cp", str(c.local), f":{c.remote}"])
        if result.returncode != 0:
            raise FlashError(f"mpremote could not write {c.remote} to {port}:\n"
                             f"{(result.stderr or result.stdout).strip()}")
        done += c.local.stat().st_size
        progress(f"[{i}/{len(copies)}] {c.remote}  {c.local.stat().st_size} B  ({100 * done // total} %)")
    result = _run([tool, "connect", port, "reset"])
    if result.returncode != 0:
        raise FlashError(f"written, but mpremote could not reset {port}: press the board's reset button")
    progress(f"flashed firmware {bundle.version} ({bundle.board}, bundle {bundle.sha256[:12]}) to {port}; "
             "the board is starting")
