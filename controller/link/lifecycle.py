"""Node lifecycle on the controller: adoption, identify, key rotation, replace, decommission.

The registry (``controller/store/nodes.py``) says who a node is; this module acts on it over the
node link (docs/protocol.md §11, commands ``setup``, ``identify``, ``rotate``, ``forget``) and keeps the
room configuration's node table in step: an adopted node is added to the room as an overlay, so the
room file needs no edit and every change is audited with who made it (docs/provisioning.md).

Keys: a node's key is looked up in the key file first, then in the registry. A rotation never puts
a key on the wire: the controller sends a random nonce and both sides derive
``HMAC-SHA256(key, "rotate" || nonce)``; the old key is accepted until the node signs with the new one.
A decommissioned node's key no longer lets anything in; it only signs the ``forget`` the node is told.
A hello under a known node id whose tag verifies with no key of that node is a copied id: refused as
``bad_mac``, counted in ``wrong_key``, and a technical alarm from the third in a row.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from . import protocol as p
from ..room.config import INPUT_MEANINGS, NodeConfig
from ..service import RoomController
from ..store.nodes import ROLES, NodeRecord, NodeRegistry, RegistryError

if TYPE_CHECKING:
    from .gateway import NodeConnection, NodeGateway

log = logging.getLogger("smartroom.nodes")

ROTATE_NONCE_BYTES = 16
# Refused hellos in a row under one known node id, signed with a key that is not that node's, before
# the technical alarm: one can be a node reset mid-rotation talking to a controller restored from an
# old backup; three is someone holding a copied id.
WRONG_KEY_ALARM_AFTER = 3
DEFAULT_READING_MS = 30_000
# What each role's inputs mean unless facilities say otherwise; names are the pin names of
# hardware/pinmaps/ (a node reports the names it has in its heartbeat).
ROLE_INPUTS: Mapping[str, Mapping[str, str]] = {
    "bedside": {"call": "patient_call", "cancel": "cancel", "pendant": "patient_call", "pir": "room_presence"},
    "bathroom": {"cord": "bath_emergency", "cancel": "cancel", "pir": "bath_presence"},
    "door": {"call": "staff_presence", "cancel": "cancel", "pir": "room_presence"},
    "wearable": {"pendant": "patient_call", "call": "patient_call"},
    "environment": {},
}
SETUP_CAP = "setup"  # a node that announces it takes the adoption commands (runtime.py)


class LifecycleError(ValueError):
    """A lifecycle action that cannot be done; ``status``: 404 unknown node, 409 not now, 400 bad value."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def rotated_key(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, b"rotate" + nonce, hashlib.sha256).digest()


class NodeLifecycle:
    def __init__(self, controller: RoomController, gateway: "NodeGateway", registry: NodeRegistry) -> None:
        self.controller = controller
        self.gateway = gateway
        self.registry = registry
        self.wrong_key: Counter[str] = Counter()   # refused hellos per node id, since start
        self._wrong_in_row: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        # node -> its registry row, read again on every hello (a `nodes provision` in another process
        # may have changed it) and after every change made here; other frames need no database read
        self._cache: dict[str, NodeRecord | None] = {}
        gateway.nodes = self
        controller.adoption_pending = self.adoption_pending
        for record in registry.all():
            if record.state == "adopted":
                self._overlay(record)

    # ------------------------------------------------------------------ keys (called by the gateway)
    def key_for(self, node: str, body: bytes, tag: bytes, *, hello: bool) -> bytes:
        """The key that verifies this frame, or ProtocolError (unknown_node, bad_mac)."""
        file_key = self.controller.keys.get(node)
        record = self._lookup(node, fresh=hello) if file_key is None else None
        if file_key is None and record is None:
            raise p.ProtocolError("unknown_node", f"no key for node {node!r}")
        candidates = [file_key] if file_key is not None else []
        if record is not None:
            if record.state == "decommissioned" and not hello:
                raise p.ProtocolError("unknown_node", f"node {node!r} is decommissioned")
            candidates += [record.key] + ([record.pending_key] if record.pending_key else [])
        expected = p.compute_tag
        for key in candidates:
            if hmac.compare_digest(expected(key, body), tag):
                if hello:
                    self._wrong_in_row.pop(node, None)
                if record is not None and key == record.pending_key:
                    self._cache[node] = self.registry.finish_rotation(node, self.controller.clock())
                    log.info("node=%s signs with its rotated key: the old key is revoked", node)
                return key
        if hello:
            self._wrong_key(node)
        raise p.ProtocolError("bad_mac", "tag does not verify with the node's key")

    def _lookup(self, node: str, *, fresh: bool) -> NodeRecord | None:
        if fresh or node not in self._cache:
            self._cache[node] = self.registry.get(node)
        return self._cache[node]

    def _wrong_key(self, node: str) -> None:
        self.wrong_key[node] += 1
        self._wrong_in_row[node] += 1
        n = self._wrong_in_row[node]
        log.warning("node=%s: a hello under this id with the wrong key (%d in a row): a copied node id?", node, n)
        if n == WRONG_KEY_ALARM_AFTER:
            self._spawn(self.controller.system_fault(
                f"wrong_key:{node}", True, {"node": node, "refused_hellos": n,
                                            "what": "a device uses this node's id without its key"}))

    # ------------------------------------------------------------------ the link (called by the gateway)
    async def hello(self, conn: "NodeConnection", hello: p.Hello) -> None:
        """A verified hello: note it in the registry; tell a decommissioned node to forget and refuse it."""
        record = self.registry.get(hello.node)
        if record is None or hello.node in self.controller.keys:
            return  # a node of the key file: not provisioned here
        if record.state == "decommissioned":
            await conn.send(lambda s: p.command(conn.sid, s, "forget"))
            raise p.ProtocolError("decommissioned", f"node {hello.node!r} is decommissioned; told to forget")
        was = record.state
        record = self.registry.seen(hello.node, hello.hw, hello.fw, hello.caps, self.controller.clock())
        if record.state == "waiting" and was != "waiting":
            log.info("node=%s hw=%s fw=%s is waiting for adoption (caps %s)", hello.node, hello.hw, hello.fw,
                     ",".join(hello.caps))
        if record.state == "adopted":
            self._overlay(record)

    async def welcomed(self, conn: "NodeConnection") -> None:
        """After the welcome: an adopted node gets its setup again (it may have missed a change)."""
        record = self.registry.get(conn.node or "")
        if record is not None and record.state == "adopted" and conn.node not in self.controller.keys:
            await self._push_setup(conn, record)

    def heartbeat(self, hb: p.Heartbeat) -> None:
        """The input names a heartbeat lists, kept for facilities to map; written only when they change."""
        if not hb.state or hb.node in self.controller.keys:
            return
        record = self._lookup(hb.node, fresh=False)
        names = tuple(sorted(hb.state))
        if record is not None and record.input_names != names:
            self.registry.input_names_seen(hb.node, names)
            self._cache.pop(hb.node, None)

    def adoption_pending(self, node: str) -> bool:
        """Provisioned here, not adopted yet: it belongs to no bed and its presses are ignored on the
        node, so its inputs are not checked against the room file until facilities map them."""
        if node in self.controller.keys:
            return False
        record = self._lookup(node, fresh=False)
        return record is not None and record.state in ("provisioned", "waiting")

    # ------------------------------------------------------------------ facilities' actions
    def nodes(self) -> list[dict[str, Any]]:
        out = []
        for record in self.registry.all():
            doc = record.to_json()
            doc["connected"] = record.node_id in self.gateway.connections
            doc["wrong_key"] = self.wrong_key.get(record.node_id, 0)
            doc["default_inputs"] = dict(self.default_inputs(record, record.role or "bedside"))
            out.append(doc)
        return out

    def default_inputs(self, record: NodeRecord, role: str) -> Mapping[str, str]:
        template = ROLE_INPUTS.get(role, {})
        if not record.input_names:
            return dict(template)
        return {name: meaning for name, meaning in template.items() if name in record.input_names}

    async def assign(self, node: str, bed: str | None, role: str, by: str,
                     inputs: Mapping[str, str] | None = None) -> NodeRecord:
        record = self._record(node)
        if role not in ROLES:
            raise LifecycleError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if bed is not None and bed not in self.controller.config.beds:
            raise LifecycleError(f"bed {bed!r} is not a bed of this room ({', '.join(self.controller.config.beds)})")
        if role in ("bedside", "wearable") and bed is None:
            raise LifecycleError(f"a {role} node belongs to a bed")
        if inputs is None:
            inputs = self.default_inputs(record, role)
        for name, meaning in inputs.items():
            if meaning not in INPUT_MEANINGS:
                raise LifecycleError(f"input {name!r}: {meaning!r} is not one of {', '.join(INPUT_MEANINGS)}")
        try:
            record = self.registry.assign(node, bed, role, dict(inputs), by, self.controller.clock())
        except RegistryError as exc:
            raise LifecycleError(str(exc), exc.status) from exc
        self._cache.pop(node, None)
        log.info("node=%s assigned to bed %s as %s by %s", node, bed, role, by)
        if record.state == "adopted":
            self._overlay(record)
            conn = self.gateway.connections.get(node)
            if conn is not None:
                await self._push_setup(conn, record)
        return record

    async def identify(self, node: str, by: str) -> None:
        self._record(node)
        conn = self._connection(node)
        await conn.send(lambda s: p.command(conn.sid, s, "identify"))
        log.info("node=%s identify (by %s)", node, by)

    async def rotate(self, node: str, by: str) -> NodeRecord:
        record = self._record(node)
        conn = self._connection(node)
        if record.pending_key is not None:
            raise LifecycleError(f"node {node!r} has a rotation in progress; it completes when the node reconnects", 409)
        nonce = os.urandom(ROTATE_NONCE_BYTES)
        try:
            record = self.registry.start_rotation(node, rotated_key(record.key, nonce), by, self.controller.clock())
        except RegistryError as exc:
            raise LifecycleError(str(exc), exc.status) from exc
        self._cache.pop(node, None)  # the next frame may already be signed with the new key
        await conn.send(lambda s: p.command(conn.sid, s, "rotate", nonce=nonce.hex()))
        log.info("node=%s key rotation started by %s", node, by)
        return record

    async def decommission(self, node: str, by: str) -> NodeRecord:
        self._record(node)
        try:
            record = self.registry.decommission(node, by, self.controller.clock())
        except RegistryError as exc:
            raise LifecycleError(str(exc), exc.status) from exc
        await self._forget(node)
        log.warning("node=%s decommissioned by %s: its key is revoked", node, by)
        return record

    async def replace(self, old: str, new: str, by: str) -> NodeRecord:
        try:
            record = self.registry.replace(old, new, by, self.controller.clock())
        except RegistryError as exc:
            raise LifecycleError(str(exc), exc.status) from exc
        await self._forget(old)
        self._cache.pop(new, None)
        if record.state == "adopted":
            self._overlay(record)
            conn = self.gateway.connections.get(new)
            if conn is not None:
                await self._push_setup(conn, record)
        return record

    # ------------------------------------------------------------------ helpers
    def _record(self, node: str) -> NodeRecord:
        record = self.registry.get(node)
        if record is None:
            raise LifecycleError(f"node {node!r} is not in this room's registry", 404)
        return record

    def _connection(self, node: str) -> "NodeConnection":
        conn = self.gateway.connections.get(node)
        if conn is None:
            raise LifecycleError(f"node {node!r} is not connected", 409)
        return conn

    async def _forget(self, node: str) -> None:
        self._cache.pop(node, None)  # decommissioned: its key lets nothing in from now on
        self._remove_overlay(node)
        # no longer supervised: its connection ending now is not "node offline" (in memory: after a
        # restart the log's last word on it is online, and supervision may alarm once)
        self.controller.room.nodes.pop(node, None)
        conn = self.gateway.connections.get(node)
        if conn is not None:
            try:
                await conn.send(lambda s: p.command(conn.sid, s, "forget"))
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.info("node=%s could not be told to forget now (%r); it is on its next hello", node, exc)
            conn.writer.close()

    async def _push_setup(self, conn: "NodeConnection", record: NodeRecord) -> None:
        if SETUP_CAP not in record.caps:
            log.warning("node=%s firmware %s takes no setup command: its inputs all stay on", record.node_id, record.fw)
            return
        cfg = self.controller.config
        await conn.send(lambda s: p.command(conn.sid, s, "setup", role=record.role or "", bed=record.bed or "",
                                            inputs=dict(record.inputs), hb_ms=cfg.heartbeat_ms,
                                            reading_ms=DEFAULT_READING_MS))
        log.info("node=%s setup pushed: %s on bed %s, inputs %s", record.node_id, record.role, record.bed,
                 dict(record.inputs))

    def _set_nodes(self, nodes: dict[str, NodeConfig]) -> None:
        config = replace(self.controller.config, nodes=nodes)
        self.controller.config = config
        self.controller.room.config = config

    def _overlay(self, record: NodeRecord) -> None:
        """The adopted node in the room's configuration (in memory; the registry is its record)."""
        node = NodeConfig(record.node_id, location=record.role or "", bed=record.bed, inputs=dict(record.inputs),
                          indicator="indicator" in record.caps, tone="tone" in record.caps)
        if self.controller.config.nodes.get(record.node_id) != node:
            self._set_nodes({**self.controller.config.nodes, record.node_id: node})

    def _remove_overlay(self, node: str) -> None:
        if node in self.controller.config.nodes and node not in self.controller.keys:
            self._set_nodes({k: v for k, v in self.controller.config.nodes.items() if k != node})

    async def settle(self) -> None:
        """Wait for the alarms this module has started to be stored (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
