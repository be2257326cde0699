"""The everest-legacy-api sink: EVerest's older `API` module over MQTT.

`<prefix>everest_api/<evse_manager_id>/cmd/set_limit_watts` takes a plain number of watts: no
schedule, no duration and no "clear" (spec/everest.md). The bridge ends timed limits itself
(a new publication arrives at the end), and "unlimited" is sent as `[lpc]
max_nominal_power_W`, the largest value that can make sense for this system. QoS 1 and not
retained, for the same reasons as the everest-api sink; the value is re-sent after every
(re)connect.
"""

from __future__ import annotations

import functools
import logging
import math

from eebus_bridge.activity import ActivityFeed, record_delivery
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import EverestLegacyApiOutput, LpcConfig
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.mqtt import (
    MqttConnection,
    MqttError,
    check_topic_name,
    keep_mqtt_connected,
    mqtt_settings_for,
)

logger = logging.getLogger(__name__)


def format_watts(value: float) -> str:
    """A plain JSON number: '4200' for whole watts, '4200.5' otherwise."""
    if value.is_integer():
        return str(int(value))
    return repr(value)


class EverestLegacyApiSink:
    def __init__(
        self,
        output: EverestLegacyApiOutput,
        lpc: LpcConfig,
        *,
        backoff: BackoffPolicy | None = None,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.output = output
        self.activity = activity if activity is not None else ActivityFeed()
        self.name = f"everest-legacy-api[{output.evse_manager_id}]"
        self.topic = check_topic_name(
            f"{output.topic_prefix}everest_api/{output.evse_manager_id}/cmd/set_limit_watts"
        )
        self.unlimited_W = lpc.max_nominal_power_W
        self.settings = mqtt_settings_for(output, f"eebus-bridge-{output.evse_manager_id}")
        self._backoff_policy = backoff
        self._delivered_version = 0  # of the LatestValue; only to word the log line

    def watts_for(self, publication: Publication) -> float:
        return self.unlimited_W if publication.limit_W is None else publication.limit_W

    async def run(self, latest: LatestValue[Publication]) -> None:
        await keep_mqtt_connected(
            self.name,
            self.settings,
            functools.partial(self._serve, latest=latest),
            Backoff(self._backoff_policy),
            self.activity,
        )

    async def _serve(self, conn: MqttConnection, *, latest: LatestValue[Publication]) -> None:
        version = 0  # the value in force first: a (re)connect re-sends it
        while True:
            version, publication = await latest.wait_newer(version)
            await self._send(conn, version, publication)

    async def _send(self, conn: MqttConnection, version: int, publication: Publication) -> None:
        watts = self.watts_for(publication)
        if not math.isfinite(watts) or watts < 0:
            logger.error(
                "%s: NOT sending invalid limit %r W for state %s (a bridge bug)",
                self.name,
                watts,
                publication.state,
            )
            record_delivery(self.activity, self.name, version, f"invalid limit {watts!r} W")
            return
        try:
            await conn.publish(self.topic, format_watts(watts), qos=1)
        except MqttError as exc:
            record_delivery(self.activity, self.name, version, str(exc))
            raise
        record_delivery(self.activity, self.name, version, None)
        again = version == self._delivered_version
        self._delivered_version = version
        logger.info(
            "%s: %s %s W for state %s (%s) to %s",
            self.name,
            "re-sent" if again else "sent",
            format_watts(watts),
            publication.state,
            publication.summary(),
            self.topic,
        )
