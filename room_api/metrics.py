"""Prometheus metrics for one room (text exposition at ``/metrics``).

Counts that already live elsewhere (gateway counters, nodes online, active calls) are read at
scrape time by a collector, so there is one source of truth; only the delivery-time histogram and
the stream-subscriber gauge are kept here. Each app has its own registry: no globals.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.link.gateway import NodeGateway
from controller.room import TIERS
from controller.service import RoomController

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NODE_STATES = ("online", "offline", "cannot_deliver", "never_connected")  # Room.node_state
# Node event stored -> first delivery to a nurse endpoint; nurse-call systems aim for seconds.
DELIVERY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RoomCollector(Collector):
    def __init__(self, controller: RoomController, gateway: Callable[[], NodeGateway | None],
                 auth_blocked: Callable[[], int], devices: Callable[[], Any]) -> None:
        self._controller = controller
        self._gateway = gateway
        self._auth_blocked = auth_blocked
        self._devices = devices

    def _link_failures(self, gateway: NodeGateway | None) -> Iterable[Metric]:
        """Failure modes of the node link, made loud (docs/architecture.md): each by node."""
        dropped = CounterMetricFamily("smartroom_node_readings_dropped",
                                      "Node readings dropped by the gateway, by node and reason (over_budget)",
                                      labels=["node", "reason"])
        sessions = CounterMetricFamily("smartroom_node_sessions_undelivered",
                                       "Node sessions ended by a rejection with no event delivered", labels=["node"])
        if gateway is not None:
            for (node, reason), count in sorted(gateway.stats.readings_dropped.items()):
                dropped.add_metric([node, reason], count)
            for node, count in sorted(gateway.stats.undelivered_sessions.items()):
                sessions.add_metric([node], count)
        unmapped = CounterMetricFamily("smartroom_unmapped_input_events",
                                       "Events from inputs the room file gives no meaning", labels=["node", "input"])
        for (node, src), count in sorted(self._controller.unmapped_inputs.items()):
            unmapped.add_metric([node, src], count)
        yield dropped
        yield sessions
        yield unmapped

    def collect(self) -> Iterable[Metric]:
        room = self._controller.room
        gateway = self._gateway()
        accepted = CounterMetricFamily("smartroom_node_messages_accepted",
                                       "Node messages accepted by the gateway, by type", labels=["type"])
        rejected = CounterMetricFamily("smartroom_node_messages_rejected",
                                       "Node frames rejected by the gateway, by reason", labels=["reason"])
        duplicates = CounterMetricFamily("smartroom_node_events_duplicate",
                                         "Resent node events recognised as already stored")
        if gateway is not None:
            for kind, count in sorted(gateway.stats.accepted.items()):
                accepted.add_metric([kind], count)
            duplicates.add_metric([], gateway.stats.duplicates)
            for reason, count in sorted(gateway.stats.rejected.items()):
                rejected.add_metric([reason], count)
        yield accepted
        yield rejected
        yield duplicates
        readings = CounterMetricFamily("smartroom_readings_stored", "Sensor readings stored durably")
        readings.add_metric([], self._controller.readings_stored)
        yield readings
        yield from self._link_failures(gateway)
        nodes = GaugeMetricFamily("smartroom_nodes", "Nodes by state: online, offline, cannot_deliver "
                                  "(connects but delivers nothing), never_connected", labels=["state"])
        states = Counter(room.node_state(n) for n in room.nodes.values())
        for state in NODE_STATES:
            nodes.add_metric([state], states[state])
        yield nodes
        calls = GaugeMetricFamily("smartroom_active_calls", "Active calls by IEC 60601-1-8 priority",
                                  labels=["priority"])
        for tier in TIERS:
            calls.add_metric([tier], sum(1 for c in room.calls.values() if c.ctype.level == tier))
        yield calls
        blocked = CounterMetricFamily("smartroom_auth_blocked", "Requests refused: too many failed logins")
        blocked.add_metric([], self._auth_blocked())
        yield blocked
        devices = self._devices()
        ble = devices.ble_status if devices is not None else None
        if ble is not None:
            up = GaugeMetricFamily("smartroom_ble_up", "1 while the Bluetooth scanner works, 0 while degraded")
            up.add_metric([], 0 if ble.degraded or ble.state != "scanning" else 1)
            yield up
            faults = CounterMetricFamily("smartroom_ble_adapter_faults",
                                         "Times the Bluetooth subsystem went degraded (adapter missing, removed, BlueZ)")
            faults.add_metric([], ble.adapter_faults)
            yield faults
            adverts = CounterMetricFamily("smartroom_ble_advertisements", "BLE advertisements received, any device")
            adverts.add_metric([], ble.adverts)
            yield adverts


class Metrics:
    def __init__(self, controller: RoomController, gateway: Callable[[], NodeGateway | None],
                 auth_blocked: Callable[[], int], devices: Callable[[], Any] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_RoomCollector(controller, gateway, auth_blocked, devices))
        self.delivery = Histogram("smartroom_call_delivery_seconds",
                                  "Time from a call being stored to its first delivery to a nurse endpoint",
                                  buckets=DELIVERY_BUCKETS_S, registry=self.registry)
        self.subscribers = Gauge("smartroom_event_stream_subscribers", "Open event-stream connections",
                                 registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
