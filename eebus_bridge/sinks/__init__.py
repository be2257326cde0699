"""Output sinks: how limits reach EVerest (or a JSON-lines record).

Every sink has the same small interface: `run(latest)` runs until cancelled, delivers the
newest publication of the latest-value cell, re-delivers the current one after every
(re)connect and never raises for network trouble (it logs and reconnects with backoff).
A sink that falls behind skips stale limits; nothing is queued.
"""

from __future__ import annotations

from typing import Protocol

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import (
    EverestApiOutput,
    EverestLegacyApiOutput,
    JsonlOutput,
    LpcConfig,
    OutputConfig,
    RpcApiOutput,
)
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.everest_api import EverestApiSink
from eebus_bridge.sinks.everest_legacy import EverestLegacyApiSink
from eebus_bridge.sinks.external_limits import (
    encode_external_limits,
    external_limits_problems,
    external_limits_schema,
)
from eebus_bridge.sinks.jsonl import JsonlSink, jsonl_line
from eebus_bridge.sinks.rpcapi import RpcApiSink

__all__ = [
    "Backoff",
    "BackoffPolicy",
    "EverestApiSink",
    "EverestLegacyApiSink",
    "JsonlSink",
    "RpcApiSink",
    "Sink",
    "encode_external_limits",
    "external_limits_problems",
    "external_limits_schema",
    "jsonl_line",
    "make_sink",
]


class Sink(Protocol):
    name: str  # for logs, e.g. "everest-api[eebus_lpc_api]"

    async def run(self, latest: LatestValue[Publication]) -> None: ...


def make_sink(
    output: OutputConfig, lpc: LpcConfig, *, activity: ActivityFeed | None = None
) -> Sink:
    """The sink for one `[[outputs]]` entry of the config; it records its deliveries and
    connection changes in `activity`."""
    match output:
        case JsonlOutput():
            return JsonlSink(output, activity=activity)
        case EverestApiOutput():
            return EverestApiSink(output, activity=activity)
        case EverestLegacyApiOutput():
            return EverestLegacyApiSink(output, lpc, activity=activity)
        case RpcApiOutput():
            return RpcApiSink(output, lpc, activity=activity)
