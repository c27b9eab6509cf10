"""The ``smartroom`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .config import DEFAULT_API_PORT, ConfigError, load_keys, load_room


def _run(args: argparse.Namespace) -> int:
    from .runner import RoomServer

    try:
        config = load_room(args.config)
        keys = load_keys(args.keys)
    except ConfigError as exc:
        print(f"smartroom: configuration error: {exc}", file=sys.stderr)
        return 2
    missing = sorted(set(config.nodes) - set(keys))
    if missing:
        print(f"smartroom: warning: no key for node(s) {', '.join(missing)} in {args.keys}: they cannot connect",
              file=sys.stderr)

    async def main() -> None:
        server = RoomServer(config, keys, args.db, api_host=args.api_host, api_port=args.api_port,
                            node_host=args.node_host, node_port=args.node_port)
        endpoints = await server.start()
        print(f"room {config.room_id}: API {endpoints.api_url}  nodes {endpoints.node_host}:{endpoints.node_port}",
              flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .simnodes import FirmwareNotFound

    try:
        asyncio.run(run_demo(port=args.port, speed=args.speed, workdir=args.workdir, auto_ack_s=args.auto_ack,
                             duration_s=args.duration))
    except FirmwareNotFound as exc:
        print(f"smartroom demo: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"smartroom demo: {exc} (is port {args.port} in use? try --port)", file=sys.stderr)
        return 2
    return 0


def _keygen(args: argparse.Namespace) -> int:
    doc = {"nodes": {node: os.urandom(32).hex() for node in args.nodes}}
    text = json.dumps(doc, indent=1) + "\n"
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"wrote {len(args.nodes)} keys to {args.out} (mode 0600)")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartroom", description="Smart hospital room controller.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a room controller from its configuration")
    run.add_argument("--config", type=Path, required=True, help="the room's TOML file")
    run.add_argument("--keys", type=Path, required=True, help="node key file (JSON, mode 0600)")
    run.add_argument("--db", type=Path, default=Path("smartroom.db"), help="SQLite event store")
    run.add_argument("--api-host", default="127.0.0.1")
    run.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    run.add_argument("--node-host", default=None, help="default: the room file's gateway.host")
    run.add_argument("--node-port", type=int, default=None, help="default: the room file's gateway.port")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="a whole simulated room: controller, API, dashboard, firmware nodes")
    demo.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="API and dashboard port (default 8080)")
    demo.add_argument("--speed", type=float, default=1.0, help="node clock speed factor (default 1 = real time)")
    demo.add_argument("--workdir", type=Path, default=None, help="where the database and node state go")
    demo.add_argument("--auto-ack", type=float, default=15.0,
                      help="seconds before a demo nurse acknowledges an unanswered call (0 = never)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(func=_demo)

    keygen = sub.add_parser("keygen", help="make a key file for nodes")
    keygen.add_argument("nodes", nargs="+", help="node ids")
    keygen.add_argument("--out", type=Path, help="write here (mode 0600; refuses to overwrite)")
    keygen.set_defaults(func=_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
