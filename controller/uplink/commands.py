"""Ward commands carried out by the room: acknowledge, clear, silence, fall-risk, and a ward
rollout's part in this room (``firmware``: the room's own staged rollout of a bundle it holds).

Each goes through the same :class:`~controller.service.RoomController` method as the room's own
API, so the room's rules decide (an emergency that must be cancelled at the bedside stays refused,
with the reason) and every change is a stored room event. Each command is answered with a
:class:`~controller.uplink.wire.Result` and written to the room's audit log with the acting person.
"""

from __future__ import annotations

import logging
from typing import Any

from ..ota.bundle import BundleError
from ..room import RoomError
from ..security.tokens import AuditEntry
from ..service import RoomController
from .wire import Command, Result

log = logging.getLogger("smartroom.uplink")

AUDIT_ROLE = "ward"  # the audit log's role column for commands that came over MQTT


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def execute(controller: RoomController, cmd: Command, ota: Any = None) -> Result:
    """``ota``: the room's OtaServer (controller/ota/server.py), for ``firmware``; None: no updates here."""
    room = controller.config.room_id
    try:
        if cmd.action == "firmware":
            body = _firmware(controller, ota, cmd)
        else:
            body = await _run(controller, cmd)
    except _Refused as exc:
        log.error("ward firmware command %s refused: %s", cmd.id, exc.message)
        return Result(cmd.id, room, False, exc.status, exc.code, exc.message)
    except RoomError as exc:  # refused by the room's rules: 404 unknown call, 409 cancel at origin, ...
        return Result(cmd.id, room, False, exc.status, exc.code, exc.message)
    except Exception:  # a bug must answer the ward too, not leave it waiting; the bug is logged
        log.exception("ward command %s failed", cmd)
        return Result(cmd.id, room, False, 500, "internal_error", "internal error; see the room controller's log")
    return Result(cmd.id, room, True, 200, "ok", f"{cmd.action} done", body)


async def _run(controller: RoomController, cmd: Command) -> dict[str, Any]:
    if cmd.action == "ack":
        return await controller.acknowledge(cmd.call_id or "", cmd.by)
    if cmd.action == "clear":
        return await controller.clear(cmd.call_id or "", cmd.by)
    if cmd.action == "silence":
        return await controller.silence_tone(cmd.by)
    if cmd.action == "fall_risk":
        return await controller.set_fall_risk(cmd.bed or "", bool(cmd.enabled), cmd.by)
    raise AssertionError(f"unknown action {cmd.action!r}")  # wire.decode_command lets none through


def _firmware(controller: RoomController, ota: Any, cmd: Command) -> dict[str, Any]:
    """Start this room's part of a ward rollout: a staged rollout of a bundle from the room's own
    bundles folder that verifies with the room's firmware key (docs/firmware.md, "Ward rollouts").
    Refused, with the reason the ward shows, when the room has no such bundle or it fails its check,
    when a node is not the room's, or while another rollout runs. A repeated command for a ward
    rollout already started here answers with that rollout (the ward may ask again after a restart)."""
    if ota is None:
        raise _Refused(404, "no_updates", "this room controller serves no firmware updates")
    for rollout in ota.rollouts:
        if rollout.ward == cmd.rollout and rollout.bundle == cmd.bundle:
            return rollout.to_json()
    nodes = list(cmd.nodes or ())
    unknown = [n for n in nodes if n not in controller.config.nodes]
    if unknown:
        raise _Refused(400, "unknown_nodes", f"not nodes of room {controller.config.room_id}: {', '.join(unknown[:10])}")
    try:
        bundle = ota.find_exact(cmd.bundle or "")
    except BundleError as exc:
        raise _Refused(404, "bundle_refused", str(exc)) from None
    try:
        return ota.start_rollout(bundle, nodes, cmd.by, ward=cmd.rollout).to_json()
    except ValueError as exc:
        raise _Refused(409, "rollout_running", str(exc)) from None


def audit_entry(cmd: Command, result: Result, now_ms: int, remote: str) -> AuditEntry:
    """The room's audit line: who (the acting person), what, on what, how it ended, from where."""
    return AuditEntry(now_ms, cmd.by, AUDIT_ROLE, f"MQTT {cmd.action}", f"{cmd.target} (command {cmd.id})",
                      result.status, remote)
