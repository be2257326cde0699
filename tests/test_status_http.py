"""The status endpoint over real sockets: JSON, Prometheus text, health, history, access control.

Every test runs the real bridge against the in-process simulator, with the endpoint bound to
127.0.0.1 port 0 (or 0.0.0.0 port 0 where the non-loopback rule is the point) and talks to it
with httpx or raw sockets.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests._bridge_fixtures import EG_SKI, GRPC_TRANSPORT, simulated_bridge
from tests._broker import LogWatcher
from tests._status_fixtures import status_bridge, wait_for_status

# The controlbox preset at a tenth of its pace: the EG writes 100 W for 3723 s after 0.5 s.
CONTROLBOX_FAST = {"actions": None, "time_scale": 0.1}


def limited(status: dict[str, Any]) -> bool:
    return bool(status["state"] == "Limited" and status["healthy"] and status["energy_managers"])


def limited_and_delivered(status: dict[str, Any]) -> bool:
    # The sink writes the Limited line in a worker thread a moment after the state changes:
    # waiting for the state alone saw one delivery (Init) on a loaded machine.
    return limited(status) and all(sink["deliveries"] >= 2 for sink in status["sinks"])


async def test_api_status_has_every_fact_of_the_page(tmp_path: Path) -> None:
    async with status_bridge(tmp_path, **CONTROLBOX_FAST) as run:
        status = await wait_for_status(run, limited_and_delivered)

    assert status["limit_W"] == 100.0
    assert status["end"] is not None  # 3723 s from the write
    assert status["rule"] == "LPC-904"
    assert status["active_eg"] == EG_SKI
    assert 0.0 <= status["heartbeat_age_s"] < 5.0
    assert status["failsafe"] == {"limit_W": 4200.0, "duration_s": 7200.0}
    assert status["sidecar"]["connected"] is True
    assert status["sidecar"]["managed"] is False
    assert status["sidecar"]["restarts"] == 0
    assert status["sidecar"]["grpc_transport"] == GRPC_TRANSPORT
    [sink] = status["sinks"]
    assert sink["name"].startswith("jsonl")
    assert sink["last_delivery"]["ok"] is True
    assert sink["deliveries"] >= 2  # Init, then Limited
    [manager] = status["energy_managers"]
    assert manager == {
        "ski": EG_SKI,
        "brand": "Demo",
        "model": "ControlBox",
        "device_type": "EnergyManagementSystem",
        "trusted": manager["trusted"],
        "allowlisted": False,
        "active": True,
        "seen": manager["seen"],
    }
    assert isinstance(manager["trusted"], bool)
    assert status["healthy"] is True
    assert status["reasons"] == []
    assert status["history"]["enabled"] is True
    assert status["history"]["last_error"] is None
    assert status["history"]["dropped"] == 0


async def test_metrics_parse_back_with_prometheus_client(tmp_path: Path) -> None:
    async with status_bridge(tmp_path, **CONTROLBOX_FAST) as run:
        await wait_for_status(run, limited_and_delivered)
        async with run.client() as client:
            response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("eebus_bridge_state", state="Limited") == 1.0
    assert value("eebus_bridge_state", state="Init") == 0.0
    assert value("eebus_bridge_limit_watts") == 100.0
    assert value("eebus_bridge_failsafe_limit_watts") == 4200.0
    assert value("eebus_bridge_failsafe_duration_seconds") == 7200.0
    assert 0.0 <= value("eebus_bridge_heartbeat_age_seconds") < 5.0
    assert value("eebus_bridge_writes_total", result="approved") == 1.0
    assert value("eebus_bridge_writes_total", result="denied") == 0.0
    assert value("eebus_bridge_publications_total") >= 2.0
    sink = next(labels for name, labels in samples if name == "eebus_bridge_sink_deliveries_total")
    assert value("eebus_bridge_sink_deliveries_total", **dict(sink)) >= 2.0
    assert value("eebus_bridge_sink_delivery_failures_total", **dict(sink)) == 0.0
    assert value("eebus_bridge_sidecar_restarts_total") == 0.0
    assert value("eebus_bridge_sidecar_connected") == 1.0
    assert value("eebus_bridge_healthy") == 1.0
    # The 100 W write caused one publication with a measured event latency.
    assert value("eebus_bridge_publication_latency_seconds_count") >= 1.0
    assert value("eebus_bridge_publication_latency_seconds_bucket", le="+Inf") >= 1.0
    assert 0.0 < value("eebus_bridge_publication_latency_seconds_sum") < 1.0
    assert value("eebus_bridge_history_rows_dropped_total") == 0.0
    assert value("eebus_bridge_history_write_failures_total") == 0.0
    # The bridge's own registry: nothing lands in prometheus-client's global one.
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("eebus")]


async def test_page_is_served_with_a_nonce_policy_and_the_status_inside(tmp_path: Path) -> None:
    async with status_bridge(tmp_path, **CONTROLBOX_FAST) as run:
        await wait_for_status(run, limited)
        async with run.client() as client:
            response = await client.get("/")

    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in response.text
    assert "default-src 'none'" in policy
    assert '"state":"Limited"' in response.text  # the first paint needs no request


async def test_text_from_the_network_cannot_become_markup(tmp_path: Path) -> None:
    hostile = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    async with status_bridge(tmp_path) as run, run.client() as client:
        run.bridge.activity.record(
            "discovery",
            event="DISCOVERED",
            ski="ab" * 20,
            brand=hostile,
            model=hostile,
            device_type="EnergyManagementSystem",
            trusted=False,
        )
        page = (await client.get("/")).text
        status = (await client.get("/api/status")).json()

    assert status["energy_managers"][0]["brand"] == hostile  # the data is kept as it came
    assert "<script>alert" not in page
    assert "<img" not in page
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in page


async def test_history_api_returns_what_happened_and_names_bad_input(tmp_path: Path) -> None:
    async with status_bridge(tmp_path, **CONTROLBOX_FAST) as run:
        await wait_for_status(run, limited)
        async with run.client() as client:
            with trio.fail_after(10):  # the history store writes about once a second
                while True:
                    body = (await client.get("/api/history", params={"since": "1h"})).json()
                    kinds = {activity["kind"] for activity in body["activities"]}
                    if {"write", "state", "publication"} <= kinds:
                        break
                    await trio.sleep(0.2)
            states = (
                await client.get("/api/history", params={"since": "1h", "kind": "state"})
            ).json()
            bad_since = await client.get("/api/history", params={"since": "yesterday"})
            bad_kind = await client.get("/api/history", params={"kind": "limits"})
            chart = await client.get("/timeline.svg", params={"since": "1h"})

    assert body["truncated"] is False
    assert body["count"] == len(body["activities"])
    write = next(a for a in body["activities"] if a["kind"] == "write")
    assert write["fields"]["value_W"] == 100.0
    assert write["fields"]["approved"] is True
    assert {a["kind"] for a in states["activities"]} == {"state"}
    assert states["activities"][-1]["fields"]["rule"] == "LPC-904"
    assert bad_since.status_code == 400
    assert "since: expected a span like 24h" in bad_since.json()["error"]
    assert bad_kind.status_code == 400
    assert "kind: unknown limits" in bad_kind.json()["error"]
    assert chart.status_code == 200
    assert chart.text.startswith("<svg")
    assert "class='limit'" in chart.text


async def test_history_endpoints_say_when_the_history_is_off(tmp_path: Path) -> None:
    async with (
        status_bridge(tmp_path, config={"history": {"enabled": False}}) as run,
        run.client() as client,
    ):
        response = await client.get("/api/history")
        chart = await client.get("/timeline.svg")
        status = (await client.get("/api/status")).json()

    assert response.status_code == 404
    assert "switched off" in response.json()["error"]
    assert chart.status_code == 404
    assert status["history"] == {"enabled": False}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_no_endpoint_changes_anything(tmp_path: Path, method: str) -> None:
    async with status_bridge(tmp_path) as run, run.client() as client:
        for path in ("/", "/api/status", "/api/history", "/metrics", "/healthz"):
            response = await client.request(method, path)
            assert response.status_code == 405, (method, path)


async def test_non_loopback_bind_needs_the_token(tmp_path: Path) -> None:
    token = "a-long-enough-status-token-1234"
    status = {"listen": "0.0.0.0:0", "token": token}
    async with status_bridge(tmp_path, status=status) as run:
        port = int(run.url.rsplit(":", 1)[1])
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
            anonymous = {path: await client.get(path) for path in ("/", "/api/status", "/healthz")}
            wrong = await client.get("/api/status", headers={"Authorization": "Bearer nope"})
            right = await client.get("/api/status", headers={"Authorization": f"Bearer {token}"})
            wrong_link = await client.get("/", params={"token": "nope"})
            link = await client.get("/", params={"token": token})
            cookie = link.cookies.get("eebus_bridge_status")
            with_cookie = await client.get("/api/status")  # the client keeps the cookie

    for response in anonymous.values():
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert right.json()["state"] == "Init"
    assert wrong_link.status_code == 401
    assert link.status_code == 303
    assert link.headers["location"] == "/"
    assert cookie is not None
    assert token not in cookie  # an HMAC of the token, never the token itself
    assert "httponly" in link.headers["set-cookie"].lower()
    assert with_cookie.status_code == 200


async def test_a_taken_port_is_logged_and_the_bridge_keeps_publishing(tmp_path: Path) -> None:
    with socket.socket() as taken, LogWatcher() as logs:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {"status": {"listen": f"127.0.0.1:{port}"}}
        async with simulated_bridge(tmp_path, config=config, **CONTROLBOX_FAST) as (
            _,
            bridge,
            pubs,
        ):
            await logs.wait_for(logging.ERROR, f"status endpoint cannot listen on 127.0.0.1:{port}")
            await pubs.wait_state("Limited")
            assert not bridge.status_endpoint.bound.is_set()


async def test_pairing_reads_energy_managers_from_the_real_endpoint(tmp_path: Path) -> None:
    """The contract with `eebus-bridge discover`: its client, against this endpoint."""
    from eebus_bridge.pairing.discovery import ask_running_bridge, status_endpoint

    token = "pairing-contract-token-0123456789"
    status = {"listen": "127.0.0.1:0", "token": token}
    async with status_bridge(tmp_path, status=status) as run:
        await wait_for_status(run, lambda s: bool(s["energy_managers"]))
        endpoint = status_endpoint(run.bridge.config, run.url, token)
        assert endpoint is not None
        managers = await trio.to_thread.run_sync(ask_running_bridge, endpoint)

    assert managers is not None
    [manager] = managers
    assert (manager.ski, manager.brand, manager.model) == (EG_SKI, "Demo", "ControlBox")
