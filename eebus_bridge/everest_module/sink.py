"""The module's sink: each new ExternalLimits goes to the EnergyNode through everestpy.

`Module.call_command` blocks until the callee answers, for up to 300 s (GIL released), and
raises RuntimeError on an error or a time-out (spec/everest.md). So every call runs in a worker
thread that Trio abandons when the bridge shuts down: SIGTERM must end the process within 2 s
even while a call hangs; the abandoned thread dies with the process.

Like every sink: latest-value semantics (limits published while a call blocks are skipped, only
the newest follows), a failed call is logged and retried with backoff, never fatal, and an
object that fails the ExternalLimits schema is a bug of ours: logged, never sent. Nothing is
sent before EVerest's ready callback fired: commands are allowed only after every module is
ready, so the sink first waits for `ready` (a threading.Event the callback sets).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import trio

from eebus_bridge.activity import ActivityFeed, record_delivery
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.external_limits import external_limits_problems

log = logging.getLogger(__name__)

SET_EXTERNAL_LIMITS = "set_external_limits"  # the external_energy_limits interface's command

# call(limits): blocks until EVerest's callee took the object; raises on failure.
LimitsCall = Callable[[dict[str, Any]], None]


class EverestCommandSink:
    """Delivers publications with `call`, one at a time, once `ready` is set."""

    def __init__(
        self,
        target: str,
        call: LimitsCall,
        ready: threading.Event,
        *,
        backoff: BackoffPolicy | None = None,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.name = f"everest-module[{target}]"
        self.activity = activity if activity is not None else ActivityFeed()
        self._call = call
        self._ready = ready
        self._backoff_policy = backoff

    async def run(self, latest: LatestValue[Publication]) -> None:
        if not self._ready.is_set():
            log.info("%s: waiting for EVerest's ready signal before sending limits", self.name)
            await trio.to_thread.run_sync(self._ready.wait, abandon_on_cancel=True)
            log.info("%s: EVerest is ready", self.name)
        self.activity.record("sink", sink=self.name, event="connected")
        backoff = Backoff(self._backoff_policy)
        delivered = 0
        while True:
            version, publication = await latest.wait_newer(delivered)
            problems = external_limits_problems(publication.external_limits)
            if problems:
                log.error(
                    "%s: not sending invalid ExternalLimits (%s): %s",
                    self.name,
                    publication.summary(),
                    "; ".join(problems),
                )
                delivered = version
                continue
            try:
                await trio.to_thread.run_sync(
                    functools.partial(self._call, publication.external_limits),
                    abandon_on_cancel=True,
                )
            except Exception as exc:  # everestpy raises RuntimeError; anything else is as bad
                record_delivery(self.activity, self.name, version, str(exc))
                delay = backoff.next_delay()
                log.error(
                    "%s: %s failed (%s): %s; retrying in %.1f s",
                    self.name,
                    SET_EXTERNAL_LIMITS,
                    publication.summary(),
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                continue  # the newest publication then, which may be newer than this one
            backoff.reset()
            delivered = version
            record_delivery(self.activity, self.name, version, None)
            log.info("%s: sent %s (%s)", self.name, publication.summary(), publication.state)
