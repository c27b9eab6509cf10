"""Prometheus metrics of the ward console, read from the console at scrape time (one source of truth)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from room_api.metrics import counters

from ..console import WardConsole

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _WardCollector(Collector):
    def __init__(self, console: WardConsole, auth_blocked: Callable[[], int]) -> None:
        self._console, self._auth_blocked = console, auth_blocked

    def collect(self) -> Iterable[Metric]:
        c = self._console
        s = c.stats
        up = GaugeMetricFamily("smartroom_ward_broker_connected", "1 while the console is connected to the broker")
        up.add_metric([], 1 if c.connected.is_set() else 0)
        yield up
        refused = CounterMetricFamily("smartroom_ward_broker_refusals",
                                      "Connections the broker refused the console, by reason", labels=["reason"])
        for reason, n in sorted(s.connect_refused.items()):
            refused.add_metric([reason], n)
        yield refused
        msgs = CounterMetricFamily("smartroom_ward_messages", "MQTT messages received, by topic leaf", labels=["leaf"])
        for leaf, n in sorted(s.messages.items()):
            msgs.add_metric([leaf], n)
        yield msgs
        rejected = CounterMetricFamily("smartroom_ward_messages_rejected",
                                       "Malformed or foreign messages, by what they claimed to be", labels=["leaf"])
        for leaf, n in sorted(s.rejected.items()):
            rejected.add_metric([leaf], n)
        yield rejected
        yield from counters("smartroom_ward_", (
            ("events_stored", s.events_stored, "Room events stored (once each)"),
            ("events_duplicate", s.duplicates, "Room events received again, not stored again"),
            ("events_backfilled", s.backfilled, "Room events read from a room's API to fill a gap"),
            ("backfill_failures", s.backfill_failures, "Failed attempts to fill a gap")))
        cmds = CounterMetricFamily("smartroom_ward_commands", "Commands answered by rooms, by result", labels=["result"])
        for code, n in sorted(s.commands.items()):
            cmds.add_metric([code], n)
        yield cmds
        view = c.ward_view()
        rooms = GaugeMetricFamily("smartroom_ward_rooms", "Rooms by status", labels=["status"])
        by: dict[str, int] = {}
        for room in view["rooms"]:
            by[room["status"]] = by.get(room["status"], 0) + 1
        for status in ("online", "offline", "never_seen"):
            rooms.add_metric([status], by.get(status, 0))
        yield rooms
        calls = GaugeMetricFamily("smartroom_ward_active_calls", "Active calls in the unit by priority",
                                  labels=["priority"])
        for tier in ("high", "medium", "low", "info"):
            calls.add_metric([tier], sum(1 for x in view["calls"] if x["priority"] == tier))
        yield calls
        alarms = GaugeMetricFamily("smartroom_ward_technical_alarms", "Rooms offline or missing events")
        alarms.add_metric([], len(view["alarms"]))
        yield alarms
        blocked = CounterMetricFamily("smartroom_ward_auth_blocked", "Requests refused: too many failed logins")
        blocked.add_metric([], self._auth_blocked())
        yield blocked


class WardMetrics:
    def __init__(self, console: WardConsole, auth_blocked: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_WardCollector(console, auth_blocked))
        self.subscribers = Gauge("smartroom_ward_stream_subscribers", "Open ward stream connections",
                                 registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
