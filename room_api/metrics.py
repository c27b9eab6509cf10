"""Prometheus metrics for one room (text exposition at ``/metrics``).

Counts that already live elsewhere (gateway counters, nodes online, active calls, calls not shown
on any nurse screen) are read at scrape time by a collector, so there is one source of truth; only
the delivery-time histogram and the streams' gauges and drop counter are kept here. Each app has
its own registry: no globals.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.link.gateway import NodeGateway
from controller.room import TIERS
from controller.service import RoomController

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NODE_STATES = ("online", "offline", "cannot_deliver", "never_connected")  # Room.node_state
# Call stored -> first shown on a nurse screen (the page's receipt); nurse-call systems aim for seconds.
DELIVERY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RoomCollector(Collector):
    def __init__(self, controller: RoomController, gateway: Callable[[], NodeGateway | None],
                 auth_blocked: Callable[[], int], devices: Callable[[], Any],
                 uplink: Callable[[], Any] = lambda: None) -> None:
        self._controller = controller
        self._gateway = gateway
        self._auth_blocked = auth_blocked
        self._devices = devices
        self._uplink = uplink

    def _link_failures(self, gateway: NodeGateway | None) -> Iterable[Metric]:
        """Failure modes of the node link, made loud (docs/architecture.md): each by node."""
        dropped = CounterMetricFamily("smartroom_node_readings_dropped",
                                      "Node readings dropped by the gateway, by node and reason (over_budget)",
                                      labels=["node", "reason"])
        sessions = CounterMetricFamily("smartroom_node_sessions_undelivered",
                                       "Node sessions ended by a rejection with no event delivered", labels=["node"])
        transport = CounterMetricFamily("smartroom_node_connections",
                                        "Node connections served, by transport (tls, plain)", labels=["transport"])
        if gateway is not None:
            for name, count in sorted(gateway.stats.transport.items()):
                transport.add_metric([name], count)
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
        yield transport

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
        storage = self._controller.storage
        not_stored = CounterMetricFamily("smartroom_readings_not_stored",
                                         "Sensor readings not stored, by reason (disk_floor: free space below "
                                         "the floor kept for events; storage_failed: the write failed)",
                                         labels=["reason"])
        for reason in sorted({"disk_floor", "storage_failed", *storage.readings_not_stored}):
            not_stored.add_metric([reason], storage.readings_not_stored[reason])
        yield not_stored
        up = GaugeMetricFamily("smartroom_storage_up", "1 while the room database can be written, 0 while it fails")
        up.add_metric([], 0 if storage.failing_since_ms is not None else 1)
        yield up
        failures = CounterMetricFamily("smartroom_storage_write_failures",
                                       "Writes to the room database that failed (disk full, I/O error), "
                                       "probes included")
        failures.add_metric([], storage.write_failures)
        yield failures
        paused = GaugeMetricFamily("smartroom_readings_paused", "1 while free space is below the floor kept for events")
        paused.add_metric([], 0 if storage.readings_paused_since_ms is None else 1)
        yield paused
        if storage.free_bytes is not None:
            free = GaugeMetricFamily("smartroom_storage_free_bytes",
                                     "Free space for the room database at the last readings batch")
            free.add_metric([], storage.free_bytes)
            yield free
        yield from self._link_failures(gateway)
        nodes = GaugeMetricFamily("smartroom_nodes", "Nodes by state: online, offline, cannot_deliver "
                                  "(connects but delivers nothing), never_connected", labels=["state"])
        states = [room.node_state(n) for n in room.nodes.values()]
        for state in NODE_STATES:
            nodes.add_metric([state], states.count(state))
        yield nodes
        calls = GaugeMetricFamily("smartroom_active_calls", "Active calls by IEC 60601-1-8 priority",
                                  labels=["priority"])
        for tier in TIERS:
            calls.add_metric([tier], sum(1 for c in room.calls.values() if c.ctype.level == tier))
        yield calls
        late = GaugeMetricFamily("smartroom_calls_not_displayed",
                                 "Active calls no nurse screen has shown within the room's not_displayed_s")
        late.add_metric([], len(room.not_displayed(self._controller.clock())))
        yield late
        blocked = CounterMetricFamily("smartroom_auth_blocked", "Requests refused: too many failed logins")
        blocked.add_metric([], self._auth_blocked())
        yield blocked
        yield from _uplink_metrics(self._uplink())
        frozen = GaugeMetricFamily("smartroom_gc_frozen_objects",
                                   "Objects `smartroom run` moved out of the garbage collector's walk once the "
                                   "room had started (gc.freeze); 0 there: every full collection walks the whole "
                                   "start-up heap and pauses the room ~5x longer")
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen
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


class _ServicesCollector:
    """The alarm manager's link (integrations/acm.py) and the voice decoder (sensors/voice), where the
    room has them: read when scraped, like the room's own counters."""

    def __init__(self, integrations: Callable[[], Any], voice: Callable[[], Any]) -> None:
        self._integrations = integrations
        self._voice = voice

    def collect(self) -> Iterable[Metric]:
        integrations = self._integrations()
        reporter = getattr(integrations, "reporter", None)
        if reporter is not None:
            yield from _alarm_manager_metrics(reporter.stats)
        voice = self._voice()
        if voice is not None:
            yield from _voice_metrics(voice.status())


def counters(prefix: str, rows: Iterable[tuple[str, float, str]]) -> Iterable[Metric]:
    """One unlabelled counter per (name, value, help) row, named ``prefix + name``."""
    for name, value, doc in rows:
        m = CounterMetricFamily(prefix + name, doc)
        m.add_metric([], value)
        yield m


def _alarm_manager_metrics(s: Any) -> Iterable[Metric]:
    up = GaugeMetricFamily("smartroom_alarm_manager_connected", "1 while the MLLP link to the alarm manager is open")
    up.add_metric([], 1 if s.connected else 0)
    yield up
    pending = GaugeMetricFamily("smartroom_alarm_manager_outbox", "Alarm reports waiting for the alarm manager's ACK")
    pending.add_metric([], s.outbox)
    yield pending
    yield from counters("smartroom_alarm_manager_", (
        ("acked", s.acked, "Alarm reports the alarm manager accepted"),
        ("rejected", s.rejected, "Alarm reports the alarm manager rejected (AR/CR)"),
        ("link_failures", s.link_failures, "Connect failures, lost links, ACK timeouts"),
        ("heartbeats", s.heartbeats, "Heartbeats the alarm manager answered")))


def _voice_metrics(status: dict[str, Any]) -> Iterable[Metric]:
    d = status["decoder"]
    utterances = CounterMetricFamily("smartroom_voice_utterances", "Utterances offered to the decoder, decoded, "
                                     "and shed because the room talked more than it can decode", labels=["outcome"])
    for outcome in ("offered", "decoded", "shed"):
        utterances.add_metric([outcome], d[outcome])
    yield utterances
    cpu = CounterMetricFamily("smartroom_voice_decode_cpu_seconds", "Processor time spent decoding speech")
    cpu.add_metric([], d["cpu_s"])
    yield cpu
    errors = CounterMetricFamily("smartroom_voice_decoder_errors", "Decodes that failed")
    errors.add_metric([], d["errors"])
    yield errors
    degraded = GaugeMetricFamily("smartroom_voice_degraded",
                                 "1 while utterances are being shed (commands may be missed), else 0")
    degraded.add_metric([], 1 if d["degraded"] else 0)
    yield degraded
    enabled = GaugeMetricFamily("smartroom_voice_node_enabled", "1 while a microphone node listens", labels=["node"])
    for node, n in sorted(status["nodes"].items()):
        enabled.add_metric([node], 1 if n["enabled"] else 0)
    yield enabled


def _uplink_metrics(uplink: Any) -> Iterable[Metric]:
    """The ward uplink's counters (controller/uplink/uplink.py), when the room is on a ward broker."""
    if uplink is None:
        return
    s = uplink.stats
    up = GaugeMetricFamily("smartroom_ward_uplink_connected", "1 while the room is connected to the ward broker")
    up.add_metric([], 1 if uplink.connected.is_set() else 0)
    yield up
    acked = GaugeMetricFamily("smartroom_ward_uplink_acked_cursor", "Highest log cursor the ward broker acknowledged")
    acked.add_metric([], uplink.acked)
    yield acked
    refused = CounterMetricFamily("smartroom_ward_uplink_refusals",
                                  "Connections and publishes the ward broker refused, by reason", labels=["reason"])
    for reason, n in sorted(s.connect_refused.items()):
        refused.add_metric([f"connect_{reason}"], n)
    for leaf, n in sorted(s.publish_refused.items()):
        refused.add_metric([f"publish_{leaf}"], n)
    yield refused
    yield from counters("smartroom_ward_uplink_", (
        ("events_published", s.events_published, "Room events the broker acknowledged"),
        ("events_resent", s.events_resent, "Room events published again after an outage"),
        ("commands_rejected", sum(s.commands_rejected.values()), "Malformed ward commands"),
        ("storage_errors", s.storage_errors, "Reads and writes of the uplink's cursor and command results in "
                                             "the room database that failed")))
    commands = CounterMetricFamily("smartroom_ward_uplink_commands", "Ward commands carried out, by result",
                                   labels=["result"])
    for code, n in sorted(s.commands.items()):
        commands.add_metric([code], n)
    yield commands


class Metrics:
    def __init__(self, controller: RoomController, gateway: Callable[[], NodeGateway | None],
                 auth_blocked: Callable[[], int], devices: Callable[[], Any] = lambda: None,
                 uplink: Callable[[], Any] = lambda: None, integrations: Callable[[], Any] = lambda: None,
                 voice: Callable[[], Any] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_RoomCollector(controller, gateway, auth_blocked, devices, uplink))
        self.registry.register(_ServicesCollector(integrations, voice))
        self.delivery = Histogram("smartroom_call_delivery_seconds",
                                  "Time from a call being stored to a nurse screen's receipt that it shows it",
                                  buckets=DELIVERY_BUCKETS_S, registry=self.registry)
        self.subscribers = Gauge("smartroom_event_stream_subscribers", "Open event-stream connections",
                                 registry=self.registry)
        self.bad_bodies = Counter("smartroom_api_bad_bodies", "Request bodies refused (not JSON, not an object, "
                                  "nested too deeply), by reason", ["reason"], registry=self.registry)

        self.nurse_streams = 0
        Gauge("smartroom_nurse_streams", "Open event streams with a nurse token (screens that may show calls)",
              registry=self.registry).set_function(lambda: self.nurse_streams)
        self.streams_dropped = Counter("smartroom_event_stream_dropped",
                                       "Event streams closed by the controller, by reason (send_timeout: "
                                       "the client took no data; lagged: it fell too far behind)",
                                       labelnames=["reason"], registry=self.registry)
        for reason in ("send_timeout", "lagged"):
            self.streams_dropped.labels(reason)

    @contextmanager
    def nurse_stream(self, nurse: bool) -> Iterator[None]:
        """Counts an open stream as a nurse's while it is open."""
        self.nurse_streams += nurse
        try:
            yield
        finally:
            self.nurse_streams -= nurse

    def render(self) -> bytes:
        return generate_latest(self.registry)
