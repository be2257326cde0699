"""What module.py runs: the everestpy start-up dance, then the bridge in this process.

Order (spec/everest.md, "everestpy, as Python modules use it"):
1. RuntimeSession, Module, say_hello: the module config (defaults applied by the manager) and
   the connection of `eebus_energy_sink`.
2. Our logs go to everestpy's `log` from here on (the sidecar's lines too).
3. The config is translated and checked; then init_done, with a callback that opens the gate
   of the sink. init_done is called even for an invalid config: the manager waits for every
   module to be ready, so not calling it would stall the whole charger.
4. Valid config: the bridge runs with Trio in this main thread until SIGTERM/SIGINT (exit 0).
   Invalid config: every problem is logged and the module stays idle until SIGTERM, publishing
   nothing, like the C++ module. It never exits by itself: an exiting module is a crash, and the
   manager then stops every module of the charger.
An unexpected failure of the bridge is logged and the bridge restarted with backoff, for the
same reason.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import Config, ConfigError
from eebus_bridge.everest_module.log_handler import log_to_everest
from eebus_bridge.everest_module.module_config import ModulePaths, config_from_module_config
from eebus_bridge.everest_module.sink import SET_EXTERNAL_LIMITS, EverestCommandSink
from eebus_bridge.logs import LEVELS

log = logging.getLogger("eebus_bridge.everest_module")

REQUIREMENT = "eebus_energy_sink"
EXIT_OK = 0
EXIT_NO_EVERESTPY = 1
_RESTART_POLICY = BackoffPolicy(initial_s=1.0, maximum_s=60.0, healthy_s=60.0)


def run_module() -> int:
    """The module's whole life; returns 0 after SIGTERM/SIGINT."""
    try:
        from everest.framework import Module, RuntimeSession
        from everest.framework import log as everest_log
    except ImportError as exc:
        # Only possible outside EVerest (or with a broken install): nobody to tell but stderr.
        print(
            f"PyEebusBridge: cannot import everestpy ({exc}); EVerest's manager starts this "
            "module with everestpy on PYTHONPATH",
            file=sys.stderr,
        )
        return EXIT_NO_EVERESTPY
    log_to_everest(everest_log, "info")
    module = Module(RuntimeSession())
    setup = module.say_hello()
    module_config: Mapping[str, Any] = dict(setup.configs.module)
    level = module_config.get("log_level")
    if isinstance(level, str) and level in LEVELS:
        log_to_everest(everest_log, level)
    paths = ModulePaths(etc=Path(module.info.paths.etc), libexec=Path(module.info.paths.libexec))
    # Indexing and `in` only: everestpy's mappings are bound C++ maps, not necessarily dicts.
    connections = list(setup.connections[REQUIREMENT]) if REQUIREMENT in setup.connections else []

    config: Config | None = None
    problems: list[str] = []
    try:
        loaded = config_from_module_config(module_config, paths)
    except ConfigError as exc:
        problems.extend(exc.problems)
    else:
        config = loaded.config
        for warning in loaded.warnings:
            log.warning("config: %s", warning)
    if len(connections) != 1:
        problems.append(
            f"{REQUIREMENT}: needs exactly one connection (an EnergyNode's external_limits), "
            f"got {len(connections)}"
        )

    ready = threading.Event()
    module.init_done(ready.set)  # on_ready runs on a framework thread once all modules are ready
    if config is None or problems:
        for problem in problems:
            log.error("config: %s", problem)
        log.error(
            "invalid module config (%d problem(s)): the module stays idle and sends no limits; "
            "fix config.yaml and restart EVerest",
            len(problems),
        )
        trio.run(_until_signal)
        return EXIT_OK

    connection = connections[0]

    def call(limits: dict[str, Any]) -> None:
        module.call_command(connection, SET_EXTERNAL_LIMITS, {"value": limits})

    activity = ActivityFeed()
    sink = EverestCommandSink(str(connection.module_id), call, ready, activity=activity)
    trio.run(_run_bridge_until_signal, config, [sink], activity)
    return EXIT_OK


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received: shutting down", signal.Signals(signum).name)
            return


async def _run_bridge_until_signal(
    config: Config, sinks: Sequence[EverestCommandSink], activity: ActivityFeed
) -> None:
    # Imported here: the runtime pulls in grpclib and trio-asyncio, which an idle module with
    # an invalid config never needs.
    import trio_asyncio

    from eebus_bridge.runtime import Bridge

    gc.collect()  # as in `eebus-bridge run`: keep start-up objects out of full GC passes
    gc.freeze()
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            await _until_signal()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        backoff = Backoff(_RESTART_POLICY)
        log.info(
            "eebus-bridge starting as EVerest module: sidecar %s on port %d",
            "managed" if config.sidecar.manage else "external",
            config.eebus.grpc_port,
        )
        while True:
            backoff.connected()
            try:
                async with trio_asyncio.open_loop():
                    await Bridge(config, activity=activity, extra_sinks=sinks).run()
            except Exception:
                delay = backoff.next_delay()
                log.exception("the bridge failed unexpectedly; restarting it in %.1f s", delay)
                await trio.sleep(delay)
