"""What watching the bridge costs: the status page polled and the history on, against neither.

Run from the repository root with the project's virtualenv:

    .venv/bin/python -m tools.bench_observability latency --samples 500     # O1
    .venv/bin/python -m tools.bench_observability memory --memory-minutes 10  # O2
    .venv/bin/python -m tools.bench_observability all --json obs.json

The harness is tools/bench_runtime.py's (same simulator process, same JSONL write stamps,
same pairing of writes to lines, same table); only the bridge's config and the watcher differ.

O1. DataUpdateLimit event -> JSONL line written (bench_runtime metric 1), measured twice in
    one process, alternating `--rounds` times between:
    - bare: `[status] listen = ""` and `[history] enabled = false`;
    - watched: the status endpoint on 127.0.0.1, the history on (SQLite file in the work
      folder), and a watcher process doing what an open status page does: GET / once, then
      GET /api/status every second and GET /timeline.svg every 60 s, plus a Prometheus-like
      GET /metrics every 15 s. The watcher is its own process (a browser is), so its own CPU
      time is not the bridge's.
    The EG writes a limit every `--write-interval-ms` (100 ms: many polls per run). Target
    (issue 10): watched p50 and p99 no more than 10 % above bare. Differences below 0.1 ms
    count as equal (the clock reads and the machine's noise are of that order).
O2. Resident memory of `python -m eebus_bridge run` with the endpoint and the history on,
    watched as above, while the simulator plays dummy-cem (bench_runtime metric 5's setup)
    for `--memory-minutes`. Target: <= 60 MB at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import attrs
import trio

from eebus_bridge.config import load_config
from eebus_bridge.island import open_island
from eebus_bridge.runtime import Bridge
from tools.bench_runtime import (
    DUMMY_CEM_SKI,
    MB,
    SIM_ARGS,
    TABLE_HEADER,
    RecordedPublications,
    Result,
    SinkWrites,
    bridge_log_to,
    bridge_process,
    jsonl_lines,
    line_limit_w,
    machine_info,
    pair_limit_writes,
    prepare,
    proc_status_kb,
    sim_records,
    summary,
    wait_played,
    wait_record,
    write_bridge_config,
    write_scenario,
)
from tools.hems_simulator import free_tcp_port, open_simulator_process

BENCHMARKS = ("latency", "memory")
EQUAL_WITHIN_S = 0.0001


def observed_config(folder: Path, *, grpc_port: int, watched: bool, **kwargs: Any) -> Path:
    """bench_runtime's bridge config plus [status] and [history] for this run."""
    path = write_bridge_config(folder, grpc_port=grpc_port, **kwargs)
    if watched:
        extra = f'[status]\nlisten = "127.0.0.1:{free_tcp_port()}"\n[history]\nenabled = true\n'
    else:
        extra = '[status]\nlisten = ""\n[history]\nenabled = false\n'
    path.write_text(path.read_text() + extra)
    return path


# ----------------------------------------------------------------------------- the watcher


def watch(base_url: str) -> None:
    """What an open status page and a Prometheus scraper do, until killed (`poll` command)."""

    def get(path: str) -> None:
        try:
            with urllib.request.urlopen(base_url + path, timeout=10) as response:
                response.read()
        except OSError as exc:
            print(f"watcher: {path}: {exc}", file=sys.stderr)

    get("/")
    tick = 0
    while True:
        get("/api/status")
        if tick % 15 == 0:
            get("/metrics")
        if tick % 60 == 0:
            get("/timeline.svg?since=24h")
        tick += 1
        time.sleep(1.0)


@asynccontextmanager
async def watcher(base_url: str) -> AsyncIterator[None]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tools.bench_observability", "poll", base_url],
        stdin=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


# ----------------------------------------------------------------------------- O1


async def _latency_run(
    workdir: Path, *, watched: bool, samples: int, warmup: int, interval_s: float
) -> list[float]:
    total = warmup + samples + 20
    scenario = write_scenario(workdir, heartbeat_period_s=1.0, writes=total, every_s=interval_s)
    writes = SinkWrites()
    publications = RecordedPublications()
    async with (
        open_island(),
        open_simulator_process(
            workdir,
            scenario=scenario,
            control=False,
            record=True,
            extra_args=("-log-level", "WARN"),
        ) as sim,
    ):
        config = load_config(observed_config(workdir, grpc_port=sim.port, watched=watched)).config
        with writes.installed(), bridge_log_to(workdir / "bridge.log"):
            bridge = Bridge(config, publications=publications)
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                with trio.fail_after(30):
                    await bridge.connected.wait()
                    if watched:
                        await bridge.status_endpoint.bound.wait()
                try:
                    if watched:
                        assert bridge.status_endpoint.url is not None
                        async with watcher(bridge.status_endpoint.url):
                            await wait_played(
                                total, interval_s, lambda: len(sim.records("approval"))
                            )
                    else:
                        await wait_played(total, interval_s, lambda: len(sim.records("approval")))
                    await trio.sleep(0.5)
                finally:
                    nursery.cancel_scope.cancel()
        lines = [(mono, line_limit_w(line)) for mono, _, line in writes.lines]
        events, approvals = sim_records(sim)
    publish, _, _ = pair_limit_writes(events, approvals, lines, warmup=warmup, samples=samples)
    return publish


def _within(watched: float, bare: float) -> bool:
    return watched <= bare * 1.10 or watched - bare <= EQUAL_WITHIN_S


async def bench_latency(
    workdir: Path, *, samples: int, warmup: int, interval_s: float, rounds: int
) -> list[Result]:
    runs: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        for watched in (False, True):
            folder = prepare(workdir / f"{'watched' if watched else 'bare'}-{round_}")
            runs[watched] += await _latency_run(
                folder, watched=watched, samples=samples, warmup=warmup, interval_s=interval_s
            )
    bare, seen = summary(runs[False]), summary(runs[True])
    passed = _within(seen["p50"], bare["p50"]) and _within(seen["p99"], bare["p99"])
    ms = 1000.0
    return [
        Result(
            key="observed_latency",
            metric="O1. DataUpdateLimit -> JSONL line, page polled + history on vs. both off",
            samples=f"{seen['n']} / {bare['n']}",
            typical=f"{seen['p50'] * ms:.2f} ms vs. {bare['p50'] * ms:.2f} ms",
            worst=f"{seen['p99'] * ms:.2f} ms vs. {bare['p99'] * ms:.2f} ms",
            target="<= +10 % (p50 and p99)",
            passed=passed,
            data={
                "watched_seconds": seen,
                "bare_seconds": bare,
                "rounds": rounds,
                "write_interval_s": interval_s,
            },
        )
    ]


# ----------------------------------------------------------------------------- O2


async def bench_memory(workdir: Path, *, minutes: float, interval_s: float) -> list[Result]:
    prepare(workdir)
    rss: list[int] = []
    async with open_simulator_process(
        workdir, scenario="dummy-cem", extra_args=(*SIM_ARGS, "-seed", "1")
    ) as sim:
        config = observed_config(workdir, grpc_port=sim.port, watched=True, ems_ski=DUMMY_CEM_SKI)
        listen = load_config(config).config.status.listen
        async with bridge_process(config, workdir / "bridge.log") as process:
            await wait_record(sim, "cs_lpc.StartHeartbeat", process=process)
            async with watcher(f"http://{listen}"):
                end = time.monotonic() + minutes * 60.0
                while True:
                    if process.returncode is not None:
                        raise RuntimeError(f"the bridge exited with {process.returncode}")
                    rss.append(proc_status_kb(process.pid, "VmRSS"))
                    if time.monotonic() >= end:
                        break
                    await trio.sleep(min(interval_s, max(end - time.monotonic(), 0.0)))
            peak_kb = proc_status_kb(process.pid, "VmHWM")
    published = len(jsonl_lines(workdir / "publications.jsonl"))
    history_mb = (workdir / "history.sqlite3").stat().st_size / MB
    start_mb, end_mb = rss[0] / 1024, rss[-1] / 1024
    return [
        Result(
            key="observed_memory",
            metric=f"O2. VmRSS after {minutes:g} min of dummy-cem, page polled + history on",
            samples=f"{len(rss)} (every {interval_s:g} s)",
            typical=f"start {start_mb:.1f} MB",
            worst=f"end {end_mb:.1f} MB, max {max(rss) / 1024:.1f} MB",
            target="<= 60 MB",
            passed=end_mb <= 60.0,
            data={
                "rss_kb": rss,
                "peak_kb": peak_kb,
                "publications": published,
                "history_file_mb": history_mb,
            },
        )
    ]


# ----------------------------------------------------------------------------- main


async def run_benchmarks(names: Sequence[str], args: argparse.Namespace) -> list[Result]:
    workdir = Path(args.workdir) if args.workdir else Path(mkdtemp(prefix="eebus-obs-"))
    results: list[Result] = []
    if "latency" in names:
        results += await bench_latency(
            workdir / "latency",
            samples=args.samples,
            warmup=args.warmup,
            interval_s=args.write_interval_ms / 1000.0,
            rounds=args.rounds,
        )
    if "memory" in names:
        results += await bench_memory(
            workdir / "memory", minutes=args.memory_minutes, interval_s=args.rss_interval
        )
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_observability",
        description="Cost of the status page and the history (see the module docstring).",
    )
    parser.add_argument("benchmarks", nargs="+", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--workdir", help="keep the files here (default: a new temp folder)")
    parser.add_argument("--samples", type=int, default=500, help="O1 samples per variant/round")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured writes first (20)")
    parser.add_argument("--write-interval-ms", type=float, default=100.0, help="O1 (100)")
    parser.add_argument("--rounds", type=int, default=2, help="O1 bare/watched alternations")
    parser.add_argument("--memory-minutes", type=float, default=10.0, help="O2 (10)")
    parser.add_argument("--rss-interval", type=float, default=5.0, help="RSS sampling (5 s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["poll"] and len(argv) == 2:
        watch(argv[1])
        return 0
    args = _parser().parse_args(argv)
    names = list(BENCHMARKS) if "all" in args.benchmarks else list(dict.fromkeys(args.benchmarks))
    machine = machine_info()
    results = trio.run(run_benchmarks, names, args)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python "
          f"{machine['python']}; load average {load} after; {machine['time']}")  # fmt: skip
    print()
    print(TABLE_HEADER)
    for result in results:
        print(result.row())
    if args.json:
        document = {"machine": machine, "results": [attrs.asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 0 if all(r.passed is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
