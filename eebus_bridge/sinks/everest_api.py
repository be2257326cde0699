"""The everest-api sink: EVerest's external_energy_limits_consumer_API over MQTT.

Topics (spec/everest.md, "Output 1"): `<prefix>everest_api/1/external_energy_limits_consumer/
<module_id>/<dir>/<name>`, the prefix concatenated with no slash.

- `m2e/set_external_limits`: the bare ExternalLimits object. QoS 1, because the broker's PUBACK
  is the only confirmation a fire-and-forget API gives: a limit is logged as published only
  once the broker has it, and a connection lost before that shows up as a reconnect, after
  which the current limits are re-published anyway. Duplicates are harmless (each object
  replaces the previous one). Not retained: a retained limit would be replayed to a restarted
  EVerest even when the bridge is long gone, and the bridge re-publishes after every
  (re)connect itself.
- `m2e/communication_check`: `true` every `communication_check_s` (QoS 0: a lost one is
  replaced by the next). The bridge does not send `false` when it stops: a bridge that goes
  away should trip EVerest's communication check, since its last limit stays in force.
- `e2m/heartbeat`: EVerest's integer counter. Silence for 3 heartbeat intervals is logged at
  WARNING, its return at INFO. The interval is the largest of the last few gaps between
  heartbeats (robust against bunched deliveries), 1 s (EVerest's default) until two have
  been seen. It is only watched while the broker connection is up (a lost broker is logged as
  such), and a silence that spans a reconnect is reported once.

Every payload is checked against the ExternalLimits schema first; one that fails is a bridge
bug, logged at ERROR and not sent.
"""

from __future__ import annotations

import collections
import functools
import logging
import math

import trio

from eebus_bridge.activity import ActivityFeed, record_delivery
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import EverestApiOutput
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.external_limits import encode_external_limits
from eebus_bridge.sinks.mqtt import (
    MqttConnection,
    MqttError,
    check_topic_name,
    keep_mqtt_connected,
    mqtt_settings_for,
)

logger = logging.getLogger(__name__)

HEARTBEAT_SILENCE_INTERVALS = 3
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
_HEARTBEAT_GAPS_KEPT = 5
_MIN_HEARTBEAT_INTERVAL_S = 0.05
_MAX_HEARTBEAT_INTERVAL_S = 60.0


def everest_api_topic_base(output: EverestApiOutput) -> str:
    return f"{output.topic_prefix}everest_api/1/external_energy_limits_consumer/{output.module_id}"


class _HeartbeatWatch:
    """Tracks EVerest's heartbeat: the expected interval and whether it has gone silent."""

    def __init__(self, default_interval_s: float) -> None:
        self._default_interval_s = default_interval_s
        self._gaps: collections.deque[float] = collections.deque(maxlen=_HEARTBEAT_GAPS_KEPT)
        self._reference = 0.0
        self._last_beat: float | None = None
        self.silent = False
        self.ever_seen = False

    @property
    def interval_s(self) -> float:
        if not self._gaps:
            return self._default_interval_s
        return min(max(max(self._gaps), _MIN_HEARTBEAT_INTERVAL_S), _MAX_HEARTBEAT_INTERVAL_S)

    def connected(self, now: float) -> None:
        # Heartbeats sent while the bridge was disconnected are gone; count from now.
        self._reference = now
        self._last_beat = None

    def silence_deadline(self) -> float:
        if self.silent:
            return math.inf
        since = self._last_beat if self._last_beat is not None else self._reference
        return since + HEARTBEAT_SILENCE_INTERVALS * self.interval_s

    def silent_for(self, now: float) -> float:
        since = self._last_beat if self._last_beat is not None else self._reference
        return now - since

    def beat(self, now: float) -> bool:
        """Record a heartbeat; True when it ends a silence."""
        if self._last_beat is not None and not self.silent:
            self._gaps.append(now - self._last_beat)
        returned = self.silent
        self.silent = False
        self.ever_seen = True
        self._last_beat = now
        return returned


class EverestApiSink:
    def __init__(
        self,
        output: EverestApiOutput,
        *,
        backoff: BackoffPolicy | None = None,
        default_heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.output = output
        self.activity = activity if activity is not None else ActivityFeed()
        self.name = f"everest-api[{output.module_id}]"
        base = everest_api_topic_base(output)
        self.limits_topic = check_topic_name(f"{base}/m2e/set_external_limits")
        self.communication_check_topic = f"{base}/m2e/communication_check"
        self.heartbeat_topic = f"{base}/e2m/heartbeat"
        self.settings = mqtt_settings_for(output, f"eebus-bridge-{output.module_id}")
        self._backoff_policy = backoff
        self._heartbeat = _HeartbeatWatch(default_heartbeat_interval_s)
        self._delivered_version = 0  # of the LatestValue; only to word the log line

    async def run(self, latest: LatestValue[Publication]) -> None:
        await keep_mqtt_connected(
            self.name,
            self.settings,
            functools.partial(self._serve, latest=latest),
            Backoff(self._backoff_policy),
            self.activity,
        )

    async def _serve(self, conn: MqttConnection, *, latest: LatestValue[Publication]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_communication_checks, conn)
            nursery.start_soon(self._watch_heartbeats, conn)
            await self._deliver_limits(conn, latest)

    async def _deliver_limits(self, conn: MqttConnection, latest: LatestValue[Publication]) -> None:
        version = 0  # the limits in force first: a (re)connect re-publishes them
        while True:
            version, publication = await latest.wait_newer(version)
            await self._publish_limits(conn, version, publication)

    async def _publish_limits(
        self, conn: MqttConnection, version: int, publication: Publication
    ) -> None:
        encoded = encode_external_limits(publication.external_limits)
        if isinstance(encoded, list):
            logger.error(
                "%s: NOT sending invalid ExternalLimits for state %s (a bridge bug): %s; "
                "payload: %r",
                self.name,
                publication.state,
                "; ".join(encoded),
                publication.external_limits,
            )
            record_delivery(self.activity, self.name, version, "; ".join(encoded))
            return
        try:
            await conn.publish(self.limits_topic, encoded, qos=1)
        except MqttError as exc:
            record_delivery(self.activity, self.name, version, str(exc))
            raise
        record_delivery(self.activity, self.name, version, None)
        again = version == self._delivered_version
        self._delivered_version = version
        logger.info(
            "%s: %s limits for state %s (%s) to %s",
            self.name,
            "re-published" if again else "published",
            publication.state,
            publication.summary(),
            self.limits_topic,
        )

    async def _send_communication_checks(self, conn: MqttConnection) -> None:
        while True:
            await conn.publish(self.communication_check_topic, b"true", qos=0)
            await trio.sleep(self.output.communication_check_s)

    async def _watch_heartbeats(self, conn: MqttConnection) -> None:
        if not await conn.subscribe(self.heartbeat_topic, qos=0):
            logger.warning(
                "%s: the broker refused the subscription to %s; EVerest's heartbeat is not watched",
                self.name,
                self.heartbeat_topic,
            )
            return
        watch = self._heartbeat
        watch.connected(trio.current_time())
        while True:
            with trio.move_on_at(watch.silence_deadline()) as waiting:
                message = await conn.messages.receive()
            if waiting.cancelled_caught:
                watch.silent = True
                logger.warning(
                    "%s: no heartbeat from EVerest for %.1f s (expected every %.1f s on %s): "
                    "is EVerest running with this module_id?",
                    self.name,
                    watch.silent_for(trio.current_time()),
                    watch.interval_s,
                    self.heartbeat_topic,
                )
                continue
            if message.topic != self.heartbeat_topic:
                continue
            first = not watch.ever_seen
            if watch.beat(trio.current_time()):
                logger.info("%s: EVerest heartbeat is back", self.name)
            elif first:
                logger.info("%s: EVerest heartbeat received", self.name)
            if not message.payload.strip().isdigit():
                logger.debug("%s: odd heartbeat payload %r", self.name, message.payload)
