"""Benchmarks of eebus-bridge, end to end against the HEMS simulator (a tool, not a timed test).

Run from the repository root with the project's virtualenv (numbers go to README "Performance",
together with the machine they were measured on):

    .venv/bin/python -m tools.bench_runtime all --json bench.json
    .venv/bin/python -m tools.bench_runtime limit-writes --limit-samples 1000     # metrics 1, 2
    .venv/bin/python -m tools.bench_runtime deadline --deadline-samples 100       # metric 3
    .venv/bin/python -m tools.bench_runtime startup --startup-runs 20             # metric 4
    .venv/bin/python -m tools.bench_runtime memory --memory-minutes 10            # metric 5
    .venv/bin/python -m tools.bench_runtime idle-cpu --idle-seconds 60            # metric 6
    .venv/bin/python -m tools.bench_runtime heartbeat-flood --flood-rate 5000     # metric 7

Several benchmark names may be given at once. The output starts with the machine (usable
CPUs, CPU model, Python, load average before and after: the numbers depend on what else runs)
and has one Markdown table row per metric; `--json FILE` writes the same results with every
number. The exit status is 0 when every metric met its target, 1 otherwise.

Common setup. The simulator always runs as its own process (tools/eebus_grpc_api_sim, started
by `open_simulator_process`, the way the real sidecar runs next to the bridge). Its `-record`
file stamps every event and approval with `time.monotonic()` of the simulator process;
CLOCK_MONOTONIC is one clock for the whole machine on Linux, so those stamps compare directly
with this process's own `time.monotonic()`. The bridge has `[sidecar] manage = false`, points
at the simulator, uses the spec's approval rules and timings, writes JSONL to a file and logs
at INFO to a file, as deployed (one line per published limit and per answered write). It runs
either inside this process (the real `Bridge` on a trio-asyncio loop; metrics 1, 2, 3, 7, where
its internals can be observed without polling) or as `python -m eebus_bridge run -c CFG`
(metrics 4, 5, 6). For 3 the EG's writes come from the scenario (timed actions in the
simulator, random whole watts, seed 1), the simulator logs only warnings and this process
reads nothing from it until the scenario is over: the harness does no work on the measured
path (1 and 2 drive writes through the control port, see there). The results include the
simulator's own time on that path (a Python gRPC server, where the real sidecar is Go), see
the README.

Methods, per metric:

1. DataUpdateLimit -> JSONL line written, and 2. WriteApprovalRequired -> answer at the
   simulator, each for the bridge and for a minimal client side by side (issue 12). One
   simulator process serves `--rounds` rounds; in each, the bridge and the minimal client take
   a turn (bridge first in even rounds, the client first in odd ones), so both meet the same
   simulator and the same machine load, right before or after each other. Keep turns short
   (the default: 8 rounds, a few seconds of writes per turn): on a VM the speed of both drifts
   by 10-20 % over tens of seconds, and with long turns one slow spell lands on one client
   only and decides its p99 (README "Performance"). The first turn does
   the full handshake, later ones resume on the known LPC endpoint (the sidecar is already set
   up; the bridge does the same after a reconnect). A turn waits 1.5 s (one EG heartbeat, so
   writes in Init are not gated [LPC-TS-036]), then this process sends `--warmup` + samples
   EG writes (`send_limit`, random whole watts, seed 1) from a small process of its own
   (`--drive-writes`) through one control connection, one every `--write-interval-ms`; it
   reads the control answers (the msg counters) only after the last one: nothing but the
   client under test works on a write while it is handled. Metric 2 = the simulator's
   approval record minus its WriteApprovalRequired event record (both stamped by the
   simulator); metric 1 = the moment the line is in the file minus the simulator's
   DataUpdateLimit event record. For the bridge the JSONL sink's write-and-flush is wrapped so
   that the clock is read the moment flush() returns (one clock read in the sink's worker
   thread, nothing polls the file); the minimal client appends "<monotonic> <value>" to a
   stamps file after its flush. Each turn's records are taken by its msg counters and time
   span. The minimal client (`minimal_client`, run as `python -m tools.bench_runtime
   --minimal-client ...`) is a synchronous grpcio client in its own process: the same
   handshake, then per event the same reads and answers and one JSON line, no state machine.
   Reported: p50/p99 of both over all turns, the per-round p50 range, the ratio bridge /
   client per metric at p50 and p99, and the CPU time per write of the bridge (this process),
   the client and the simulator (/proc schedstat) while the writes were played: on a loaded
   machine CPU per write is steadier than latency.
3. Lateness of a deadline-driven publication. The EG writes a 1 s limit (the shortest the
   sidecar reports: it rounds the remaining duration to whole seconds) every
   `--deadline-interval` s. The bridge publishes Limited with the limit's end as wall time
   and, when its lpc task wakes at that deadline, Unlimited/controlled. Lateness = that
   publication's wall time minus the end (both from the bridge's Publication objects, in
   microseconds); the JSONL line's write time minus the end is reported too. The first limit
   is a warm-up; 100 samples take about 2 minutes.
4. Process start -> first publication. A fresh simulator process is started and ready (serving
   gRPC, EG configured) before each run; then `python -m eebus_bridge run -c CFG` is spawned and
   the time from just before the spawn to the first byte in its JSONL file is taken (file size
   polled every 1 ms: 1 ms resolution, negligible CPU). The time until the handshake is complete
   (the simulator's record of StartHeartbeat) is reported as well. One unmeasured run first.
   Measured with cached bytecode (a private PYTHONPYCACHEPREFIX, like an installed package
   with .pyc files) and, as an extra row, without (PYTHONDONTWRITEBYTECODE=1, a checkout that
   is never compiled: every start compiles the bridge's own modules).
5. Resident memory. The simulator plays the `dummy-cem` preset (a random 100-3000 W limit for
   5 s every 5 s, a heartbeat every 4 s, spec timings); the bridge runs as a subprocess with the
   spec's approval rules. VmRSS of the bridge process is read from /proc/PID/status every
   `--rss-interval` s for `--memory-minutes` (10 by default); start = first sample after the
   handshake, end = the last one. Approved writes and JSONL lines are counted to show that the
   bridge really worked the whole time.
6. CPU while idle. The EG only sends a heartbeat every 4 s (no limits); after the handshake and
   5 s of settling, utime + stime of the bridge process (/proc/PID/stat, clock ticks) are read
   at the start and the end of `--idle-seconds` (60) and divided by the wall time.
7. Heartbeat events per second. DataUpdateHeartbeat events are flooded through the simulator's
   control interface: one TCP connection carries back-to-back `send_heartbeat` lines (at most
   1000 unanswered), each answered after the simulator emitted its event. Paced run: lines are
   offered at `--flood-rate` per second for `--flood-seconds`; consumed = Heartbeat inputs the
   bridge's LPC engine has handled (its `handle` is wrapped with a counter); backlog = events
   emitted minus consumed, sampled every 100 ms. Pass: the consumed rate (after the first
   second) reaches 99 % of the offered target and the backlog at the end of the run is below
   0.25 s worth of events (it does not grow; its maximum is reported too). The share of a core
   this process used (bridge plus the small flood driver) is reported. An unpaced run follows
   (as fast as the simulator answers) to show the headroom: if the simulator emits faster
   than the bridge consumes, the consumed rate is the bridge's capacity, otherwise the
   simulator was the bottleneck (the row says which).

p99 is the nearest-rank percentile (the smallest value with at least 99 % of the samples at or
below it).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from eebus_bridge.config import load_config
from eebus_bridge.grpc_transport import TRANSPORTS
from eebus_bridge.island import open_island
from eebus_bridge.lpc import Decision, Heartbeat, Input
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.runtime import Bridge
from eebus_bridge.sinks import jsonl as jsonl_sink
from eebus_bridge.sinks import jsonl_line
from eebus_bridge.start_up import freeze_start_up
from tools.hems_simulator import SimulatorProcess, open_simulator_process, terminate

EG_SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"  # the bench scenario's EG
DUMMY_CEM_SKI = "d0e1c2b3a4958677f8e9dacbbcad9e8f70615243"  # tools/scenarios/dummy-cem.toml
SIM_ARGS = ("-log-level", "INFO")  # INFO: the control port line, no line per event
BENCHMARKS = ("limit-writes", "deadline", "startup", "memory", "idle-cpu", "heartbeat-flood")
MB = 1024 * 1024


# ----------------------------------------------------------------------------- results


@attrs.frozen
class Result:
    """One metric: the table cells plus every number behind them."""

    key: str
    metric: str
    samples: str
    typical: str  # the "p50" cell
    worst: str  # the "p99 / max" cell
    target: str
    passed: bool | None  # None: informational, no target
    data: dict[str, Any]

    def row(self) -> str:
        verdict = "–" if self.passed is None else ("pass" if self.passed else "FAIL")
        cells = [self.metric, self.samples, self.typical, self.worst, self.target, verdict]
        return "| " + " | ".join(cells) + " |"


TABLE_HEADER = "| metric | samples | p50 | p99 / max | target | result |\n|---|---|---|---|---|---|"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- files


def prepare(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_scenario(
    folder: Path,
    *,
    heartbeat_period_s: float,
    writes: int = 0,
    first_write_s: float = 1.5,
    every_s: float = 1.0,
    duration_s: float = 0.0,
) -> Path:
    """The bench's EG: connects 0.1 s after StartService, sends heartbeats and, if `writes`,
    writes that many limits of random whole watts (seeded) every `every_s` seconds."""
    text = (
        'description = "eebus-bridge benchmark"\n'
        "seed = 1\n"
        "[eg]\n"
        f'ski = "{EG_SKI}"\n'
        "connect_delay_s = 0.1\n"
        f"heartbeat_period_s = {heartbeat_period_s!r}\n"
    )
    if writes:
        text += (
            "[[actions]]\n"
            'action = "send_limit"\n'
            f"at_s = {first_write_s!r}\n"
            f"every_s = {every_s!r}\n"
            f"count = {writes}\n"
            "value_min = 100.0\n"
            "value_max = 30000.0\n"
            "active = true\n"
            f"duration_s = {duration_s!r}\n"
        )
    path = prepare(folder) / "bench-scenario.toml"
    path.write_text(text)
    return path


# The bridge's [eebus] grpc_transport in every benchmark config (--grpc-transport).
GRPC_TRANSPORT = "grpclib"


def write_bridge_config(
    folder: Path, *, grpc_port: int, ems_ski: str = EG_SKI, jsonl_name: str = "publications.jsonl"
) -> Path:
    """A bridge config for an external sidecar (the simulator), spec timings and rules."""
    path = folder / "bridge.toml"
    path.write_text(
        "[device]\n"
        'vendor_code = "BENCH"\n'
        'brand = "eebus-bridge"\n'
        'model = "benchmark"\n'
        'serial_number = "BENCH-1"\n'
        "[eebus]\n"
        f"grpc_port = {grpc_port}\n"
        f'ems_ski_allowlist = ["{ems_ski}"]\n'
        "reconnect_delay_s = 0.5\n"
        f'grpc_transport = "{GRPC_TRANSPORT}"\n'
        "[sidecar]\n"
        "manage = false\n"
        "[lpc]\n"
        'approval_policy = "spec"\n'
        'state_file = "state.json"\n'
        "[[output]]\n"
        'type = "jsonl"\n'
        f'path = "{jsonl_name}"\n'
    )
    return path


def line_limit_w(line: str) -> float | None:
    """The total_power_W of the first schedule entry of a JSONL line (None: unlimited)."""
    record = json.loads(line)
    for entry in record["external_limits"].get("schedule_import", [])[:1]:
        power = entry.get("limits_to_root", {}).get("total_power_W")
        if power is not None:
            return float(power["value"])
    return None


# ----------------------------------------------------------------------------- observers


class SinkWrites:
    """Wraps the JSONL sink's write-and-flush to stamp each line the moment it is in the file.

    The sink calls the module-level function through `trio.to_thread`, so the wrapper runs in
    the worker thread and reads the clocks right after flush() returns: one list append and
    two clock reads more per line, nothing else (no wake-up, no polling).
    """

    def __init__(self) -> None:
        self.lines: list[tuple[float, float, str]] = []  # (monotonic, wall, line)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = jsonl_sink._write_and_flush

        def observed(stream: TextIO, line: str) -> None:
            original(stream, line)
            self.lines.append((time.monotonic(), time.time(), line))

        jsonl_sink._write_and_flush = observed
        try:
            yield
        finally:
            jsonl_sink._write_and_flush = original


class RecordedPublications(LatestValue[Publication]):
    """The bridge's latest-value cell, also keeping every publication in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[Publication] = []

    def set(self, value: Publication) -> None:
        self.history.append(value)
        super().set(value)


@contextlib.contextmanager
def bridge_log_to(path: Path) -> Iterator[None]:
    """INFO logging of the in-process bridge to a file, in its text format."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
        )
    )
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


# ----------------------------------------------------------------------------- sessions


@attrs.define
class Session:
    """Simulator process + in-process bridge, handshake done."""

    sim: SimulatorProcess
    bridge: Bridge
    writes: SinkWrites
    publications: RecordedPublications


@asynccontextmanager
async def in_process_session(
    workdir: Path, scenario: Path, *, control: bool, record: bool
) -> AsyncIterator[Session]:
    """Without `control` the simulator logs only warnings and nothing in this process reads
    its output while the scenario plays: the measured path shares no work with the harness."""
    writes = SinkWrites()
    publications = RecordedPublications()
    async with (
        open_island(),
        open_simulator_process(
            workdir,
            scenario=scenario,
            control=control,
            record=record,
            extra_args=SIM_ARGS if control else ("-log-level", "WARN"),
        ) as sim,
    ):
        config = load_config(write_bridge_config(workdir, grpc_port=sim.port)).config
        with writes.installed(), bridge_log_to(workdir / "bridge.log"):
            bridge = Bridge(config, publications=publications)
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                try:
                    with trio.fail_after(30):
                        await bridge.connected.wait()
                    yield Session(sim, bridge, writes, publications)
                finally:
                    nursery.cancel_scope.cancel()


def sim_records(sim: SimulatorProcess) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """(event name -> sorted monotonic stamps of emitted use-case events, approval records)."""
    events: dict[str, list[float]] = {}
    approvals: list[dict[str, Any]] = []
    for entry in sim.records(None):
        if entry["kind"] == "event" and entry["stream"] == "usecase":
            if entry["outcome"] == "emitted":
                events.setdefault(entry["name"], []).append(float(entry["mono"]))
        elif entry["kind"] == "approval":
            approvals.append(entry)
    for stamps in events.values():
        stamps.sort()
    return events, approvals


# ----------------------------------------------------------------------------- 1 + 2


async def wait_played(writes: int, every_s: float, done: Callable[[], int]) -> None:
    """Sleep through the scenario's writes, then until done() counts them all (max 30 s)."""
    await trio.sleep(1.5 + writes * every_s + 0.5)
    with trio.fail_after(30):
        while done() < writes:  # noqa: ASYNC110 - the simulator's record file, read rarely
            await trio.sleep(1.0)


def pair_limit_writes(
    events: dict[str, list[float]],
    approvals: list[dict[str, Any]],
    lines: list[tuple[float, float | None]],
    *,
    warmup: int,
    samples: int,
) -> tuple[list[float], list[float], dict[str, int]]:
    """(publish latencies, answer latencies, counts) from the records of one run.

    Pairing needs no guessing: the EG's writes get increasing msg counters and each makes one
    WriteApprovalRequired, so the k-th event belongs to the k-th counter; each approval the
    simulator records (a repeated answer for the same counter is ignored, unrecorded) is
    followed by exactly one DataUpdateLimit, so those pair in order too.
    """
    answers: dict[int, dict[str, Any]] = {}
    for approval in approvals:
        answers.setdefault(int(approval["msg_counter"]), approval)
    asks = events.get("WriteApprovalRequired", [])
    if len(asks) != len(answers):
        raise RuntimeError(f"{len(asks)} WriteApprovalRequired events for {len(answers)} writes")
    answer: list[float] = []
    denied = 0
    for index, counter in enumerate(sorted(answers)):
        record = answers[counter]
        if not record["approve"]:
            denied += 1
        elif index >= warmup and len(answer) < samples:
            answer.append(float(record["mono"]) - asks[index])

    approved = [a for a in approvals if a["approve"]]
    updates = events.get("DataUpdateLimit", [])
    if len(updates) != len(approved):
        raise RuntimeError(f"{len(updates)} DataUpdateLimit events for {len(approved)} approvals")
    line_times = [mono for mono, _ in lines]
    publish: list[float] = []
    repeated = superseded = overlapping = 0
    for index in range(max(warmup, 1), len(approved)):
        if len(publish) == samples:
            break
        value = float(approved[index]["limit"]["value"])
        previous = float(approved[index - 1]["limit"]["value"])
        if value == previous:
            repeated += 1  # the same limit again: nothing new to publish
            continue
        update_at = updates[index]
        position = bisect.bisect_left(line_times, update_at)
        while position < len(lines) and lines[position][1] == previous:
            position += 1  # the previous limit's line, written late
        if position == len(lines) or lines[position][1] != value:
            superseded += 1  # the next limit came before this one was read: never published
            continue
        written_at = lines[position][0]
        publish.append(written_at - update_at)
        next_ask = bisect.bisect_right(asks, float(approved[index]["mono"]))
        if next_ask < len(asks) and asks[next_ask] < written_at:
            overlapping += 1  # the next write came before this line: still a valid sample
    counts = {
        "denied": denied,
        "repeated_values": repeated,
        "superseded": superseded,
        "overlapping_writes": overlapping,
    }
    return publish, answer, counts


# Where the minimal client stamps its steps (set by tools/trace_event_path.py; None = not).
MINIMAL_TRACE: Path | None = None


def minimal_client(
    port: int,
    lpc_endpoint: str,
    config_path: Path,
    stamps_path: Path,
    trace_path: Path | None = None,
) -> None:
    """The floor of metrics 1 and 2: the fewest lines that do the bridge's job on this path.

    A synchronous grpcio client (generic unary calls, betterproto2 messages as bytes): the same
    handshake (or, when the sidecar is already set up, the same resumption on the known LPC
    endpoint), then per event: WriteApprovalRequired -> PendingConsumptionLimit -> approve each;
    DataUpdateLimit -> ConsumptionLimit -> one JSON line written and flushed. No state machine,
    no checks. Like the bridge, it keeps what start-up built out of the garbage collector's
    full passes (`freeze_start_up`). After each line, "<monotonic> <value>" goes to `stamps_path`
    (after the measured moment). Runs until killed. With `trace_path`
    (tools/trace_event_path.py), each event's steps are stamped there too: "D <received>
    <read sent> <read answered> <line written>" and "W <received> <pending read sent>
    <pending read answered>".
    """
    import grpc  # from grpcio-tools (the test extra); the bridge itself never uses grpcio

    from eebus_bridge.eebus_link import set_config_request
    from eebus_bridge.generated import control_service as cs
    from eebus_bridge.generated import cs_lpc
    from eebus_bridge.generated.common_types import LoadLimit
    from eebus_bridge.sidecar_client import LPC_ENTITY, LPC_USE_CASE, NOT_IN_SETUP

    def unary(channel: Any, path: str, response: Any) -> Any:
        return channel.unary_unary(
            path, request_serializer=bytes, response_deserializer=response.parse
        )

    config = load_config(config_path).config
    control = grpc.insecure_channel(f"localhost:{port}")
    service, lpc_service = (
        "/control_service.ControlService/",
        "/cs_lpc.ControllableSystemLPCControl/",
    )
    try:
        unary(control, service + "SetConfig", cs.EmptyResponse)(set_config_request(config))
        unary(control, service + "StartSetup", cs.EmptyResponse)(cs.EmptyRequest())
        for ski in sorted(config.eebus.ems_ski_allowlist):
            request = cs.RegisterRemoteSkiRequest(remote_ski=ski)
            unary(control, service + "RegisterRemoteSki", cs.EmptyResponse)(request)
        add = cs.AddUseCaseRequest(entity_address=LPC_ENTITY, use_case=LPC_USE_CASE)
        lpc_endpoint = unary(control, service + "AddUseCase", cs.AddUseCaseResponse)(add).endpoint
    except grpc.RpcError as exc:
        if NOT_IN_SETUP not in (exc.details() or ""):
            raise
    lpc = grpc.insecure_channel(lpc_endpoint)
    lpc_config, set_done = config.lpc, cs_lpc.SetConsumptionLimitResponse
    for name, message in (
        (
            "SetConsumptionNominalMax",
            cs_lpc.SetConsumptionNominalMaxRequest(value=lpc_config.max_nominal_power_W),
        ),
        (
            "SetConsumptionLimit",
            cs_lpc.SetConsumptionLimitRequest(
                load_limit=LoadLimit(is_changeable=True, value=lpc_config.max_nominal_power_W)
            ),
        ),
        (
            "SetFailsafeConsumptionActivePowerLimit",
            cs_lpc.SetFailsafeConsumptionActivePowerLimitRequest(
                value=lpc_config.failsafe_limit_W, is_changeable=True
            ),
        ),
        (
            "SetFailsafeDurationMinimum",
            cs_lpc.SetFailsafeDurationMinimumRequest(
                duration_nanoseconds=round(lpc_config.failsafe_duration_s * 1e9), is_changeable=True
            ),
        ),
    ):
        unary(lpc, lpc_service + name, set_done)(message)
    subscribe = cs.SubscribeUseCaseEventsRequest(entity_address=LPC_ENTITY, use_case=LPC_USE_CASE)
    events = control.unary_stream(
        service + "SubscribeUseCaseEvents",
        request_serializer=bytes,
        response_deserializer=cs.SubscribeUseCaseEventsResponse.parse,
    )(subscribe)
    discovery = control.unary_stream(
        service + "SubscribeDiscoveryEvents",
        request_serializer=bytes,
        response_deserializer=cs.DiscoveryEvent.parse,
    )(cs.SubscribeDiscoveryEventsRequest())
    with contextlib.suppress(grpc.RpcError):  # "Service is already running" when resuming
        unary(control, service + "StartService", cs.EmptyResponse)(cs.EmptyRequest())
    unary(lpc, lpc_service + "StartHeartbeat", cs_lpc.StartHeartbeatResponse)(
        cs_lpc.StartHeartbeatRequest()
    )
    pending = unary(
        lpc, lpc_service + "PendingConsumptionLimit", cs_lpc.PendingConsumptionLimitResponse
    )
    answer = unary(
        lpc,
        lpc_service + "ApproveOrDenyConsumptionLimit",
        cs_lpc.ApproveOrDenyConsumptionLimitResponse,
    )
    read = unary(lpc, lpc_service + "ConsumptionLimit", cs_lpc.ConsumptionLimitResponse)
    freeze_start_up()  # as the bridge and the simulator do
    print("ready", flush=True)
    trace = trace_path.open("a") if trace_path is not None else None
    with stamps_path.open("a") as stamps, (stamps_path.parent / "minimal.jsonl").open("a") as out:
        for event in events:
            received = time.monotonic()
            name = event.use_case_event.event if event.use_case_event else ""
            if name == "WriteApprovalRequired":
                sent = time.monotonic()
                counters = pending(cs_lpc.PendingConsumptionLimitRequest()).load_limits
                if trace is not None:
                    trace.write(f"W {received!r} {sent!r} {time.monotonic()!r}\n")
                for counter in counters:
                    answer(
                        cs_lpc.ApproveOrDenyConsumptionLimitRequest(
                            msg_counter=counter, approve=True
                        )
                    )
            elif name == "DataUpdateLimit":
                sent = time.monotonic()
                limit = read(cs_lpc.ConsumptionLimitRequest()).load_limit
                answered = time.monotonic()
                out.write(json.dumps({"limit_W": limit.value, "active": limit.is_active}) + "\n")
                out.flush()
                written = time.monotonic()
                stamps.write(f"{written!r} {limit.value!r}\n")
                stamps.flush()
                if trace is not None:
                    trace.write(f"D {received!r} {sent!r} {answered!r} {written!r}\n")
                    trace.flush()
    discovery.cancel()


@attrs.frozen
class Phase:
    """One client's turn against the shared simulator: its writes and what it produced."""

    client: str  # "bridge" | "minimal"
    started: float  # monotonic, just before the first write
    ended: float  # monotonic, after the last answer arrived
    counters: frozenset[int]
    lines: list[tuple[float, float | None]]  # (monotonic when in the file, limit W)
    cpu_s: float  # the client's CPU time while the writes were played
    sim_cpu_s: float  # the simulator's in the same span


def write_driver(control_port: int, count: int, interval_s: float) -> None:
    """`count` EG writes through one control connection, one every interval_s, from a process of
    its own (so that neither client's CPU time includes it); the answers (msg counters) are read
    only after the last write and printed as one JSON list."""
    import socket

    rng = random.Random(1)
    with socket.create_connection(("127.0.0.1", control_port)) as connection:
        next_at = time.monotonic()
        for _ in range(count):
            value = float(rng.randint(100, 30000))
            connection.sendall(
                (json.dumps({"action": "send_limit", "value": value}) + "\n").encode()
            )
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        received = b""
        while received.count(b"\n") < count:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError("control interface closed the connection")
            received += chunk
    answers = [json.loads(line) for line in received.decode().splitlines() if line.strip()]
    failed = [a for a in answers if not a.get("ok")]
    if failed:
        raise RuntimeError(f"control send_limit failed: {failed[0]}")
    print(json.dumps([int(a["msg_counter"]) for a in answers]))


async def _drive_writes(control_port: int, count: int, interval_s: float) -> frozenset[int]:
    command = [sys.executable, "-m", "tools.bench_runtime", "--drive-writes"]
    command += [str(control_port), str(count), str(interval_s)]
    done = await trio.run_process(command, capture_stdout=True)
    return frozenset(json.loads(done.stdout))


async def _answered(sim: SimulatorProcess, counters: frozenset[int]) -> None:
    with trio.fail_after(30):
        while True:
            done = {int(a["msg_counter"]) for a in sim.records("approval")}
            if counters <= done:
                return
            await trio.sleep(0.2)


async def _bridge_phase(
    workdir: Path, sim: SimulatorProcess, endpoint: str, *, writes: int, interval_s: float
) -> Phase:
    config = load_config(write_bridge_config(workdir, grpc_port=sim.port)).config
    sink_writes = SinkWrites()
    with sink_writes.installed(), bridge_log_to(workdir / "bridge.log"):
        bridge = Bridge(config, publications=RecordedPublications())
        freeze_start_up()  # as `eebus-bridge run` does
        if endpoint:
            # The sidecar is already set up (by an earlier phase): resume on its LPC endpoint,
            # as the bridge does after a reconnect within one process.
            bridge.link._endpoint = endpoint
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            with trio.fail_after(30):
                await bridge.connected.wait()
            await trio.sleep(1.5)  # one EG heartbeat: writes in Init need one [LPC-TS-036]
            started = time.monotonic()
            cpu, sim_cpu = time.process_time(), proc_cpu_ns(sim.pid)
            counters = await _drive_writes(sim.control_port or 0, writes, interval_s)
            cpu, sim_cpu = time.process_time() - cpu, proc_cpu_ns(sim.pid) - sim_cpu
            await _answered(sim, counters)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    lines = [(mono, line_limit_w(line)) for mono, _, line in sink_writes.lines]
    return Phase("bridge", started, time.monotonic(), counters, lines, cpu, sim_cpu / 1e9)


async def _minimal_phase(
    workdir: Path, sim: SimulatorProcess, endpoint: str, *, writes: int, interval_s: float
) -> Phase:
    config_path = write_bridge_config(workdir, grpc_port=sim.port)
    stamps = workdir / f"minimal-{time.monotonic_ns()}.stamps"
    command = [
        sys.executable,
        "-m",
        "tools.bench_runtime",
        "--minimal-client",
        str(sim.port),
        endpoint,
        str(config_path),
        str(stamps),
        *([str(MINIMAL_TRACE)] if MINIMAL_TRACE is not None else []),
    ]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            ready = b""
            while b"ready" not in ready:
                chunk = await process.stdout.receive_some(1024)
                if not chunk:
                    raise RuntimeError("the minimal client exited before it was ready")
                ready += chunk
        await trio.sleep(1.5)
        started = time.monotonic()
        cpu, sim_cpu = proc_cpu_ns(process.pid), proc_cpu_ns(sim.pid)
        counters = await _drive_writes(sim.control_port or 0, writes, interval_s)
        cpu, sim_cpu = proc_cpu_ns(process.pid) - cpu, proc_cpu_ns(sim.pid) - sim_cpu
        await _answered(sim, counters)
        await trio.sleep(0.3)
    finally:
        process.kill()
        await process.wait()
    lines: list[tuple[float, float | None]] = []
    for text in stamps.read_text().splitlines():
        mono, value = text.split()
        lines.append((float(mono), float(value)))
    return Phase("minimal", started, time.monotonic(), counters, lines, cpu / 1e9, sim_cpu / 1e9)


def _phase_samples(
    phase: Phase, events: dict[str, list[float]], approvals: list[dict[str, Any]], warmup: int
) -> tuple[list[float], list[float], dict[str, int]]:
    mine = [a for a in approvals if int(a["msg_counter"]) in phase.counters]
    window = {
        name: [t for t in stamps if phase.started <= t <= phase.ended]
        for name, stamps in events.items()
    }
    return pair_limit_writes(window, mine, phase.lines, warmup=warmup, samples=len(mine))


def _ratio_cells(bridge: dict[str, float], floor: dict[str, float]) -> tuple[str, str]:
    return f"{bridge['p50'] / floor['p50']:.2f}x", f"{bridge['p99'] / floor['p99']:.2f}x"


async def bench_limit_writes(
    workdir: Path, *, samples: int, warmup: int, interval_s: float, rounds: int
) -> list[Result]:
    """Metrics 1 and 2, the bridge and the minimal client taking turns on one simulator."""
    per_phase = warmup + max(1, math.ceil(samples / rounds)) + 5
    scenario = write_scenario(workdir, heartbeat_period_s=1.0)
    phases: list[Phase] = []
    async with (
        open_island(),
        open_simulator_process(
            workdir, scenario=scenario, control=True, record=True, extra_args=SIM_ARGS
        ) as sim,
    ):
        endpoint = ""
        for round_index in range(rounds):
            order = ("bridge", "minimal") if round_index % 2 == 0 else ("minimal", "bridge")
            for client in order:
                run = _bridge_phase if client == "bridge" else _minimal_phase
                phases.append(
                    await run(
                        prepare(workdir / f"{client}-{round_index}"),
                        sim,
                        endpoint,
                        writes=per_phase,
                        interval_s=interval_s,
                    )
                )
                if not endpoint:
                    status = await sim.control.call("status")
                    endpoint = f"localhost:{status['lpc_port']}"
        events, approvals = sim_records(sim)

    publish: dict[str, list[float]] = {"bridge": [], "minimal": []}
    answer: dict[str, list[float]] = {"bridge": [], "minimal": []}
    per_round: dict[str, list[dict[str, float]]] = {"bridge": [], "minimal": []}
    denied = 0
    for phase in phases:
        pub, ans, counts = _phase_samples(phase, events, approvals, warmup)
        denied += counts["denied"]
        publish[phase.client] += pub
        answer[phase.client] += ans
        per_round[phase.client].append(
            {
                "publish_p50": percentile(pub, 50),
                "publish_p99": percentile(pub, 99),
                "answer_p50": percentile(ans, 50),
                "answer_p99": percentile(ans, 99),
            }
        )
    results: list[Result] = []
    cpu_ms: dict[str, float] = {}
    sim_cpu_ms: dict[str, float] = {}
    for client in ("bridge", "minimal"):
        mine = [p for p in phases if p.client == client]
        writes = sum(len(p.counters) for p in mine)
        cpu_ms[client] = 1000 * sum(p.cpu_s for p in mine) / writes
        sim_cpu_ms[client] = 1000 * sum(p.sim_cpu_s for p in mine) / writes
    results.append(
        Result(
            key="cpu_per_write",
            metric="CPU per EG write (both paths): bridge / minimal client; simulator",
            samples=str(sum(len(p.counters) for p in phases)),
            typical=(
                f"{cpu_ms['bridge']:.2f} / {cpu_ms['minimal']:.2f} ms = "
                f"{cpu_ms['bridge'] / cpu_ms['minimal']:.2f}x"
            ),
            worst=f"sim {sim_cpu_ms['bridge']:.2f} / {sim_cpu_ms['minimal']:.2f} ms",
            target="(info)",
            passed=None,
            data={"client_ms": cpu_ms, "simulator_ms": sim_cpu_ms},
        )
    )
    for key, metric, samples_by_client, target, limits in (
        (
            "limit_to_jsonl",
            "1. DataUpdateLimit event -> JSONL line written",
            publish,
            "p50 <= 2 ms, p99 <= 5 ms",
            (0.002, 0.005),
        ),
        (
            "approval_answer",
            "2. WriteApprovalRequired -> ApproveOrDeny at the simulator",
            answer,
            "p50 <= 2 ms, p99 <= 5 ms",
            (0.002, 0.005),
        ),
    ):
        bridge, floor = summary(samples_by_client["bridge"]), summary(samples_by_client["minimal"])
        ratio50, ratio99 = _ratio_cells(bridge, floor)
        details = {
            "rounds": rounds,
            "warmup_per_phase": warmup,
            "write_interval_s": interval_s,
            "denied": denied,
            "per_round": per_round,
        }
        prefix = "publish" if key == "limit_to_jsonl" else "answer"
        spread = {
            client: (
                f"{_ms(min(r[prefix + '_p50'] for r in rows))}–"
                f"{_ms(max(r[prefix + '_p50'] for r in rows))}"
            )
            for client, rows in per_round.items()
        }
        results += [
            Result(
                key=key,
                metric=f"{metric} (bridge)",
                samples=str(bridge["n"]),
                typical=f"{_ms(bridge['p50'])} (rounds {spread['bridge']})",
                worst=f"{_ms(bridge['p99'])} / {_ms(bridge['max'])}",
                target=target,
                passed=bridge["p50"] <= limits[0] and bridge["p99"] <= limits[1] and denied == 0,
                data={"seconds": bridge, **details},
            ),
            Result(
                key=f"{key}_minimal",
                metric=f"{metric} (minimal grpcio client)",
                samples=str(floor["n"]),
                typical=f"{_ms(floor['p50'])} (rounds {spread['minimal']})",
                worst=f"{_ms(floor['p99'])} / {_ms(floor['max'])}",
                target="(floor)",
                passed=None,
                data={"seconds": floor},
            ),
            Result(
                key=f"{key}_ratio",
                metric=f"{metric}: bridge / minimal",
                samples="",
                typical=ratio50,
                worst=ratio99,
                target="<= 1.5x at p50 and p99",
                passed=bridge["p50"] <= 1.5 * floor["p50"] and bridge["p99"] <= 1.5 * floor["p99"],
                data={
                    "p50": bridge["p50"] / floor["p50"],
                    "p99": bridge["p99"] / floor["p99"],
                },
            ),
        ]
    return results


# ----------------------------------------------------------------------------- 3


async def bench_deadline(workdir: Path, *, samples: int, interval_s: float) -> list[Result]:
    total = samples + 1  # the first one is a warm-up
    scenario = write_scenario(
        workdir, heartbeat_period_s=1.0, writes=total, every_s=interval_s, duration_s=1.0
    )
    async with in_process_session(workdir, scenario, control=False, record=False) as session:
        history = session.publications.history

        def expired() -> int:
            return sum(1 for p in history if p.state == "Unlimited/controlled")

        await wait_played(total, interval_s, expired)
        await trio.sleep(0.5)
        written = {line.rstrip("\n"): wall for _, wall, line in session.writes.lines}
        publications = list(history)

    lateness: list[float] = []
    line_lateness: list[float] = []
    replaced = 0
    for limited, following in itertools.pairwise(publications):
        if limited.state != "Limited" or limited.end_time is None:
            continue
        if following.state != "Unlimited/controlled":
            replaced += 1  # something else came first (a late write): no deadline to measure
            continue
        lateness.append((following.time - limited.end_time).total_seconds())
        wall = written[jsonl_line(following)]
        line_lateness.append(wall - limited.end_time.timestamp())
    lateness, line_lateness = lateness[1:], line_lateness[1:]
    late, line_late = summary(lateness), summary(line_lateness)
    return [
        Result(
            key="deadline_lateness",
            metric="3. Deadline-driven publication lateness (timed limit end)",
            samples=str(len(lateness)),
            typical=f"{_ms(late['p50'])} (line {_ms(line_late['p50'])})",
            worst=f"{_ms(late['p99'])} / {_ms(late['max'])} (line max {_ms(line_late['max'])})",
            target="<= 50 ms",
            passed=late["max"] <= 0.050 and late["min"] >= 0.0,
            data={
                "seconds": late,
                "line_written_seconds": line_late,
                "write_interval_s": interval_s,
                "replaced_before_end": replaced,
            },
        )
    ]


# ----------------------------------------------------------------------------- subprocesses


def bridge_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "eebus_bridge", "run", "-c", str(config)]


@asynccontextmanager
async def bridge_process(
    config: Path, log_path: Path, env: dict[str, str] | None = None
) -> AsyncIterator[trio.Process]:
    """`python -m eebus_bridge run -c CONFIG`, its output to log_path; SIGTERM at the end."""
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            bridge_command(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=config.parent,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        await terminate(process, grace=5)


async def wait_record(
    sim: SimulatorProcess, method: str, *, limit_s: float = 20.0, process: trio.Process
) -> dict[str, Any]:
    """The simulator's first record of an RPC, polled every 10 ms; fails if the bridge died."""
    with trio.fail_after(limit_s):
        while True:
            for entry in sim.records("rpc"):
                if entry.get("method") == method:
                    return entry
            if process.returncode is not None:
                raise RuntimeError(f"the bridge exited with {process.returncode}")
            await trio.sleep(0.01)


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process in clock ticks (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of the threads a process has now (/proc/PID/task/*/schedstat).

    Finer than clock ticks, but the time of threads that already exited is missing.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def jsonl_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- 4


async def _startup_run(run_dir: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first JSONL byte, seconds to StartHeartbeat at the simulator)."""
    scenario = write_scenario(run_dir, heartbeat_period_s=4.0)
    async with open_simulator_process(run_dir, scenario=scenario, extra_args=SIM_ARGS) as sim:
        config = write_bridge_config(run_dir, grpc_port=sim.port)
        jsonl = run_dir / "publications.jsonl"
        spawned = time.monotonic()
        async with bridge_process(config, run_dir / "bridge.log", env) as process:
            with trio.fail_after(20):
                while not (jsonl.exists() and jsonl.stat().st_size > 0):
                    if process.returncode is not None:
                        raise RuntimeError(f"the bridge exited with {process.returncode}")
                    await trio.sleep(0.001)
            first_line = time.monotonic() - spawned
            handshake = await wait_record(sim, "cs_lpc.StartHeartbeat", process=process)
    return first_line, float(handshake["mono"]) - spawned


async def bench_startup(workdir: Path, *, runs: int, uncached_runs: int) -> list[Result]:
    variants: list[tuple[str, int, dict[str, str]]] = []
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    variants.append(("cached", runs, cached))
    if uncached_runs > 0:
        uncached = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
        uncached["PYTHONDONTWRITEBYTECODE"] = "1"
        variants.append(("uncached", uncached_runs, uncached))
    results: list[Result] = []
    for name, count, env in variants:
        first_lines: list[float] = []
        handshakes: list[float] = []
        for run in range(count + 1):  # run 0 is unmeasured (fills the bytecode cache)
            first_line, handshake = await _startup_run(workdir / f"{name}-{run}", env)
            if run > 0:
                first_lines.append(first_line)
                handshakes.append(handshake)
        first, shake = summary(first_lines), summary(handshakes)
        if name == "cached":
            results.append(
                Result(
                    key="startup_first_publication",
                    metric="4. Process start -> first JSONL line (sidecar running)",
                    samples=str(count),
                    typical=_ms(first["p50"]),
                    worst=f"max {_ms(first['max'])}",
                    target="<= 1 s",
                    passed=first["max"] <= 1.0,
                    data={"seconds": first, "handshake_seconds": shake, "bytecode": name},
                )
            )
            results.append(
                Result(
                    key="startup_handshake",
                    metric="4b. Process start -> handshake complete (StartHeartbeat)",
                    samples=str(count),
                    typical=_ms(shake["p50"]),
                    worst=f"max {_ms(shake['max'])}",
                    target="(info)",
                    passed=None,
                    data={"seconds": shake, "bytecode": name},
                )
            )
        else:
            results.append(
                Result(
                    key="startup_first_publication_uncached",
                    metric="4c. Same as 4, without bytecode files (never-compiled checkout)",
                    samples=str(count),
                    typical=f"{_ms(first['p50'])} (handshake {_ms(shake['p50'])})",
                    worst=f"max {_ms(first['max'])} (handshake {_ms(shake['max'])})",
                    target="(info)",
                    passed=None,
                    data={"seconds": first, "handshake_seconds": shake, "bytecode": name},
                )
            )
    return results


# ----------------------------------------------------------------------------- 5


async def bench_memory(workdir: Path, *, minutes: float, interval_s: float) -> list[Result]:
    prepare(workdir)
    rss: list[tuple[float, int]] = []  # (seconds since the handshake, VmRSS kB)
    async with open_simulator_process(
        workdir, scenario="dummy-cem", extra_args=(*SIM_ARGS, "-seed", "1")
    ) as sim:
        config = write_bridge_config(workdir, grpc_port=sim.port, ems_ski=DUMMY_CEM_SKI)
        async with bridge_process(config, workdir / "bridge.log") as process:
            await wait_record(sim, "cs_lpc.StartHeartbeat", process=process)
            began = time.monotonic()
            end = began + minutes * 60.0
            while True:
                now = time.monotonic()
                if process.returncode is not None:
                    raise RuntimeError(f"the bridge exited with {process.returncode}")
                rss.append((now - began, proc_status_kb(process.pid, "VmRSS")))
                if now >= end:
                    break
                await trio.sleep(min(interval_s, max(end - now, 0.0)))
            peak_kb = proc_status_kb(process.pid, "VmHWM")
        approvals = sim.records("approval")
    lines = jsonl_lines(workdir / "publications.jsonl")
    approved = sum(1 for a in approvals if a["approve"])
    start_mb, end_mb = rss[0][1] * 1024 / MB, rss[-1][1] * 1024 / MB
    max_mb = max(kb for _, kb in rss) * 1024 / MB
    return [
        Result(
            key="memory_rss",
            metric=f"5. Resident memory (VmRSS) after {minutes:g} min of dummy-cem",
            samples=f"{len(rss)} (every {interval_s:g} s)",
            typical=f"start {start_mb:.1f} MB",
            worst=f"end {end_mb:.1f} MB (max {max_mb:.1f}, peak {peak_kb / 1024:.1f})",
            target="<= 60 MB",
            passed=end_mb <= 60.0 and max_mb <= 60.0,
            data={
                "minutes": minutes,
                "rss_kb": rss,
                "vm_hwm_kb": peak_kb,
                "writes": len(approvals),
                "approved": approved,
                "jsonl_lines": len(lines),
            },
        )
    ]


# ----------------------------------------------------------------------------- 6


async def bench_idle_cpu(workdir: Path, *, seconds: float) -> list[Result]:
    scenario = write_scenario(workdir, heartbeat_period_s=4.0)
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    async with open_simulator_process(workdir, scenario=scenario, extra_args=SIM_ARGS) as sim:
        config = write_bridge_config(workdir, grpc_port=sim.port)
        async with bridge_process(config, workdir / "bridge.log") as process:
            await wait_record(sim, "cs_lpc.StartHeartbeat", process=process)
            await trio.sleep(5.0)
            ticks_before, ns_before = proc_cpu_ticks(process.pid), proc_cpu_ns(process.pid)
            began = time.monotonic()
            await trio.sleep(seconds)
            ticks_after, ns_after = proc_cpu_ticks(process.pid), proc_cpu_ns(process.pid)
            ended = time.monotonic()
            if process.returncode is not None:
                raise RuntimeError(f"the bridge exited with {process.returncode}")
        events = sim.records("event")
    heartbeats = sum(
        1
        for e in events
        if e["name"] == "DataUpdateHeartbeat" and began <= float(e["mono"]) <= ended
    )
    # Clock ticks count every thread (also ones that exited) but only in 10 ms steps;
    # schedstat is exact for the threads alive at the end. The larger of the two is reported.
    tick_s = (ticks_after - ticks_before) / ticks_per_s
    sched_s = (ns_after - ns_before) / 1e9
    cpu_s = max(tick_s, sched_s)
    percent = 100.0 * cpu_s / (ended - began)
    return [
        Result(
            key="idle_cpu",
            metric=f"6. CPU while idle ({ended - began:.0f} s, EG heartbeat every 4 s)",
            samples=f"1 ({heartbeats} heartbeats)",
            typical=f"{percent:.2f} % of a core",
            worst=f"{cpu_s * 1000:.1f} ms CPU",
            target="<= 1 %",
            passed=percent <= 1.0,
            data={
                "seconds": ended - began,
                "cpu_seconds": cpu_s,
                "cpu_seconds_from_ticks": tick_s,
                "cpu_seconds_from_schedstat": sched_s,
                "percent": percent,
                "heartbeats": heartbeats,
                "clock_ticks_per_s": ticks_per_s,
            },
        )
    ]


# ----------------------------------------------------------------------------- 7


@attrs.define
class FloodRun:
    offered_rate: float | None  # None: unpaced
    seconds: float
    samples: list[tuple[float, int, int]] = attrs.Factory(list)  # (t, emitted, consumed)
    sent: int = 0
    emitted: int = 0
    failed: int = 0
    drained_after_s: float | None = None  # from the end of the offering to backlog 0
    bridge_cpu: float = 0.0  # share of one core used by this process (bridge + driver)
    simulator_cpu: float = 0.0  # share of one core used by the simulator process

    def rates(self, skip_s: float = 1.0) -> tuple[float, float]:
        """(emitted/s, consumed/s) between the first sample after skip_s and the last one."""
        steady = [s for s in self.samples if s[0] >= skip_s]
        first, last = steady[0], steady[-1]
        span = last[0] - first[0]
        return (last[1] - first[1]) / span, (last[2] - first[2]) / span

    def backlogs(self, skip_s: float = 1.0) -> list[int]:
        return [emitted - consumed for t, emitted, consumed in self.samples if t >= skip_s]


_HEARTBEAT_LINE = b'{"action": "send_heartbeat"}\n'
_MAX_UNANSWERED = 1000


async def flood(
    sim: SimulatorProcess, consumed: Callable[[], int], *, rate: float | None, seconds: float
) -> FloodRun:
    """Offer send_heartbeat lines on one control connection; sample emitted vs consumed."""
    run = FloodRun(offered_rate=rate, seconds=seconds)
    assert sim.control_port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", sim.control_port)
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    base = consumed()

    async def read_answers() -> None:
        partial = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            *complete, partial = (partial + chunk).split(b"\n")
            run.emitted += len(complete)
            run.failed += sum(1 for answer in complete if b'"ok": true' not in answer)

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(read_answers)
        began = time.monotonic()
        cpu_began, sim_ticks_began = time.process_time(), proc_cpu_ticks(sim.pid)
        next_sample = began
        while (now := time.monotonic()) < began + seconds:
            due = run.sent + _MAX_UNANSWERED if rate is None else int((now - began) * rate)
            allowed = min(due, run.emitted + _MAX_UNANSWERED)
            if allowed > run.sent:
                await stream.send_all(_HEARTBEAT_LINE * (allowed - run.sent))
                run.sent = allowed
            if now >= next_sample:
                run.samples.append((now - began, run.emitted, consumed() - base))
                next_sample += 0.1
            await trio.sleep(0.002)
        stopped = time.monotonic()
        run.bridge_cpu = (time.process_time() - cpu_began) / (stopped - began)
        sim_ticks = proc_cpu_ticks(sim.pid) - sim_ticks_began
        run.simulator_cpu = sim_ticks / ticks_per_s / (stopped - began)
        with trio.fail_after(30):
            while run.emitted < run.sent:  # noqa: ASYNC110 - a counter, checked rarely
                await trio.sleep(0.005)
        with trio.move_on_after(30):
            while consumed() - base < run.emitted:  # noqa: ASYNC110 - the engine's counter
                await trio.sleep(0.005)
        if consumed() - base >= run.emitted:
            run.drained_after_s = time.monotonic() - stopped
        nursery.cancel_scope.cancel()
    return run


async def bench_heartbeat_flood(workdir: Path, *, rate: float, seconds: float) -> list[Result]:
    consumed = 0

    scenario = write_scenario(workdir, heartbeat_period_s=3600.0)
    async with in_process_session(workdir, scenario, control=True, record=False) as session:
        with trio.fail_after(15):
            # The EG connects 0.1 s after StartService; another process, so ask it.
            while True:
                status = await session.sim.control.call("status")
                if status["eg"]["connected"]:
                    break
                await trio.sleep(0.05)
        engine = session.bridge.runner.engine
        handle = engine.handle

        def counting(event: Input, now: float) -> list[Decision]:
            nonlocal consumed
            if type(event) is Heartbeat:
                consumed += 1
            return handle(event, now)

        engine.handle = counting  # type: ignore[method-assign]
        paced = await flood(session.sim, lambda: consumed, rate=rate, seconds=seconds)
        unpaced = await flood(
            session.sim, lambda: consumed, rate=None, seconds=max(seconds / 2, 3.0)
        )
        state = engine.state.value

    emitted_rate, consumed_rate = paced.rates()
    backlog = paced.backlogs()
    bound = 0.25 * rate
    max_emitted, max_consumed = unpaced.rates()
    max_backlog = unpaced.backlogs()
    # A backlog that grows means the bridge consumed less than the simulator emitted.
    bottleneck = "bridge" if max_consumed < 0.98 * max_emitted else "simulator"
    return [
        Result(
            key="heartbeat_throughput",
            metric=f"7. Heartbeat events consumed/s at {rate:g}/s offered ({seconds:g} s)",
            samples=f"{paced.emitted} events",
            typical=f"{consumed_rate:.0f}/s (offered {emitted_rate:.0f}/s)",
            worst=(
                f"backlog end {backlog[-1]} (max {max(backlog)}); "
                f"bridge CPU {paced.bridge_cpu:.0%} of a core"
            ),
            target=f">= {rate:g}/s, backlog end < {bound:.0f}",
            # Short bursts of backlog (a GC pause, another process on the core) are fine as
            # long as the bridge catches up: what must not happen is a backlog that grows.
            passed=(
                paced.failed == 0
                and consumed_rate >= 0.99 * rate
                and backlog[-1] < bound
                and paced.drained_after_s is not None
            ),
            data={
                "paced": attrs.asdict(paced),
                "emitted_per_s": emitted_rate,
                "consumed_per_s": consumed_rate,
                "engine_state": state,
            },
        ),
        Result(
            key="heartbeat_throughput_unpaced",
            metric="7b. Heartbeat events consumed/s, unpaced flood",
            samples=f"{unpaced.emitted} events",
            typical=f"{max_consumed:.0f}/s (emitted {max_emitted:.0f}/s)",
            worst=(
                f"backlog max {max(max_backlog)}; limited by the {bottleneck} (CPU: bridge "
                f"{unpaced.bridge_cpu:.0%}, simulator {unpaced.simulator_cpu:.0%} of a core)"
            ),
            target="(info)",
            passed=None,
            data={
                "unpaced": attrs.asdict(unpaced),
                "emitted_per_s": max_emitted,
                "consumed_per_s": max_consumed,
                "bottleneck": bottleneck,
            },
        ),
    ]


# ----------------------------------------------------------------------------- main


async def run_benchmarks(names: Sequence[str], args: argparse.Namespace) -> list[Result]:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-"))
    results: list[Result] = []
    for name in names:
        first = len(results)
        folder = workdir / name
        print(f"# running {name} (files in {folder})", file=sys.stderr, flush=True)
        if name == "limit-writes":
            results += await bench_limit_writes(
                folder,
                samples=args.limit_samples,
                warmup=args.warmup,
                interval_s=args.write_interval_ms / 1000.0,
                rounds=args.rounds,
            )
        elif name == "deadline":
            results += await bench_deadline(
                folder, samples=args.deadline_samples, interval_s=args.deadline_interval
            )
        elif name == "startup":
            results += await bench_startup(
                folder, runs=args.startup_runs, uncached_runs=args.uncached_runs
            )
        elif name == "memory":
            results += await bench_memory(
                folder, minutes=args.memory_minutes, interval_s=args.rss_interval
            )
        elif name == "idle-cpu":
            results += await bench_idle_cpu(folder, seconds=args.idle_seconds)
        elif name == "heartbeat-flood":
            results += await bench_heartbeat_flood(
                folder, rate=args.flood_rate, seconds=args.flood_seconds
            )
        for result in results[first:]:
            print(f"#   {result.row()}", file=sys.stderr, flush=True)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_runtime",
        description="eebus-bridge benchmarks against the HEMS simulator (see the docstring).",
    )
    parser.add_argument("benchmarks", nargs="+", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--workdir", help="keep the files here (default: a new temp folder)")
    parser.add_argument("--limit-samples", type=int, default=1000, help="metrics 1+2 (1000)")
    parser.add_argument(
        "--warmup", type=int, default=20, help="unmeasured writes first, per phase (20)"
    )
    parser.add_argument(
        "--rounds", type=int, default=8, help="metrics 1+2: bridge/minimal client turns (8)"
    )
    parser.add_argument(
        "--write-interval-ms", type=float, default=20.0, help="metrics 1+2: EG write every (20)"
    )
    parser.add_argument("--deadline-samples", type=int, default=100, help="metric 3 (100)")
    parser.add_argument(
        "--deadline-interval", type=float, default=1.1, help="metric 3: a 1 s limit every (1.1)"
    )
    parser.add_argument("--startup-runs", type=int, default=20, help="metric 4 (20)")
    parser.add_argument(
        "--uncached-runs", type=int, default=5, help="metric 4 without bytecode (5; 0 = skip)"
    )
    parser.add_argument("--memory-minutes", type=float, default=10.0, help="metric 5 (10)")
    parser.add_argument("--rss-interval", type=float, default=5.0, help="RSS sampling (5 s)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="metric 6 (60)")
    parser.add_argument("--flood-rate", type=float, default=5000.0, help="metric 7 (5000/s)")
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="metric 7 (10 s)")
    parser.add_argument(
        "--grpc-transport",
        choices=TRANSPORTS,
        default="grpclib",
        help="the bridge's [eebus] grpc_transport (grpclib)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--drive-writes"]:
        write_driver(int(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    if argv[:1] == ["--minimal-client"]:
        port, endpoint, config, stamps = argv[1:5]
        trace = Path(argv[5]) if len(argv) > 5 else None
        with contextlib.suppress(KeyboardInterrupt):
            minimal_client(int(port), endpoint, Path(config), Path(stamps), trace)
        return 0
    args = _parser().parse_args(argv)
    global GRPC_TRANSPORT
    GRPC_TRANSPORT = args.grpc_transport
    names = list(BENCHMARKS) if "all" in args.benchmarks else list(dict.fromkeys(args.benchmarks))
    machine = machine_info()
    results = trio.run(run_benchmarks, names, args)
    machine["loadavg_after"] = os.getloadavg()
    load = ", ".join(f"{v:.2f}" for v in machine["loadavg"])
    load_after = ", ".join(f"{v:.2f}" for v in machine["loadavg_after"])
    print(
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['platform']}; load average {load} before, {load_after} after; "
        f"{machine['time']}"
    )
    print()
    print(TABLE_HEADER)
    for result in results:
        print(result.row())
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": machine, "results": [attrs.asdict(r) for r in results]},
                indent=2,
                default=str,
            )
            + "\n"
        )
    return 0 if all(r.passed is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
