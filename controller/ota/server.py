"""Firmware updates over the node link, the controller's side (docs/protocol.md §12, docs/firmware.md).

:class:`OtaServer` offers a signed bundle to a node (``cmd ota``), answers its ``ota_get`` with
``ota_data`` chunks, and keeps what each node reports (``ota``): refusals and failures are
counted by reason, logged and shown on the facilities page. :class:`Rollout` updates nodes in
stages: one node first, then the rest, each waited for until it confirms (the new firmware's
check-in); the first node that refuses, fails, rolls back or misses the deadline stops the
rollout, so a bad bundle reaches one node, which rolls back by itself. Every step is audited.

Rollouts are kept in the room's database (``store.py``) at every change of state; one the
controller was running when it stopped or died is ``interrupted`` when it starts again, with each
node's last known state, and a node's later report still shows in it (docs/firmware.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..link import protocol as p
from ..link.gateway import NodeConnection, NodeGateway
from ..security.tokens import AuditEntry
from .bundle import Bundle, BundleError, installed_size, load_bundle
from .store import RolloutStore

log = logging.getLogger("smartroom.ota")

# How long one node has from the offer to its confirmation: the download (a ~30 KB bundle is ~60
# chunks, each one round trip, seconds on a good link, a minute on a poor one), the signature check
# (seconds on a board), the reset and boot, and the node's own 2-minute confirm deadline.
NODE_DEADLINE_S = 600.0
FINAL = ("confirmed", "refused", "failed", "rolled_back", "timeout", "unreachable")
ROLLOUT_STATES = ("running", "done", "stopped", "interrupted")


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

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> "NodeUpdate":
        return cls(str(doc["node"]), str(doc["version"]), str(doc["state"]),
                   None if doc.get("reason") is None else str(doc["reason"]),
                   int(doc.get("chunks") or 0), int(doc.get("at_ms") or 0))  # type: ignore[call-overload]


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
    state: str = "running"         # ROLLOUT_STATES
    reason: str | None = None
    nodes: dict[str, NodeUpdate] = field(default_factory=dict)
    ward: str | None = None        # the ward rollout this is part of (started over the uplink)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "version": self.version, "bundle": self.bundle, "board": self.board,
                "stages": self.stages, "actor": self.actor, "started_ms": self.started_ms, "state": self.state,
                "reason": self.reason, "nodes": [u.to_json() for u in self.nodes.values()], "ward": self.ward}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Rollout":
        nodes = [NodeUpdate.from_json(n) for n in doc["nodes"]]
        return cls(doc["id"], doc["version"], doc["bundle"], doc["board"], doc["stages"], doc["actor"],
                   doc["started_ms"], doc["state"], doc["reason"], {u.node: u for u in nodes}, doc.get("ward"))


class OtaServer:
    """Attach to a gateway: ``OtaServer(gateway, audit=store.audit, clock=controller.clock)``."""

    def __init__(self, gateway: NodeGateway, *, audit: Callable[[AuditEntry], Awaitable[None]],
                 clock: Callable[[], int], bundles_dir: Path | None = None, public_key: bytes | None = None,
                 node_deadline_s: float = NODE_DEADLINE_S, store: RolloutStore | None = None) -> None:
        self.gateway = gateway
        self.bundles_dir = bundles_dir   # one bundle per subfolder (`smartroom firmware build --out DIR/NAME`)
        self.public_key = public_key     # the firmware key's public half: a bundle must verify with it
        self._audit = audit
        self._clock = clock
        self.node_deadline_s = node_deadline_s
        self.bundles: dict[str, Bundle] = {}       # by bundle hash: what nodes may fetch
        self._checked: dict[str, tuple[tuple, Bundle | dict[str, str]]] = {}  # folder -> (files' stat, result)
        self.updates: dict[str, NodeUpdate] = {}   # node -> its latest update
        self._offered: dict[str, Bundle] = {}      # node -> the bundle last offered to it
        self.refused: Counter[tuple[str, str]] = Counter()   # (node, reason): refusals and failures
        self.rollouts: list[Rollout] = []
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._saves: set[asyncio.Task[None]] = set()
        self.store = store               # rollouts kept across restarts (None: in memory only)
        self.listeners: list[Callable[[], None]] = []  # told of every change (the ward uplink's firmware status)
        gateway.ota = self

    async def start(self) -> None:
        """Load the kept rollouts; one left running by the previous process is now ``interrupted``."""
        if self.store is None:
            return
        await self.store.open()
        for doc in await self.store.load():
            rollout = Rollout.from_json(doc)
            self.rollouts.append(rollout)
            if rollout.state == "running":
                await self._interrupt(rollout, "the room controller restarted during the rollout")

    async def _interrupt(self, rollout: Rollout, why: str) -> None:
        left = [n for n, u in rollout.nodes.items() if u.state not in FINAL]
        rollout.state = "interrupted"
        rollout.reason = f"{why}; not finished: {', '.join(left) or 'none'}; start a new rollout to go on"
        log.error("firmware rollout #%d of %s interrupted: %s", rollout.id, rollout.version, rollout.reason)
        self._changed_rollout(rollout)
        await self._audit_entry("controller", "firmware.rollout.interrupted", f"#{rollout.id} {rollout.reason}")

    def _changed_rollout(self, rollout: Rollout) -> None:
        """A rollout changed state (or a node's state in it): keep it, tell the listeners."""
        if self.store is not None:
            doc, now = rollout.to_json(), self._clock()
            task = asyncio.create_task(self._save(doc, now))  # in order: one writer thread, FIFO
            self._saves.add(task)
            task.add_done_callback(self._saves.discard)
        self._tell()

    async def _save(self, doc: dict[str, Any], now_ms: int) -> None:
        assert self.store is not None
        try:
            await self.store.save(doc, now_ms)
        except Exception:  # the disk failing is logged loudly; the rollout goes on in memory
            log.exception("could not keep firmware rollout #%s in the database", doc["id"])

    def _tell(self) -> None:
        for listener in self.listeners:
            listener()

    # ------------------------------------------------------------------ the bundles on offer
    def available(self) -> tuple[list[Bundle], list[dict[str, str]]]:
        """The bundles in ``bundles_dir`` that verify whole, and the folders that do not (with why and,
        when the manifest can be read, its hash). A folder is checked again only when a file in it changed."""
        good: list[Bundle] = []
        bad: list[dict[str, str]] = []
        if self.bundles_dir is None or self.public_key is None or not self.bundles_dir.is_dir():
            return good, bad
        for folder in sorted(p for p in self.bundles_dir.iterdir() if (p / "manifest.json").is_file()):
            try:
                stamp = tuple(sorted((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in folder.rglob("*")))
            except OSError:
                stamp = ()
            cached = self._checked.get(folder.name)
            if cached is not None and stamp and cached[0] == stamp:
                result = cached[1]
            else:
                try:
                    result = load_bundle(folder, self.public_key)
                except (BundleError, ValueError, KeyError, OSError) as exc:
                    result = {"folder": folder.name, "error": str(exc)}
                    try:
                        result["sha256"] = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
                    except OSError:
                        pass
                self._checked[folder.name] = (stamp, result)
            (good.append(result) if isinstance(result, Bundle) else bad.append(result))
        return good, bad

    def find(self, bundle: str) -> Bundle:
        """A bundle on offer by its hash (or a unique prefix of at least 8 digits) or its folder name."""
        good, _ = self.available()
        found = [b for b in good if b.root.name == bundle or (len(bundle) >= 8 and b.sha256.startswith(bundle))]
        if len(found) != 1:
            raise BundleError(f"no single verified bundle {bundle!r} in {self.bundles_dir}")
        return found[0]

    def find_exact(self, sha256: str) -> Bundle:
        """The bundle whose manifest hashes to ``sha256`` (a ward rollout names it so), verified with
        this room's firmware key; BundleError saying why not (absent, or here but failing its check)."""
        good, bad = self.available()
        for b in good:
            if b.sha256 == sha256:
                return b
        for folder in bad:
            if folder.get("sha256") == sha256:
                raise BundleError(f"bundle {sha256[:12]} (folder {folder['folder']}) is refused here: {folder['error']}")
        if self.bundles_dir is None or self.public_key is None:
            raise BundleError("this room controller serves no firmware bundles (--firmware-bundles / --firmware-key)")
        raise BundleError(f"bundle {sha256[:12]} is not in this room's bundles folder {self.bundles_dir}")

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
        self._offered[node] = bundle
        log.info("node=%s offered firmware %s (%s, bundle %s)", node, bundle.version, bundle.board, bundle.sha256[:12])
        return update

    async def on_welcome(self, conn: NodeConnection) -> None:
        """A node came back (its link dropped, it lost power) while its update was offered or
        downloading: the same bundle is offered again, and the node goes on from what it has on
        flash (firmware/srnode/ota.py). Not after ``staged`` (it resets into the new bundle) nor a
        final state: a failed or refused update is a person's to offer again."""
        assert conn.hello is not None
        node = conn.hello.node
        update, bundle = self.updates.get(node), self._offered.get(node)
        if (update is None or bundle is None or update.state not in ("offered", "accepted")
                or update.version != bundle.version or conn.hello.fw == bundle.version):
            return
        log.warning("node=%s came back during its update to %s (%d chunks served): offered again; "
                    "it goes on from what it has", node, bundle.version, update.chunks)
        await self.offer(node, bundle)

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
        old = self.updates.get(update.node)
        self.updates[update.node] = update
        for rollout in self.rollouts:
            if (rollout.state in ("running", "interrupted") and update.node in rollout.nodes
                    and rollout.version == update.version):
                before = rollout.nodes[update.node]
                if rollout.state == "interrupted" and before.state in FINAL:
                    continue  # what an interrupted rollout last knew of a finished node stays
                rollout.nodes[update.node] = update
                if before.state != update.state:
                    self._changed_rollout(rollout)
        if old is None or old.state != update.state or old.version != update.version:
            self._tell()

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
    def start_rollout(self, bundle: Bundle, nodes: list[str], actor: str, *, ward: str | None = None) -> Rollout:
        """Update ``nodes`` to ``bundle``: the first alone, then the rest together; runs in the background.
        ``ward``: the ward rollout this is part of (the ward finds it by that in the room's firmware status)."""
        if not nodes:
            raise ValueError("a rollout needs at least one node")
        if any(r.state == "running" for r in self.rollouts):
            raise ValueError("a rollout is already running")
        stages = [nodes[:1]] + ([nodes[1:]] if len(nodes) > 1 else [])
        rollout = Rollout(max((r.id for r in self.rollouts), default=0) + 1, bundle.version, bundle.sha256,
                          bundle.board, stages, actor, self._clock(), ward=ward)
        rollout.nodes = {n: NodeUpdate(n, bundle.version, "waiting") for n in nodes}
        self.rollouts.append(rollout)
        self._changed_rollout(rollout)
        self._spawn(self._run(rollout, bundle))
        return rollout

    async def _run(self, rollout: Rollout, bundle: Bundle) -> None:
        await self._audit_entry(rollout.actor, "firmware.rollout.start",
                                f"#{rollout.id} {bundle.version} to {', '.join(rollout.nodes)}"
                                + (f" (ward rollout {rollout.ward})" if rollout.ward else ""))
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
                self._changed_rollout(rollout)
                log.error("firmware rollout #%d of %s stopped: %s", rollout.id, rollout.version, rollout.reason)
                await self._audit_entry(rollout.actor, "firmware.rollout.stopped", f"#{rollout.id} {rollout.reason}")
                return
        rollout.state = "done"
        self._changed_rollout(rollout)
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
        """Stop; a rollout still running is kept as ``interrupted`` (a restart shows it so)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for rollout in self.rollouts:
            if rollout.state == "running":
                await self._interrupt(rollout, "the room controller stopped during the rollout")
        await asyncio.gather(*self._saves, return_exceptions=True)
        if self.store is not None:
            await self.store.close()
            self.store = None

    def status(self, nodes: list[str]) -> dict[str, Any]:
        """Each of ``nodes`` (the room's linked nodes) with its firmware, board and update, the bundles
        on offer and the rollouts: the facilities page's and the ward's view (docs/firmware.md)."""
        view = []
        for node in nodes:
            conn = self.gateway.connections.get(node)
            hello = conn.hello if conn is not None else None
            update = self.updates.get(node)
            view.append({"node": node, "online": hello is not None, "fw": hello.fw if hello else None,
                         "hw": hello.hw if hello else None, "ota": bool(hello and "ota" in hello.caps),
                         "update": update.to_json() if update else None})
        good, bad = self.available()
        bundles = [{"name": b.root.name, "version": b.version, "board": b.board, "sha256": b.sha256,
                    "files": len(b.files), "bytes": installed_size(b)} for b in good]
        return {"nodes": view, "bundles": bundles, "bad_bundles": bad, **self.to_json()}

    def to_json(self) -> dict[str, object]:
        return {"updates": [u.to_json() for u in self.updates.values()],
                "refused": [{"node": n, "reason": r, "count": c} for (n, r), c in sorted(self.refused.items())],
                "rollouts": [r.to_json() for r in self.rollouts]}
