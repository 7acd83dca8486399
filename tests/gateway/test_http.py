"""The HTTP API end to end: a real `tollgate run` on loopback, real PostgreSQL, real HTTP.

Every money assertion compares exact Decimals read back from the ledger.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from api.gateway import apikeys
from api.gateway.http.envelope import scoped_request_id
from api.jsonio import loads
from api.ledger import sync as ledger
from tests.helpers import ledger_rows, tracking_row

pytestmark = pytest.mark.timeout(120)


def body(response: httpx.Response) -> Any:
    return loads(response.content)


def new_user(
    gateway: Any, gdb: psycopg.Connection[Any], funds: str | None = None, **settings: Any
) -> tuple[str, uuid.UUID]:
    """A JWT and the billed user behind it, optionally funded (admin top-up through the API)."""
    subject = f"user-{uuid.uuid4().hex[:10]}"
    token = gateway.token(subject, email=f"{subject}@example.com")
    user_id = ledger.ensure_account(gdb, subject, f"{subject}@example.com")
    if funds is not None:
        with gateway.client(gateway.token("ops", admin=True)) as admin:
            reply = admin.post(
                "/api/billing/topup",
                json={"user_id": str(user_id), "amount_usd": funds, "payment_id": uuid.uuid4().hex},
            )
            assert reply.status_code == 200, reply.text
    if settings:
        ledger.update_settings(gdb, user_id, **settings)
    return token, user_id


def balance_of(gdb: psycopg.Connection[Any], user_id: uuid.UUID) -> Decimal:
    row = gdb.execute("SELECT balance_usd FROM billing.user_billing WHERE user_id = %s", (user_id,)).fetchone()
    assert row is not None
    result: Decimal = row[0]
    return result


def assert_consistent(gdb: psycopg.Connection[Any]) -> None:
    assert ledger.verify_ledger(gdb) == []


# ---- operations ---------------------------------------------------------------------------------


def test_health_and_openapi_list_every_route(gateway: Any) -> None:
    from api.gateway.http.endpoints import ENDPOINTS

    with gateway.client() as client:
        health = client.get("/health")
        assert health.status_code == 200
        assert body(health)["database"] == "ok"
        spec = body(client.get("/openapi.json"))
    assert spec["openapi"].startswith("3.")
    for endpoint in ENDPOINTS:
        operation = spec["paths"][endpoint.path][endpoint.method.lower()]
        assert operation["responses"]
        if endpoint.body is not None:
            assert operation["requestBody"]["content"]["application/json"]["schema"] == endpoint.body


def test_metrics_count_calls_and_refusals(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, _ = new_user(gateway, gdb, funds="0.01")
    with gateway.client(token) as client:
        assert client.post("/api/tools/micro", json={}).status_code == 200
        assert client.post("/api/tools/priced", json={"text": "x"}).status_code == 402
    with gateway.client(gateway.token("ops", admin=True)) as admin:
        text = admin.get("/metrics").text
    assert 'tollgate_refusals_total{reason="insufficient_funds"}' in text
    assert "tollgate_tool_calls_total" in text
    assert "tollgate_http_request_seconds_bucket" in text
    assert "tollgate_db_pool_connections" in text


# ---- tool calls ---------------------------------------------------------------------------------


def test_priced_call_charges_exactly_the_price(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1.00")
    with gateway.client(token) as client:
        reply = client.post("/api/tools/priced", json={"text": "привіт"})
    assert reply.status_code == 200, reply.text
    data = body(reply)
    assert data["success"] is True
    assert data["result"]["content"][0]["text"] == "echo: привіт"
    billing = data["billing"]
    assert billing["status"] == "charged"
    assert billing["price_usd"] == Decimal("0.02")
    assert balance_of(gdb, user_id) == Decimal("0.98")
    charge = [row for row in ledger_rows(gdb, user_id) if row["type"] == "charge"]
    assert len(charge) == 1
    assert charge[0]["amount_usd"] == Decimal("-0.02")
    assert charge[0]["request_id"] == billing["request_id"]
    assert charge[0]["description"] == "priced call"
    tracked = tracking_row(gdb, billing["request_id"])
    assert tracked["status"] == "completed"
    assert tracked["user_id"] == user_id
    assert tracked["price_usd"] == Decimal("0.02")
    assert_consistent(gdb)


def test_micro_cent_and_metered_prices_are_exact(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    with gateway.client(token) as client:
        for _ in range(3):
            assert client.post("/api/tools/micro").status_code == 200
        reply = client.post("/api/tools/metered", json={"tokens": 1234})
    assert reply.status_code == 200, reply.text
    # 1234 tokens x $0.000002 = $0.002468, + 50% markup = $0.003702
    assert body(reply)["billing"]["price_usd"] == Decimal("0.003702")
    tracked = tracking_row(gdb, body(reply)["billing"]["request_id"])
    assert tracked["total_cost_usd"] == Decimal("0.002468")
    assert tracked["cost_breakdown"] == [
        {"provider": "test-llm", "cost_usd": Decimal("0.002468"), "units": 1234, "unit": "tokens"}
    ]
    assert balance_of(gdb, user_id) == Decimal("1") - 3 * Decimal("0.0003") - Decimal("0.003702")
    assert_consistent(gdb)


def test_api_key_caller_is_tracked_not_charged(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    key = apikeys.generate_key()
    name = f"client-{uuid.uuid4().hex[:8]}"
    ledger.create_api_key(gdb, name, apikeys.hash_key(key), apikeys.key_prefix(key))
    with httpx.Client(base_url=gateway.base_url, headers={"X-API-Key": key}) as client:
        reply = client.post("/api/tools/priced", json={"text": "k"})
    assert reply.status_code == 200, reply.text
    billing = body(reply)["billing"]
    assert billing["status"] == "not_charged"
    tracked = tracking_row(gdb, billing["request_id"])
    assert tracked["client_key"] == name
    assert tracked["user_id"] is None
    assert tracked["status"] == "completed"
    # Revoked: refused at once, nothing tracked.
    ledger.revoke_api_key(gdb, name)
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        refused = client.post("/api/tools/priced", json={"text": "k"})
    assert refused.status_code == 401
    assert body(refused)["error"]["code"] == "revoked_api_key"


def test_anonymous_http_tool_call_needs_credentials(gateway: Any) -> None:
    with gateway.client() as client:
        reply = client.post("/api/tools/priced", json={"text": "x"})
    assert reply.status_code == 401
    assert body(reply)["error"]["code"] == "credentials_required"
    assert reply.headers["www-authenticate"].startswith("Bearer")


def test_failed_tool_is_not_charged_and_frees_the_hold(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="0.05")
    with gateway.client(token) as client:
        reply = client.post("/api/tools/broken", json={})
    assert reply.status_code == 502
    data = body(reply)
    assert data["error"]["code"] == "tool_error"
    assert "always fails" in data["error"]["message"]
    assert data["billing"]["status"] == "not_charged"
    assert balance_of(gdb, user_id) == Decimal("0.05")
    held = gdb.execute("SELECT held_usd FROM billing.user_billing WHERE user_id = %s", (user_id,)).fetchone()
    assert held == (Decimal(0),)
    assert tracking_row(gdb, data["billing"]["request_id"])["status"] == "failed"


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"text": 5}, 422, "invalid_arguments"),
        ({"text": "x", "extra": 1}, 422, "invalid_arguments"),
        ({}, 422, "invalid_arguments"),
        ([1, 2], 422, "invalid_arguments"),
    ],
)
def test_invalid_arguments_are_refused_before_anything_is_held(
    gateway: Any, gdb: psycopg.Connection[Any], payload: Any, status: int, code: str
) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    before = gdb.execute("SELECT count(*) FROM billing.cost_tracking WHERE user_id = %s", (user_id,)).fetchone()
    with gateway.client(token) as client:
        reply = client.post("/api/tools/priced", json=payload)
    assert reply.status_code == status, reply.text
    assert body(reply)["error"]["code"] == code
    after = gdb.execute("SELECT count(*) FROM billing.cost_tracking WHERE user_id = %s", (user_id,)).fetchone()
    assert before == after
    assert balance_of(gdb, user_id) == Decimal("1")


def test_unknown_tool_is_404(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, _ = new_user(gateway, gdb, funds="1")
    with gateway.client(token) as client:
        reply = client.post("/api/tools/no-such-tool", json={})
    assert reply.status_code == 404
    assert body(reply)["error"]["code"] == "unknown_tool"


def test_idempotency_key_replay_is_not_run_or_charged_again(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    key = uuid.uuid4().hex
    with gateway.client(token) as client:
        first = client.post("/api/tools/priced", json={"text": "a"}, headers={"Idempotency-Key": key})
        second = client.post("/api/tools/priced", json={"text": "a"}, headers={"Idempotency-Key": key})
        other_tool = client.post("/api/tools/micro", headers={"Idempotency-Key": key})
    assert first.status_code == 200
    assert second.status_code == 409
    assert body(second)["error"]["code"] == "already_completed"
    assert other_tool.status_code == 409
    assert body(other_tool)["error"]["code"] == "idempotency_conflict"
    assert balance_of(gdb, user_id) == Decimal("0.98")


def test_idempotency_keys_belong_to_the_principal_that_sent_them(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    """Keys were one global namespace: another user's key answered 409 naming the tool it was used for,
    and a predictable key could be squatted. Now each principal has its own, as Stripe scopes keys."""
    alice, alice_id = new_user(gateway, gdb, funds="1")
    mallory, mallory_id = new_user(gateway, gdb, funds="1")
    api_key = apikeys.generate_key()
    key_name = f"bot-{uuid.uuid4().hex[:8]}"
    ledger.create_api_key(gdb, key_name, apikeys.hash_key(api_key), apikeys.key_prefix(api_key))
    key = "order-42"  # predictable: the same string from three principals
    with gateway.client(mallory) as client:
        squat = client.post("/api/tools/micro", headers={"Idempotency-Key": key})
    with gateway.client(alice) as client:
        first = client.post("/api/tools/priced", json={"text": "a"}, headers={"Idempotency-Key": key})
        replay = client.post("/api/tools/priced", json={"text": "a"}, headers={"Idempotency-Key": key})
    with httpx.Client(base_url=gateway.base_url, headers={"X-API-Key": api_key}) as client:
        by_key = client.post("/api/tools/priced", json={"text": "a"}, headers={"Idempotency-Key": key})
    assert squat.status_code == 200, squat.text
    assert first.status_code == 200, first.text  # not 409 "already completed" by mallory's micro call
    assert "micro" not in first.text
    assert replay.status_code == 409 and body(replay)["error"]["code"] == "already_completed"
    assert body(replay)["error"]["request_id"] == body(first)["billing"]["request_id"]
    assert by_key.status_code == 200, by_key.text
    request_ids = {body(r)["billing"]["request_id"] for r in (squat, first, by_key)}
    assert len(request_ids) == 3 and key not in request_ids
    assert body(first)["billing"]["request_id"] == scoped_request_id(f"user:{gateway_subject(gdb, alice_id)}", key)
    assert balance_of(gdb, alice_id) == Decimal("0.98")
    assert balance_of(gdb, mallory_id) == Decimal("0.9997")
    assert_consistent(gdb)


def gateway_subject(gdb: psycopg.Connection[Any], user_id: uuid.UUID) -> str:
    row = gdb.execute("SELECT external_id FROM billing.users WHERE id = %s", (user_id,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("query", ["\u0000", "a\u0000b", "\ud800", "x\udfff"])
def test_a_tool_error_echoing_nul_or_a_lone_surrogate_fails_the_call_cleanly(
    gateway: Any, gdb: psycopg.Connection[Any], query: str
) -> None:
    """The tool's error text reaches billing.complete_request; with U+0000 (PostgreSQL text cannot hold
    it) or a lone surrogate (not UTF-8) the completion failed: a 500, and the call left pending, held."""
    token, user_id = new_user(gateway, gdb, funds="1")
    raw = '{"query": ' + json.dumps(query) + "}"  # json.dumps escapes both as \\u0000 / \\ud800
    with gateway.client(token) as client:
        reply = client.post("/api/tools/finder", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 502, reply.text
    assert body(reply)["error"]["code"] == "tool_error"
    request_id = body(reply)["billing"]["request_id"]
    row = tracking_row(gdb, request_id)
    assert row["status"] == "failed"
    assert "nothing found for" in row["error"]
    assert balance_of(gdb, user_id) == Decimal("1")
    assert ledger.unbilled_calls(gdb) == [] or all(c.request_id != request_id for c in ledger.unbilled_calls(gdb))
    assert_consistent(gdb)


def test_ten_concurrent_calls_on_five_cents_two_succeed(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="0.05")
    replies = _concurrently(gateway, token, "priced", {"text": "race"}, 10)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 2 + [402] * 8, [r.text for r in replies]
    for reply in replies:
        if reply.status_code == 402:
            error = body(reply)["error"]
            assert error["code"] == "insufficient_funds"
            assert "Top up" in error["message"]
            assert error["details"]["available_usd"] in (Decimal("0.05"), Decimal("0.03"), Decimal("0.01"))
    assert balance_of(gdb, user_id) == Decimal("0.01")
    assert len([r for r in ledger_rows(gdb, user_id) if r["type"] == "charge"]) == 2
    assert_consistent(gdb)


def test_ten_concurrent_calls_against_the_daily_limit_two_succeed(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="10", daily_limit_usd=Decimal("0.05"))
    replies = _concurrently(gateway, token, "priced", {"text": "race"}, 10)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 2 + [429] * 8, [r.text for r in replies]
    refused = next(body(r) for r in replies if r.status_code == 429)
    assert refused["error"]["code"] == "daily_limit_exceeded"
    assert "resets at" in refused["error"]["message"]
    assert next(r for r in replies if r.status_code == 429).headers.get("retry-after")
    assert balance_of(gdb, user_id) == Decimal("9.96")
    assert_consistent(gdb)


def test_twenty_concurrent_variable_cost_calls_spend_at_most_the_balance_and_limits(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    """20 concurrent metered calls, each held at the 0.01 estimate and priced 0.156 once it ran (52000
    tokens), on a 0.20 balance with 0.20 day and month limits: charged past their holds without bound they
    would spend 3.12 and leave the balance at -2.92; at most 0.20 is charged and the rest is written off,
    visibly."""
    token, user_id = new_user(
        gateway, gdb, funds="0.20", daily_limit_usd=Decimal("0.20"), monthly_limit_usd=Decimal("0.20")
    )
    replies = _concurrently(gateway, token, "metered", {"tokens": 52000}, 20)
    assert {r.status_code for r in replies} <= {200, 402, 429}, [r.text for r in replies]
    ran = [body(r)["billing"] for r in replies if r.status_code == 200]
    assert len(ran) >= 2
    account = gdb.execute(
        "SELECT balance_usd, held_usd, day_spent_usd, month_spent_usd FROM billing.user_billing WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert account == (0, 0, Decimal("0.20"), Decimal("0.20"))
    charges = {r["request_id"]: -r["amount_usd"] for r in ledger_rows(gdb, user_id) if r["type"] == "charge"}
    assert sum(charges.values(), Decimal(0)) == Decimal("0.20")
    for billing in ran:
        charged = charges.get(billing["request_id"], Decimal(0))
        assert billing["price_usd"] == Decimal("0.156")
        assert billing.get("written_off_usd", Decimal(0)) == Decimal("0.156") - charged
    written_off = gdb.execute(
        "SELECT coalesce(sum(written_off_usd), 0), count(*) FILTER (WHERE tool_name <> 'metered')"
        " FROM billing.written_off_calls WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert written_off == (len(ran) * Decimal("0.156") - Decimal("0.20"), 0)
    assert_consistent(gdb)


def test_a_declared_bound_sets_the_hold_and_caps_the_charge(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    # by_chars: base 0.001 + 0.000001 a character of its arguments' strings, at most 0.05 (tools.toml)
    token, user_id = new_user(gateway, gdb, funds="1")
    with gateway.client(token) as client:
        exact = client.post("/api/tools/by_chars", json={"text": "x" * 1000})
        over = client.post("/api/tools/by_chars", json={"text": "x" * 1000, "extra": 100000})
    assert exact.status_code == 200 and over.status_code == 200, (exact.text, over.text)
    first, second = body(exact)["billing"], body(over)["billing"]
    for billing in (first, second):
        hold = gdb.execute(
            "SELECT amount_usd FROM billing.reservations WHERE request_id = %s", (billing["request_id"],)
        ).fetchone()
        assert hold == (Decimal("0.002"),)
    assert (first["status"], first["price_usd"], "written_off_usd" in first) == ("charged", Decimal("0.002"), False)
    # 101000 characters' worth is 0.102: charged the declared maximum, 0.05, the rest written off
    assert (second["status"], second["price_usd"], second["written_off_usd"]) == (
        "charged", Decimal("0.102"), Decimal("0.052"))
    assert balance_of(gdb, user_id) == Decimal("0.948")
    row = gdb.execute(
        "SELECT tool_name, price_usd, max_price_usd, charged_usd, written_off_usd, reason"
        " FROM billing.written_off_calls WHERE request_id = %s",
        (second["request_id"],),
    ).fetchone()
    assert row == ("by_chars", Decimal("0.102"), Decimal("0.05"), Decimal("0.05"), Decimal("0.052"), "max_price")
    # A balance that covers the hold and little more: the excess beyond it is written off, not charged.
    poor_token, poor_id = new_user(gateway, gdb, funds="0.003")
    with gateway.client(poor_token) as client:
        reply = client.post("/api/tools/by_chars", json={"text": "y" * 1000, "extra": 100000})
    assert reply.status_code == 200, reply.text
    billing = body(reply)["billing"]
    assert (billing["price_usd"], billing["written_off_usd"]) == (Decimal("0.102"), Decimal("0.099"))
    assert balance_of(gdb, poor_id) == 0
    assert_consistent(gdb)


def test_the_same_idempotency_key_from_ten_connections_runs_once(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    key = uuid.uuid4().hex
    replies = _concurrently(gateway, token, "priced", {"text": "once"}, 10, headers={"Idempotency-Key": key})
    assert sorted(r.status_code for r in replies) == [200] + [409] * 9, [r.text for r in replies]
    assert {body(r)["error"]["code"] for r in replies if r.status_code == 409} == {"already_completed"}
    assert balance_of(gdb, user_id) == Decimal("0.98")
    assert len([r for r in ledger_rows(gdb, user_id) if r["type"] == "charge"]) == 1
    assert_consistent(gdb)


def _concurrently(
    gateway: Any, token: str, tool: str, arguments: dict[str, Any], n: int, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    replies: list[httpx.Response] = []
    barrier = threading.Barrier(n)
    lock = threading.Lock()

    def call() -> None:
        with gateway.client(token) as client:
            barrier.wait()
            reply = client.post(f"/api/tools/{tool}", json=arguments, headers=headers)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def test_client_disconnect_mid_call_is_charged_exactly_once(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    with gateway.client(token) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/api/tools/slow", json={"seconds": 1}, timeout=0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and balance_of(gdb, user_id) == Decimal("1"):
        time.sleep(0.1)
    time.sleep(0.5)
    assert balance_of(gdb, user_id) == Decimal("0.99")
    charges = [r for r in ledger_rows(gdb, user_id) if r["type"] == "charge"]
    assert len(charges) == 1
    assert_consistent(gdb)


def test_billing_fault_after_the_tool_ran_keeps_the_answer_and_bills_later(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    reply: dict[str, httpx.Response] = {}

    def call() -> None:
        with gateway.client(token) as client:
            reply["r"] = client.post("/api/tools/slow", json={"seconds": 1})

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)  # the tool is running; cut every connection the gateway has
    gdb.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'tollgate_gw_metering'")
    thread.join()
    answer = reply["r"]
    assert answer.status_code == 200, answer.text
    status = body(answer)["billing"]["status"]
    request_id = body(answer)["billing"]["request_id"]
    assert status in ("pending", "charged")
    if status == "pending":
        listed = gdb.execute("SELECT request_id FROM billing.unbilled_calls").fetchall()
        assert (request_id,) in listed or tracking_row(gdb, request_id)["status"] == "completed"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and tracking_row(gdb, request_id)["status"] == "pending":
        time.sleep(0.2)
    assert tracking_row(gdb, request_id)["status"] == "completed"
    assert balance_of(gdb, user_id) == Decimal("0.99")
    assert_consistent(gdb)


# ---- the original billing endpoints --------------------------------------------------------------


def test_balance_has_the_original_shape(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, _ = new_user(gateway, gdb, funds="10")
    with gateway.client(token) as client:
        client.post("/api/tools/priced", json={"text": "x"})
        reply = client.get("/api/billing/balance")
    assert reply.status_code == 200
    data = body(reply)
    assert set(data) == {"success", "billing"}
    billing = data["billing"]
    assert set(billing) == {
        "balance_usd",
        "balance_uah",
        "total_spent_usd",
        "total_requests",
        "limits",
        "usage",
        "last_request_at",
        "cooling_usd",
        "cooling_until",
    }
    assert (billing["cooling_usd"], billing["cooling_until"]) == (Decimal(0), None)  # an operator's credit never cools
    assert set(billing["limits"]) == {"daily_usd", "monthly_usd"}
    assert set(billing["usage"]) == {"today_usd", "month_usd"}
    assert billing["balance_usd"] == Decimal("9.98")
    assert billing["total_spent_usd"] == Decimal("0.02")
    assert billing["total_requests"] == 1
    assert billing["limits"] == {"daily_usd": Decimal("10"), "monthly_usd": Decimal("100")}
    assert billing["usage"]["today_usd"] == Decimal("0.02")
    assert billing["last_request_at"].endswith("Z")
    assert b'"balance_usd":9.98' in reply.content  # a JSON number, not a string


def test_history_shape_filters_and_cursor(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    with gateway.client(token) as client:
        for _ in range(3):
            assert client.post("/api/tools/priced", json={"text": "h"}).status_code == 200
        page = body(client.get("/api/billing/history", params={"limit": 2}))
        assert set(page) == {"success", "transactions", "pagination"}
        assert page["pagination"]["limit"] == 2
        assert page["pagination"]["offset"] == 0
        assert page["pagination"]["count"] == 2
        first = page["transactions"][0]
        assert set(first) == {
            "id",
            "user_id",
            "type",
            "amount_usd",
            "balance_before_usd",
            "balance_after_usd",
            "request_id",
            "description",
            "created_at",
        }
        assert first["user_id"] == str(user_id)
        cursor = page["pagination"]["next_before_id"]
        rest = body(client.get("/api/billing/history", params={"limit": 2, "before_id": cursor}))
        assert [t["type"] for t in rest["transactions"]] == ["charge", "topup"]
        topups = body(client.get("/api/billing/history", params={"type": "topup"}))
        assert [t["amount_usd"] for t in topups["transactions"]] == [Decimal("1")]
        empty = body(client.get("/api/billing/history", params={"from": "2999-01-01T00:00:00Z"}))
        assert empty["transactions"] == []
        for bad in ({"limit": "0"}, {"limit": "x"}, {"type": "gift"}, {"from": "yesterday"}, {"offset": "-1"}):
            reply = client.get("/api/billing/history", params=bad)
            assert reply.status_code == 422, bad
            assert body(reply)["success"] is False


def test_settings_update_and_bad_input(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb)
    with gateway.client(token) as client:
        reply = client.put("/api/billing/settings", json={"daily_limit_usd": 2.5, "monthly_limit_usd": "40"})
        assert reply.status_code == 200, reply.text
        assert body(reply)["settings"] == {"daily_limit_usd": Decimal("2.5"), "monthly_limit_usd": Decimal("40")}
        cases = [
            (b'{"daily_limit_usd": -1}', 422, "invalid_amount"),
            (b'{"daily_limit_usd": 0.30000000000000004}', 422, "invalid_amount"),
            (b'{"daily_limit_usd": NaN}', 400, "invalid_json"),
            (b'{"daily_limit_usd": Infinity}', 400, "invalid_json"),
            (b'{"daily_limit_usd": 1e400}', 422, "invalid_amount"),
            (b'{"daily_limit_usd": true}', 422, "invalid_request"),
            (b'{"daily_limit_usd": 1, "daily_limit_usd": 2}', 400, "invalid_json"),
            (b'{"daily_limit_usd": 1, "is_active": false}', 422, "invalid_request"),
            (b'{"daily_limit_usd": ', 400, "invalid_json"),
            (b"[]", 422, "invalid_body"),
            (b"{}", 422, "invalid_request"),
        ]
        for raw, status, code in cases:
            reply = client.put("/api/billing/settings", content=raw, headers={"content-type": "application/json"})
            assert reply.status_code == status, (raw, reply.text)
            assert body(reply)["error"]["code"] == code, raw
        huge = client.put(
            "/api/billing/settings",
            content=b'{"x": "' + b"a" * 2_000_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413
    settings = gdb.execute(
        "SELECT daily_limit_usd, monthly_limit_usd FROM billing.user_billing WHERE user_id = %s", (user_id,)
    ).fetchone()
    assert settings == (Decimal("2.5"), Decimal("40"))


def test_billing_endpoints_need_a_jwt(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    with gateway.client() as client:
        for method, path in (("GET", "/api/billing/balance"), ("GET", "/api/billing/history")):
            reply = client.request(method, path)
            assert reply.status_code == 401
            assert body(reply)["error"]["code"] == "jwt_required"


def test_self_top_up_is_refused_and_admin_top_up_is_idempotent(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb)
    payload = {"user_id": str(user_id), "amount_usd": "5.00", "payment_provider": "manual", "payment_id": "p-1"}
    with gateway.client(token) as client:
        refused = client.post("/api/billing/topup", json=payload)
    assert refused.status_code == 403
    assert body(refused)["error"]["code"] == "topup_not_self_service"
    assert "pay at the checkout URL" in body(refused)["error"]["message"]
    assert balance_of(gdb, user_id) == Decimal(0)
    with gateway.client(gateway.token("ops", admin=True)) as admin:
        first = admin.post("/api/billing/topup", json=payload)
        again = admin.post("/api/billing/topup", json=payload)
        changed = admin.post("/api/billing/topup", json={**payload, "amount_usd": "6.00"})
        both = admin.post("/api/billing/topup", json={**payload, "amount_uah": "100"})
    assert first.status_code == 200, first.text
    assert body(first)["transaction"]["replayed"] is False
    assert body(again)["transaction"]["replayed"] is True
    assert body(again)["transaction"]["transaction_id"] == body(first)["transaction"]["transaction_id"]
    assert changed.status_code == 409
    assert body(changed)["error"]["code"] == "idempotency_conflict"
    assert both.status_code == 422
    assert balance_of(gdb, user_id) == Decimal("5.00")
    assert_consistent(gdb)


def test_admin_endpoints(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    token, user_id = new_user(gateway, gdb, funds="1")
    with gateway.client(token) as client:
        charge = body(client.post("/api/tools/priced", json={"text": "r"}))["billing"]
        assert client.get(f"/api/admin/users/{user_id}/billing").status_code == 403
    with gateway.client(gateway.token("ops", admin=True)) as admin:
        shown = body(admin.get(f"/api/admin/users/{user_id}/billing"))["billing"]
        assert shown["balance_usd"] == Decimal("0.98")
        assert shown["is_active"] is True
        put = admin.put(f"/api/admin/users/{user_id}/billing", json={"is_active": False, "daily_limit_usd": "3"})
        assert put.status_code == 200, put.text
        assert body(put)["settings"]["is_active"] is False
        adjust = admin.post(
            f"/api/admin/users/{user_id}/adjust", json={"amount_usd": "-0.5", "reason": "fix", "idempotency_key": "a1"}
        )
        assert adjust.status_code == 200, adjust.text
        again = admin.post(
            f"/api/admin/users/{user_id}/adjust", json={"amount_usd": "-0.5", "reason": "fix", "idempotency_key": "a1"}
        )
        assert body(again)["transaction"]["replayed"] is True
        refund = admin.post(
            f"/api/admin/transactions/{charge['transaction_id']}/refund",
            json={"amount_usd": "0.02", "reason": "sorry", "idempotency_key": "r1"},
        )
        assert refund.status_code == 200, refund.text
        too_much = admin.post(
            f"/api/admin/transactions/{charge['transaction_id']}/refund",
            json={"amount_usd": "0.01", "reason": "again", "idempotency_key": "r2"},
        )
        assert too_much.status_code == 409
        assert body(too_much)["error"]["code"] == "refund_exceeds_charge"
        assert admin.get("/api/admin/users/not-a-uuid/billing").status_code == 422
        assert admin.get(f"/api/admin/users/{uuid.uuid4()}/billing").status_code == 404
    with gateway.client(token) as client:
        inactive = client.post("/api/tools/priced", json={"text": "r"})
    assert inactive.status_code == 403
    assert body(inactive)["error"]["code"] == "account_inactive"
    assert balance_of(gdb, user_id) == Decimal("0.50")
    assert_consistent(gdb)


def test_api_key_bound_to_a_user_charges_that_user(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    _, user_id = new_user(gateway, gdb, funds="1")
    key = apikeys.generate_key()
    name = f"bound-{uuid.uuid4().hex[:8]}"
    ledger.create_api_key(gdb, name, apikeys.hash_key(key), apikeys.key_prefix(key), user_id)
    with httpx.Client(base_url=gateway.base_url, headers={"X-API-Key": key}) as client:
        reply = client.post("/api/tools/priced", json={"text": "bound"})
    assert reply.status_code == 200, reply.text
    billing = body(reply)["billing"]
    assert billing["status"] == "charged"
    row = tracking_row(gdb, billing["request_id"])
    assert (row["user_id"], row["client_key"]) == (user_id, name)
    assert balance_of(gdb, user_id) == Decimal("0.98")
