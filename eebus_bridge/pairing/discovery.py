"""`eebus-bridge discover`: the energy managers (EGs) on the network, and the allowlist line.

Two sources, tried in this order:

1. The running bridge. Its status endpoint (`GET http://<[status] listen>/api/status`, Bearer
   `[status] token` when set) lists `energy_managers`; a bridge that runs owns the sidecar port,
   so asking it is the only way to see anything while it runs. Nothing listening there (refused,
   or no answer within STATUS_TIMEOUT_S) means "no bridge": go on with 2.
2. A sidecar of our own for `seconds`, on the configured binary, port and certificate pair,
   printing each EG as it appears. The minimal faithful sequence (spec/wire.md):
   SetConfig (StartSetup without it crashes the real sidecar), StartSetup (creates the eebus-go
   service; SubscribeDiscoveryEvents needs Ready or Running), SubscribeDiscoveryEvents (before
   StartService, so that nothing seen at start is missed; the subscription also replays what is
   already visible), StartService (starts mDNS announcing and browsing: before it, nothing is
   discovered). No RegisterRemoteSki and no AddUseCase: a trusted EG would then connect and
   find an LPC server that nobody serves. "Trusted" is therefore judged by us: the SKI is on the
   configured ems_ski_allowlist (or the sidecar says it trusts it).
   With `[sidecar] manage = false` the external sidecar is the bridge's; discover only
   subscribes there (no setup calls, which would leave it unusable for the bridge).

Ctrl-C while watching ends the watch early and still prints the allowlist line.
Failures are clear lines, never a hang: the port held by another program (checked by binding it
before starting the sidecar), a sidecar without SubscribeDiscoveryEvents (v0.1.0 and older
answer UNIMPLEMENTED), a sidecar that exits or never answers.

The allowlist line lists the configured SKIs first, then every EG seen, so pasting it keeps the
current pairings; the comment above it asks to delete the EGs that are not yours (a neighbour's
HEMS is discovered just the same).

The `[status]` section is another issue's (observability); until it is merged here the
endpoint comes from `--status-url`/`--token` or the contract's default 127.0.0.1:8780
(see `status_endpoint`).
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from eebus_bridge.config import Config
from eebus_bridge.ski import normalize_ski

log = logging.getLogger("eebus_bridge.discover")

STATUS_TIMEOUT_S = 2.0
DEFAULT_STATUS_LISTEN = "127.0.0.1:8780"  # the status endpoint's default (observability issue)
SUBSCRIBE_TIMEOUT_S = 5.0
_EVENT_BUFFER = 1000


class DiscoveryFailed(Exception):
    """Discovery could not run; the message says why and what to do."""


@attrs.frozen
class EnergyManager:
    ski: str
    brand: str
    model: str
    device_type: str
    trusted: bool


@attrs.frozen
class StatusEndpoint:
    url: str  # http://host:port/api/status
    token: str | None = None


# --------------------------------------------------------------------------- output


def describe(manager: EnergyManager, *, gone: bool = False) -> str:
    """One line per EG for people; the SKI first so that it lines up."""
    name = " ".join(part for part in (manager.brand, manager.model) if part) or "(no name)"
    kind = f" ({manager.device_type})" if manager.device_type else ""
    if gone:
        return f"gone   {manager.ski}  {name}{kind}"
    trust = "already trusted" if manager.trusted else "not trusted yet"
    return f"found  {manager.ski}  {name}{kind}  {trust}"


def allowlist_lines(configured: Iterable[str], seen: Iterable[EnergyManager]) -> list[str]:
    """A comment and the `ems_ski_allowlist = [...]` line to paste into [eebus]."""
    seen = list(seen)
    skis = list(dict.fromkeys([*configured, *(manager.ski for manager in seen)]))
    count = len({manager.ski for manager in seen})
    comment = (
        f"# {count} energy manager(s) seen. Paste into [eebus]; remove every SKI that is not "
        "an energy manager you trust to limit this charger:"
        if count
        else "# no energy manager seen; the configured allowlist is unchanged:"
    )
    return [comment, "ems_ski_allowlist = [" + ", ".join(json.dumps(s) for s in skis) + "]"]


# --------------------------------------------------------------------------- running bridge


def status_endpoint(config: Config, url: str | None, token: str | None) -> StatusEndpoint | None:
    """Where the running bridge answers, or None when asking it is switched off.

    `url` (from --status-url) wins; "" switches the question off. Otherwise `[status] listen`
    and `[status] token` when the config has them.
    """
    # Merge point with the observability issue: Config gains `status` (listen, token) there.
    status = getattr(config, "status", None)
    if url is None:
        listen = getattr(status, "listen", DEFAULT_STATUS_LISTEN)
        if not listen:
            return None
        url = f"http://{_reachable_host(listen)}"
        token = token if token is not None else getattr(status, "token", None)
    if not url:
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path if parts.path not in ("", "/") else "/api/status"
    return StatusEndpoint(
        url=urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), token=token
    )


def _reachable_host(listen: str) -> str:
    """A listen address as a client reaches it: the wildcard addresses mean this host."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


def ask_running_bridge(endpoint: StatusEndpoint) -> list[EnergyManager] | None:
    """The bridge's current list, or None when no bridge answers at the endpoint."""
    request = urllib.request.Request(endpoint.url, headers={"Accept": "application/json"})
    if endpoint.token:
        request.add_header("Authorization", f"Bearer {endpoint.token}")
    # No proxy: an http_proxy variable must not send a question about this host elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=STATUS_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise DiscoveryFailed(
                f"the running bridge at {endpoint.url} refused the request ({exc.code}): "
                "give its [status] token with --token"
            ) from None
        log.warning("%s answered %d; not asking the bridge", endpoint.url, exc.code)
        return None
    except (urllib.error.URLError, OSError) as exc:
        log.debug("no bridge at %s: %s", endpoint.url, exc)
        return None
    try:
        return _managers_from_status(json.loads(body))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s did not answer like the bridge's status endpoint: %s", endpoint.url, exc)
        return None


def _managers_from_status(document: Any) -> list[EnergyManager]:
    entries = document["energy_managers"]
    if not isinstance(entries, list):
        raise TypeError("energy_managers is not a list")
    managers = []
    for entry in entries:
        fields = {name: entry[name] for name in ("ski", "brand", "model", "device_type")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise TypeError(f"an energy manager entry has a non-string field: {entry!r}")
        if not isinstance(entry["trusted"], bool):
            raise TypeError(f"trusted is not a boolean: {entry!r}")
        managers.append(EnergyManager(trusted=entry["trusted"], **fields))
    return managers


# --------------------------------------------------------------------------- own sidecar


def check_port_free(port: int) -> None:
    """Refuse when another program listens on the sidecar's gRPC port (127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: TIME_WAIT leftovers must not count as "in use", a listener must.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise DiscoveryFailed(
                f"port {port} (eebus.grpc_port) is already in use by another program, so "
                "discover cannot start its own sidecar. If that is the running bridge, give "
                "its status endpoint (--status-url, or [status] listen) and discover asks it; "
                "otherwise stop that program or choose another eebus.grpc_port"
            ) from None


async def discover_with_sidecar(
    config: Config, seconds: float, print_line: Callable[[str], None]
) -> list[EnergyManager]:
    """Watch discovery events for `seconds`, printing a line as each EG appears or goes.

    Needs an open trio-asyncio loop. Returns every EG seen (in order of first appearance).
    """
    # Imported here: `cert create` and `ski` never pay for grpclib.
    from eebus_bridge.eebus_link import SIDECAR_HOST, set_config_when_ready
    from eebus_bridge.sidecar_client import (
        DiscoveryEvent,
        SidecarClient,
        SidecarRpcError,
        SidecarUnreachable,
    )
    from eebus_bridge.sidecar_process import SidecarExited, SidecarProcess, sidecar_command

    managed = config.sidecar.manage
    if managed:
        check_port_free(config.eebus.grpc_port)
    allowlist = set(config.eebus.ems_ski_allowlist)
    seen: dict[str, EnergyManager] = {}

    def note(event: DiscoveryEvent) -> None:
        ski = normalize_ski(event.ski)
        manager = EnergyManager(
            ski=ski,
            brand=event.brand,
            model=event.model,
            device_type=event.device_type,
            trusted=event.is_trusted or ski in allowlist,
        )
        if event.kind == "DISCOVERED":
            seen.setdefault(ski, manager)
            print_line(describe(manager))
        elif event.kind == "REMOVED":
            print_line(describe(manager, gone=True))

    async def watch(client: SidecarClient) -> None:
        send, receive = trio.open_memory_channel[DiscoveryEvent](_EVENT_BUFFER)
        async with trio.open_nursery() as nursery:
            subscribed = trio.Event()
            nursery.start_soon(client.stream_discovery_events, send, subscribed)
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                await subscribed.wait()
            if managed:
                await client.start_service()
            print_line(f"# watching for energy managers for {seconds:g} s ...")
            with trio.move_on_after(seconds) as window:
                await nursery.start(_end_on_interrupt, window)
                async for event in receive:
                    note(event)
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            if managed:
                sidecar = SidecarProcess(sidecar_command(config), grace_s=1.0)
                await nursery.start(sidecar.run)
            async with SidecarClient(
                SIDECAR_HOST,
                config.eebus.grpc_port,
                config.eebus.rpc_timeout_s,
                config.eebus.grpc_transport,
            ) as client:
                if managed:
                    if not await set_config_when_ready(client, config):
                        raise DiscoveryFailed(
                            "the sidecar just started was already configured: another sidecar "
                            f"answers on port {config.eebus.grpc_port}"
                        )
                    await client.start_setup()
                await watch(client)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _explain(group, config) from group
    except (SidecarRpcError, SidecarUnreachable, SidecarExited, trio.TooSlowError) as exc:
        raise _explain(BaseExceptionGroup("discover", [exc]), config) from exc
    return list(seen.values())


async def _end_on_interrupt(
    window: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Ctrl-C ends the watch early; what was seen still makes the allowlist line."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            log.info("interrupted: ending the watch")
            window.cancel()
            return


def _explain(group: BaseExceptionGroup[Any], config: Config) -> BaseException:
    """The one failure that explains the rest (a sidecar exit explains broken streams)."""
    from eebus_bridge.eebus_link import HandshakeFailed
    from eebus_bridge.sidecar_client import SidecarRpcError, SidecarUnreachable
    from eebus_bridge.sidecar_process import SidecarExited

    leaves = list(_leaves(group))
    for leaf in leaves:
        if isinstance(leaf, DiscoveryFailed | KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, SidecarRpcError) and leaf.status == "UNIMPLEMENTED":
            return DiscoveryFailed(
                f"{config.sidecar.binary} has no SubscribeDiscoveryEvents (eebus_grpc_api "
                "v0.1.0 or older): discover needs v0.2.0 or newer. With this sidecar, read the "
                "energy manager's SKI from its own pairing screen"
            )
    for leaf in leaves:
        if isinstance(leaf, SidecarExited):
            return DiscoveryFailed(
                f"the sidecar {config.sidecar.binary} stopped: {leaf} (its log lines above say why)"
            )
    for leaf in leaves:
        if isinstance(leaf, SidecarRpcError | HandshakeFailed):
            return DiscoveryFailed(f"the sidecar refused: {leaf}")
    for leaf in leaves:
        if isinstance(leaf, SidecarUnreachable | trio.TooSlowError):
            return DiscoveryFailed(
                f"no answer from the sidecar on port {config.eebus.grpc_port}: {leaf}"
            )
    return leaves[0] if leaves else group


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


# --------------------------------------------------------------------------- the command


def run_discover(
    config: Config,
    *,
    seconds: float,
    status_url: str | None,
    token: str | None,
    print_line: Callable[[str], None],
) -> None:
    """The whole command: ask the running bridge, else watch with a sidecar of our own."""
    endpoint = status_endpoint(config, status_url, token)
    managers = ask_running_bridge(endpoint) if endpoint is not None else None
    if managers is not None:
        assert endpoint is not None
        print_line(f"# energy managers the running bridge sees ({endpoint.url}):")
        for manager in managers:
            print_line(describe(manager))
    else:
        from eebus_bridge.island import open_island

        async def watch() -> list[EnergyManager]:
            try:
                async with open_island():
                    return await discover_with_sidecar(config, seconds, print_line)
            except BaseExceptionGroup as group:  # the loop's nursery wraps what escapes it
                raise _explain(group, config) from None

        managers = trio.run(watch)
    for line in allowlist_lines(config.eebus.ems_ski_allowlist, managers):
        print_line(line)
