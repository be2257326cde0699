"""Serving the status app with hypercorn's Trio worker on a socket we prepare ourselves.

Why hypercorn + Starlette: hypercorn is the maintained ASGI server with a native Trio worker
(uvicorn and granian are asyncio/Rust-loop only; the bridge is one Trio process and must not
grow a second event loop), built on h11/h2 like the rest of the Trio ecosystem; Starlette runs
on anyio and so on Trio, and gives routing, responses and cookies without a framework's
weight. Both are imported in a worker thread after the bridge is up (see endpoint.py), so
start-up and the first publication never wait for them.

A stalled client must never hold anything but its own connection task. Hypercorn serves each
connection in its own task, and every handler returns at once, so the bridge's tasks never
wait for a client. Two limits keep stalled connections from piling up:

- `read_timeout`: a client that sends half a request and then nothing is dropped.
- TCP_USER_TIMEOUT on the listening socket (accepted sockets inherit it): hypercorn sends
  under a shielded cancel scope and has no write timeout, so a client that stops reading a
  response would hold its connection task (and delay shutdown) forever. With the option, the
  kernel aborts a connection whose sent data stays unacknowledged (zero-window probes
  included) for that long, and the blocked send fails. Measured on Linux: the abort comes
  about 0.5 s after the timeout.
- At shutdown the bridge cannot wait that long (it exits within 2 s of SIGTERM), so the
  endpoint shuts down every connection accepted on its port at the socket level
  (`shut_down_connections`); a send blocked on such a socket fails at once. Hypercorn does
  not hand out its connections, so they are found among the process's file descriptors.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.types import ASGIApp

from eebus_bridge.status.endpoint import READ_TIMEOUT_S

log = logging.getLogger("eebus_bridge.status")
_hypercorn_log = logging.getLogger("eebus_bridge.status.http")
_hypercorn_log.setLevel(logging.WARNING)  # its "Running on ..." line repeats ours

KEEP_ALIVE_S = 5.0


def listening_socket(host: str, port: int, *, user_timeout_s: float) -> socket.socket:
    """A bound, listening TCP socket for host:port with the options above. Blocking (a host
    name is resolved): call it in a worker thread. Raises OSError."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(user_timeout_s * 1000))
            )
        sock.bind(address)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_status_app(
    app: ASGIApp,
    sock: socket.socket,
    *,
    read_timeout_s: int = READ_TIMEOUT_S,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `sock` (taken over) until cancelled; started() gives the bound URLs."""
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = _hypercorn_log
    config.read_timeout = read_timeout_s
    config.keep_alive_timeout = KEEP_ALIVE_S
    config.graceful_timeout = 1.0
    config.include_server_header = False
    await serve(app, config, task_status=task_status)  # type: ignore[arg-type]


def shut_down_connections(listener_port: int) -> int:
    """shutdown(SHUT_RDWR) every connected TCP socket of this process whose local port is
    `listener_port` (the connections accepted by the status endpoint); returns how many.

    Linux: the descriptors come from /proc/self/fd; elsewhere nothing is done and the
    kernel's user timeout still ends a stalled connection.
    """
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    count = 0
    for fd in descriptors:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != listener_port:
                    continue
                sock.getpeername()  # the listening socket has no peer: it stays
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
            except OSError:
                continue
    return count
