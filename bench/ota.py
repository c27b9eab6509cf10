"""Firmware update costs: the node's Ed25519 check in MicroPython, and one update over the link.

    .venv/bin/python bench/ota.py [--verifies 20] [--updates 3]
    .venv/bin/python bench/ota.py --smoke        # 3 verifies, 1 update: what the test suite runs

1. The signature check (srnode/ed25519.py) as the node runs it, in MicroPython with the sim's
   board-sized heap (-X heapsize=64wK): median and worst of --verifies, on a real bundle's manifest.
2. Whole updates of a bedside node (real firmware, sim speed 1) by a room controller on loopback:
   offer -> staged (download ~60 chunks, every hash, the signature), and staged -> confirmed (reset,
   boot of the new bundle, link up). Printed as median and worst of --updates.
On a board the verify is slower (bigint maths on a 240 MHz Xtensa: expect 30-50x; docs/firmware.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.ota import bundle as fwb  # noqa: E402
from controller.runner import RoomServer  # noqa: E402
from tests.helpers import keys_for, room_config  # noqa: E402
from tests.nodepeer import FIRMWARE, MICROPYTHON, FirmwareNode  # noqa: E402

# (arguments in a file: a long argv string crashed this MicroPython build with "uncaught NLR")
VERIFY_SCRIPT = """
import json
import sys
import time
from binascii import unhexlify
from srnode import ed25519
with open(sys.argv[1]) as f:
    pub, msg, sig, n = json.load(f)
out = []
for _ in range(n):
    t = time.ticks_us()
    ok = ed25519.verify(unhexlify(pub), unhexlify(msg), unhexlify(sig))
    out.append(time.ticks_diff(time.ticks_us(), t) if ok else -1)
print(json.dumps(out))
"""
WAIT_S = 120.0


def verify_times(bundle: fwb.Bundle, pub: bytes, n: int, tmp: Path) -> list[float]:
    script = tmp / "verify.py"
    script.write_text(VERIFY_SCRIPT)
    args = tmp / "verify.json"
    args.write_text(json.dumps([pub.hex(), fwb.signed_message(bundle.manifest).hex(), bundle.signature.hex(), n]))
    out = subprocess.run([str(MICROPYTHON), "-X", "heapsize=64wK", str(script), str(args)], text=True,
                         capture_output=True, env={**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"})
    if out.returncode != 0:
        raise SystemExit(f"the verify script failed:\n{out.stdout}{out.stderr}")
    times = json.loads(out.stdout.strip().splitlines()[-1])
    if len(times) != n or -1 in times:
        raise SystemExit(f"the node refused the bundle's own signature: {times}")
    return [us / 1000 for us in times]


async def one_update(bundle: fwb.Bundle, pub: bytes, tmp: Path) -> tuple[float, float]:
    config = room_config()
    async with RoomServer(config, keys_for(config), tmp / "room.db", api_port=0, node_port=0) as room:
        cfg = {"node_id": "bedside-a", "key_hex": keys_for(config)["bedside-a"].hex(), "link_plain": True,
               "controller": {"host": "127.0.0.1", "port": room.endpoints.node_port}, "hb_ms": 10000,
               "inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"},
               "tone": {"pin": "buzzer"}, "ota": {"pub_hex": pub.hex()},
               "sim": {"speed": 1, "state_dir": str(tmp / "flash"), "seed": 1}}
        async with FirmwareNode(cfg, tmp / "boot0") as node:
            await node.wait_line("link", "up", timeout_s=WAIT_S)
            t0 = time.perf_counter()
            await room.ota.offer("bedside-a", bundle)
            await node.wait_line("ota", st="staged", timeout_s=WAIT_S)
            staged = time.perf_counter() - t0
            await node.wait_exit(WAIT_S)
        t1 = time.perf_counter()
        async with FirmwareNode(cfg, tmp / "boot1") as node:
            await node.wait_line("ota", st="confirmed", timeout_s=WAIT_S)
        return staged, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verifies", type=int, default=20)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.verifies, args.updates = 3, 1
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fwb.generate_key(tmp / "fw.pem")
        key = fwb.load_key(tmp / "fw.pem")
        pub = fwb.public_bytes(key)
        bundle = fwb.build_bundle(tmp / "bundle", key, board="unix", version="9.0.0")
        ms = verify_times(bundle, pub, args.verifies, tmp)
        print(f"ed25519 verify in MicroPython (64wK heap): median {statistics.median(ms):.0f} ms, "
              f"worst {max(ms):.0f} ms over {len(ms)}")
        staged, confirmed = [], []
        for i in range(args.updates):
            s, c = asyncio.run(one_update(bundle, pub, tmp / f"u{i}"))
            staged.append(s)
            confirmed.append(c)
        print(f"update of {len(bundle.files)} files, {fwb.installed_size(bundle)} bytes: offer->staged median "
              f"{statistics.median(staged):.2f} s (worst {max(staged):.2f}), reboot->confirmed median "
              f"{statistics.median(confirmed):.2f} s (worst {max(confirmed):.2f}) over {len(staged)}")


if __name__ == "__main__":
    main()
