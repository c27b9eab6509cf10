"""Ward rollouts: a firmware bundle to every room's nodes in stages, from the ward console
(docs/firmware.md, "Ward rollouts").

Each room publishes its nodes' firmware (version, board, update state), the bundles it holds
verified and its rollouts as a retained message (``.../firmware``). A ward rollout is a plan over
rooms: the first room's staged rollout (one node, the canary, then the rest of the room), then
each other room in turn (again one node first). The ward starts a room's part with a ``firmware``
command naming the bundle by its manifest's SHA-256; the room installs only a bundle of its own
that verifies with its firmware key, runs its own staged rollout, and reports progress in its
firmware status, where the ward finds it by the ward rollout's key. The ward moves on only when
the room's rollout is done; a room that refuses (no such bundle, a bundle failing its check, a
rollout already running), a node that refuses, fails, rolls back or misses its deadline, or a room
rollout interrupted by a restart stops the ward rollout with the room's reason. A room that is
offline (or the broker unreachable) holds it, with the reason shown, until the room is back: a
room is never skipped. Every step is in the ward's audit log with the acting person, and in the
room's (the command and the room's rollout, by the same person).

The plan and each room's last known node states are kept in the ward's database at every change;
a restarted console takes up a running rollout where it was (the rooms' retained firmware status
tells it how far each got; a command sent again is answered with the room's existing rollout).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from controller.security.tokens import AuditEntry
from controller.uplink.wire import FirmwareStatus

from .errors import WardError

log = logging.getLogger("smartroom.ward.firmware")

RECHECK_S = 5.0          # a running rollout looks again this often even without news (a lost wake-up costs this)
CONNECT_GRACE_S = 5.0    # after a start, the broker link (and the rooms' retained status) has this long before
                         # a running rollout shows as held for want of it
AUDIT_ROLE = "facilities"
PART_STATES = ("waiting", "starting", "running", "done", "skipped", "refused", "stopped")
ROLLOUT_STATES = ("running", "held", "done", "stopped")


class RolloutRefused(Exception):
    """A ward rollout that cannot start as asked; ``status``/``code`` shape the HTTP error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class RoomPart:
    """One room's part: its nodes (first the canary, in the first room), those left out and why,
    and how far its own rollout got (each node's last known update, from its firmware status)."""

    room: str
    nodes: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    state: str = "waiting"
    room_rollout: int | None = None
    reason: str | None = None
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"room": self.room, "nodes": self.nodes, "skipped": self.skipped, "state": self.state,
                "room_rollout": self.room_rollout, "reason": self.reason,
                "updates": [self.updates.get(n) or {"node": n, "state": "waiting"} for n in self.nodes]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "RoomPart":
        return cls(doc["room"], list(doc["nodes"]), dict(doc["skipped"]), doc["state"], doc["room_rollout"],
                   doc["reason"], {u["node"]: u for u in doc["updates"] if "version" in u})


@dataclass
class WardRollout:
    id: int
    key: str          # names this rollout in the rooms (their rollouts' "ward"): unique across consoles
    bundle: str
    version: str
    board: str
    by: str
    started_ms: int
    rooms: list[RoomPart]
    state: str = "running"
    reason: str | None = None
    updated_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "bundle": self.bundle, "version": self.version, "board": self.board,
                "by": self.by, "started_ms": self.started_ms, "state": self.state, "reason": self.reason,
                "updated_ms": self.updated_ms, "rooms": [p.to_json() for p in self.rooms]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "WardRollout":
        return cls(doc["id"], doc["key"], doc["bundle"], doc["version"], doc["board"], doc["by"], doc["started_ms"],
                   [RoomPart.from_json(p) for p in doc["rooms"]], doc["state"], doc["reason"], doc["updated_ms"])


def room_rollout(status: FirmwareStatus | None, key: str) -> dict[str, Any] | None:
    """The room's rollout that is part of ward rollout ``key`` (the newest, if it was asked twice)."""
    if status is None:
        return None
    found = [r for r in status.rollouts if r.get("ward") == key]
    return found[-1] if found else None


class WardRollouts:
    """The ward's rollouts: ``start`` one, ``stop`` one; ``resume`` after the console starts."""

    def __init__(self, console: Any) -> None:
        """``console``: the WardConsole (ward/console.py), which owns this: its rooms, firmware statuses,
        store, ``command()`` and ``note()``."""
        self.console = console
        self.rollouts: list[WardRollout] = []
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._created = 0.0  # loop time of resume(): the console's start

    # ------------------------------------------------------------------ lifecycle
    async def resume(self) -> None:
        """Load the kept rollouts; drive on those that were running or held."""
        self._created = asyncio.get_running_loop().time()
        self.rollouts = [WardRollout.from_json(d) for d in await self.console.store.firmware_rollouts()]
        for rollout in self.rollouts:
            if rollout.state in ("running", "held"):
                log.info("ward rollout #%d of %s taken up again after a restart", rollout.id, rollout.version)
                await self._audit(rollout, "firmware.ward.resumed", f"#{rollout.id} {rollout.version}")
                self._drive(rollout)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def wake(self) -> None:
        """A room's firmware or status changed, or the broker link did: look again."""
        self._wake.set()

    # ------------------------------------------------------------------ actions
    def plan(self, sha: str, rooms: list[str] | None) -> tuple[dict[str, Any], list[RoomPart]]:
        """The bundle (by hash or a unique prefix of 8+ digits, among those the rooms report) and each
        room's part: its nodes online with updates and not already at the version; the others left
        out with why. The first room's first node is the canary."""
        console = self.console
        known: dict[str, dict[str, Any]] = {}
        for status in console.firmware.values():
            for b in status.bundles:
                known.setdefault(str(b["sha256"]), dict(b))
        matches = [b for s, b in known.items() if s == sha or (len(sha) >= 8 and s.startswith(sha))]
        if len(matches) != 1:
            raise RolloutRefused(404, "bundle_not_found",
                                 f"no single bundle {sha!r} among those the rooms hold verified")
        bundle = matches[0]
        order = rooms if rooms is not None else console.room_ids()
        unknown = [r for r in order if r not in set(console.room_ids())]
        if unknown:
            raise RolloutRefused(400, "bad_parameter", f"not rooms of this ward: {', '.join(unknown)}")
        silent = [r for r in order if r not in console.firmware]
        if silent:
            raise RolloutRefused(409, "no_firmware_status",
                                 f"rooms {', '.join(silent)} have not reported their nodes' firmware (is the room "
                                 "controller serving updates and connected?); leave them out with 'rooms' or fix them")
        parts = []
        for room in order:
            part = RoomPart(room, [])
            for n in console.firmware[room].nodes:
                node = str(n["node"])
                if not n.get("online"):
                    part.skipped[node] = "offline when the rollout started"
                elif not n.get("ota"):
                    part.skipped[node] = "takes no updates over the air"
                elif n.get("fw") == bundle["version"]:
                    part.skipped[node] = f"already runs {bundle['version']}"
                else:
                    part.nodes.append(node)
            if not part.nodes:
                part.state = "skipped"
            parts.append(part)
        if not any(p.nodes for p in parts):
            raise RolloutRefused(409, "nothing_to_update", "no node online with updates needs this bundle")
        return bundle, parts

    async def start(self, sha: str, rooms: list[str] | None, by: str) -> WardRollout:
        if any(r.state in ("running", "held") for r in self.rollouts):
            raise RolloutRefused(409, "rollout_running", "a ward rollout is already running: stop it or wait")
        bundle, parts = self.plan(sha, rooms)
        now = self.console.clock()
        rollout = WardRollout(max((r.id for r in self.rollouts), default=0) + 1, uuid.uuid4().hex[:16],
                              str(bundle["sha256"]), str(bundle["version"]), str(bundle["board"]), by, now, parts,
                              updated_ms=now)
        self.rollouts.append(rollout)
        await self._save(rollout)
        order = " then ".join(f"{p.room} ({', '.join(p.nodes)})" for p in parts if p.nodes)
        await self._audit(rollout, "firmware.ward.start", f"#{rollout.id} {rollout.version} "
                                                          f"(bundle {rollout.bundle[:12]}) to {order}")
        await self.console.note("ward.firmware", {"rollout": rollout.id, "state": "running", "by": by})
        self._drive(rollout)
        return rollout

    async def stop(self, rollout_id: int, by: str) -> WardRollout:
        rollout = self.get(rollout_id)
        if rollout.state not in ("running", "held"):
            raise RolloutRefused(409, "not_running", f"ward rollout #{rollout_id} is {rollout.state}")
        task = self._tasks.pop(rollout.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._end(rollout, "stopped", f"stopped by {by}; a room's rollout already running finishes its stage",
                        actor=by)
        return rollout

    def get(self, rollout_id: int) -> WardRollout:
        for rollout in self.rollouts:
            if rollout.id == rollout_id:
                return rollout
        raise RolloutRefused(404, "rollout_not_found", f"no ward rollout #{rollout_id}")

    # ------------------------------------------------------------------ the driver
    def _drive(self, rollout: WardRollout) -> None:
        self._tasks[rollout.id] = asyncio.create_task(self._run(rollout), name=f"ward rollout {rollout.id}")

    async def _run(self, rollout: WardRollout) -> None:
        try:
            while rollout.state in ("running", "held"):
                self._wake.clear()
                if await self._step(rollout):
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), RECHECK_S)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave a rollout silently "running": it stops, loudly
            log.exception("ward rollout #%d failed", rollout.id)
            await self._end(rollout, "stopped", "internal error in the ward console; see its log")
        finally:
            self._tasks.pop(rollout.id, None)

    async def _step(self, rollout: WardRollout) -> bool:
        """One look at the rollout; True when something moved on (look again at once)."""
        console = self.console
        part = next((p for p in rollout.rooms if p.state not in ("done", "skipped")), None)
        if part is None:
            await self._end(rollout, "done", None)
            return False
        status = console.firmware.get(part.room)
        mine = room_rollout(status, rollout.key)
        if mine is not None:
            changed = self._follow(part, mine)
            if mine["state"] == "done":
                part.state = "done"
                await self._save(rollout)
                await self._audit(rollout, "firmware.ward.room_done",
                                  f"#{rollout.id} room {part.room}: {', '.join(part.nodes)} confirmed {rollout.version}")
                return True
            if mine["state"] in ("stopped", "interrupted"):
                part.state = "stopped"
                part.reason = f"room rollout #{mine['id']} {mine['state']}: {mine.get('reason')}"
                await self._end(rollout, "stopped", f"room {part.room}: {part.reason}")
                return False
            if changed:
                await self._save(rollout)
        row = console.rooms.get(part.room)
        if row is None or row.status != "online":
            why = (f"room {part.room} has never connected" if row is None or row.status is None
                   else f"room {part.room} is offline ({row.reason})")
            await self._hold(rollout, f"{why}: waiting for it to come back; the room is not skipped")
            return False
        if not console.connected.is_set():
            starting = console.stats.connects == 0 and \
                asyncio.get_running_loop().time() - self._created < CONNECT_GRACE_S
            if not starting:  # just started: the first connection is usually a moment away
                await self._hold(rollout, "the ward console has no connection to the broker: waiting for it")
            return False
        if rollout.state == "held":
            rollout.state, rollout.reason = "running", None
            await self._save(rollout)
            await self._audit(rollout, "firmware.ward.going_on", f"#{rollout.id} room {part.room} reachable again")
        if mine is None and part.state in ("waiting", "starting", "running"):
            if part.state == "running" and part.room_rollout is not None:
                return False  # started: its firmware status has not caught up yet
            return await self._start_room(rollout, part)
        return False

    async def _start_room(self, rollout: WardRollout, part: RoomPart) -> bool:
        part.state = "starting"
        await self._save(rollout)
        try:
            res = await self.console.command(part.room, "firmware", rollout.by, bundle=rollout.bundle,
                                             nodes=tuple(part.nodes), rollout=rollout.key)
        except WardError as exc:
            if exc.status in (503, 504):  # offline, broker gone, no answer: hold and ask again (the room dedupes)
                await self._hold(rollout, f"room {part.room}: {exc.message}")
                return False
            raise
        if not res.ok:
            part.state = "refused"
            part.reason = f"{res.message} ({res.code})"
            await self._end(rollout, "stopped", f"room {part.room} refused: {part.reason}")
            return False
        part.state = "running"
        part.room_rollout = int((res.result or {}).get("id") or 0) or None
        await self._save(rollout)
        await self._audit(rollout, "firmware.ward.room_started",
                          f"#{rollout.id} room {part.room} rollout #{part.room_rollout}: {', '.join(part.nodes)}")
        return True

    def _follow(self, part: RoomPart, mine: dict[str, Any]) -> bool:
        """Copy the room rollout's node states into the part; True if any changed."""
        updates = {str(u["node"]): dict(u) for u in mine.get("nodes", [])}
        states = {n: (u.get("state"), u.get("chunks")) for n, u in updates.items()}
        before = {n: (u.get("state"), u.get("chunks")) for n, u in part.updates.items()}
        part.updates = updates
        part.room_rollout = mine.get("id", part.room_rollout)
        if part.state in ("waiting", "starting"):
            part.state = "running"
        return states != before

    async def _hold(self, rollout: WardRollout, why: str) -> None:
        if rollout.state == "held" and rollout.reason == why:
            return
        rollout.state, rollout.reason = "held", why
        log.error("ward rollout #%d held: %s", rollout.id, why)
        await self._save(rollout)
        await self._audit(rollout, "firmware.ward.held", f"#{rollout.id} {why}")
        await self.console.note("ward.firmware", {"rollout": rollout.id, "state": "held", "reason": why})

    async def _end(self, rollout: WardRollout, state: str, why: str | None, actor: str | None = None) -> None:
        rollout.state, rollout.reason = state, why
        for part in rollout.rooms:
            if state == "stopped" and part.state in ("waiting", "starting"):
                part.reason = part.reason or "not started: the ward rollout stopped"
        (log.error if state == "stopped" else log.info)("ward rollout #%d of %s %s%s", rollout.id, rollout.version,
                                                         state, f": {why}" if why else "")
        await self._save(rollout)
        await self._audit(rollout, f"firmware.ward.{state}", f"#{rollout.id} {rollout.version}"
                          + (f": {why}" if why else ""), actor=actor)
        await self.console.note("ward.firmware", {"rollout": rollout.id, "state": state, "reason": why})

    # ------------------------------------------------------------------ records
    async def _save(self, rollout: WardRollout) -> None:
        rollout.updated_ms = self.console.clock()
        await self.console.store.save_firmware_rollout(rollout.id, rollout.to_json(), rollout.state)

    async def _audit(self, rollout: WardRollout, action: str, target: str, actor: str | None = None) -> None:
        try:
            await self.console.store.audit(AuditEntry(self.console.clock(), actor or rollout.by, AUDIT_ROLE, action,
                                                      target, 0, None))
        except Exception:  # the audit store failing is logged loudly; the rollout goes on
            log.exception("could not audit %s %s", action, target)

    # ------------------------------------------------------------------ view
    def view(self) -> dict[str, Any]:
        """Every room's nodes (version, board, update), the bundles the rooms hold, the ward's rollouts."""
        console = self.console
        rooms = []
        bundles: dict[str, dict[str, Any]] = {}
        for room in console.room_ids():
            row = console.rooms.get(room)
            status = console.firmware.get(room)
            rooms.append({"room": room, "name": (row.name if row else None) or room,
                          "status": (row.status if row else None) or "never_seen",
                          "reason": row.reason if row else None,
                          "reported_ms": status.ts_ms if status else None,
                          "nodes": [dict(n) for n in status.nodes] if status else [],
                          "rollout": dict(status.rollouts[-1]) if status and status.rollouts else None})
            for b in status.bundles if status else ():
                entry = bundles.setdefault(str(b["sha256"]), {"sha256": b["sha256"], "version": b["version"],
                                                              "board": b["board"], "rooms": [], "refused": {}})
                entry["rooms"].append(room)
        for room in console.room_ids():
            status = console.firmware.get(room)
            for bad in status.bad_bundles if status else ():
                if bad.get("sha256") in bundles:
                    bundles[str(bad["sha256"])]["refused"][room] = bad.get("error")
        for entry in bundles.values():
            entry["missing"] = [r for r in console.room_ids() if r not in entry["rooms"]]
        return {"rooms": rooms, "bundles": sorted(bundles.values(), key=lambda b: (b["version"], b["sha256"])),
                "rollouts": [r.to_json() for r in reversed(self.rollouts)]}
