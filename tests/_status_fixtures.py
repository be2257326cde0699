"""A real bridge with its status endpoint on 127.0.0.1 port 0, against the in-process simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from eebus_bridge.island import open_island
from eebus_bridge.runtime import Bridge
from tests._bridge_fixtures import RecordingPublications, make_config, valid_limit
from tools.hems_simulator import HemsSimulator, open_hems_simulator


@attrs.define
class StatusRun:
    sim: HemsSimulator
    bridge: Bridge
    publications: RecordingPublications
    url: str
    token: str | None = None

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client for the endpoint (sending the token when one is configured)."""
        if self.token is not None:
            kwargs.setdefault("headers", {"Authorization": f"Bearer {self.token}"})
        return httpx.AsyncClient(base_url=self.url, timeout=10.0, **kwargs)


@asynccontextmanager
async def status_bridge(
    folder: Path,
    *,
    scenario: str = "controlbox",
    status: dict[str, object] | None = None,
    user_timeout_s: float = 10.0,
    read_timeout_s: int = 10,
    config: dict[str, Any] | None = None,
    **simulator: Any,
) -> AsyncIterator[StatusRun]:
    """Simulator + Bridge with [status] listen = 127.0.0.1:0 (unless `status` says otherwise);
    waits until the endpoint is bound. Simulator defaults as in simulated_bridge."""
    options: dict[str, Any] = {"connect_delay_s": 0.1, "heartbeat_period_s": 0.3, "actions": ()}
    options.update(simulator)
    settings = dict(config or {})
    settings["timing"] = {"init_timeout_s": 30.0, **settings.get("timing", {})}
    settings["status"] = {"listen": "127.0.0.1:0", **(status or {})}
    async with open_island(), open_hems_simulator(scenario, **options) as sim:
        publications = RecordingPublications()
        bridge = Bridge(
            make_config(folder, grpc_port=sim.port, **settings), publications=publications
        )
        bridge.status_endpoint.user_timeout_s = user_timeout_s
        bridge.status_endpoint.read_timeout_s = read_timeout_s
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            try:
                with trio.fail_after(20):
                    await bridge.status_endpoint.bound.wait()
                assert bridge.status_endpoint.url is not None
                token = bridge.config.status.token
                yield StatusRun(sim, bridge, publications, bridge.status_endpoint.url, token)
            finally:
                nursery.cancel_scope.cancel()
    for publication in publications.history:
        assert valid_limit(publication), publication


async def wait_for_status(
    run: StatusRun, check: Any, *, within_s: float = 15.0, path: str = "/api/status"
) -> dict[str, Any]:
    """Poll /api/status (an outside view, like the page does) until check(status) holds."""
    async with run.client() as client:
        with trio.fail_after(within_s):
            while True:
                response = await client.get(path)
                data: dict[str, Any] = response.json()
                if check(data):
                    return data
                await trio.sleep(0.05)
