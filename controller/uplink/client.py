"""An aiomqtt client that tells a refused publish from an accepted one (MQTT 5 reason codes).

aiomqtt 2.5.1 waits for a QoS 1 PUBACK but drops its reason code, and Mosquitto answers a publish
its ACL forbids with a PUBACK carrying 0x87 "Not authorized" (MQTT 5). :class:`MqttClient` keeps
the code and raises :class:`PublishRefused` for it, so a refusal is counted and never taken for a
delivery. Used by the room's uplink and the ward console. Relies on aiomqtt internals: pinned.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

# CONNACK reason codes (MQTT 5; 3.1.1 codes 4 and 5) -> the counter's reason
CONNECT_REFUSALS = {4: "bad_credentials", 134: "bad_credentials", 5: "not_authorized", 135: "not_authorized",
                    2: "client_id_rejected", 133: "client_id_rejected", 3: "server_unavailable",
                    136: "server_unavailable", 137: "server_busy", 138: "banned"}


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason (e.g. not authorised by its ACL)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"broker refused a publish to {topic}: {reason}")
        self.topic = topic
        self.reason = reason


def refusal_reason(exc: BaseException) -> str | None:
    """The counter's name for a refused connection, or None when it is not a refusal (e.g. no broker)."""
    if isinstance(exc, MqttConnectError):
        rc = exc.rc
        value = rc.value if isinstance(rc, ReasonCode) else rc
        return CONNECT_REFUSALS.get(value if isinstance(value, int) else -1, "refused")
    return None


class MqttClient(aiomqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused: dict[int, str] = {}

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any) -> None:
        if isinstance(reason_code, ReasonCode) and reason_code.is_failure:
            self._refused[mid] = str(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                              properties: Any = None, timeout: float | None = None) -> None:
        """Publish and wait for the broker's acknowledgement; raise PublishRefused if it refused."""
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
        if not info.is_published():  # callbacks run on this loop: the PUBACK cannot have come yet
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout)
        reason = self._refused.pop(info.mid, None)
        if reason is not None:
            raise PublishRefused(topic, reason)
