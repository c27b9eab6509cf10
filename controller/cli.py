"""The ``smartroom`` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .room.config import DEFAULT_API_PORT, DEFAULT_NODE_PORT, ConfigError, input_warnings, load_keys, load_room
from .security.files import others_may_read

HEALTH_TIMEOUT_S = 3.0  # per `smartroom discover` run; a room that takes longer is listed as unreachable
CERT_WARN_BEFORE = timedelta(days=30)  # time to install a renewed certificate before clients refuse the old one
NODE_CERT_FILE, NODE_KEY_FILE = "node-link-cert.pem", "node-link-key.pem"  # next to --db


def _run(args: argparse.Namespace) -> int:
    from sensors import SensorError

    from .runner import RoomServer
    from .security.tls import TlsError, load_or_create

    try:
        config = load_room(args.config)
        keys = load_keys(args.keys) if args.keys else {}  # provisioned nodes' keys are in the database
    except ConfigError as exc:
        print(f"smartroom: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.keys and (loose := others_may_read(args.keys)) is not None:
        print(f"smartroom: warning: {loose}", file=sys.stderr)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("smartroom: --tls-cert and --tls-key go together (or leave both out for a self-signed pair "
              "next to the database)", file=sys.stderr)
        return 2
    cert_path = args.tls_cert or args.db.parent / "tls-cert.pem"
    key_path = args.tls_key or args.db.parent / "tls-key.pem"
    tls = None
    if args.no_tls:
        if args.tls_cert:
            print("smartroom: --no-tls and --tls-cert contradict each other", file=sys.stderr)
            return 2
        print("smartroom: warning: --no-tls: the API speaks plain http; use it only behind a TLS proxy "
              "or on loopback (the node link stays TLS)", file=sys.stderr)
    try:
        if not args.no_tls:
            tls = load_or_create(cert_path, key_path, _certificate_names(config.room_id, args.api_host))
        # The node link has its own self-signed pair, made once and never renewed: every node pins it
        # (docs/network.md, "The node link").
        node_tls = load_or_create(args.db.parent / NODE_CERT_FILE, args.db.parent / NODE_KEY_FILE,
                                  _certificate_names(config.room_id, args.api_host), node_link=True)
    except TlsError as exc:
        print(f"smartroom: TLS: {exc}", file=sys.stderr)
        return 2
    if config.plain_tcp:
        print(f"smartroom: warning: {config.source}: [gateway] plain_tcp = true: nodes may connect without TLS; "
              "their frames are authenticated but readable on the network (docs/network.md)", file=sys.stderr)
    missing = sorted({n.id for n in config.nodes.values() if n.transport == "tcp"} - set(keys))
    if missing and args.keys:
        print(f"smartroom: warning: no key for node(s) {', '.join(missing)} in {args.keys}: they cannot connect",
              file=sys.stderr)

    fw_public = None
    if args.firmware_key is not None:  # updates over the air (docs/firmware.md)
        from .ota.bundle import BundleError, load_key, public_bytes
        try:
            fw_public = public_bytes(load_key(args.firmware_key))
        except BundleError as exc:
            print(f"smartroom: {exc}", file=sys.stderr)
            return 2

    async def main() -> None:
        server = RoomServer(config, keys, args.db, api_host=args.api_host, api_port=args.api_port,
                            node_host=args.node_host, node_port=args.node_port,
                            tls=tls, node_tls=node_tls, advertise=not args.no_advertise,
                            readings_min_free_bytes=int(args.readings_min_free_mb * 2**20), keys_path=args.keys,
                            firmware_bundles=args.firmware_bundles, firmware_public_key=fw_public)
        try:
            endpoints = await server.start()
        except (SensorError, ConfigError) as exc:  # a wiring or [ward] mistake: nothing is half started
            await server.stop()
            print(f"smartroom: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        _freeze_startup_heap()
        print(f"room {config.room_id}: API {endpoints.api_url}  nodes {endpoints.node_host}:{endpoints.node_port}",
              flush=True)
        if tls is not None:
            origin = "self-signed, " + str(tls.cert_path) if tls.self_signed else str(tls.cert_path)
            print(f"TLS certificate ({origin}), valid until {tls.not_after:%Y-%m-%d}\n"
                  f"  SHA-256 fingerprint {tls.fingerprint_sha256}", flush=True)
        print(f"node link: {server.gateway.transport_name()}, certificate {node_tls.cert_path}\n"
              f"  nodes pin ctl_fp {node_tls.fingerprint_hex}", flush=True)
        print(f"{server.controller.rebuilt[0].upper()}{server.controller.rebuilt[1:]}", flush=True)
        if tls is not None and tls.not_after - datetime.now(timezone.utc) < CERT_WARN_BEFORE:
            print(f"smartroom: warning: the TLS certificate {tls.cert_path} expires on {tls.not_after:%Y-%m-%d} "
                  f"(docs/network.md: renewing)", file=sys.stderr)
        await _until_stopped()
        await server.stop()

    asyncio.run(main())
    return 0


def _freeze_startup_heap() -> int:
    """Once the room has started, what it loaded (modules, configuration, the rebuilt state) lives as
    long as the process: move it out of the cyclic collector's way (:func:`gc.freeze`). A full
    collection then walks only what came after: with 200 nodes connected it took ~45 ms (p50) and
    now ~8 ms, a pause every event waits out (``bench/broker.py``). Reference counting still frees a
    frozen object that is dropped; only a reference cycle among them would stay. Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _until_stopped() -> None:
    """Return on SIGINT (Ctrl-C) or SIGTERM (systemd's stop)."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


def _check(args: argparse.Namespace) -> int:
    """Check a room file, and against it the key file and the nodes' own configs, without starting anything.

    Errors (the room file is wrong) exit 2; warnings (it will run, but something would fail loud at
    run time) are printed and exit 0, or 1 with --strict.
    """
    try:
        config = load_room(args.config)
        keys = load_keys(args.keys) if args.keys else None
    except ConfigError as exc:
        print(f"smartroom check: error: {exc}", file=sys.stderr)
        return 2
    warnings: list[str] = []
    if keys is not None:
        missing = sorted({n.id for n in config.nodes.values() if n.transport == "tcp"} - set(keys))
        warnings += [f"{args.keys}: no key for node '{node}': it cannot connect" for node in missing]
        if (loose := others_may_read(args.keys)) is not None:
            warnings.append(loose)
    for node in config.nodes.values():
        if node.transport == "gpio":  # the pin map is in the room file itself
            warnings += input_warnings(config, node.id, node.options.get("inputs", {}))
    for path in args.node_config:
        try:
            doc = json.loads(path.read_text())
            node_id = doc["node_id"]
            inputs = [spec["name"] for spec in doc.get("inputs", ())]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"smartroom check: error: {path}: not a node config ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        warnings += [f"{w} (node config {path})" for w in input_warnings(config, node_id, inputs)]
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"{args.config}: room {config.room_id}, {len(config.nodes)} nodes: "
          + (f"{len(warnings)} warning(s)" if warnings else "ok"))
    return 1 if warnings and args.strict else 0


def _certificate_names(room_id: str, api_host: str) -> list[str]:
    """Names a self-signed certificate is made for: this host, its mDNS names, the API address."""
    from .security.hostnames import host_label  # (not discovery: zeroconf loads only to announce)

    host = socket.gethostname()
    names = [host, f"{host}.local", host_label(room_id)]
    if api_host not in ("", "0.0.0.0", "::"):
        names.append(api_host)
    return names


def _discover(args: argparse.Namespace) -> int:
    import aiohttp

    from .security.discovery import browse

    async def main() -> list[dict]:
        rooms = await browse(args.timeout, args.interface or None)
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            health = await asyncio.gather(*(_room_health(session, room) for room in rooms))
        return [{**dataclasses.asdict(room), **state} for room, state in zip(rooms, health)]

    rooms = asyncio.run(main())
    if args.json:
        print(json.dumps(rooms, indent=1))
    elif rooms:
        print(f"{'ROOM':<12} {'NAME':<28} {'STATE':<22} {'URL':<38} FINGERPRINT")
        for r in rooms:
            fp = r["fingerprint"][:23] + "…" if r["fingerprint"] else "-"
            print(f"{r['room']:<12} {r['name'][:28]:<28} {r['state'][:22]:<22} {r['url']:<38} {fp}")
    if not rooms:
        print(f"smartroom discover: no room answered within {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0


async def _room_health(session: aiohttp.ClientSession, room) -> dict:
    """GET {url}/health (no token needed), pinning the advertised certificate fingerprint."""
    import aiohttp

    from .security.tls import pin

    ssl: object = pin(room.fingerprint) if room.tls and room.fingerprint else True
    try:
        async with session.get(room.url + "/health", ssl=ssl) as resp:
            if resp.status != 200:
                return {"state": f"HTTP {resp.status}", "health": None, "error": resp.reason}
            body = await resp.json(content_type=None)
            if not isinstance(body, dict):
                raise ValueError("health reply is not a JSON object")
    except aiohttp.ServerFingerprintMismatch as exc:
        return {"state": "certificate mismatch", "health": None, "error": str(exc)}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return {"state": "unreachable", "health": None, "error": f"{type(exc).__name__}: {exc}"}
    state = str(body.get("status", "?"))
    calls = body.get("active_calls")
    if isinstance(calls, dict):
        state += f", {sum(n for n in calls.values() if isinstance(n, int))} active calls"
    return {"state": state, "health": body, "error": None}


def _demo(args: argparse.Namespace) -> int:
    from .sim.demo import run_demo
    from .sim.firmware import FirmwareNotFound

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


def _nodes_provision(args: argparse.Namespace) -> int:
    """Improv over the node's USB serial port (or BLE), then enrol it in --db (docs/provisioning.md)."""
    from .link.provision import ProvisionError, ProvisionRequest, node_link_pin, open_serial, provision
    from .store.nodes import NodeRegistry

    host, _, port = args.controller.rpartition(":") if ":" in args.controller else (args.controller, "", "")
    try:
        ctl_port = int(port) if port else DEFAULT_NODE_PORT
    except ValueError:
        print(f"smartroom nodes provision: --controller {args.controller!r}: the port is not a number", file=sys.stderr)
        return 2
    password = os.environ.get("SMARTROOM_WIFI_PASSWORD")
    if args.wifi_password_file is not None:
        password = args.wifi_password_file.read_text().rstrip("\n")
    if password is None:
        print("smartroom nodes provision: give the Wi-Fi password in --wifi-password-file or "
              "SMARTROOM_WIFI_PASSWORD (not on the command line, where `ps` shows it)", file=sys.stderr)
        return 2
    say = lambda line: print(line, flush=True)  # noqa: E731 - progress, one line per step
    try:
        # the node link's own certificate, as `smartroom run` serves it: never the API's
        fingerprint, certificate = node_link_pin(args.db.parent / NODE_CERT_FILE)
        req = ProvisionRequest(args.node_id, args.wifi_ssid, password, host, ctl_port, fingerprint, certificate)
        actor = f"(command line) {os.environ.get('USER', '?')}"
        if args.ble:
            from .link.improv_ble import provision_address

            registry = NodeRegistry(args.db)
            try:
                asyncio.run(provision_address(args.ble, registry, req, actor, progress=say))
            finally:
                registry.close()
            return 0
        say(f"opening {args.serial} ...")
        port_ = open_serial(args.serial)
        registry = NodeRegistry(args.db)
        try:
            provision(port_, registry, req, actor, progress=say)
        finally:
            registry.close()
            port_.close()
    except ProvisionError as exc:
        print(f"smartroom nodes provision: {exc}", file=sys.stderr)
        return 1
    return 0


def _nodes_list(args: argparse.Namespace) -> int:
    from .store.nodes import NodeRegistry

    if not args.db.exists():
        print(f"smartroom nodes list: {args.db}: no such database", file=sys.stderr)
        return 2
    registry = NodeRegistry(args.db)
    try:
        for r in registry.all():
            print(f"{r.node_id:<20} {r.state:<15} {r.role or '-':<12} {r.bed or '-':<6} {r.hw} {r.fw}")
    finally:
        registry.close()
    return 0


def _token(args: argparse.Namespace) -> int:
    """Tokens live in the room's database; this works while the controller runs."""
    import time

    from .security import tokens

    if not args.db.exists():
        if args.action != "create":
            print(f"smartroom token: {args.db}: no such database (pass the controller's --db)", file=sys.stderr)
            return 2
        print(f"smartroom token: {args.db} does not exist yet; creating it for the controller to use",
              file=sys.stderr)
    db = tokens.open_db(str(args.db))
    now = time.time_ns() // 1_000_000
    try:
        if args.action == "create":
            info, secret = tokens.create(db, args.role, args.name, now)
            tokens.audit(db, tokens.AuditEntry(now, f"(command line) {os.environ.get('USER', '?')}", None,
                                               "token create", f"{info.name} ({info.role})", 201, None))
            print(f"token {info.id} '{info.name}' role {info.role}. Shown once; keep it secret:\n{secret}")
        elif args.action == "revoke":
            info = tokens.revoke(db, args.name, now)
            tokens.audit(db, tokens.AuditEntry(now, f"(command line) {os.environ.get('USER', '?')}", None,
                                               "token revoke", f"{info.name} ({info.role})", 200, None))
            print(f"revoked token {info.id} '{info.name}' ({info.role})")
        else:
            for info in tokens.list_tokens(db, include_revoked=args.all):
                state = "active" if info.revoked_ms is None else "revoked"
                print(f"{info.id:>4}  {info.role:<11} {state:<8} {info.name}")
    except tokens.TokenError as exc:
        print(f"smartroom token: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    return 0


def _ward(args: argparse.Namespace) -> int:
    """``smartroom ward --config ward.toml``: the ward console (docs/ward.md)."""
    if getattr(args, "ward_command", None) == "token":
        return _ward_token(args)
    from ward.config import load_ward
    from ward.server import WardServer

    if args.config is None:
        print("smartroom ward: --config ward.toml is required", file=sys.stderr)
        return 2
    try:
        config = load_ward(args.config)
    except ConfigError as exc:
        print(f"smartroom ward: configuration error: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        server = WardServer(config, args.db, http_host=args.http_host, http_port=args.http_port)
        url = await server.start()
        print(f"ward {config.name}: ward page {url}/  staff view {url}/staff  broker "
              f"{config.broker.host}:{config.broker.port}", flush=True)
        await _until_stopped()
        await server.stop()

    asyncio.run(main())
    return 0


def _ward_token(args: argparse.Namespace) -> int:
    import time

    from .security import tokens

    roles = ("nurse", "charge", "admin", "facilities")  # ward/console.py ROLES
    db = tokens.open_db(str(args.db))
    try:
        now = time.time_ns() // 1_000_000
        info, secret = tokens.create(db, args.role, args.name, now, roles)
        tokens.audit(db, tokens.AuditEntry(now, f"(command line) {os.environ.get('USER', '?')}", None,
                                           "token create", f"{info.name} ({info.role})", 201, None))
        print(f"ward token {info.id} '{info.name}' role {info.role}. Shown once; keep it secret:\n{secret}")
    except tokens.TokenError as exc:
        print(f"smartroom ward token: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    return 0


def _falls_eval(args: argparse.Namespace) -> int:
    from .fall_eval.evaluate import RunnerError, evaluate
    from .fall_eval.sisfall import DatasetError, find_datasets, iter_trials, parse_subjects
    from .sim.firmware import FirmwareNotFound

    try:
        subjects = parse_subjects(args.subjects) if args.subjects else None
        params = None
        if args.params is not None:
            params = json.loads(args.params.read_text())
            if not isinstance(params, dict):
                raise ValueError(f"{args.params}: expected a JSON object of detector parameters")
        datasets = [ds for path in args.path for ds in find_datasets(path)]
        skipped: list[Path] = []
        trials = [t for ds in datasets for t in iter_trials(ds, subjects, skipped=skipped)]
        source = ", ".join(str(ds.root) for ds in datasets)
        if not trials:
            raise DatasetError(f"{source}: no trials" + (f" for subjects {args.subjects}" if subjects else ""))
    except (OSError, ValueError) as exc:   # DatasetError and json.JSONDecodeError are ValueErrors
        print(f"smartroom falls eval: {exc}", file=sys.stderr)
        return 2

    def progress(done: int, total: int, elapsed_s: float) -> None:
        if done % 50 == 0 or done == total:
            print(f"  {done}/{total} trials, {elapsed_s:.0f} s", file=sys.stderr, flush=True)

    try:
        result = evaluate(trials, args.rate_hz, params, progress, firmware=args.firmware, source=source,
                          skipped=skipped, range_g=args.range_g)
    except FirmwareNotFound as exc:
        print(f"smartroom falls eval: {exc}", file=sys.stderr)
        return 2
    except (RunnerError, DatasetError) as exc:
        print(f"smartroom falls eval: {exc}", file=sys.stderr)
        return 1
    print(result.report())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _voice_recognize(args: argparse.Namespace) -> int:
    """Intents in a recording, one JSON object per line, through the microphone's code path."""
    from sensors.voice import (AudioError, Listener, RecognizerError, WavFileSource, make_recognizer, parse_options,
                               recognizer_for)

    try:
        if args.config is not None:
            config = load_room(args.config)
            voice_nodes = [n for n in config.nodes.values() if n.transport == "voice"]
            node = next((n for n in voice_nodes if args.node in (None, n.id)), None)
            if node is None:
                raise ConfigError(f"{args.config}: no voice node" + (f" '{args.node}'" if args.node else ""))
            options = dict(node.options)
            recognizer = recognizer_for(node)
        else:
            options = parse_options({} if args.engine is None else {"engine": args.engine})
            recognizer = make_recognizer(options)
        if args.threshold is not None:
            recognizer.threshold = args.threshold
        listener = Listener(recognizer, vad_mode=options["vad_mode"], max_utterance_s=options["max_utterance_s"])
        with WavFileSource(args.file) as source:
            for detection in listener.detections(source.frames()):
                print(json.dumps(detection.to_json()), flush=True)
    except (ConfigError, AudioError, RecognizerError) as exc:
        print(f"smartroom voice: {exc}", file=sys.stderr)
        return 2
    return 0


def _nested(sub: Any, group: str, group_help: str, action: str, action_help: str,
            description: str) -> argparse.ArgumentParser:
    """``smartroom <group> <action>``: a command group with (so far) one action."""
    actions = sub.add_parser(group, help=group_help).add_subparsers(dest=f"{group}_command", required=True)
    return actions.add_parser(action, help=action_help, description=description)


def build_parser() -> argparse.ArgumentParser:
    from .store.health import READINGS_MIN_FREE_BYTES

    parser = argparse.ArgumentParser(prog="smartroom", description="Smart hospital room controller.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a room controller from its configuration")
    run.add_argument("--config", type=Path, required=True, help="the room's TOML file")
    run.add_argument("--keys", type=Path, default=None,
                     help="node key file (JSON, mode 0600) for hand-configured nodes; provisioned nodes' keys "
                          "are in --db (smartroom nodes provision)")
    run.add_argument("--db", type=Path, default=Path("smartroom.db"), help="SQLite event store")
    run.add_argument("--api-host", default="127.0.0.1")
    run.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    run.add_argument("--node-host", default=None, help="default: the room file's gateway.host")
    run.add_argument("--node-port", type=int, default=None, help="default: the room file's gateway.port")
    run.add_argument("--tls-cert", type=Path, default=None,
                     help="the API's certificate (PEM, chain allowed); default: self-signed, "
                          "tls-cert.pem next to --db, made on first start")
    run.add_argument("--tls-key", type=Path, default=None,
                     help="its private key (PEM, unencrypted, mode 0600); default: tls-key.pem next to --db")
    run.add_argument("--readings-min-free-mb", type=float, default=READINGS_MIN_FREE_BYTES / 2**20,
                     help="free space (MiB) kept for events: below it readings are not stored and facilities get "
                          f"a technical alarm (default {READINGS_MIN_FREE_BYTES / 2**20:g})")
    run.add_argument("--no-advertise", action="store_true", help="do not announce the room on mDNS")
    run.add_argument("--firmware-bundles", type=Path, default=None,
                     help="folder of firmware bundles (one per subfolder) offered for updates over the air")
    run.add_argument("--firmware-key", type=Path, default=None,
                     help="the firmware key (`smartroom firmware keygen`): bundles must verify with it")
    run.add_argument("--no-tls", action="store_true",
                     help="serve plain http (only behind a TLS-terminating proxy, or on loopback for tests)")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="check a room file against its keys and the nodes' own configs",
                           description="Check a room file (errors exit 2) and warn where it does not match the "
                                       "key file or a node's inputs (a typo between a pin map and the room file "
                                       "would turn every press into a technical alarm).")
    check.add_argument("--config", type=Path, required=True, help="the room's TOML file")
    check.add_argument("--keys", type=Path, default=None, help="node key file: warn about nodes without a key")
    check.add_argument("--node-config", type=Path, action="append", default=[], metavar="NODE_JSON",
                       help="a firmware node's config (docs/firmware.md): warn about inputs the room file does "
                            "not map, or maps but the node lacks (repeatable)")
    check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    check.set_defaults(func=_check)

    discover = sub.add_parser("discover", help="list the rooms announced on the local network (mDNS)")
    discover.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    discover.add_argument("--json", action="store_true", help="print JSON instead of a table")
    discover.add_argument("--interface", action="append", default=[], metavar="ADDRESS",
                          help="browse only on the interface with this address (repeatable; default: all)")
    discover.set_defaults(func=_discover)

    demo = sub.add_parser("demo", help="a whole simulated room: controller, API, dashboard, firmware nodes")
    demo.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="API and dashboard port (default 8080)")
    demo.add_argument("--speed", type=float, default=1.0, help="node clock speed factor (default 1 = real time)")
    demo.add_argument("--workdir", type=Path, default=None, help="where the database and node state go")
    demo.add_argument("--auto-ack", type=float, default=15.0,
                      help="seconds before a demo nurse acknowledges an unanswered call (0 = never)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(func=_demo)

    token = sub.add_parser("token", help="create, revoke or list API tokens (stored hashed in the room database)")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", help="a new token; its secret is printed once")
    create.add_argument("--role", required=True, choices=("nurse", "facilities", "admin", "integration"))
    create.add_argument("--name", required=True, help="who or what holds it, e.g. 'Station 4B' (unique)")
    revoke = token_sub.add_parser("revoke", help="revoke a token by name or id")
    revoke.add_argument("name", help="the token's name or id")
    listing = token_sub.add_parser("list", help="the tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    for p in (create, revoke, listing):
        p.add_argument("--db", type=Path, default=Path("smartroom.db"), help="the room's SQLite database")
    token.set_defaults(func=_token)

    ward = sub.add_parser("ward", help="the ward console: every room of a unit over MQTT (docs/ward.md)")
    ward.add_argument("--config", type=Path, help="the ward's TOML file")
    ward.add_argument("--db", type=Path, default=Path("ward.db"), help="the ward's SQLite store")
    ward.add_argument("--http-host", default=None, help="default: the ward file's http.host")
    ward.add_argument("--http-port", type=int, default=None, help="default: the ward file's http.port")
    ward_sub = ward.add_subparsers(dest="ward_command")
    ward_token = ward_sub.add_parser("token", help="create a ward token; its secret is printed once")
    ward_token.add_argument("action", choices=("create",))
    ward_token.add_argument("--role", required=True, choices=("nurse", "charge", "admin", "facilities"))
    ward_token.add_argument("--name", required=True, help="the person, e.g. 'Nurse Kim' (her staff view)")
    ward_token.add_argument("--db", type=Path, default=Path("ward.db"), dest="db", help="the ward's SQLite store")
    ward.set_defaults(func=_ward)

    nodes = sub.add_parser("nodes", help="provision and list the room's nodes (docs/provisioning.md)")
    nodes_sub = nodes.add_subparsers(dest="nodes_command", required=True)
    prov = nodes_sub.add_parser(
        "provision", help="give a new node its Wi-Fi, key and controller over its USB cable (Improv)",
        description="Provision a node fresh from the box over Improv on its USB serial port: Wi-Fi, then its "
                    "node id, a new key, the controller's address and its node link certificate (never over "
                    "Wi-Fi); enrol it in the room's database. It then appears on the facilities page as "
                    "waiting, to be given a bed and a role.")
    how = prov.add_mutually_exclusive_group(required=True)
    how.add_argument("--serial", metavar="PORT", help="the node's USB serial port, e.g. /dev/ttyACM0")
    how.add_argument("--ble", metavar="ADDRESS", help="the node's Bluetooth address (Improv BLE; press the node's "
                                                      "button when asked; the key goes over an encrypted link)")
    prov.add_argument("--node-id", required=True, help="the node's id in this room, e.g. bed1-call")
    prov.add_argument("--controller", required=True, metavar="HOST[:PORT]",
                      help=f"the controller's address as the node reaches it (port default {DEFAULT_NODE_PORT})")
    prov.add_argument("--wifi-ssid", required=True)
    prov.add_argument("--wifi-password-file", type=Path, default=None,
                      help="a file holding the Wi-Fi password (or set SMARTROOM_WIFI_PASSWORD)")
    prov.add_argument("--db", type=Path, default=Path("smartroom.db"),
                      help=f"the controller's database; the node pins the node link certificate next to it "
                           f"({NODE_CERT_FILE}, made by the controller's first start)")
    prov.set_defaults(func=_nodes_provision)
    listing_nodes = nodes_sub.add_parser("list", help="the nodes in the room's registry and their state")
    listing_nodes.add_argument("--db", type=Path, default=Path("smartroom.db"), help="the controller's database")
    listing_nodes.set_defaults(func=_nodes_list)
    from .ota.cli import add_commands as add_firmware_commands  # smartroom firmware keygen/build/flash/rollout

    add_firmware_commands(sub)

    keygen = sub.add_parser("keygen", help="make a key file for nodes")
    keygen.add_argument("nodes", nargs="+", help="node ids")
    keygen.add_argument("--out", type=Path, help="write here (mode 0600; refuses to overwrite)")
    keygen.set_defaults(func=_keygen)

    ev = _nested(sub, "falls", "fall detection: evaluate the node's detector on recorded falls", "eval",
                 "run the firmware's fall detector (in MicroPython) on fall datasets and score it",
                 "Run the firmware's fall detector, inside MicroPython, on every trial of one or more "
                 "datasets in SisFall's layout (SisFall, FallAllD converted) and score it per trial "
                 "(docs/falls.md).")
    ev.add_argument("path", type=Path, nargs="+",
                    help="a dataset folder (SisFall_dataset, FallAllD_dev), or a folder holding several")
    ev.add_argument("--subjects", help="e.g. SA01,SA02 or SA01-SA05 or SA01-SA03,SE01, in every dataset "
                                       "(default: all)")
    ev.add_argument("--rate-hz", type=int, choices=(50, 100, 200), default=50,
                    help="the node's sample rate (default 50)")
    ev.add_argument("--range-g", type=int, choices=(8, 16), default=16,
                    help="the node accelerometer's range: 8 clips every axis at +-8 g (default 16)")
    ev.add_argument("--params", type=Path, help="JSON object of detector parameters, passed to FallDetector")
    ev.add_argument("--firmware", type=Path, default=None, help="firmware folder (default: the repo's firmware/)")
    ev.add_argument("--json", type=Path, help="also write the results, per trial, to this JSON file")
    ev.set_defaults(func=_falls_eval)

    rec = _nested(sub, "voice", "voice calls: recognise the patients' phrases (docs/voice.md)", "recognize",
                  "print the intents found in a WAV recording, one JSON object per line",
                  "Run a recording through the same pipeline as the microphone (any sample rate and "
                  "channel count) and print each intent found: time, intent, phrase, confidence.")
    rec.add_argument("file", type=Path, help="a PCM WAV file")
    rec.add_argument("--config", type=Path, help="use a room file's voice node (its phrases and options)")
    rec.add_argument("--node", help="which voice node of --config (default: the first)")
    rec.add_argument("--threshold", type=float, help="accept at this confidence or more (0..1)")
    rec.add_argument("--engine", choices=("whisper", "pocketsphinx"),
                     help="recogniser without --config (default whisper; pocketsphinx is the low-power one)")
    rec.set_defaults(func=_voice_recognize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
