"""Ward commands carried out by the room: acknowledge, clear, silence, fall-risk.

Each goes through the same :class:`~controller.service.RoomController` method as the room's own
API, so the room's rules decide (an emergency that must be cancelled at the bedside stays refused,
with the reason) and every change is a stored room event. Each command is answered with a
:class:`~controller.uplink.wire.Result` and written to the room's audit log with the acting person.
"""

from __future__ import annotations

import logging
from typing import Any

from ..room import RoomError
from ..security.tokens import AuditEntry
from ..service import RoomController
from .wire import Command, Result

log = logging.getLogger("smartroom.uplink")

AUDIT_ROLE = "ward"  # the audit log's role column for commands that came over MQTT


async def execute(controller: RoomController, cmd: Command) -> Result:
    room = controller.config.room_id
    try:
        body = await _run(controller, cmd)
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


def audit_entry(cmd: Command, result: Result, now_ms: int, remote: str) -> AuditEntry:
    """The room's audit line: who (the acting person), what, on what, how it ended, from where."""
    return AuditEntry(now_ms, cmd.by, AUDIT_ROLE, f"MQTT {cmd.action}", f"{cmd.target} (command {cmd.id})",
                      result.status, remote)
