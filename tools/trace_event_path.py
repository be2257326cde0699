"""Where the time goes on the event path: the bridge and the minimal client, step by step.

    .venv/bin/python -m tools.trace_event_path --samples 300 [--grpc-transport grpcio]

Runs metrics 1 and 2 of tools/bench_runtime.py (one round: the bridge in this process, then
the minimal grpcio client in its own, on one simulator process) with clock stamps at the steps
both have in common, and prints the median and p90 of each step in milliseconds:

    publication: simulator emits DataUpdateLimit -> event received -> ConsumptionLimit read sent
                 -> the simulator has computed its answer -> answer received -> (bridge: input
                 applied to the engine, which hands the publication to the JSONL sink's thread)
                 -> line written and flushed
    approval:    simulator emits WriteApprovalRequired -> event received -> PendingConsumptionLimit
                 sent -> the simulator has computed its answer -> answer received -> (bridge:
                 engine decided, answer sent) -> approval recorded by the simulator

The simulator's stamp inside each read (its record of the RPC, made when the answer is ready
and about to be sent) splits the read into the way there and the way back, so a step that is
slower for the bridge than for the minimal client shows on which side of the wire it is.

The bridge's stamps come from thin wrappers around the functions of those steps (installed
before the bridge starts, one `time.monotonic()` and a list append each), the minimal client
writes its own (`minimal_client(trace_path=...)`), the simulator's are its record file. All
are CLOCK_MONOTONIC of one machine. The stamps cost a few microseconds per step, so the totals
come out slightly above bench_runtime's; the steps are what this is for (README "Performance").
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import trio

import tools.bench_runtime as bench
from eebus_bridge import eebus_link, sidecar_client
from eebus_bridge.grpc_transport import TRANSPORTS
from eebus_bridge.sinks import jsonl

Stamp = tuple[float, str, str]  # (monotonic, step, detail)


def install_bridge_stamps(stamps: list[Stamp]) -> None:
    """Wrap the bridge's step functions so that each appends (monotonic, step, detail)."""

    def stamp(step: str, detail: str = "") -> None:
        stamps.append((time.monotonic(), step, detail))

    decoded = sidecar_client._decoded_messages

    async def received(stream: Any, rpc: str, response_type: Any) -> AsyncIterator[Any]:
        async for message in decoded(stream, rpc, response_type):
            event = getattr(message, "use_case_event", None)
            stamp("received", event.event if event is not None else "")
            yield message

    call = sidecar_client.SidecarClient._aio_call

    async def timed_call(
        self: Any, service: str, rpc: str, request: Any, response: Any, on_sent: Any = None
    ) -> Any:
        stamp("sent", rpc)
        result = await call(self, service, rpc, request, response, on_sent)
        stamp("answered", rpc)
        return result

    apply = eebus_link._EventLanes.apply

    def timed_apply(self: Any, event: Any, value: Any, received_at: float) -> None:
        apply(self, event, value, received_at)
        stamp("applied", event.name)

    write = jsonl._write_and_flush

    def timed_write(stream: TextIO, line: str) -> None:
        write(stream, line)
        stamp("written")

    sidecar_client._decoded_messages = received
    sidecar_client.SidecarClient._aio_call = timed_call  # type: ignore[method-assign]
    eebus_link._EventLanes.apply = timed_apply  # type: ignore[method-assign]
    jsonl._write_and_flush = timed_write


def _follow(
    stamps: list[Stamp], times: list[float], start: float, steps: list[tuple[str, str]]
) -> list[float]:
    """The stamps of `steps`, in this order, after `start` (empty if one is missing)."""
    index = bisect.bisect_left(times, start)
    found = [start]
    for step, detail in steps:
        while index < len(stamps) and stamps[index][1:] != (step, detail):
            index += 1
        if index == len(stamps):
            return []
        found.append(stamps[index][0])
    return found


def _next(sorted_times: list[float], after: float) -> float | None:
    index = bisect.bisect_left(sorted_times, after)
    return sorted_times[index] if index < len(sorted_times) else None


def _rows(title: str, names: list[str], chains: list[list[float]]) -> list[str]:
    rows = [f"{title} ({len(chains)} events): step, median / p90 in ms"]
    for k, name in enumerate(names):
        spans = sorted((chain[k + 1] - chain[k]) * 1000 for chain in chains)
        p90 = spans[min(len(spans) - 1, int(len(spans) * 0.9))]
        rows.append(f"  {name:52s} {statistics.median(spans):6.3f} / {p90:6.3f}")
    totals = sorted((chain[-1] - chain[0]) * 1000 for chain in chains)
    rows.append(f"  {'total':52s} {statistics.median(totals):6.3f}")
    return rows


def _split_read(chain: list[float], answered_by_sim: list[float], sent: int) -> list[float]:
    """The chain with the simulator's stamp of the read sent at chain[sent] inserted after it
    (empty when the simulator has none before the answer arrived)."""
    stamp = _next(answered_by_sim, chain[sent])
    if stamp is None or stamp > chain[sent + 1]:
        return []
    return [*chain[: sent + 1], stamp, *chain[sent + 1 :]]


PUBLICATION_STEPS = [
    "emitted -> received",
    "received -> read sent",
    "read sent -> simulator answers it",
    "simulator answers -> answer received",
    "answer received -> line written",
]
APPROVAL_STEPS = [
    "emitted -> received",
    "received -> pending read sent",
    "pending read sent -> simulator answers it",
    "simulator answers -> answer received",
]


def bridge_report(stamps: list[Stamp], sim_events: dict[str, list[float]]) -> list[str]:
    stamps = sorted(stamps)  # the writer thread's stamps may land a moment out of order
    times = [t for t, _, _ in stamps]
    publication_steps = [
        ("received", "DataUpdateLimit"),
        ("sent", "ConsumptionLimit"),
        ("answered", "ConsumptionLimit"),
        ("written", ""),
    ]
    approval_steps = [
        ("received", "WriteApprovalRequired"),
        ("sent", "PendingConsumptionLimit"),
        ("answered", "PendingConsumptionLimit"),
        ("sent", "ApproveOrDenyConsumptionLimit"),
    ]
    publications = [
        split
        for emitted in sim_events["DataUpdateLimit"]
        if (chain := _follow(stamps, times, emitted, publication_steps))
        and chain[-1] - emitted < 0.05
        if (split := _split_read(chain, sim_events["ConsumptionLimit"], 2))
    ]
    # When apply() returned, measured from the same answer (the line is handed over inside it
    # and is written before it returns when the writer thread was idle).
    applied = [
        [chain[4], after[1]]
        for chain in publications
        if (after := _follow(stamps, times, chain[4], [("applied", "DataUpdateLimit")]))
    ]
    approvals = [
        [*split, recorded]
        for emitted in sim_events["WriteApprovalRequired"]
        if (chain := _follow(stamps, times, emitted, approval_steps)) and chain[-1] - emitted < 0.05
        if (split := _split_read(chain, sim_events["PendingConsumptionLimit"], 2))
        if (recorded := _next(sim_events["approval"], chain[-1])) is not None
    ]
    return [
        *_rows("bridge, publication", PUBLICATION_STEPS, publications),
        *_rows("bridge, the same reads", ["answer received -> input applied"], applied),
        *_rows(
            "bridge, approval",
            [
                *APPROVAL_STEPS,
                "answer received -> answer sent (engine decided)",
                "answer sent -> approval recorded",
            ],
            approvals,
        ),
    ]


def minimal_report(trace: Path, sim_events: dict[str, list[float]]) -> list[str]:
    publications: list[list[float]] = []
    approvals: list[list[float]] = []
    for line in trace.read_text().splitlines():
        kind, *values = line.split()
        stamps = [float(v) for v in values]
        emitted_list = sim_events["DataUpdateLimit" if kind == "D" else "WriteApprovalRequired"]
        index = bisect.bisect_right(emitted_list, stamps[0]) - 1
        if index < 0 or stamps[0] - emitted_list[index] > 0.05:
            continue
        read = "ConsumptionLimit" if kind == "D" else "PendingConsumptionLimit"
        chain = _split_read([emitted_list[index], *stamps], sim_events[read], 2)
        if not chain:
            continue
        if kind == "W":
            recorded = _next(sim_events["approval"], stamps[-1])
            if recorded is None:
                continue
            chain.append(recorded)
        (publications if kind == "D" else approvals).append(chain)
    return [
        *_rows("minimal client, publication", PUBLICATION_STEPS, publications),
        *_rows(
            "minimal client, approval",
            [*APPROVAL_STEPS, "answer received -> approval recorded (incl. sending)"],
            approvals,
        ),
    ]


async def run_turns(samples: int, workdir: Path, stamps: list[Stamp]) -> None:
    install_bridge_stamps(stamps)
    bench.MINIMAL_TRACE = workdir / "minimal.trace"
    await bench.bench_limit_writes(workdir, samples=samples, warmup=20, interval_s=0.05, rounds=1)


def simulator_stamps(record: Path) -> dict[str, list[float]]:
    """Emitted DataUpdateLimit / WriteApprovalRequired events, approvals, and the simulator's
    records of the two reads (made when each answer is ready), sorted."""
    found: dict[str, list[float]] = {"DataUpdateLimit": [], "WriteApprovalRequired": []}
    found.update(approval=[], ConsumptionLimit=[], PendingConsumptionLimit=[])
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        kind, name = entry["kind"], entry.get("name") or entry.get("method", "")
        if kind == "approval":
            found["approval"].append(float(entry["mono"]))
        elif kind == "event" and entry.get("outcome") == "emitted" and name in found:
            found[name].append(float(entry["mono"]))
        elif kind == "rpc" and name.startswith("cs_lpc.") and name[7:] in found:
            found[name[7:]].append(float(entry["mono"]))
    return {name: sorted(times) for name, times in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.trace_event_path")
    parser.add_argument("--samples", type=int, default=300, help="EG writes per client")
    parser.add_argument(
        "--grpc-transport",
        choices=TRANSPORTS,
        default="grpclib",
        help="the bridge's [eebus] grpc_transport (grpclib)",
    )
    args = parser.parse_args()
    bench.GRPC_TRANSPORT = args.grpc_transport
    workdir = Path(tempfile.mkdtemp(prefix="trace-event-path-"))
    stamps: list[Stamp] = []
    trio.run(run_turns, args.samples, workdir, stamps)
    sim = simulator_stamps(next(workdir.rglob("sim-record.jsonl")))
    trace = workdir / "minimal.trace"
    for row in [*bridge_report(stamps, sim), *minimal_report(trace, sim)]:
        print(row)


if __name__ == "__main__":
    main()
