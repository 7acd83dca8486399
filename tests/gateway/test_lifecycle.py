"""Gateways started for one test each: shutdown, configuration switches, the shipped example, reconcile,
and the logins a gateway refuses to serve over."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from api.gateway.spool import PendingCompletion, Spool
from api.jsonio import loads
from api.ledger import sync as ledger
from tests.conftest import API_ROLE, url_for
from tests.gateway.server import ROOT, start_gateway, tollgate_command
from tests.helpers import tracking_row

pytestmark = pytest.mark.timeout(180)


def funded_token(server: Any, gdb: psycopg.Connection[Any], amount: str = "1") -> tuple[str, uuid.UUID]:
    subject = f"life-{uuid.uuid4().hex[:10]}"
    user_id = ledger.ensure_account(gdb, subject)
    ledger.top_up(gdb, user_id, Decimal(amount), "test", uuid.uuid4().hex)
    return server.token(subject), user_id


def balance(gdb: psycopg.Connection[Any], user_id: uuid.UUID) -> Decimal:
    value: Decimal = ledger.summary(gdb, user_id)["balance_usd"]
    return value


def test_shutdown_lets_in_flight_calls_finish_and_settle(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    server = start_gateway(gateway_db, tmp_path)
    try:
        token, user_id = funded_token(server, gdb)
        replies: list[httpx.Response] = []

        def call() -> None:
            with server.client(token) as client:
                replies.append(client.post("/api/tools/slow", json={"seconds": 2}))

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.7)
        server.process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    assert replies and replies[0].status_code == 200, server.logs()
    assert loads(replies[0].content)["billing"]["status"] == "charged"
    assert balance(gdb, user_id) == Decimal("0.99")
    assert ledger.verify_ledger(gdb) == []


def test_metering_off_serves_without_tracking_or_charging(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    server = start_gateway(gateway_db, tmp_path, TOLLGATE_METERING="false")
    try:
        token, user_id = funded_token(server, gdb)
        before = gdb.execute("SELECT count(*) FROM billing.cost_tracking").fetchone()
        with server.client(token) as client:
            reply = client.post("/api/tools/priced", json={"text": "free ride"})
        assert reply.status_code == 200
        assert loads(reply.content)["billing"]["status"] == "unmetered"
        assert gdb.execute("SELECT count(*) FROM billing.cost_tracking").fetchone() == before
        assert balance(gdb, user_id) == Decimal("1")
    finally:
        server.stop()


def test_anonymous_callers_can_be_refused(gateway_db: str, tmp_path: Path) -> None:
    server = start_gateway(gateway_db, tmp_path, TOLLGATE_ALLOW_ANONYMOUS="false")
    try:
        with server.client() as client:
            assert client.get("/health").status_code == 200
            assert client.get("/openapi.json").status_code == 200
            for method, path in (("GET", "/sse"), ("POST", "/mcp"), ("GET", "/api/billing/balance")):
                reply = client.request(method, path)
                assert reply.status_code == 401, path
                assert reply.json()["error"]["code"] == "credentials_required"
    finally:
        server.stop()


def test_the_shipped_example_configuration_end_to_end(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """What the README's quick start shows: tollgate.toml, the example upstream server, a priced call."""
    server = start_gateway(gateway_db, tmp_path, TOLLGATE_TOOLS_CONFIG=str(ROOT / "tollgate.toml"))
    try:
        token, user_id = funded_token(server, gdb)
        with server.client(token) as client:
            names = {tool["name"] for tool in client.get("/api/tools").json()["tools"]}
            assert {"lookup_law", "count_words", "echo", "summarize"} <= names
            law = client.post("/api/tools/lookup_law", json={"query": "constitution"})
            echo = client.post("/api/tools/echo", json={"text": "hi"})
            summary = client.post("/api/tools/summarize", json={"text": "One two three. Four five."})
        assert law.status_code == 200, law.text
        assert loads(law.content)["billing"]["price_usd"] == Decimal("0.02")
        assert loads(echo.content)["billing"]["price_usd"] == Decimal("0.0003")
        summarized = loads(summary.content)["billing"]
        assert summarized["status"] == "charged"
        row = tracking_row(gdb, summarized["request_id"])
        assert row["price_usd"] == (row["total_cost_usd"] * Decimal("1.2")).quantize(Decimal("1e-8"))
        assert balance(gdb, user_id) == Decimal(1) - Decimal("0.02") - Decimal("0.0003") - row["price_usd"]
    finally:
        server.stop()


def test_reconcile_bills_spooled_completions(gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path) -> None:
    """A completion the gateway spooled (the ledger was down) is billed once by `tollgate ledger reconcile`."""
    ledger.set_tool_pricing(gdb, "priced", Decimal("0.02"))
    subject = f"rec-{uuid.uuid4().hex[:8]}"
    user_id = ledger.ensure_account(gdb, subject)
    ledger.top_up(gdb, user_id, Decimal("1"), "test", uuid.uuid4().hex)
    request_id = f"spooled-{uuid.uuid4().hex}"
    ledger.begin_request(gdb, request_id, "priced", user_id, None)
    listed = [call.request_id for call in ledger.unbilled_calls(gdb)]
    assert request_id in listed
    spool = Spool(tmp_path / "spool")
    completion = PendingCompletion(request_id, True, Decimal(0), [], 12, None, "priced call")
    spool.add(completion)
    spool.add(completion)  # spooled twice (a retry raced a crash): still billed once
    env = {**os.environ, "TOLLGATE_DATABASE_URL": gateway_db, "TOLLGATE_DATA_DIR": str(tmp_path)}
    for _ in range(2):
        result = subprocess.run(
            [*tollgate_command(), "ledger", "reconcile"], env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "2 completion(s) written" in result.stdout or "0 completion(s) written" in result.stdout
    assert tracking_row(gdb, request_id)["status"] == "completed"
    assert balance(gdb, user_id) == Decimal("0.98")
    assert request_id not in [call.request_id for call in ledger.unbilled_calls(gdb)]
    assert spool.pending() == []
    assert ledger.verify_ledger(gdb) == []


def test_reconcile_closes_stale_calls_with_no_known_outcome(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    ledger.set_tool_pricing(gdb, "priced", Decimal("0.02"))
    subject = f"stale-{uuid.uuid4().hex[:8]}"
    user_id = ledger.ensure_account(gdb, subject)
    ledger.top_up(gdb, user_id, Decimal("1"), "test", uuid.uuid4().hex)
    request_id = f"lost-{uuid.uuid4().hex}"
    ledger.begin_request(gdb, request_id, "priced", user_id, None)
    env = {**os.environ, "TOLLGATE_DATABASE_URL": gateway_db, "TOLLGATE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [*tollgate_command(), "ledger", "reconcile", "--fail-stale-minutes", "0"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert tracking_row(gdb, request_id)["status"] == "failed"
    assert ledger.summary(gdb, user_id)["held_usd"] == Decimal(0)
    assert balance(gdb, user_id) == Decimal("1")


def test_ledger_down_before_the_call_runs_nothing(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path, pg_server_url: str
) -> None:
    """The ledger unreachable before a tool runs: 503 over HTTP, an isError result over MCP; nothing ran."""
    dbname = str(conninfo_to_dict(gateway_db)["dbname"])
    server = start_gateway(gateway_db, tmp_path, TOLLGATE_POOL_TIMEOUT_SECONDS="1", TOLLGATE_POOL_MIN="0")
    try:
        token, user_id = funded_token(server, gdb)
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename LIKE 'tollgate\\_gw\\_%%' AND datname = %s",
                    (dbname,),
                )
                with server.client(token) as client:
                    reply = client.post("/api/tools/priced", json={"text": "x"})
                    health = client.get("/health")
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "ledger_unavailable"
        assert reply.headers["retry-after"]
        assert health.status_code == 503
        # It recovers by itself once the database takes connections again (the pool reconnects with backoff).
        with server.client(token) as client:
            deadline = time.monotonic() + 30
            while (status := client.post("/api/tools/priced", json={"text": "x"}).status_code) == 503:
                assert time.monotonic() < deadline, "the gateway did not recover"
                time.sleep(0.5)
            assert status == 200
    finally:
        server.stop()
    assert balance(gdb, user_id) == Decimal("0.98")


# --- who the gateway logs in as ---------------------------------------------------------------------------


def test_the_gateway_logs_in_as_its_three_roles_and_never_as_a_superuser(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The gateway never serves over one role that may call every function (or a superuser): each pool is
    its own login, and the metering pool cannot credit."""
    dbname = str(conninfo_to_dict(gateway_db)["dbname"])
    server = start_gateway(gateway_db, tmp_path, TOLLGATE_POOL_MIN="1")
    try:
        token, _ = funded_token(server, gdb)
        with server.client(token) as client:
            assert client.post("/api/tools/priced", json={"text": "x"}).status_code == 200
        sessions = gdb.execute(
            "SELECT DISTINCT a.application_name, a.usename::text, r.rolsuper FROM pg_stat_activity a"
            " JOIN pg_roles r ON r.rolname = a.usename WHERE a.datname = %s AND a.application_name LIKE 'tollgate %%'",
            (dbname,),
        ).fetchall()
    finally:
        server.stop()
    assert sorted(sessions) == [
        ("tollgate metering", "tollgate_gw_metering", False),
        ("tollgate operator", "tollgate_gw_operator", False),
        ("tollgate payments", "tollgate_gw_payments", False),
    ]
    may = gdb.execute(
        "SELECT has_function_privilege('tollgate_gw_metering', p.oid, 'EXECUTE') FROM pg_proc p"
        " WHERE p.pronamespace = 'billing'::regnamespace AND p.proname IN ('top_up', 'update_settings') ORDER BY 1"
    ).fetchall()
    assert may == [(False,), (False,)]


@pytest.mark.parametrize(
    ("variable", "login", "reason"),
    [
        ("TOLLGATE_METERING_DATABASE_URL", None, "is a superuser"),  # the owner's (superuser) URL itself
        ("TOLLGATE_OPERATOR_DATABASE_URL", API_ROLE, "is also a member of tollgate_metering, tollgate_payments"),
        ("TOLLGATE_PAYMENTS_DATABASE_URL", "tollgate_gw_metering", "does not have the privileges of tollgate_payments"),
    ],
)
def test_the_gateway_refuses_to_serve_over_a_login_that_is_more_or_other_than_its_authority(
    gateway_db: str, tmp_path: Path, variable: str, login: str | None, reason: str
) -> None:
    dbname = str(conninfo_to_dict(gateway_db)["dbname"])
    url = gateway_db if login is None else url_for(gateway_db, dbname, user=login)
    with pytest.raises(RuntimeError, match="the gateway exited") as refused:
        start_gateway(gateway_db, tmp_path, **{variable: url})
    assert reason in str(refused.value)
    assert "refusing the" in str(refused.value)
