"""The integrations of one room, started and stopped together (controller/runner.py): the alarm
reporter, the MLLP listener (admissions and alarm status in) and the webhooks, as configured.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from controller.service import RoomController

from .acm import AlarmReporter
from .adt import Admissions
from .config import Integrations
from .hl7 import ERR_UNSUPPORTED_MESSAGE, Hl7Error, Parties, parse_inbound
from .mllp import AllowList, MllpServer
from .outbox import Outbox
from .webhook import WebhookSender

log = logging.getLogger("smartroom.integrations")


class IntegrationService:
    """``async with IntegrationService(controller, options):`` — or :meth:`start` / :meth:`stop`."""

    def __init__(self, controller: RoomController, options: Integrations) -> None:
        self.controller = controller
        self.options = options
        self.parties = Parties(options.application, options.equipment_id, options.facility,
                               point_of_care=options.point_of_care,
                               room=options.hl7_room or controller.config.room_id)
        self.outbox = Outbox(controller.store.path)
        self.reporter = AlarmReporter(controller, options, self.outbox) if options.alarm_manager else None
        self.admissions = Admissions(controller, options, self.parties, self._control_id)
        self.webhooks = [WebhookSender(controller, hook, self.outbox) for hook in options.webhooks]
        self.listener: MllpServer | None = None
        self.inbound: Counter[str] = Counter()  # MLLP listener: refused peers, bad frames, unparseable, by type
        self._n = 0

    def _control_id(self) -> str:
        self._n += 1
        return f"{self.controller.config.room_id}-ack-{self.controller.clock()}-{self._n}"

    async def start(self) -> None:
        await self.outbox.open()
        if self.reporter is not None:
            await self.reporter.start()
        for hook in self.webhooks:
            await hook.start()
        if self.options.mllp is not None:
            opts = self.options.mllp
            self.listener = MllpServer(self._inbound, AllowList(opts.allow), on_refused=self._refused,
                                       on_bad_frame=self._bad_frame)
            port = await self.listener.start(opts.host, opts.port, opts.tls.server_context() if opts.tls else None)
            log.info("MLLP listener on %s:%d (admissions, alarm status)", opts.host, port)

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        for hook in self.webhooks:
            await hook.stop()
        if self.reporter is not None:
            await self.reporter.stop()
        await self.outbox.close()

    async def __aenter__(self) -> "IntegrationService":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _refused(self, address: str) -> None:
        self.inbound["refused_peer"] += 1

    def _bad_frame(self, address: str, reason: str) -> None:
        self.inbound["bad_frame"] += 1

    async def _inbound(self, text: str, peer: str) -> str:
        """One message on the MLLP listener: ADT to admissions, ORA^R41 to the alarm reporter."""
        try:
            inbound = parse_inbound(text)
        except Hl7Error as exc:
            self.inbound["unparseable"] += 1
            return self.admissions.refuse(None, exc)
        self.inbound[inbound.msg_type or "?"] += 1
        if inbound.msg_type == "ADT":
            return await self.admissions.handle(inbound)
        if inbound.msg_type == "ORA" and self.reporter is not None:
            return await self.reporter.status(inbound)
        return self.admissions.refuse(inbound, Hl7Error(
            f"{inbound.msg_type}^{inbound.trigger} is not taken here (ADT^A01/A02/A03/A08"
            + (", ORA^R41" if self.reporter is not None else "") + ")", ERR_UNSUPPORTED_MESSAGE))

    def to_json(self) -> dict[str, Any]:
        return {
            "alarm_manager": self.reporter.stats.to_json() if self.reporter else None,
            "admissions": self.admissions.to_json(),
            "mllp_listener": {"port": self.listener.port if self.listener else None, "messages": dict(self.inbound)},
            "webhooks": {h.options.name: h.stats.to_json() for h in self.webhooks},
        }
