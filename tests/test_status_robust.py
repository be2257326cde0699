"""The status endpoint under trouble: a stopped broker, stalled and half-finished clients."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from tests._broker import requires_mosquitto, running_mosquitto
from tests._status_fixtures import StatusRun, status_bridge
from tools.hems_simulator import ActionSpec

SINK = "everest-api[eebus_lpc_api]"


async def healthz(run: StatusRun) -> tuple[int, str]:
    async with run.client() as client:
        response = await client.get("/healthz")
    return response.status_code, response.text


async def wait_healthz(run: StatusRun, code: int, within_s: float = 30.0) -> str:
    with trio.fail_after(within_s):
        while True:
            status, text = await healthz(run)
            if status == code:
                return text
            await trio.sleep(0.1)


@requires_mosquitto
async def test_healthz_flips_to_503_when_the_only_sinks_broker_stops(tmp_path: Path) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    async with running_mosquitto(broker_dir) as broker:
        output = f"""
            [[output]]
            type = "everest-api"
            module_id = "eebus_lpc_api"
            port = {broker.tcp_port}
            communication_check_s = 0.5
        """
        config = {"jsonl": None, "extra_outputs": output}
        async with status_bridge(tmp_path, config=config) as run:
            assert await wait_healthz(run, 200) == "ok\n"

            await broker.stop()
            text = await wait_healthz(run, 503)
            assert text.startswith("unhealthy\n")
            assert f"output {SINK} is disconnected" in text
            async with run.client() as client:
                status = (await client.get("/api/status")).json()
                metrics = (await client.get("/metrics")).text
            assert status["healthy"] is False
            assert any(SINK in reason for reason in status["reasons"])
            assert "eebus_bridge_healthy 0.0" in metrics
            assert f'eebus_bridge_sink_connected{{sink="{SINK}"}} 0.0' in metrics

            await broker.start()
            assert await wait_healthz(run, 200) == "ok\n"


def _read_until_closed(sock: socket.socket) -> tuple[int, str]:
    """Read everything (blocking, in a worker thread); (bytes read, how it ended)."""
    total = 0
    sock.settimeout(30.0)
    try:
        while chunk := sock.recv(65536):
            total += len(chunk)
    except ConnectionResetError:
        return total, "reset"
    except TimeoutError:
        return total, "still open"
    return total, "closed"


async def test_stalled_clients_never_delay_publications(tmp_path: Path) -> None:
    writes = ActionSpec(
        action="send_limit",
        at_s=1.0,
        every_s=0.25,
        count=16,
        value_min=100.0,
        value_max=30000.0,
        duration_s=0.0,
    )
    async with status_bridge(
        tmp_path, user_timeout_s=1.0, read_timeout_s=1, actions=(writes,), seed=7
    ) as run:
        host, port = run.url.removeprefix("http://").rsplit(":", 1)
        # One client sends half a request and then nothing.
        half = socket.create_connection((host, int(port)))
        half.sendall(b"GET /api/status HTTP/1.1\r\nHost: bridge\r\n")
        # Another asks for 60 pages (about 2 MB) through a tiny receive window, never reading.
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((host, int(port)))
        page_request = b"GET / HTTP/1.1\r\nHost: bridge\r\n\r\n"
        reader.sendall(page_request * 60)
        try:
            async with run.client() as client:
                page_size = len((await client.get("/")).content)
                tracker = run.bridge.status
                with trio.fail_after(30):
                    while tracker.writes["approved"] < 16 or tracker.latency_count < 16:
                        # Other clients are served all along.
                        assert (await client.get("/api/status")).status_code == 200
                        await trio.sleep(0.1)
            half_end = await trio.to_thread.run_sync(_read_until_closed, half)
            reader_end = await trio.to_thread.run_sync(_read_until_closed, reader)
        finally:
            half.close()
            reader.close()

    # Every write was published, each within a second of its event even on a loaded machine
    # (typically about a millisecond): no sample above the 1 s bucket.
    assert tracker.latency_count >= 16
    assert sum(tracker.latency_buckets[-2:]) == 0, tracker.latency_buckets
    # The half request was dropped after the read timeout, unanswered.
    assert half_end == (0, "closed")
    # The stalled reader's connection was aborted by the kernel (TCP_USER_TIMEOUT) long
    # before all 60 pages were sent.
    received, how = reader_end
    assert how == "reset"
    assert received < 60 * page_size
