"""/metrics: the bridge's numbers in the Prometheus text format, via prometheus-client.

One `CollectorRegistry` per bridge (never the process-global one, so two bridges in one test
process, or a library user's own metrics, never mix) holding one custom collector. The
collector builds its metric families at scrape time from the `StatusTracker` counters and the
live sources, so nothing on the event path touches prometheus-client.

Choices where the issue is silent: `eebus_bridge_limit_watts` is present only while a limit is
in force (unlimited has no watt value; `eebus_bridge_state` says which state it is), and
`eebus_bridge_heartbeat_age_seconds` only once an EG heartbeat was seen.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from eebus_bridge import __version__
from eebus_bridge.lpc import LpcState
from eebus_bridge.status.snapshot import StatusSources, health_reasons
from eebus_bridge.status.tracker import LATENCY_BUCKETS_S

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BridgeCollector(Collector):
    """Every eebus_bridge_* metric, computed when scraped."""

    def __init__(self, sources: StatusSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources
        tracker = sources.tracker
        now = sources.monotonic()
        engine = sources.engine.status(now)
        _, publication = sources.publications.get()
        state = publication.state if publication else engine.state.value
        limit_w = publication.limit_W if publication else engine.limit_W

        yield InfoMetricFamily("eebus_bridge", "eebus-bridge version", {"version": __version__})
        yield _gauge(
            "eebus_bridge_start_time_seconds",
            "When the bridge started (Unix time)",
            tracker.started.timestamp(),
        )
        yield _gauge(
            "eebus_bridge_healthy",
            "1 when /healthz answers 200 (sidecar connected, outputs delivering)",
            0.0 if health_reasons(sources, now) else 1.0,
        )
        states = GaugeMetricFamily(
            "eebus_bridge_state", "1 for the LPC state in force, 0 for the others", labels=["state"]
        )
        for candidate in LpcState:
            states.add_metric([candidate.value], 1.0 if candidate.value == state else 0.0)
        yield states
        if limit_w is not None:
            yield _gauge(
                "eebus_bridge_limit_watts", "Power limit in force (absent: unlimited)", limit_w
            )
        if publication is not None and publication.end_time is not None:
            yield _gauge(
                "eebus_bridge_limit_end_timestamp_seconds",
                "End of the timed limit in force (Unix time)",
                publication.end_time.timestamp(),
            )
        yield _gauge(
            "eebus_bridge_failsafe_limit_watts",
            "Failsafe consumption active power limit (FCAPL)",
            engine.failsafe.limit_W,
        )
        yield _gauge(
            "eebus_bridge_failsafe_duration_seconds",
            "Failsafe duration minimum (FDM)",
            engine.failsafe.duration_s,
        )
        if engine.last_heartbeat_age_s is not None:
            yield _gauge(
                "eebus_bridge_heartbeat_age_seconds",
                "Seconds since the last energy guard heartbeat",
                engine.last_heartbeat_age_s,
            )

        writes = CounterMetricFamily(
            "eebus_bridge_writes", "Limit writes answered, by result", labels=["result"]
        )
        for result, count in sorted(tracker.writes.items()):
            writes.add_metric([result], count)
        yield writes
        failsafe_writes = CounterMetricFamily(
            "eebus_bridge_failsafe_writes",
            "Failsafe value writes by the energy guard, by value and result",
            labels=["what", "result"],
        )
        for (what, result), count in sorted(tracker.failsafe_writes.items()):
            failsafe_writes.add_metric([what, result], count)
        yield failsafe_writes
        yield CounterMetricFamily(
            "eebus_bridge_publications", "Limit publications", value=tracker.publications
        )

        deliveries = CounterMetricFamily(
            "eebus_bridge_sink_deliveries", "Publications delivered, by output", labels=["sink"]
        )
        failures = CounterMetricFamily(
            "eebus_bridge_sink_delivery_failures", "Failed deliveries, by output", labels=["sink"]
        )
        connected = GaugeMetricFamily(
            "eebus_bridge_sink_connected", "1 when the output is connected", labels=["sink"]
        )
        for sink in tracker.sinks.values():
            deliveries.add_metric([sink.name], sink.deliveries)
            failures.add_metric([sink.name], sink.failures)
            if sink.connected is not None:
                connected.add_metric([sink.name], 1.0 if sink.connected else 0.0)
        yield deliveries
        yield failures
        yield connected

        sidecar = tracker.sidecar
        yield CounterMetricFamily(
            "eebus_bridge_sidecar_restarts", "Sidecar restarts", value=sidecar.restarts
        )
        yield CounterMetricFamily(
            "eebus_bridge_sidecar_connection_losses",
            "Lost connections to the sidecar",
            value=sidecar.connection_losses,
        )
        yield _gauge(
            "eebus_bridge_sidecar_connected",
            "1 while the gRPC connection to the sidecar is up",
            1.0 if sidecar.connected else 0.0,
        )
        yield _gauge(
            "eebus_bridge_energy_managers",
            "Energy managers currently seen on the network",
            len(tracker.energy_managers),
        )
        writer = sources.history_writer
        if writer is not None:
            yield CounterMetricFamily(
                "eebus_bridge_history_rows_written",
                "Activities written to the history file",
                value=writer.written,
            )
            yield CounterMetricFamily(
                "eebus_bridge_history_rows_dropped",
                "Activities lost because the history file could not be written for too long",
                value=writer.dropped,
            )
            yield CounterMetricFamily(
                "eebus_bridge_history_write_failures",
                "Failed attempts to write the history file",
                value=writer.failures,
            )
        yield _latency_histogram(
            tracker.latency_buckets, tracker.latency_sum_s, tracker.latency_count
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _latency_histogram(counts: list[int], total_s: float, count: int) -> HistogramMetricFamily:
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, in_bucket in zip(LATENCY_BUCKETS_S, counts, strict=False):
        running += in_bucket
        cumulative.append((repr(bound), running))
    cumulative.append(("+Inf", count))
    return HistogramMetricFamily(
        "eebus_bridge_publication_latency_seconds",
        "Sidecar event -> publication, for publications caused by an event",
        buckets=cumulative,
        sum_value=total_s,
    )


class BridgeMetrics:
    """The bridge's own registry; `render()` gives the /metrics body."""

    def __init__(self, sources: StatusSources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BridgeCollector(sources))

    def render(self) -> bytes:
        return generate_latest(self.registry)
