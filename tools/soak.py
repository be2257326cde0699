"""Soak: the faults of issue 13.4, repeated against the real bridge process, with figures.

    .venv/bin/python -m tools.soak                      # the full run (about 15 minutes)
    .venv/bin/python -m tools.soak --kills 5 --broker-restarts 2 --storage-rounds 2 \\
        --garbage-rounds 2 --json soak.json

Not part of the default test run; tests/test_soak_short.py runs every case a few times.
Each case starts `python -m eebus_bridge run` as a subprocess and checks, round after round:

- sidecar-kill: SIGKILL of the managed sidecar (the simulator) once it has recovered; every
  time the handshake is redone, the EG's next limit is published, the LPC state is kept (never
  Init again, never Failsafe).
- broker-restart: mosquitto stopped and started under the everest-api sink while the EG sets a
  new limit; after each return the sink's first PUBACK-confirmed publication is that newest
  limit (nothing stale), and the bridge never exits.
- storage: the state-file folder made immutable, or the temp file pointed at /dev/full (ENOSPC);
  the EG writes two failsafe limits during the fault: both published, one error line, and the
  latest value is stored once the fault is gone.
- sidecar-garbage: a raw-HTTP/2 gRPC sidecar (tests/_raw_sidecar.py) sends invalid UTF-8,
  out-of-range values, unknown enum numbers and an undecodable answer, then cuts the event
  stream mid-message; the bridge logs, reconnects, and publishes the next valid limit.

Recovery time is measured from the fault's end (kill, broker start, folder writable, stream
cut) until the bridge has shown it recovered (publication, PUBACK log line, file stored).
Processes (descendants), file descriptors, threads and RSS of the bridge are read from /proc
after the first round and after the last.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from eebus_bridge.grpc_transport import TRANSPORTS
from tests._bridge_fixtures import GRPC_TRANSPORT, SIMULATOR, write_config
from tests._broker import MosquittoBroker
from tests._raw_sidecar import CUT_MID_MESSAGE, RawSidecar, open_raw_sidecar
from tools.hems_simulator import free_tcp_port, terminate
from tools.hems_simulator.control import ControlClient

SCENARIO = """
description = "soak: an EG that connects fast, heartbeats often and writes nothing by itself"
[eg]
connect_delay_s = 0.1
heartbeat_period_s = 0.3
[sidecar]
heartbeat_window_s = 10.0
"""
_CONTROL_LINE = re.compile(r"Control interface listening on [^:\s]+:(\d+)")
# Spec timing shortened only where a round would otherwise wait minutes; the heartbeat timeout
# stays well above a recovery so that a restart is not mistaken for a lost EG.
TIMING = {"heartbeat_timeout_s": 15.0, "init_timeout_s": 3600.0}
FAST_RETRIES = {"restart_delay_s": 0.2, "restart_delay_max_s": 0.5}


class SoakFailure(AssertionError):
    """A round broke one of the case's promises."""


@attrs.frozen
class Footprint:
    processes: int  # descendants of the bridge
    fds: int
    threads: int
    rss_kib: int


def footprint(pid: int) -> Footprint:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return Footprint(
        processes=len(descendants(pid)),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=len(os.listdir(f"/proc/{pid}/task")),
        rss_kib=rss,
    )


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@attrs.define
class CaseResult:
    name: str
    rounds: int
    recovery_s: list[float] = attrs.field(factory=list)
    before: Footprint | None = None
    after: Footprint | None = None

    @property
    def worst_recovery_s(self) -> float:
        return max(self.recovery_s, default=0.0)

    @property
    def median_recovery_s(self) -> float:
        ordered = sorted(self.recovery_s)
        return ordered[len(ordered) // 2] if ordered else 0.0

    def leaks(self) -> dict[str, int]:
        assert self.before is not None
        assert self.after is not None
        return {
            "processes": self.after.processes - self.before.processes,
            "fds": self.after.fds - self.before.fds,
            "threads": self.after.threads - self.before.threads,
            "rss_kib": self.after.rss_kib - self.before.rss_kib,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.name,
            "rounds": self.rounds,
            "recoveries": len(self.recovery_s),
            "median_recovery_s": round(self.median_recovery_s, 3),
            "worst_recovery_s": round(self.worst_recovery_s, 3),
            "before": attrs.asdict(self.before) if self.before else None,
            "after": attrs.asdict(self.after) if self.after else None,
            "leaks": self.leaks() if self.before and self.after else None,
        }


# -- the bridge under test --------------------------------------------------------------------


@attrs.define
class BridgeRun:
    folder: Path
    process: trio.Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return (self.folder / "bridge.log").read_text(errors="replace")

    def publications(self) -> list[dict[str, Any]]:
        path = self.folder / "publications.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def states(self) -> list[str]:
        return [p["state"] for p in self.publications()]

    def limits(self) -> list[float | None]:
        return [limit_of(p) for p in self.publications()]

    @property
    def sidecar_pids(self) -> list[int]:
        path = self.folder / "sidecar.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def control_ports(self) -> list[int]:
        return [int(port) for port in _CONTROL_LINE.findall(self.log())]

    def records(self, method: str) -> int:
        """How many `method` RPCs the simulated sidecars (all of them so far) recorded."""
        return self._count(lambda row: row.get("kind") == "rpc" and row.get("method") == method)

    def events(self, name: str) -> int:
        """How many `name` events the simulated sidecars emitted to the bridge."""
        return self._count(
            lambda row: (
                row.get("kind") == "event"
                and row.get("name") == name
                and row.get("outcome") == "emitted"
            )
        )

    def _count(self, match: Callable[[dict[str, Any]], bool]) -> int:
        path = self.folder / "record.jsonl"
        if not path.exists():
            return 0
        count = 0
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                count += match(json.loads(line))
        return count

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise SoakFailure(
                f"the bridge exited ({self.process.returncode}):\n{self.log()[-3000:]}"
            )


async def wait_for(
    condition: Callable[[], bool], what: str, *, limit_s: float = 30.0, bridge: BridgeRun | None
) -> float:
    """Poll an outside condition (files, /proc); returns the time it held."""
    with trio.move_on_after(limit_s):
        while not condition():  # files and processes have no event to wait on
            if bridge is not None:
                bridge.check_alive()
            await trio.sleep(0.01)
        return trio.current_time()
    tail = "" if bridge is None else "\n" + bridge.log()[-4000:]
    raise SoakFailure(f"not within {limit_s:g} s: {what}{tail}")


def state_kept(states: list[str]) -> bool:
    """Init only before the first other state: no restart of the LPC engine (a reboot)."""
    after_init = list(itertools.dropwhile(lambda state: state == "Init", states))
    return bool(states) and states[0] == "Init" and "Init" not in after_init


def limit_of(publication: dict[str, Any]) -> float | None:
    """The watt value in force of one JSONL publication (None = unlimited)."""
    first = publication["external_limits"]["schedule_import"][0]["limits_to_root"]
    value = first.get("total_power_W", {}).get("value")
    return None if value is None else float(value)


@asynccontextmanager
async def bridge_process(
    folder: Path,
    *,
    managed: bool = True,
    grpc_port: int | None = None,
    extra_outputs: str = "",
    lpc: dict[str, object] | None = None,
) -> AsyncIterator[BridgeRun]:
    """`python -m eebus_bridge run` with the simulator (through a PID-recording wrapper) as its
    managed sidecar, or against an external sidecar on grpc_port."""
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - setup, before anything runs
    (folder / "scenario.toml").write_text(SCENARIO)
    wrapper = folder / "sidecar.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$$" >> {folder / "sidecar.pids"}\n'
        f'exec {SIMULATOR} "$@" -scenario {folder / "scenario.toml"} '
        f"-record {folder / 'record.jsonl'} -control-port 0 -ignore-sigterm\n"
    )
    wrapper.chmod(0o755)
    config = write_config(
        folder,
        grpc_port=grpc_port if grpc_port is not None else free_tcp_port(),
        manage=managed,
        sidecar={"binary": str(wrapper), **FAST_RETRIES},
        eebus={
            "reconnect_delay_s": 0.2,
            "reconnect_delay_max_s": 0.5,
            "grpc_transport": GRPC_TRANSPORT,
        },
        timing=TIMING,
        lpc=lpc,
        extra_outputs=extra_outputs,
    )
    env = {**os.environ, "EEBUS_SIM_PYTHON": sys.executable}
    with open(folder / "bridge.log", "wb") as log:  # noqa: ASYNC230 - setup, small file
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "eebus_bridge", "--log-level", "info", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    run = BridgeRun(folder, process)
    try:
        yield run
    finally:
        await terminate(process, grace=5)
        for pid in run.sidecar_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def eg_control(bridge: BridgeRun, sidecars: int) -> ControlClient:
    """The control interface of the sidecar number `sidecars` (1-based), once its EG is there."""
    await wait_for(
        lambda: len(bridge.control_ports()) >= sidecars, "sidecar control port", bridge=bridge
    )
    control = ControlClient(bridge.control_ports()[sidecars - 1])
    with trio.fail_after(30):
        while True:
            status = await control.request("status")
            if status.get("ok") and status.get("eg", {}).get("connected"):
                return control
            await trio.sleep(0.02)


async def send_limit(control: ControlClient, value: float) -> None:
    with trio.fail_after(30):
        while True:
            answer = await control.request("send_limit", value=value, active=True, duration_s=0)
            if answer.get("ok"):
                return
            await trio.sleep(0.02)


# -- the cases --------------------------------------------------------------------------------


async def sidecar_kills(workdir: Path, rounds: int) -> CaseResult:
    result = CaseResult("sidecar-kill", rounds)
    async with bridge_process(workdir) as bridge:
        began = trio.current_time()
        for round_ in range(rounds + 1):
            sidecars = round_ + 1
            await wait_for(
                lambda: len(bridge.sidecar_pids) >= sidecars, "new sidecar", bridge=bridge
            )
            await wait_for(
                lambda: bridge.records("StartService") >= sidecars, "handshake", bridge=bridge
            )
            control = await eg_control(bridge, sidecars)
            # Each handshake and each UseCaseSupportUpdate of the EG end with StartHeartbeat.
            # An EG write that crosses the bridge's re-sent local data is overwritten by the
            # bridge's older view of the limit (a known race, README "Reliability"): the soak
            # measures recovery, so the EG writes once that is done.
            await wait_for(
                lambda: bridge.records("cs_lpc.StartHeartbeat") >= 2 * sidecars,
                "local data re-sent for the EG",
                bridge=bridge,
            )
            value = 1000.0 + round_
            heartbeats = bridge.events("DataUpdateHeartbeat")
            await send_limit(control, value)
            recovered = await wait_for(
                lambda: value in bridge.limits(), f"limit {value:g} W published", bridge=bridge
            )
            # A sidecar killed before its EG ever sent a heartbeat would leave the bridge
            # without one for good, and the heartbeat rule rightly goes to Failsafe [LPC-911].
            await wait_for(
                lambda: bridge.events("DataUpdateHeartbeat") > heartbeats,
                "a heartbeat of the new EG",
                bridge=bridge,
            )
            if round_ == 0:
                result.before = footprint(bridge.pid)
            else:
                result.recovery_s.append(recovered - began)
            states = bridge.states()
            if not state_kept(states) or "Failsafe" in states:
                raise SoakFailure(f"LPC state not kept: {states}")
            if round_ < rounds:
                victim = bridge.sidecar_pids[-1]
                began = trio.current_time()
                os.kill(victim, signal.SIGKILL)
        result.after = footprint(bridge.pid)
        dead = bridge.sidecar_pids[:-1]
        if any(alive(pid) for pid in dead):
            raise SoakFailure(f"killed sidecars still alive: {[p for p in dead if alive(p)]}")
    return result


def _everest_api_output(broker: MosquittoBroker) -> str:
    return f"""
        [[output]]
        type = "everest-api"
        module_id = "soak"
        port = {broker.tcp_port}
        communication_check_s = 5.0
    """


_PUBLISHED = re.compile(r"everest-api\[soak\]: (?:re-)?published limits for state \S+ \(([^)]*)\)")
_CONNECTED = "everest-api[soak]: connected to MQTT broker"


async def broker_restarts(workdir: Path, rounds: int) -> CaseResult:
    result = CaseResult("broker-restart", rounds)
    broker = MosquittoBroker(workdir / "broker")
    broker.workdir.mkdir(parents=True)
    await broker.start()
    try:
        async with bridge_process(workdir, extra_outputs=_everest_api_output(broker)) as bridge:
            control = await eg_control(bridge, 1)
            await wait_for(
                lambda: bridge.records("cs_lpc.StartHeartbeat") >= 2, "local data", bridge=bridge
            )
            await send_limit(control, 3000.0)
            await wait_for(
                lambda: "3000 W" in _PUBLISHED.findall(bridge.log())[-1:],
                "first delivery",
                bridge=bridge,
            )
            result.before = footprint(bridge.pid)
            for round_ in range(1, rounds + 1):
                await broker.stop()
                value = 3000.0 + round_
                await send_limit(control, value)
                await wait_for(lambda: value in bridge.limits(), "jsonl publication", bridge=bridge)
                connects = bridge.log().count(_CONNECTED)
                began = trio.current_time()
                await broker.start()

                def delivered_after_reconnect() -> bool:
                    log = bridge.log()
                    return log.count(_CONNECTED) > connects and bool(
                        _PUBLISHED.findall(log.rsplit(_CONNECTED, 1)[1])
                    )

                recovered = await wait_for(
                    delivered_after_reconnect,
                    "re-delivery after the broker's return",
                    limit_s=90,
                    bridge=bridge,
                )
                first = _PUBLISHED.findall(bridge.log().rsplit(_CONNECTED, 1)[1])[0]
                if first != f"{value:g} W":
                    raise SoakFailure(f"stale limit after broker return: {first}, want {value:g} W")
                result.recovery_s.append(recovered - began)
            result.after = footprint(bridge.pid)
            bridge.check_alive()
    finally:
        await broker.stop()
        broker.cleanup()
    return result


@contextlib.contextmanager
def storage_fault(folder: Path, kind: str) -> Any:
    """'read-only': an immutable folder (chattr +i; chmod a-w when not root); 'enospc': the
    store's temp file is a symlink to /dev/full."""
    temp = folder / ".state.json.tmp"
    if kind == "enospc":
        temp.symlink_to("/dev/full")
        try:
            yield
        finally:
            temp.unlink()
        return
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def _stored_limit(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text())["failsafe_limit_W"]
    except (OSError, ValueError, KeyError):
        return None
    return float(value)


async def storage_faults(workdir: Path, rounds: int) -> CaseResult:
    result = CaseResult("storage", rounds)
    state = workdir / "state"
    state.mkdir(parents=True)
    state_file = state / "state.json"
    async with bridge_process(workdir, lpc={"state_file": "state/state.json"}) as bridge:
        control = await eg_control(bridge, 1)
        # The EG's UseCaseSupportUpdate makes the bridge re-send its local data (ending with
        # StartHeartbeat); EG writes before that could be crossed by it.
        await wait_for(
            lambda: bridge.records("cs_lpc.StartHeartbeat") >= 2, "local data", bridge=bridge
        )
        result.before = footprint(bridge.pid)
        for round_ in range(rounds):
            kind = "read-only" if round_ % 2 == 0 else "enospc"
            errors = bridge.log().count("cannot store failsafe values")
            first, second = 2000.0 + 2 * round_, 2001.0 + 2 * round_
            with storage_fault(state, kind):
                await control.call("write_failsafe_limit", value=first)
                await wait_for(
                    lambda: first in bridge.limits(), "first value published", bridge=bridge
                )
                await wait_for(
                    lambda: bridge.log().count("cannot store failsafe values") == errors + 1,
                    f"{kind}: the failure logged",
                    bridge=bridge,
                )
                await control.call("write_failsafe_limit", value=second)
                await wait_for(
                    lambda: second in bridge.limits(), "second value published", bridge=bridge
                )
                await trio.sleep(1.5)  # at least one retry fails for the same cause
                if bridge.log().count("cannot store failsafe values") != errors + 1:
                    raise SoakFailure(f"{kind}: the failure was logged more than once")
            began = trio.current_time()
            recovered = await wait_for(
                lambda: _stored_limit(state_file) == second,
                "stored after the fault",
                limit_s=90,
                bridge=bridge,
            )
            result.recovery_s.append(recovered - began)
        result.after = footprint(bridge.pid)
    return result


def _event(name: str, ski: str) -> bytes:
    from eebus_bridge.generated import control_service as cs

    use_case = cs.UseCase(
        actor=cs.UseCaseActorTypeEnum.ControllableSystem,
        name=cs.UseCaseNameTypeEnum.limitationOfPowerConsumption,
    )
    return bytes(
        cs.SubscribeUseCaseEventsResponse(
            remote_ski=ski, use_case_event=cs.UseCaseEvent(use_case=use_case, event=name)
        )
    )


def _limit_reply(value: float, duration_ns: int = 0) -> bytes:
    from eebus_bridge.generated import common_types, cs_lpc

    limit = common_types.LoadLimit(value=value, is_active=True, duration_nanoseconds=duration_ns)
    return bytes(cs_lpc.ConsumptionLimitResponse(load_limit=limit))


GARBAGE_SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"


async def _garbage_round(sidecar: RawSidecar, value: float) -> None:
    assert sidecar.use_case_events is not None
    assert sidecar.discovery_events is not None
    events = sidecar.use_case_events

    async def limit_event(reply: bytes) -> None:
        reads = sidecar.calls.count("ConsumptionLimit")
        sidecar.replies["ConsumptionLimit"] = reply
        events.send_nowait(_event("DataUpdateLimit", GARBAGE_SKI))
        await sidecar.wait_for_call("ConsumptionLimit", count=reads + 1, limit_s=30)

    events.send_nowait(_event("DataUpdateLimit", "A" * 40).replace(b"A" * 40, b"\xff\xfe" * 20))
    for bad in (math.nan, -5.0, math.inf):
        await limit_event(_limit_reply(bad))
    await limit_event(_limit_reply(100.0, duration_ns=-(2**63)))
    await limit_event(b"\x0a\x05\x25\xff")
    sidecar.discovery_events.send_nowait(b"\x08\x63\x12\x28" + GARBAGE_SKI.encode())
    events.send_nowait(_event("NoSuchEvent", GARBAGE_SKI))
    await limit_event(_limit_reply(value))


async def sidecar_garbage(workdir: Path, rounds: int) -> CaseResult:
    result = CaseResult("sidecar-garbage", rounds)
    began = 0.0
    async with (
        open_raw_sidecar() as sidecar,
        bridge_process(workdir, managed=False, grpc_port=sidecar.port) as bridge,
    ):
        await sidecar.wait_for_call("StartHeartbeat", limit_s=30)
        for round_ in range(rounds + 1):
            value = 1500.0 + round_
            await _garbage_round(sidecar, value)
            recovered = await wait_for(
                lambda: value in bridge.limits(), f"limit {value:g} W", bridge=bridge
            )
            if round_ == 0:
                result.before = footprint(bridge.pid)
            else:
                result.recovery_s.append(recovered - began)
            if round_ < rounds:
                assert sidecar.use_case_events is not None
                handshakes = sidecar.calls.count("StartHeartbeat")
                sidecar.use_case_events.send_nowait(CUT_MID_MESSAGE)
                began = trio.current_time()
                await sidecar.wait_for_call("StartHeartbeat", count=handshakes + 1, limit_s=30)
        result.after = footprint(bridge.pid)
        log = bridge.log()
        if "Traceback" in log or " ERROR " in log:
            raise SoakFailure(f"garbage caused an error:\n{log[-4000:]}")
        limits = [v for v in bridge.limits() if v is not None]
        if not all(math.isfinite(v) and v >= 0 for v in limits):
            raise SoakFailure("an invalid limit was published")
        if not state_kept(bridge.states()):
            raise SoakFailure(f"LPC state not kept: {bridge.states()}")
    return result


CASES: dict[str, Callable[[Path, int], Awaitable[CaseResult]]] = {
    "sidecar-kill": sidecar_kills,
    "broker-restart": broker_restarts,
    "storage": storage_faults,
    "sidecar-garbage": sidecar_garbage,
}


# -- command line -----------------------------------------------------------------------------


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown machine"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = info.get("Model name", "?").strip()
    cpus = info.get("CPU(s)", "?").strip()
    return f"{model}, {cpus} CPUs ({info.get('Architecture', '?').strip()})"


async def _main(args: argparse.Namespace) -> list[CaseResult]:
    counts = {
        "sidecar-kill": args.kills,
        "broker-restart": args.broker_restarts,
        "storage": args.storage_rounds,
        "sidecar-garbage": args.garbage_rounds,
    }
    results = []
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-"))
        for name, case in CASES.items():
            if counts[name] <= 0:
                continue
            began = time.monotonic()
            print(f"{name}: {counts[name]} rounds ...", flush=True)
            result = await case(Path(tmp) / name, counts[name])
            print(f"  done in {time.monotonic() - began:.0f} s: {json.dumps(result.as_dict())}")
            results.append(result)
    return results


def main() -> None:
    global GRPC_TRANSPORT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--broker-restarts", type=int, default=20)
    parser.add_argument("--storage-rounds", type=int, default=10)
    parser.add_argument("--garbage-rounds", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--grpc-transport",
        choices=TRANSPORTS,
        default=GRPC_TRANSPORT,
        help="the bridges' [eebus] grpc_transport (default: as the test configs)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the bridges' files here (default: a temp dir)"
    )
    args = parser.parse_args()
    GRPC_TRANSPORT = args.grpc_transport
    results = trio.run(_main, args)
    print(f"\nmachine: {machine()}, Python {sys.version.split()[0]}")
    print(
        f"{'case':16} {'rounds':>6} {'median s':>9} {'worst s':>8}  "
        "leaks (proc fds threads RSS KiB)"
    )
    for r in results:
        leaks = r.leaks()
        print(
            f"{r.name:16} {len(r.recovery_s):6d} {r.median_recovery_s:9.2f} "
            f"{r.worst_recovery_s:8.2f}  {leaks['processes']:+d} {leaks['fds']:+d} "
            f"{leaks['threads']:+d} {leaks['rss_kib']:+d}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "cases": [r.as_dict() for r in results]}, indent=2)
        )


if __name__ == "__main__":
    main()
