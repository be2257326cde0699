"""The status endpoint as a bridge task: bind, serve, and keep trying when the port is taken.

Kept free of web imports: the bridge constructs it at start-up, and the web stack (hypercorn,
Starlette, prometheus-client: about 100 ms of imports) is loaded in a worker thread when the
task starts, so the first publication never waits for it.

A status endpoint that cannot bind (the port is taken, the address is gone) must not stop the
bridge: limits matter more than the page. The task logs one error per attempt and tries again
every RETRY_S seconds.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from eebus_bridge.activity import Activity
from eebus_bridge.config import StatusConfig, parse_listen
from eebus_bridge.status.snapshot import StatusSources

log = logging.getLogger("eebus_bridge.status")

RETRY_S = 30.0
USER_TIMEOUT_S = 10.0  # a client that stops reading is cut off after this long
READ_TIMEOUT_S = 10  # a client that sends half a request is dropped after this long


@attrs.frozen
class HistoryAccess:
    """The history store's file and its two read functions (eebus_bridge.history)."""

    path: Path
    read: Callable[..., list[Activity]]  # read_history(path, since, until, kinds): blocking
    timeline_svg: Callable[..., str]  # timeline_svg(activities, since, until, width=, height=)


def _import_web_stack() -> None:
    importlib.import_module("eebus_bridge.status.server")
    importlib.import_module("eebus_bridge.status.app")


class StatusEndpoint:
    """Serves the status app for one bridge; `url` and `bound` tell tests where it listens."""

    def __init__(
        self,
        sources: StatusSources,
        config: StatusConfig,
        *,
        history: HistoryAccess | None = None,
        user_timeout_s: float = USER_TIMEOUT_S,
        read_timeout_s: int = READ_TIMEOUT_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self.sources = sources
        self.config = config
        self.history = history
        self.user_timeout_s = user_timeout_s  # stalled reader -> connection aborted
        self.read_timeout_s = read_timeout_s  # half a request -> connection dropped
        self.retry_s = retry_s
        self.url: str | None = None
        self.bound = trio.Event()

    async def run(self) -> None:
        """Serve until cancelled (does nothing when [status] listen is empty)."""
        if not self.config.listen:
            await trio.sleep(math.inf)
        await trio.to_thread.run_sync(_import_web_stack)
        from eebus_bridge.status.app import make_status_app
        from eebus_bridge.status.server import (
            listening_socket,
            serve_status_app,
            shut_down_connections,
        )

        app = make_status_app(self.sources, token=self.config.token, history=self.history)
        host, port = parse_listen(self.config.listen)
        while True:
            try:
                sock = await trio.to_thread.run_sync(
                    functools.partial(
                        listening_socket, host, port, user_timeout_s=self.user_timeout_s
                    )
                )
            except OSError as exc:
                log.error(
                    "status endpoint cannot listen on %s: %s; retrying in %g s",
                    self.config.listen,
                    exc.strerror or exc,
                    self.retry_s,
                )
                await trio.sleep(self.retry_s)
                continue
            bound_port: int = sock.getsockname()[1]
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    functools.partial(serve_status_app, read_timeout_s=self.read_timeout_s),
                    app,
                    sock,
                )
                self.url = binds[0]
                log.info("status page on %s", self.url)
                self.bound.set()
                try:
                    await trio.sleep_forever()
                finally:
                    # Cancelled (shutdown): a client that stopped reading must not hold the
                    # exit until the kernel's user timeout (see server.py).
                    shut_down_connections(bound_port)
