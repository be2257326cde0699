"""Where grpclib should live in a Trio program: the trio-asyncio island or an asyncio thread.

    .venv/bin/python -m tools.bench_island --calls 2000 --rounds 4

One HEMS simulator process (as in tools/bench_runtime.py); after the handshake, unary
ConsumptionLimit calls one after another, each timed from the caller's side, in these variants,
taking turns round by round so that the machine's other load hits them alike:

- island/trio:   from Trio through `aio_as_trio` per call (how the bridge called every RPC
                 before its event lanes);
- island/aio:    on the asyncio side of the island, awaited there (how the event lanes call);
                 both island variants as the island runs (eebus_bridge/island.py, "batched":
                 batched stepping, callbacks checked in debug mode only), with batched stepping
                 but trio-asyncio's check of every callback ("checked"), and as trio-asyncio
                 comes: one callback per Trio step, every callback checked ("single");
- thread/trio:   grpclib on its own asyncio loop in a second thread; Trio hands each call over
                 with run_coroutine_threadsafe and is woken through its TrioToken;
- thread/aio:    awaited on that thread's loop itself (plain asyncio, the floor for grpclib);
- grpcio/aio:    grpcio's asyncio API (grpc.aio) on the island, awaited on its asyncio side
                 (the bridge's optional transport, [eebus] grpc_transport = "grpcio");
- grpcio/sync:   a synchronous grpcio call (the minimal client's kind).

Each grpclib variant runs with the bridge's coalescing transport (one segment per call) and
without (grpclib as shipped), `+c` / `-c`. A pause of `--gap-ms` between calls makes each one
start from an idle loop, as events do. p50/p99 per variant (nearest rank), pooled over rounds.
"""

from __future__ import annotations

# trio_asyncio before grpclib (see eebus_bridge.sidecar_client).
import trio_asyncio  # isort: skip

import argparse
import asyncio
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpclib.client
import trio

from eebus_bridge.config import load_config
from eebus_bridge.eebus_link import set_config_request
from eebus_bridge.generated import cs_lpc
from eebus_bridge.grpc_transport import coalescing_protocol
from eebus_bridge.island import batch_ready_callbacks, check_callbacks_in_debug_only, open_island
from eebus_bridge.sidecar_client import SidecarClient
from tools.bench_runtime import percentile, write_bridge_config, write_scenario
from tools.hems_simulator import open_simulator_process

LPC_METHOD = "/cs_lpc.ControllableSystemLPCControl/ConsumptionLimit"


class _PlainChannel(grpclib.client.Channel):
    """grpclib's Channel as shipped (one write per HTTP/2 frame)."""


class _CoalescingChannel(grpclib.client.Channel):
    def _protocol_factory(self) -> Any:
        return coalescing_protocol(super()._protocol_factory(), self._loop)


def _stub(channel: grpclib.client.Channel) -> cs_lpc.ControllableSystemLpcControlStub:
    return cs_lpc.ControllableSystemLpcControlStub(channel, timeout=5.0)


async def _timed_aio(call: Callable[[], Awaitable[Any]], calls: int, gap_s: float) -> list[float]:
    samples = []
    for _ in range(calls):
        await asyncio.sleep(gap_s)
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def _timed_trio(call: Callable[[], Awaitable[Any]], calls: int, gap_s: float) -> list[float]:
    samples = []
    for _ in range(calls):
        await trio.sleep(gap_s)
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


class AsyncioThread:
    """A dedicated asyncio loop in a daemon thread, with Trio-side calls into it."""

    def __init__(self) -> None:
        # Not asyncio.new_event_loop(): trio_asyncio's policy refuses it inside a Trio run.
        self.loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coro: Awaitable[Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self.submit(fn())
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        return future.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Measured:
    """Latencies per variant, plus the CPU time this process spent per call (all threads):
    less sensitive than latency to what else runs on the machine."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.cpu_s: dict[str, float] = {}

    async def add(self, name: str, run: Awaitable[list[float]]) -> None:
        cpu = time.process_time()
        samples = await run
        self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - cpu
        self.samples.setdefault(name, []).extend(samples)


async def run(calls: int, rounds: int, gap_s: float) -> Measured:
    workdir = Path(tempfile.mkdtemp(prefix="bench-island-"))
    scenario = write_scenario(workdir, heartbeat_period_s=3600.0)
    results = Measured()
    async with (
        open_island() as loop,
        open_simulator_process(
            workdir, scenario=scenario, control=True, extra_args=("-log-level", "INFO")
        ) as sim,
    ):
        config = load_config(write_bridge_config(workdir, grpc_port=sim.port)).config
        async with SidecarClient("localhost", sim.port, 5.0) as client:
            await client.set_config(set_config_request(config))
            await client.start_setup()
            endpoint = await client.add_use_case()
            await client.connect_lpc(endpoint)
            await client.set_consumption_nominal_max(4200.0)
        import grpc  # only now: imported before the simulator starts, its start-up hangs

        host, port = endpoint.rsplit(":", 1)
        request = cs_lpc.ConsumptionLimitRequest()
        thread = AsyncioThread()
        grpcio_channel = grpc.insecure_channel(endpoint)
        grpcio_call = grpcio_channel.unary_unary(
            LPC_METHOD,
            request_serializer=bytes,
            response_deserializer=cs_lpc.ConsumptionLimitResponse.parse,
        )
        try:
            for _ in range(rounds):
                for tag, channel_type in (("+c", _CoalescingChannel), ("-c", _PlainChannel)):

                    async def island_channel(
                        channel_type: type[grpclib.client.Channel] = channel_type,
                    ) -> grpclib.client.Channel:
                        return channel_type(host, int(port))

                    channel = await trio_asyncio.aio_as_trio(island_channel)()
                    stub = _stub(channel)

                    async def one(stub: Any = stub) -> Any:
                        return await stub.consumption_limit(request)

                    await trio_asyncio.aio_as_trio(one)()  # connect
                    for stepping in ("batched", "checked", "single"):
                        if stepping == "single":  # trio-asyncio as it comes: one callback per step
                            vars(loop).pop("_main_loop_one", None)
                        else:
                            batch_ready_callbacks(loop)
                        if stepping == "batched":
                            check_callbacks_in_debug_only(loop)
                        else:  # trio-asyncio's checks of every callback it is given
                            for method in ("call_soon", "call_at", "call_later"):
                                vars(loop).pop(method, None)
                        await results.add(
                            f"island/trio {tag} {stepping}",
                            _timed_trio(trio_asyncio.aio_as_trio(one), calls, gap_s),
                        )
                        await results.add(
                            f"island/aio {tag} {stepping}",
                            trio_asyncio.aio_as_trio(_timed_aio)(one, calls, gap_s),
                        )
                    batch_ready_callbacks(loop)
                    check_callbacks_in_debug_only(loop)
                    await trio_asyncio.aio_as_trio(lambda c=channel: asyncio.sleep(0, c.close()))()

                    async def thread_channel(
                        channel_type: type[grpclib.client.Channel] = channel_type,
                    ) -> Any:
                        return _stub(channel_type(host, int(port)))

                    thread_stub = thread.submit(thread_channel()).result(5)

                    async def thread_one(stub: Any = thread_stub) -> Any:
                        return await stub.consumption_limit(request)

                    await thread.call(thread_one)
                    await results.add(
                        f"thread/trio {tag}",
                        _timed_trio(lambda f=thread_one: thread.call(f), calls, gap_s),
                    )
                    await results.add(
                        f"thread/aio {tag}",
                        trio.to_thread.run_sync(
                            lambda f=thread_one: thread.submit(_timed_aio(f, calls, gap_s)).result()
                        ),
                    )
                    thread.submit(asyncio.sleep(0, thread_stub.channel.close())).result(5)

                async def grpcio_aio_round() -> list[float]:
                    import grpc.aio

                    aio_channel = grpc.aio.insecure_channel(endpoint)
                    call = aio_channel.unary_unary(LPC_METHOD)
                    raw = bytes(request)
                    try:
                        await call(raw, timeout=5.0)  # connect
                        return await _timed_aio(lambda: call(raw, timeout=5.0), calls, gap_s)
                    finally:
                        await aio_channel.close()

                await results.add(
                    "grpcio/aio (island)", trio_asyncio.aio_as_trio(grpcio_aio_round)()
                )

                def sync_round() -> list[float]:
                    samples = []
                    for _ in range(calls):
                        time.sleep(gap_s)
                        start = time.perf_counter()
                        grpcio_call(request)
                        samples.append(time.perf_counter() - start)
                    return samples

                grpcio_call(request)
                await results.add("grpcio/sync", trio.to_thread.run_sync(sync_round))
        finally:
            grpcio_channel.close()
            thread.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_island")
    parser.add_argument("--calls", type=int, default=1000, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()
    results = trio.run(run, args.calls, args.rounds, args.gap_ms / 1000.0)
    print("| variant | calls | p50 | p99 | CPU per call (this process) |\n|---|---|---|---|---|")
    for name, samples in results.samples.items():
        print(
            f"| {name} | {len(samples)} | {percentile(samples, 50) * 1000:.3f} ms "
            f"| {percentile(samples, 99) * 1000:.3f} ms "
            f"| {results.cpu_s[name] / len(samples) * 1e6:.0f} µs |"
        )


if __name__ == "__main__":
    main()
