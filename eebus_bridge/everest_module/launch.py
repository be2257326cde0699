"""What module.py runs after the everestpy start-up: the bridge in this process, or idling.

module.py holds the everestpy sequence itself, so that it reads like any EVerest Python module
(spec/everest.md, "everestpy, as Python modules use it"):
1. RuntimeSession, Module, say_hello: the module config (defaults applied by the manager) and
   the connection of `eebus_energy_sink`; our logs (the sidecar's lines too) go to everestpy's
   `log` from then on.
2. `check_module_setup` translates and checks the config (all problems at once).
3. init_done, with a callback that opens the gate of the sink. It is called even for an
   invalid config: the manager waits for every module to be ready, so not calling it would
   stall the whole charger.
4. Valid config, `run_bridge`: the bridge runs with Trio in the main thread until SIGTERM or
   SIGINT (exit 0). Invalid config, `run_idle`: every problem is logged and the module stays
   idle until SIGTERM, sending nothing, like the C++ module.
The module never exits by itself: an exiting module is a crash, and the manager then stops
every module of the charger. So an unexpected failure of the bridge is logged and the bridge
restarted with backoff.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import Config, ConfigError
from eebus_bridge.everest_module.module_config import (
    ModulePaths,
    config_from_module_config,
    module_key_names,
)
from eebus_bridge.everest_module.sink import EverestCommandSink, LimitsCall
from eebus_bridge.logs import LEVELS
from eebus_bridge.pairing.device import check_device_pair
from eebus_bridge.start_up import freeze_start_up

log = logging.getLogger("eebus_bridge.everest_module")

REQUIREMENT = "eebus_energy_sink"
EXIT_OK = 0
_RESTART_POLICY = BackoffPolicy(initial_s=1.0, maximum_s=60.0, healthy_s=60.0)


@attrs.frozen
class ModuleStart:
    """What the module config and connections allow: a Config, or the problems that forbid one."""

    config: Config | None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    log_level: str = "info"


def check_module_setup(
    module_config: Mapping[str, Any], connections: Sequence[object], paths: ModulePaths
) -> ModuleStart:
    """Translate the module config (say_hello's) and check the eebus_energy_sink connections."""
    level = module_config.get("log_level")
    log_level = level if isinstance(level, str) and level in LEVELS else "info"
    problems: list[str] = []
    config: Config | None = None
    warnings: tuple[str, ...] = ()
    try:
        loaded = config_from_module_config(module_config, paths)
    except ConfigError as exc:
        problems.extend(exc.problems)
    else:
        config, warnings = loaded.config, loaded.warnings
        if config.sidecar.manage:  # unmanaged, the C++ module ignores certificate and key
            # As `eebus-bridge run` does: a broken pair would make the sidecar exit at start.
            pair = check_device_pair(config)
            problems.extend(module_key_names(problem) for problem in pair.problems)
    if len(connections) != 1:  # the manager enforces this already; a bad manifest would not
        problems.append(
            f"{REQUIREMENT}: needs exactly one connection (an EnergyNode's external_limits), "
            f"got {len(connections)}"
        )
    if problems:
        return ModuleStart(config=None, problems=tuple(problems), log_level=log_level)
    return ModuleStart(config=config, warnings=warnings, log_level=log_level)


def run_idle(start: ModuleStart) -> int:
    """Invalid config: log every problem, send nothing, stay up until SIGTERM (then 0)."""
    for problem in start.problems:
        log.error("config: %s", problem)
    log.error(
        "invalid module config (%d problem(s)): the module stays idle and sends no limits; "
        "fix config.yaml and restart EVerest",
        len(start.problems),
    )
    trio.run(_until_signal)
    return EXIT_OK


def run_bridge(
    config: Config,
    call: LimitsCall,
    target: str,
    ready: threading.Event,
    *,
    warnings: Sequence[str] = (),
) -> int:
    """The bridge in this process, delivering through `call` once `ready`; 0 after SIGTERM."""
    for warning in warnings:
        log.warning("config: %s", warning)
    activity = ActivityFeed()
    sink = EverestCommandSink(target, call, ready, activity=activity)
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
    from eebus_bridge.island import open_island
    from eebus_bridge.runtime import Bridge

    freeze_start_up()
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
                async with open_island():
                    await Bridge(config, activity=activity, extra_sinks=sinks).run()
            except Exception:
                delay = backoff.next_delay()
                log.exception("the bridge failed unexpectedly; restarting it in %.1f s", delay)
                await trio.sleep(delay)
