"""Metrics hygiene against a real `tollgate run`: labels from a fixed set whatever clients send (route templates,
``(unmatched)``, a fixed set of methods), and /metrics, which shows revenue, only for the metrics token or an
administrator, or on a port of its own."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.abuse.config import AbuseConfigError, load_abuse_settings
from tests.gateway.server import Gateway, free_port, start_gateway

pytestmark = pytest.mark.timeout(240)

TOKEN = "metrics-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def guarded(gateway_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = start_gateway(gateway_db, tmp_path_factory.mktemp("metrics"), TOLLGATE_ABUSE_METRICS_TOKEN=TOKEN)
    yield server
    server.stop()


def _scrape(gateway: Gateway) -> str:
    reply = httpx.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.text


def test_unauthenticated_metrics_are_401_with_a_challenge(guarded: Gateway) -> None:
    with guarded.client() as anonymous:
        reply = anonymous.get("/metrics")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.json()["error"]["code"] == "metrics_token_required"
    assert "tollgate_charged_usd" not in reply.text
    for wrong in (TOKEN[:-1], TOKEN + "x", "tg_" + TOKEN):
        with guarded.client(wrong) as client:
            assert client.get("/metrics").status_code == 401


def test_a_user_who_is_not_an_administrator_is_403(guarded: Gateway) -> None:
    with guarded.client(guarded.token()) as user:
        reply = user.get("/metrics")
    assert reply.status_code == 403
    assert "tollgate_charged_usd" not in reply.text


def test_the_metrics_token_and_an_administrator_may_read_them(guarded: Gateway) -> None:
    for credential in (TOKEN, guarded.token("ops", admin=True)):
        with guarded.client(credential) as client:
            reply = client.get("/metrics")
        assert reply.status_code == 200, reply.text
        assert "tollgate_charged_usd_total" in reply.text
        assert reply.headers["content-type"].startswith("text/plain")


def test_the_metrics_token_is_worth_nothing_elsewhere(guarded: Gateway) -> None:
    with guarded.client(TOKEN) as client:
        assert client.get("/api/billing/balance").status_code == 401
        assert client.post("/api/tools/micro", json={}).status_code == 401
        assert client.get("/api/admin/users/00000000-0000-0000-0000-000000000000/billing").status_code == 401


def test_labels_are_route_templates_and_a_fixed_set_of_methods(guarded: Gateway) -> None:
    with guarded.client(guarded.token("ops", admin=True)) as admin:
        admin.get(f"/api/admin/users/{uuid.uuid4()}/billing")
        admin.request("PROPFIND", "/health")
        admin.get("/nowhere-" + uuid.uuid4().hex)
    with guarded.client("not-a-jwt") as refused:
        refused.get("/api/billing/balance")
    text = _scrape(guarded)
    assert 'route="/api/admin/users/{user_id}/billing"' in text
    assert 'method="OTHER",route="/health",status="405"' in text
    assert 'route="(unmatched)",status="404"' in text
    # Refused before routing (a bad token): still labelled with the route it was for.
    assert 'method="GET",route="/api/billing/balance",status="401"' in text
    assert "nowhere-" not in text


def test_five_thousand_random_paths_and_methods_do_not_grow_the_metrics(guarded: Gateway) -> None:
    """The issue: 5,000 requests to random 404 paths grew /metrics from 35 kB to 7.4 MB. Now every path no route
    serves is one label, every unknown method another: the page grows by a few series at most."""
    generator = random.Random(14)
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "PURGE", "MKCOL", "LINK", "SEARCH"]
    prefixes = ["/", "/api/", "/api/admin/users/", "/api/tools/", "/api/billing/payments/", "/messages/x/", "/mcp/"]
    statuses: set[int] = set()

    def flood(client: httpx.Client, count: int) -> None:
        for index in range(count):
            path = generator.choice(prefixes) + uuid.UUID(int=generator.getrandbits(128)).hex
            if index % 3 == 0:
                path += "/" + uuid.UUID(int=generator.getrandbits(128)).hex[:12]
            headers = {"Authorization": "Bearer junk"} if index % 7 == 0 else {}
            reply = client.request(generator.choice(methods), path, headers=headers)
            statuses.add(reply.status_code)
            assert reply.status_code < 500, (path, reply.status_code, reply.text)

    before = _scrape(guarded)
    with httpx.Client(base_url=guarded.base_url, timeout=30) as client:
        flood(client, 1000)
        warm = _scrape(guarded)
        flood(client, 5000)
    after = _scrape(guarded)
    print(
        f"/metrics: {len(before)} bytes before, {len(warm)} after 1,000 random requests, {len(after)} after 5,000 "
        f"more; statuses {sorted(statuses)}"
    )
    # The first requests add their few series (bounded by routes x methods x statuses, and a latency histogram
    # per route) ...
    assert len(warm) - len(before) < 40_000, (len(before), len(warm))
    # ... and no more come: 5,000 more requests only make the counts longer.
    assert len(after) - len(warm) < 2_000, (len(warm), len(after))
    routes = set(re.findall(r'route="([^"]*)"', after))
    assert not any(re.search(r"[0-9a-f]{12}", route) for route in routes), routes
    methods_seen = set(re.findall(r'method="([^"]*)"', after))
    assert methods_seen <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER"}


def test_with_a_port_of_its_own_metrics_leave_the_main_port(
    gateway_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    server = start_gateway(
        gateway_db,
        tmp_path_factory.mktemp("metrics-port"),
        TOLLGATE_ABUSE_METRICS_PORT=str(port),
        TOLLGATE_ABUSE_METRICS_TOKEN=TOKEN,
    )
    try:
        with server.client(server.token("ops", admin=True)) as admin:
            assert admin.get("/metrics").status_code == 404
            assert "/metrics" not in admin.get("/openapi.json").json()["paths"]
        with server.client(TOKEN) as client:
            assert client.get("/metrics").status_code in (401, 404)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        refused = httpx.get(metrics_url, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        served = httpx.get(metrics_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert served.status_code == 200
        assert "tollgate_charged_usd_total" in served.text
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 404
    finally:
        assert server.stop() == 0, server.logs()


def test_a_metrics_port_without_a_token_serves_its_scraper(
    gateway_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    server = start_gateway(gateway_db, tmp_path_factory.mktemp("metrics-open"), TOLLGATE_ABUSE_METRICS_PORT=str(port))
    try:
        served = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert served.status_code == 200
        assert "tollgate_http_requests_total" in served.text
        with server.client() as anonymous:
            assert anonymous.get("/metrics").status_code == 404
    finally:
        assert server.stop() == 0, server.logs()


@pytest.mark.parametrize(
    "environ,named",
    [
        ({"TOLLGATE_ABUSE_METRICS_PORT": "0"}, "abuse.metrics.port"),
        ({"TOLLGATE_ABUSE_METRICS_PORT": "70000"}, "abuse.metrics.port"),
        ({"TOLLGATE_ABUSE_METRICS_TOKEN": "short"}, "abuse.metrics.token"),
    ],
)
def test_a_bad_metrics_port_or_a_guessable_token_stops_the_start(environ: dict[str, str], named: str) -> None:
    with pytest.raises(AbuseConfigError, match=named.replace(".", r"\.")):
        load_abuse_settings(None, environ)


def test_metrics_settings_from_the_environment() -> None:
    settings = load_abuse_settings(None, {"TOLLGATE_ABUSE_METRICS_PORT": "9100", "TOLLGATE_ABUSE_METRICS_TOKEN": TOKEN})
    assert (settings.metrics.port, settings.metrics.token) == (9100, TOKEN)
    assert load_abuse_settings(None, {"TOLLGATE_ABUSE_METRICS_PORT": "off"}).metrics.port is None
