"""Firmware updates over the node link, the controller's side (docs/protocol.md §12, docs/firmware.md).

:class:`OtaServer` offers a signed bundle to a node (``cmd ota``), answers its ``ota_get`` with
``ota_data`` chunks, and keeps what each node reports (``ota``): refusals and failures are
counted by reason, logged and shown on the facilities page. :class:`Rollout` updates nodes in
stages: one node first, then the rest, each waited for until it confirms (the new firmware's
check-in); the first node that refuses, fails, rolls back or misses the deadline stops the
rollout, so a bad bundle reaches one node, which rolls back by itself. Every step is audited.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Awaitable, Callable

from ..link import protocol as p
from ..link.gateway import NodeConnection, NodeGateway
from ..security.tokens import AuditEntry
from .bundle import Bundle, BundleError, load_bundle

log = logging.getLogger("smartroom.ota")

# How long one node has from the offer to its confirmation: the download (a ~30 KB bundle is ~60
# chunks, each one round trip, seconds on a good link, a minute on a poor one), the signature check
# (seconds on a board), the reset and boot, and the node's own 2-minute confirm deadline.
NODE_DEADLINE_S = 600.0
FINAL = ("confirmed", "refused", "failed", "rolled_back", "timeout", "unreachable")


@dataclass(frozen=True, slots=True)
class NodeUpdate:
    """One node's part in an update: ``state`` offered, accepted, staged, or one of FINAL."""
    node: str
    version: str
    state: str
    reason: str | None = None
    chunks: int = 0
    at_ms: int = 0

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "version": self.version, "state": self.state, "reason": self.reason,
                "chunks": self.chunks, "at_ms": self.at_ms}


@dataclass
class Rollout:
    """A staged rollout: ``stages`` of nodes, updated stage by stage; stops at the first failure."""
    id: int
    version: str
    bundle: str
    board: str
    stages: list[list[str]]
    actor: str
    started_ms: int
    state: str = "running"         # running, done, stopped
    reason: str | None = None
    nodes: dict[str, NodeUpdate] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "version": self.version, "bundle": self.bundle, "board": self.board,
                "stages": self.stages, "actor": self.actor, "started_ms": self.started_ms, "state": self.state,
                "reason": self.reason, "nodes": [u.to_json() for u in self.nodes.values()]}


class OtaServer:
    """Attach to a gateway: ``OtaServer(gateway, audit=store.audit, clock=controller.clock)``."""

    def __init__(self, gateway: NodeGateway, *, audit: Callable[[AuditEntry], Awaitable[None]],
                 clock: Callable[[], int], bundles_dir: Path | None = None, public_key: bytes | None = None,
                 node_deadline_s: float = NODE_DEADLINE_S) -> None:
        self.gateway = gateway
        self.bundles_dir = bundles_dir   # one bundle per subfolder (`smartroom firmware build --out DIR/NAME`)
        self.public_key = public_key     # the firmware key's public half: a bundle must verify with it
        self._audit = audit
        self._clock = clock
        self.node_deadline_s = node_deadline_s
        self.bundles: dict[str, Bundle] = {}       # by bundle hash: what nodes may fetch
        self.updates: dict[str, NodeUpdate] = {}   # node -> its latest update
        self.refused: Counter[tuple[str, str]] = Counter()   # (node, reason): refusals and failures
        self.rollouts: list[Rollout] = []
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        gateway.ota = self

    # ------------------------------------------------------------------ the bundles on offer
    def available(self) -> tuple[list[Bundle], list[dict[str, str]]]:
        """The bundles in ``bundles_dir`` that verify whole, and the folders that do not (with why)."""
        good: list[Bundle] = []
        bad: list[dict[str, str]] = []
        if self.bundles_dir is None or self.public_key is None or not self.bundles_dir.is_dir():
            return good, bad
        for folder in sorted(p for p in self.bundles_dir.iterdir() if (p / "manifest.json").is_file()):
            try:
                good.append(load_bundle(folder, self.public_key))
            except (BundleError, ValueError, KeyError, OSError) as exc:
                bad.append({"folder": folder.name, "error": str(exc)})
        return good, bad

    def find(self, bundle: str) -> Bundle:
        """A bundle on offer by its hash (or a unique prefix of at least 8 digits) or its folder name."""
        good, _ = self.available()
        found = [b for b in good if b.root.name == bundle or (len(bundle) >= 8 and b.sha256.startswith(bundle))]
        if len(found) != 1:
            raise BundleError(f"no single verified bundle {bundle!r} in {self.bundles_dir}")
        return found[0]

    # ------------------------------------------------------------------ one node
    async def offer(self, node: str, bundle: Bundle) -> NodeUpdate:
        """Offer ``bundle`` to ``node`` on its live connection; its NodeUpdate (``unreachable`` if none)."""
        self.bundles[bundle.sha256] = bundle
        conn = self.gateway.connections.get(node)
        if conn is None or conn.hello is None:
            return self._note(node, bundle.version, "unreachable", "not connected")
        if "ota" not in conn.hello.caps:
            return self._note(node, bundle.version, "refused", "no_ota_cap")
        update = self._note(node, bundle.version, "offered")
        await conn.send(lambda s: p.command(conn.sid, s, "ota", ver=bundle.version, board=bundle.board,
                                            mh=bundle.sha256, msz=len(bundle.manifest),
                                            sig=bundle.signature.hex()))
        log.info("node=%s offered firmware %s (%s, bundle %s)", node, bundle.version, bundle.board, bundle.sha256[:12])
        return update

    async def on_message(self, conn: NodeConnection, msg: p.OtaGet | p.OtaReport) -> None:
        if isinstance(msg, p.OtaGet):
            await self._serve(conn, msg)
        else:
            self._report(msg)

    async def _serve(self, conn: NodeConnection, msg: p.OtaGet) -> None:
        bundle = self.bundles.get(msg.bundle)
        if bundle is None or msg.item > len(bundle.files):
            self.refused[(msg.node, "unknown_item")] += 1
            log.warning("node=%s asked for item %d of bundle %s, which is not offered here",
                        msg.node, msg.item, msg.bundle[:12])
            return  # the node times out and reports the update failed
        data = bundle.data(msg.item)[msg.offset:msg.offset + p.OTA_CHUNK_BYTES]
        await conn.send(lambda s: p.command(conn.sid, s, "ota_data", mh=msg.bundle, f=msg.item, o=msg.offset,
                                            d=base64.b64encode(data).decode("ascii")))
        old = self.updates.get(msg.node)
        if old is not None and old.version == bundle.version:
            self._set(replace(old, chunks=old.chunks + 1))

    def _report(self, msg: p.OtaReport) -> None:
        state = msg.status
        update = self._note(msg.node, msg.version, state, msg.reason)
        if state in ("refused", "failed", "rolled_back"):
            self.refused[(msg.node, msg.reason or state)] += 1
            log.error("node=%s firmware %s %s: %s", msg.node, msg.version, state.replace("_", " "), msg.reason)
        else:
            log.info("node=%s firmware %s %s", msg.node, msg.version, state)
        self._spawn(self._audit_update(update, "node"))

    def _note(self, node: str, version: str, state: str, reason: str | None = None) -> NodeUpdate:
        old = self.updates.get(node)
        chunks = old.chunks if old is not None and old.version == version and state != "offered" else 0
        update = NodeUpdate(node, version, state, reason, chunks, self._clock())
        self._set(update)
        self._changed.setdefault(node, asyncio.Event()).set()
        return update

    def _set(self, update: NodeUpdate) -> None:
        self.updates[update.node] = update
        for rollout in self.rollouts:
            if rollout.state == "running" and update.node in rollout.nodes and rollout.version == update.version:
                rollout.nodes[update.node] = update

    async def _audit_update(self, update: NodeUpdate, actor: str) -> None:
        try:
            await self._audit(AuditEntry(self._clock(), actor, None, f"firmware.{update.state}",
                                         f"{update.node} {update.version}" + (f" ({update.reason})" if update.reason else ""),
                                         0, None))
        except Exception:  # the audit store failing is logged loudly; the update goes on
            log.exception("could not audit the firmware update of %s", update.node)

    async def wait_final(self, node: str, version: str, timeout_s: float) -> NodeUpdate:
        """The node's update once it is final (FINAL), or ``timeout`` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            update = self.updates.get(node)
            if update is not None and update.version == version and update.state in FINAL:
                return update
            event = self._changed.setdefault(node, asyncio.Event())
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return self._note(node, version, "timeout", f"not confirmed within {timeout_s:g} s")

    # ------------------------------------------------------------------ staged rollouts
    def start_rollout(self, bundle: Bundle, nodes: list[str], actor: str) -> Rollout:
        """Update ``nodes`` to ``bundle``: the first alone, then the rest together; runs in the background."""
        if not nodes:
            raise ValueError("a rollout needs at least one node")
        if any(r.state == "running" for r in self.rollouts):
            raise ValueError("a rollout is already running")
        stages = [nodes[:1]] + ([nodes[1:]] if len(nodes) > 1 else [])
        rollout = Rollout(len(self.rollouts) + 1, bundle.version, bundle.sha256, bundle.board, stages, actor,
                          self._clock())
        rollout.nodes = {n: NodeUpdate(n, bundle.version, "waiting") for n in nodes}
        self.rollouts.append(rollout)
        self._spawn(self._run(rollout, bundle))
        return rollout

    async def _run(self, rollout: Rollout, bundle: Bundle) -> None:
        await self._audit_entry(rollout.actor, "firmware.rollout.start",
                                f"#{rollout.id} {bundle.version} to {', '.join(rollout.nodes)}")
        for stage in rollout.stages:
            for node in stage:
                update = await self.offer(node, bundle)
                rollout.nodes[node] = update
            results = await asyncio.gather(*(self._finish(rollout, node) for node in stage))
            failed = [u for u in results if u.state != "confirmed"]
            if failed:
                rollout.state = "stopped"
                rollout.reason = "; ".join(f"{u.node} {u.state}" + (f" ({u.reason})" if u.reason else "")
                                           for u in failed)
                log.error("firmware rollout #%d of %s stopped: %s", rollout.id, rollout.version, rollout.reason)
                await self._audit_entry(rollout.actor, "firmware.rollout.stopped", f"#{rollout.id} {rollout.reason}")
                return
        rollout.state = "done"
        log.info("firmware rollout #%d of %s done: %d nodes", rollout.id, rollout.version, len(rollout.nodes))
        await self._audit_entry(rollout.actor, "firmware.rollout.done", f"#{rollout.id} {rollout.version}")

    async def _finish(self, rollout: Rollout, node: str) -> NodeUpdate:
        update = rollout.nodes[node]
        if update.state not in FINAL:
            update = await self.wait_final(node, rollout.version, self.node_deadline_s)
        rollout.nodes[node] = update
        return update

    async def _audit_entry(self, actor: str, action: str, target: str) -> None:
        try:
            await self._audit(AuditEntry(self._clock(), actor, None, action, target, 0, None))
        except Exception:
            log.exception("could not audit %s %s", action, target)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def to_json(self) -> dict[str, object]:
        return {"updates": [u.to_json() for u in self.updates.values()],
                "refused": [{"node": n, "reason": r, "count": c} for (n, r), c in sorted(self.refused.items())],
                "rollouts": [r.to_json() for r in self.rollouts]}
