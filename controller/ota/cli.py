"""``smartroom firmware …``: keygen, build, flash, rollout, status (docs/firmware.md, hardware/flashing.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import bundle as fwb
from .flash import FlashError, flash, plan

if TYPE_CHECKING:
    import aiohttp

ROLLOUT_POLL_S = 2.0      # how often `rollout` asks the controller how far it got
HTTP_TIMEOUT_S = 10.0     # one API call to the room controller
# While `rollout` follows a rollout, how long it keeps asking a controller that stopped answering (a
# restart takes seconds; the rollout then shows as interrupted, which is what the technician needs).
ROLLOUT_UNREACHABLE_S = 120.0


def add_commands(sub: Any) -> None:
    fw = sub.add_parser("firmware", help="node firmware: build signed bundles, flash boards, update over the air")
    actions = fw.add_subparsers(dest="firmware_command", required=True)

    keygen = actions.add_parser("keygen", help="make the firmware signing key (Ed25519, PEM, mode 0600)")
    keygen.add_argument("--out", type=Path, required=True, help="refuses to overwrite")
    keygen.set_defaults(func=_keygen)

    build = actions.add_parser("build", help="compile the firmware into a signed, reproducible bundle")
    build.add_argument("--key", type=Path, required=True, help="the firmware key (from `firmware keygen`)")
    build.add_argument("--out", type=Path, required=True, help="the bundle folder (emptied first)")
    build.add_argument("--board", choices=sorted(fwb.BOARDS), default="esp32s3")
    build.add_argument("--version", default=None, help="MAJOR.MINOR.PATCH (default: srnode FW_VERSION)")
    build.add_argument("--firmware", type=Path, default=None, help="firmware sources (default: the repo's)")
    build.set_defaults(func=_build)

    fl = actions.add_parser("flash", help="write a bundle, the loader and a node's config to a board over USB "
                                          "(mpremote); MicroPython itself first: hardware/flashing.md")
    fl.add_argument("--port", required=True, help="e.g. /dev/ttyUSB0 (ESP32-S3), /dev/ttyACM0 (Pico W)")
    fl.add_argument("--bundle", type=Path, required=True, help="a bundle folder (`firmware build --out`)")
    fl.add_argument("--key", type=Path, required=True, help="the firmware key: the bundle must verify with it, "
                                                            "and the node gets its public half")
    fl.add_argument("--config", type=Path, default=None, help="the node's config.json (docs/firmware.md)")
    fl.add_argument("--pinmaps", type=Path, default=Path(__file__).resolve().parents[2] / "hardware" / "pinmaps")
    fl.set_defaults(func=_flash)

    ro = actions.add_parser("rollout", help="update nodes over the air through a running controller: the first "
                                            "node alone, then the rest; stops when a node does not confirm")
    ro.add_argument("--url", required=True, help="the room's API, e.g. https://room-4b-12.local:8080")
    ro.add_argument("--token", required=True, help="a facilities or admin API token")
    ro.add_argument("--bundle", required=True, help="a bundle's folder name or hash (>= 8 digits) on the controller")
    ro.add_argument("--nodes", required=True, help="comma-separated, in order: the first is updated alone")
    ro.add_argument("--insecure", action="store_true", help="accept the room's self-signed certificate")
    ro.set_defaults(func=_rollout)

    st = actions.add_parser("status", help="firmware versions and updates of a room's nodes")
    st.add_argument("--url", required=True)
    st.add_argument("--token", required=True)
    st.add_argument("--insecure", action="store_true")
    st.set_defaults(func=_status)


def _keygen(args: argparse.Namespace) -> int:
    try:
        pub = fwb.generate_key(args.out)
    except (fwb.BundleError, OSError) as exc:
        print(f"smartroom: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the firmware key to {args.out} (mode 0600); keep it on the controller and a backup offline")
    print(f"public key (nodes get it as ota.pub_hex): {pub.hex()}")
    return 0


def _build(args: argparse.Namespace) -> int:
    try:
        key = fwb.load_key(args.key)
        bundle = fwb.build_bundle(args.out, key, board=args.board, version=args.version, src=args.firmware,
                                  progress=lambda f: print(f"  {f.path}  {f.size} B"))
    except (fwb.BundleError, OSError) as exc:
        print(f"smartroom: {exc}", file=sys.stderr)
        return 2
    print(f"bundle {bundle.sha256}  version {bundle.version}  board {bundle.board}  {len(bundle.files)} files, "
          f"{fwb.installed_size(bundle)} bytes  in {args.out}")
    return 0


def _flash(args: argparse.Namespace) -> int:
    try:
        pub = fwb.public_bytes(fwb.load_key(args.key))
        bundle = fwb.load_bundle(args.bundle, pub)
        with tempfile.TemporaryDirectory() as staging:
            flash(args.port, bundle, plan(bundle, args.config, args.pinmaps, pub, Path(staging)))
    except (fwb.BundleError, FlashError, OSError, ValueError) as exc:
        print(f"smartroom: {exc}", file=sys.stderr)
        return 2
    return 0


async def _api(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import aiohttp  # (not at import: every `smartroom` command builds this module's parser)

    ssl = False if args.insecure else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as session:
        async with session.request(method, args.url.rstrip("/") + path, json=body, ssl=ssl,
                                   headers={"Authorization": f"Bearer {args.token}"}) as resp:
            doc = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{resp.status}: {doc.get('error', doc)}")
            return doc


def _print_rollout(r: dict[str, Any]) -> None:
    nodes = "  ".join(f"{u['node']}:{u['state']}" + (f"({u['reason']})" if u.get("reason") else "")
                      for u in r["nodes"])
    print(f"rollout #{r['id']} {r['version']} {r['state']}  {nodes}" + (f"  -- {r['reason']}" if r["reason"] else ""))


def _rollout(args: argparse.Namespace) -> int:
    import aiohttp

    async def poll() -> dict[str, Any]:
        """The firmware view; a controller that stops answering (restarting) is asked again for up to
        ROLLOUT_UNREACHABLE_S, saying so once, and once more when it answers again."""
        since = None
        while True:
            try:
                doc = await _api(args, "GET", "/api/v1/firmware")
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                    print(f"smartroom: the controller does not answer ({exc or type(exc).__name__}); asking again "
                          f"every {ROLLOUT_POLL_S:g} s for up to {ROLLOUT_UNREACHABLE_S:g} s", file=sys.stderr)
                elif now - since >= ROLLOUT_UNREACHABLE_S:
                    raise RuntimeError(f"the controller has not answered for {now - since:.0f} s ({exc or type(exc).__name__});"
                                       " `smartroom firmware status` shows how far the rollout got") from exc
                await asyncio.sleep(ROLLOUT_POLL_S)
                continue
            if since is not None:
                print("smartroom: the controller answers again", file=sys.stderr)
            return doc

    async def main() -> int:
        started = await _api(args, "POST", "/api/v1/firmware/rollouts",
                             {"bundle": args.bundle, "nodes": [n for n in args.nodes.split(",") if n]})
        rid = started["id"]
        last = None
        while True:
            doc = await poll()
            found = [r for r in doc["rollouts"] if r["id"] == rid]
            if not found:
                raise RuntimeError(f"the controller no longer lists rollout #{rid}")
            r = found[0]
            line = (r["state"], [(u["state"], u["chunks"] // 20) for u in r["nodes"]])
            if line != last:
                _print_rollout(r)
                last = line
            if r["state"] != "running":
                return 0 if r["state"] == "done" else 1
            await asyncio.sleep(ROLLOUT_POLL_S)

    try:
        return asyncio.run(main())
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        print(f"smartroom: {exc}", file=sys.stderr)
        return 2


def _status(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        doc = asyncio.run(_api(args, "GET", "/api/v1/firmware"))
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        print(f"smartroom: {exc}", file=sys.stderr)
        return 2
    for n in doc["nodes"]:
        print(f"{n['node']:<16} {n['fw'] or '-':<10} {n['hw'] or '-':<16} {'ota' if n['ota'] else 'no ota':<7} "
              f"{(n['update'] or {}).get('state', '')}")
    for b in doc["bundles"]:
        print(f"bundle {b['name']}: {b['version']} {b['board']} {b['sha256'][:16]}")
    for r in doc["rollouts"]:
        _print_rollout(r)
    return 0
