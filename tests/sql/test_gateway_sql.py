"""The SQL the gateway stands on (migration 0004 and its functions), against a real PostgreSQL database:
API keys (create, revoke, list, authenticate), billing.estimate_price (configured figure or the 95th
percentile of recent billed prices; tests/sql/test_price_bounds.py has the declared bounds and the rules that
keep callers from steering it), billing.begin_request (start_request + estimate + reserve in one
transaction: a refused hold writes nothing), the billing.unbilled_calls view, and races on
begin_request from several real connections. After every test, billing.verify_ledger() must be empty.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.gateway import apikeys
from api.ledger import sync as ledger
from api.ledger.errors import (
    AccountInactive,
    DailyLimitExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    UnknownApiKey,
    UnknownUser,
)
from tests import helpers as h
from tests.helpers import at
from tests.helpers_concurrency import (
    RowGate,
    assert_no_deadlock,
    assert_only,
    billing_error,
    count_rows,
    open_connections,
    run_together,
    values_of,
)

D = Decimal
NOW = at(2031, 5, 14, 12)  # mid-day, mid-month: no spend window rolls during a test


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _seed_prices(db, tool: str, prices: list[Decimal], prefix: str | None = None) -> None:
    """Completed anonymous calls of `tool` at these prices, oldest first (tracked, never charged: noise
    that billing.estimate_price must ignore)."""
    prefix = prefix or f"seed-{uuid.uuid4().hex[:8]}"
    for i, price in enumerate(prices):
        request_id = f"{prefix}-{i}"
        ledger.start_request(db, request_id, tool)
        ledger.complete_request(db, request_id, True, D(0), price_usd=price)


def _seed_billed(db, tool: str, prices: list[Decimal]) -> None:
    """Completed, charged calls of `tool` at these prices, oldest first, 5 by each new user (the most
    billing.estimate_price samples of one user), so every price is a sample."""
    user_id = None
    for i, price in enumerate(prices):
        if i % 5 == 0:
            user_id = h.funded_user(db, 1000)
            ledger.update_settings(db, user_id, daily_limit_usd=D(10000), monthly_limit_usd=D(10000))
        request_id = f"billed-{uuid.uuid4().hex[:12]}"
        ledger.start_request(db, request_id, tool, user_id)
        assert ledger.complete_request(db, request_id, True, D(0), price_usd=price).charged_usd == price


def _p95_disc(prices: list[Decimal]) -> Decimal:
    """percentile_disc(0.95): the first value whose cumulative share reaches 95%."""
    ordered = sorted(prices)
    return ordered[math.ceil(D("0.95") * len(ordered)) - 1]


# --- API keys --------------------------------------------------------------------------------------


def test_create_list_authenticate_and_revoke_an_api_key(db):
    user_id = h.new_user(db)
    key = apikeys.generate_key()
    bound = ledger.create_api_key(db, "bot.one_2-x", apikeys.hash_key(key), apikeys.key_prefix(key), user_id)
    assert (bound.name, bound.key_prefix, bound.user_id, bound.revoked_at) == (
        "bot.one_2-x", key[:10], user_id, None)
    unbound = ledger.create_api_key(db, "reporting", _digest("k2"), None)
    assert unbound.user_id is None and unbound.key_prefix is None and unbound.id > bound.id

    listed = ledger.list_api_keys(db)
    assert [(k.id, k.name, k.key_prefix, k.user_id, k.revoked_at) for k in listed] == [
        (bound.id, "bot.one_2-x", key[:10], user_id, None),
        (unbound.id, "reporting", None, None, None),
    ]
    assert listed[0].created_at == bound.created_at

    found = ledger.authenticate_api_key(db, apikeys.hash_key(key))
    assert found == ledger.ApiKeyIdentity("bot.one_2-x", user_id, False, apikeys.hash_key(key))
    assert isinstance(found.key_hash, bytes) and apikeys.digest_matches(found.key_hash, key)
    assert ledger.authenticate_api_key(db, _digest("k2")) == ledger.ApiKeyIdentity(
        "reporting", None, False, _digest("k2"))
    with h.nothing_written(db):
        assert ledger.authenticate_api_key(db, _digest("nobody")) is None
        assert ledger.authenticate_api_key(db, b"short") is None

    revoked = ledger.revoke_api_key(db, "bot.one_2-x")
    assert revoked.name == "bot.one_2-x" and revoked.replayed is False
    assert revoked.revoked_at >= bound.created_at
    with h.nothing_written(db):
        again = ledger.revoke_api_key(db, "bot.one_2-x")
    assert (again.revoked_at, again.replayed) == (revoked.revoked_at, True)
    identity = ledger.authenticate_api_key(db, apikeys.hash_key(key))
    assert identity is not None and identity.revoked is True and identity.user_id == user_id
    assert [k.revoked_at for k in ledger.list_api_keys(db)] == [revoked.revoked_at, None]


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 101, "has space", "naïve", "semi;colon", "new\nline", "slash/es", None]
)
def test_create_api_key_refuses_a_malformed_name(db, name):
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.create_api_key(db, name, _digest("k"), "tg_abc")
    assert refused.value.detail["field"] == "name"


@pytest.mark.parametrize("key_hash", [None, b"", b"x" * 31, b"x" * 33, b"tg_the-key-itself-not-its-digest"[:20]])
def test_create_api_key_refuses_anything_but_a_sha256_digest(db, key_hash):
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.create_api_key(db, "client", key_hash, "tg_abc")
    assert refused.value.detail["field"] == "key_hash"
    assert "32-byte SHA-256" in refused.value.message


def test_create_api_key_refuses_a_long_prefix_and_an_unknown_user(db):
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.create_api_key(db, "client", _digest("k"), "x" * 17)
    assert refused.value.detail["field"] == "key_prefix"
    missing = uuid.uuid4()
    with h.nothing_written(db), pytest.raises(UnknownUser) as unknown:
        ledger.create_api_key(db, "client", _digest("k"), "tg_abc", missing)
    assert unknown.value.detail["user_id"] == str(missing)


def test_a_taken_name_or_key_is_refused_even_after_revocation(db):
    ledger.create_api_key(db, "client", _digest("k1"), "tg_1")
    with h.nothing_written(db), pytest.raises(InvalidArgument) as taken:
        ledger.create_api_key(db, "client", _digest("k2"), "tg_2")
    assert "already exists" in taken.value.message
    assert taken.value.detail == {"field": "name", "value": "client", "taken": True}
    with h.nothing_written(db), pytest.raises(InvalidArgument) as same_key:
        ledger.create_api_key(db, "other", _digest("k1"), "tg_1")
    assert same_key.value.detail == {"field": "key_hash", "taken": True}
    assert "client" not in same_key.value.message  # which name holds the key is not disclosed
    ledger.revoke_api_key(db, "client")
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.create_api_key(db, "client", _digest("k3"), "tg_3")


def test_revoke_an_unknown_or_malformed_name(db):
    with h.nothing_written(db), pytest.raises(UnknownApiKey) as unknown:
        ledger.revoke_api_key(db, "ghost")
    assert unknown.value.status == 404
    assert unknown.value.detail == {"name": "ghost"}
    assert "ghost" in unknown.value.message
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.revoke_api_key(db, "  ")


def test_keys_are_managed_by_the_operator_and_checked_by_metering_through_the_functions_only(
    db, connect, operator_url, metering_url
):
    operator, metering = connect(operator_url), connect(metering_url)
    created = ledger.create_api_key(operator, "app-made", _digest("k"), "tg_k")
    assert ledger.authenticate_api_key(metering, _digest("k")) is not None
    assert [k.name for k in ledger.list_api_keys(operator)] == ["app-made"]
    assert ledger.revoke_api_key(operator, "app-made").replayed is False
    for role in (operator, metering):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            role.execute("SELECT key_hash FROM billing.api_keys")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        ledger.create_api_key(metering, "self-made", _digest("m"), "tg_m")
    owner = db.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'billing' AND tablename = 'api_keys'")
    assert owner.fetchone() == ("tollgate_owner",)
    assert created.id > 0


def test_authenticate_api_key_is_a_stable_unique_index_lookup(db):
    row = db.execute(
        "SELECT provolatile FROM pg_proc WHERE oid = 'billing.authenticate_api_key(bytea)'::regprocedure"
    ).fetchone()
    assert row == ("s",)
    ledger.create_api_key(db, "k7", _digest("k7"), None)
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        rows = db.execute(
            "EXPLAIN SELECT k.name FROM billing.api_keys k WHERE k.key_hash = %s", (_digest("k7"),)
        ).fetchall()
    plan = "\n".join(r[0] for r in rows)
    assert "api_keys_key_hash_unique" in plan


# --- estimate_price --------------------------------------------------------------------------------


def test_estimate_of_a_fixed_price_tool_is_its_configured_figure(db):
    ledger.set_tool_pricing(db, "fixed", D("0.01"), estimate_usd=D("0.025"))
    ledger.set_tool_pricing(db, "base-only", D("0.0003"))
    _seed_prices(db, "fixed", [D(5)] * 10)  # history does not matter without variable_cost
    with h.nothing_written(db):
        assert ledger.estimate_price(db, "fixed") == D("0.025")
        assert ledger.estimate_price(db, "base-only") == D("0.0003")


def test_estimate_without_history(db):
    ledger.set_tool_pricing(db, "variable", D("0.01"), estimate_usd=D("0.05"), variable_cost=True)
    ledger.set_tool_pricing(db, "variable-base", D("0.02"), variable_cost=True)
    assert ledger.estimate_price(db, "variable") == D("0.05")
    assert ledger.estimate_price(db, "variable-base") == D("0.02")
    assert ledger.estimate_price(db, "unpriced") == D(0)


def test_estimate_of_a_variable_cost_tool_is_the_p95_of_recent_billed_prices(db):
    ledger.set_tool_pricing(db, "llm", D("0.001"), markup_percent=D(20), estimate_usd=D("0.002"), variable_cost=True)
    prices = [D(i) / 1000 + D("0.00000001") for i in range(1, 121)]  # 0.00100001 … 0.12000001
    _seed_billed(db, "llm", prices[::2] + prices[1::2])  # arrival order does not matter
    # noise that must be ignored: other tools, failed, pending and unbilled calls of this one
    _seed_billed(db, "other", [D(9)] * 5)
    _seed_prices(db, "llm", [D(9)] * 5)
    ledger.start_request(db, "failed-1", "llm")
    ledger.complete_request(db, "failed-1", False, D(0), error="boom")
    ledger.start_request(db, "pending-1", "llm")
    expected = _p95_disc(prices)
    assert expected == D("0.11400001")
    with h.nothing_written(db):
        assert ledger.estimate_price(db, "llm") == expected
    # the configured figure wins when it is higher
    ledger.set_tool_pricing(db, "llm", D("0.001"), markup_percent=D(20), estimate_usd=D("0.5"), variable_cost=True)
    assert ledger.estimate_price(db, "llm") == D("0.5")
    ledger.complete_request(db, "pending-1", True, D(0), price_usd=D(0))


def test_estimate_of_an_unpriced_tool_uses_only_the_newest_200_samples(db):
    _seed_billed(db, "at-cost", [D(100)] * 10)  # older than the newest 200
    recent = [D("0.01")] * 189 + [D("0.02")] * 11
    _seed_billed(db, "at-cost", recent)
    assert _p95_disc(recent) == D("0.02")
    assert ledger.estimate_price(db, "at-cost") == D("0.02")
    # 11 newer calls at 0.01 push the oldest 11 of the window (all 0.01) out: p95 is still 0.02; 11 more
    # push the 0.02s out too
    _seed_billed(db, "at-cost", [D("0.01")] * 189)
    assert ledger.estimate_price(db, "at-cost") == D("0.02")
    _seed_billed(db, "at-cost", [D("0.01")] * 11)
    assert ledger.estimate_price(db, "at-cost") == D("0.01")


def test_estimate_reads_a_bounded_index_only_scan_of_billed_calls(db):
    # The innermost statement of billing.estimate_price; with sequential scans off, the plan shows the index.
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        rows = db.execute(
            "EXPLAIN SELECT ct.id, ct.user_id, ct.price_usd FROM billing.cost_tracking ct"
            " WHERE ct.tool_name = 'x' AND ct.status = 'completed' AND ct.transaction_id IS NOT NULL"
            " ORDER BY ct.id DESC LIMIT 1000"
        ).fetchall()
    plan = "\n".join(r[0] for r in rows)
    assert "Index Only Scan using cost_tracking_billed_by_tool" in plan, plan


def test_estimate_refuses_a_bad_tool_name(db):
    for name in h.BAD_IDENTIFIERS:
        with pytest.raises(InvalidArgument):
            ledger.estimate_price(db, name)


# --- begin_request ---------------------------------------------------------------------------------


@pytest.fixture
def priced(db) -> str:
    h.set_clock(db, NOW)
    ledger.set_tool_pricing(db, "search", D("0.01"), estimate_usd=D("0.02"))
    return "search"


def test_begin_request_tracks_and_holds_the_estimate(db, priced):
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(db, "req-1", priced, user_id)
    assert start.replayed is False
    assert (start.request_id, start.status, start.estimate_usd) == ("req-1", "pending", D("0.02"))
    assert (start.reservation_status, start.available_usd) == ("held", D("0.98"))
    tracked = h.tracking_row(db, "req-1")
    assert (tracked["id"], tracked["tool_name"], tracked["user_id"], tracked["status"]) == (
        start.tracking_id, "search", user_id, "pending")
    hold = h.reservation_row(db, "req-1")
    assert (hold["id"], hold["amount_usd"], hold["status"], hold["user_id"]) == (
        start.reservation_id, D("0.02"), "held", user_id)
    assert hold["expires_at"] == NOW + dt.timedelta(minutes=15)
    assert h.account_row(db, user_id)["held_usd"] == D("0.02")
    # the rest of the flow: complete_request settles the hold
    done = ledger.complete_request(db, "req-1", True, D("0.004"))
    assert (done.price_usd, done.billed) == (D("0.014"), True)
    assert h.account_row(db, user_id)["balance_usd"] == D("0.986")


def test_begin_request_with_an_explicit_estimate_and_ttl(db, priced):
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(db, "req-1", priced, user_id, estimate_usd=D("0.3"), ttl=dt.timedelta(minutes=2))
    assert (start.estimate_usd, start.available_usd) == (D("0.3"), D("0.7"))
    assert h.reservation_row(db, "req-1")["expires_at"] == NOW + dt.timedelta(minutes=2)


@pytest.mark.parametrize("refusal", ["funds", "inactive", "daily"])
def test_a_refused_hold_writes_nothing_not_even_the_tracking_row(db, priced, refusal):
    user_id = h.funded_user(db, D("0.01") if refusal == "funds" else 5)
    if refusal == "inactive":
        ledger.update_settings(db, user_id, is_active=False)
    if refusal == "daily":
        ledger.update_settings(db, user_id, daily_limit_usd=D("0.015"))
    expected = {"funds": InsufficientFunds, "inactive": AccountInactive, "daily": DailyLimitExceeded}[refusal]
    with h.nothing_written(db), pytest.raises(expected) as refused:
        ledger.begin_request(db, "req-1", priced, user_id)
    if refusal == "funds":
        assert refused.value.detail["required_usd"] == D("0.02")
        assert refused.value.detail["shortfall_usd"] == D("0.01")
    if refusal == "daily":
        assert refused.value.detail["limit"] == "daily"
    # nothing pending, nothing to reconcile; the same request id may be tried again later
    assert ledger.unbilled_calls(db) == []
    ledger.update_settings(db, user_id, is_active=True, daily_limit_usd=D(10))
    ledger.top_up(db, user_id, D(1), "test", "more")
    assert ledger.begin_request(db, "req-1", priced, user_id).reservation_status == "held"


def test_begin_request_replay_returns_the_same_rows_and_holds_once(db, priced):
    user_id = h.funded_user(db, 1)
    first = ledger.begin_request(db, "req-1", priced, user_id)
    with h.nothing_written(db):
        again = ledger.begin_request(db, "req-1", priced, user_id)
    assert again.replayed is True
    assert (again.tracking_id, again.reservation_id, again.estimate_usd, again.reservation_status) == (
        first.tracking_id, first.reservation_id, D("0.02"), "held")
    assert again.available_usd == D("0.98")
    # the estimate moved since: the replay still answers with the hold it took
    ledger.set_tool_pricing(db, priced, D("0.01"), estimate_usd=D("0.07"))
    with h.nothing_written(db):
        moved = ledger.begin_request(db, "req-1", priced, user_id)
    assert (moved.replayed, moved.estimate_usd, moved.reservation_id) == (True, D("0.02"), first.reservation_id)
    assert ledger.begin_request(db, "req-1", priced, user_id, estimate_usd=D("0.02")).replayed is True
    assert h.account_row(db, user_id)["held_usd"] == D("0.02")


def test_begin_request_conflicting_replays(db, priced):
    user_id = h.funded_user(db, 1)
    other = h.funded_user(db, 1)
    ledger.begin_request(db, "req-1", priced, user_id)
    ledger.set_tool_pricing(db, "other-tool", D("0.01"))
    for call in (
        lambda: ledger.begin_request(db, "req-1", "other-tool", user_id),
        lambda: ledger.begin_request(db, "req-1", priced, other),
        lambda: ledger.begin_request(db, "req-1", priced, None),
        lambda: ledger.begin_request(db, "req-1", priced, user_id, client_key="some-key"),
        lambda: ledger.begin_request(db, "req-1", priced, user_id, estimate_usd=D("0.03")),
    ):
        with h.nothing_written(db), pytest.raises(IdempotencyConflict) as conflict:
            call()
        assert conflict.value.detail["request_id"] == "req-1"


def test_a_reservation_for_an_anonymous_tracked_call_is_a_conflict(db, priced):
    user_id = h.funded_user(db, 1)
    ledger.start_request(db, "req-1", priced)  # anonymous …
    ledger.reserve(db, user_id, "req-1", D("0.02"))  # … yet someone held money under its id
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.begin_request(db, "req-1", priced)
    ledger.release(db, "req-1")


@pytest.mark.parametrize("success", [True, False], ids=["settled", "released"])
def test_replay_after_the_call_closed_answers_and_never_holds_again(db, priced, success):
    user_id = h.funded_user(db, 1)
    first = ledger.begin_request(db, "req-1", priced, user_id)
    ledger.complete_request(db, "req-1", success, D("0.001"), error=None if success else "tool failed")
    with h.nothing_written(db):
        again = ledger.begin_request(db, "req-1", priced, user_id)
    assert again.replayed is True
    assert again.status == ("completed" if success else "failed")
    assert (again.reservation_id, again.reservation_status) == (
        first.reservation_id, "settled" if success else "released")
    assert h.account_row(db, user_id)["held_usd"] == 0
    assert count_rows(db, "reservations") == 1


def test_replay_after_the_hold_expired(db, priced):
    user_id = h.funded_user(db, 1)
    ledger.begin_request(db, "req-1", priced, user_id)
    h.set_clock(db, NOW + dt.timedelta(hours=1))
    again = ledger.begin_request(db, "req-1", priced, user_id)
    assert (again.replayed, again.reservation_status, again.available_usd) == (True, "expired", D(1))
    assert h.account_row(db, user_id)["held_usd"] == 0  # reaped, never held again
    ledger.complete_request(db, "req-1", True, D(0))  # the call still bills (directly)
    assert h.account_row(db, user_id)["balance_usd"] == D("0.99")


def test_replay_of_a_closed_call_without_hold_takes_none(db, priced):
    ledger.begin_request(db, "anon-1", priced)
    ledger.complete_request(db, "anon-1", True, D(0))
    with h.nothing_written(db):
        again = ledger.begin_request(db, "anon-1", priced)
    assert (again.replayed, again.status, again.reservation_id, again.estimate_usd) == (
        True, "completed", None, D("0.02"))


def test_begin_request_after_start_request_alone_takes_the_hold(db, priced):
    user_id = h.funded_user(db, 1)
    opened = ledger.start_request(db, "req-1", priced, user_id)
    start = ledger.begin_request(db, "req-1", priced, user_id)
    assert (start.replayed, start.tracking_id, start.reservation_status) == (True, opened.tracking_id, "held")
    assert h.account_row(db, user_id)["held_usd"] == D("0.02")
    ledger.release(db, "req-1")
    ledger.complete_request(db, "req-1", False, error="cancelled")


def test_billing_disabled_is_tracked_not_held(db, priced):
    user_id = h.funded_user(db, 1)
    ledger.update_settings(db, user_id, billing_enabled=False)
    start = ledger.begin_request(db, "req-1", priced, user_id)
    assert (start.status, start.reservation_id, start.reservation_status, start.available_usd) == (
        "pending", None, "not_billed", D(1))
    assert h.tracking_row(db, "req-1")["user_id"] == user_id
    assert count_rows(db, "reservations") == 0
    # with a zero estimate too
    zero = ledger.begin_request(db, "req-2", priced, user_id, estimate_usd=D(0))
    assert (zero.reservation_status, zero.available_usd) == ("not_billed", D(1))


@pytest.mark.parametrize("client_key", [None, "research-bot"], ids=["anonymous", "api-key"])
def test_callers_without_a_user_are_tracked_never_held(db, priced, client_key):
    h.funded_user(db, 1)
    before = h.snapshot(db)
    start = ledger.begin_request(db, "req-1", priced, None, client_key)
    assert (start.replayed, start.status, start.estimate_usd) == (False, "pending", D("0.02"))
    assert (start.reservation_id, start.reservation_status, start.available_usd) == (None, None, None)
    tracked = h.tracking_row(db, "req-1")
    assert (tracked["user_id"], tracked["client_key"]) == (None, client_key)
    after = h.snapshot(db)
    assert {t for t in h.BILLING_TABLES if before[t] != after[t]} == {"cost_tracking"}


def test_a_zero_estimate_holds_nothing_but_still_refuses_a_closed_or_overdrawn_account(db):
    h.set_clock(db, NOW)
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(db, "free-1", "unpriced-tool", user_id)
    assert (start.estimate_usd, start.reservation_id, start.reservation_status, start.available_usd) == (
        D(0), None, None, D(1))
    assert count_rows(db, "reservations") == 0
    # overdrawn by a debit (settlement never takes a balance below zero)
    ledger.adjust(db, user_id, D("-1.5"), "chargeback", "ops", "debit-1")
    assert h.account_row(db, user_id)["balance_usd"] == D("-0.5")
    ledger.set_tool_pricing(db, "free", D(0))
    with h.nothing_written(db), pytest.raises(InsufficientFunds):
        ledger.begin_request(db, "free-2", "free", user_id)
    ledger.top_up(db, user_id, D(1), "test", "fix")
    ledger.update_settings(db, user_id, is_active=False)
    with h.nothing_written(db), pytest.raises(AccountInactive):
        ledger.begin_request(db, "free-3", "free", user_id)
    ledger.complete_request(db, "free-1", True, D(0))


def test_begin_request_estimate_from_the_p95_of_a_variable_cost_tool(db):
    h.set_clock(db, NOW)
    ledger.set_tool_pricing(db, "llm", D(0), estimate_usd=D("0.001"), variable_cost=True)
    prices = [D("0.004")] * 90 + [D("0.03")] * 5 + [D("0.05")] * 5
    _seed_billed(db, "llm", prices)
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(db, "req-1", "llm", user_id)
    assert start.estimate_usd == _p95_disc(prices) == D("0.03")
    assert h.reservation_row(db, "req-1")["amount_usd"] == D("0.03")
    done = ledger.complete_request(db, "req-1", True, D(0), price_usd=D("0.041"))  # above the hold, and it fits
    assert (done.charged_usd, done.written_off_usd) == (D("0.041"), D(0))
    assert h.account_row(db, user_id)["balance_usd"] == D("0.959")


def test_begin_request_refuses_bad_arguments(db, priced):
    user_id = h.funded_user(db, 1)
    cases: list[tuple[type[Exception], dict[str, Any]]] = [
        (InvalidAmount, {"estimate_usd": D("-0.01")}),
        (InvalidAmount, {"estimate_usd": D("NaN")}),
        (InvalidAmount, {"estimate_usd": D("0.000000001")}),
        (InvalidArgument, {"ttl": dt.timedelta(0)}),
        (InvalidArgument, {"ttl": dt.timedelta(days=2)}),
        (InvalidArgument, {"request_id": " "}),
        (InvalidArgument, {"tool_name": "x" * 201}),
        (InvalidArgument, {"client_key": "bad\tkey"}),
        (UnknownUser, {"user_id": uuid.uuid4()}),
    ]
    for error, override in cases:
        arguments: dict[str, Any] = {"request_id": "req-1", "tool_name": priced, "user_id": user_id, **override}
        with h.nothing_written(db), pytest.raises(error):
            ledger.begin_request(db, **arguments)
    with pytest.raises(TypeError):
        ledger.begin_request(db, "req-1", priced, user_id, estimate_usd=0.02)  # type: ignore[arg-type]


def test_begin_request_from_the_metering_role(connect, metering_url, db, priced):
    app = connect(metering_url)
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(app, "req-1", priced, user_id)
    assert start.reservation_status == "held"
    assert ledger.estimate_price(app, priced) == D("0.02")
    ledger.complete_request(app, "req-1", True, D(0))


# --- billing.unbilled_calls ------------------------------------------------------------------------


def test_unbilled_calls_lists_pending_calls_only(db, priced):
    user_id = h.funded_user(db, 1)
    ledger.begin_request(db, "held-1", priced, user_id)
    ledger.begin_request(db, "anon-1", priced, None, "bot")
    ledger.begin_request(db, "done-1", priced, user_id)
    ledger.complete_request(db, "done-1", True, D(0))
    ledger.begin_request(db, "failed-1", priced, user_id)
    ledger.complete_request(db, "failed-1", False, error="no")
    h.set_clock(db, NOW + dt.timedelta(minutes=20))  # the hold lapsed (not reaped yet)
    calls = ledger.unbilled_calls(db)
    assert [c.request_id for c in calls] == ["anon-1", "held-1"]
    anon, held = calls
    assert (anon.tool_name, anon.user_id, anon.client_key, anon.hold_usd, anon.hold_status) == (
        priced, None, "bot", None, None)
    assert (held.user_id, held.client_key, held.hold_usd, held.hold_status) == (user_id, None, D("0.02"), "held")
    assert held.hold_expires_at == NOW + dt.timedelta(minutes=15)
    assert held.created_at == NOW and held.age == dt.timedelta(minutes=20)
    for request_id in ("held-1", "anon-1"):
        ledger.complete_request(db, request_id, True, D(0))
    assert ledger.unbilled_calls(db) == []


def test_the_analyst_reads_unbilled_calls_and_the_metering_role_does_not(
    db, connect, analyst_url, metering_url, priced
):
    ledger.begin_request(db, "anon-1", priced)
    analyst = connect(analyst_url)
    assert analyst.execute("SELECT request_id, age >= interval '0' FROM billing.unbilled_calls").fetchall() == [
        ("anon-1", True)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect(metering_url).execute("SELECT * FROM billing.unbilled_calls")
    ledger.complete_request(db, "anon-1", True, D(0))


def test_unbilled_calls_explains_itself(db):
    rows = db.execute(
        """
        SELECT a.attname, col_description(a.attrelid, a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = 'billing.unbilled_calls'::regclass AND a.attnum > 0
         ORDER BY a.attnum
        """
    ).fetchall()
    assert [name for name, _ in rows] == [
        "request_id", "tool_name", "user_id", "client_key", "created_at", "age",
        "hold_usd", "hold_status", "hold_expires_at"]
    assert all(comment for _, comment in rows), rows
    assert db.execute("SELECT obj_description('billing.unbilled_calls'::regclass, 'pg_class')").fetchone() != (None,)


# --- races on begin_request ------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_concurrent_begin_requests_hold_no_more_than_the_balance(db, connect, metering_url, priced):
    user_id = h.funded_user(db, D("0.05"))
    conns = open_connections(connect, metering_url, 10)
    gate = RowGate(connect, [user_id])
    outcomes = run_together(conns, lambda i, c: ledger.begin_request(c, f"call-{i}", priced, user_id), gate=gate)
    assert_no_deadlock(outcomes)
    assert gate.waiters == 10
    assert_only(outcomes, InsufficientFunds)
    held = values_of(outcomes)
    assert len(held) == 2
    assert all(s.reservation_status == "held" and not s.replayed for s in held)
    assert sorted(s.available_usd for s in held) == [D("0.01"), D("0.03")]
    for outcome in outcomes:
        if outcome.error is not None:
            assert billing_error(outcome.error).detail["available_usd"] == D("0.01")
    # the refused calls left nothing behind: two tracked calls, two holds
    assert count_rows(db, "cost_tracking") == 2
    assert count_rows(db, "reservations", "status = 'held'") == 2
    assert h.account_row(db, user_id)["held_usd"] == D("0.04")
    for s in held:
        ledger.complete_request(db, s.request_id, True, D(0))
    assert h.account_row(db, user_id)["balance_usd"] == D("0.03")  # two calls at the base price, 0.01


@pytest.mark.timeout(120)
def test_the_same_request_from_many_connections_holds_once(db, connect, metering_url, priced):
    user_id = h.funded_user(db, 1)
    conns = open_connections(connect, metering_url, 10)
    gate = RowGate(connect, [user_id])
    outcomes = run_together(conns, lambda i, c: ledger.begin_request(c, "call-1", priced, user_id), gate=gate)
    assert_no_deadlock(outcomes)
    assert_only(outcomes)
    starts = values_of(outcomes)
    assert sorted(s.replayed for s in starts) == [False] + [True] * 9
    assert len({(s.tracking_id, s.reservation_id, s.estimate_usd, s.reservation_status) for s in starts}) == 1
    assert count_rows(db, "cost_tracking") == 1
    assert count_rows(db, "reservations") == 1
    assert h.account_row(db, user_id)["held_usd"] == D("0.02")
    ledger.complete_request(db, "call-1", True, D(0))


# --- migration 0004 --------------------------------------------------------------------------------


def test_migration_0004_rolls_back_alone_and_reapplies(db_url, conn):
    from api.ops import migrate
    from tests.conftest import DB_DIR
    from tests.helpers import catalog_snapshot, migration_ids

    before = catalog_snapshot(db_url)
    # The later migrations (0005 payments, 0006 role split, ...) go first and come back with it.
    later = [m for m in migration_ids() if m > "0004_gateway"]
    assert migrate.downgrade(db_url, DB_DIR, "0003_owner_role") == [*later[::-1], "0004_gateway"]
    gone = conn.execute(
        "SELECT to_regclass('billing.api_keys'), to_regprocedure('billing.create_api_key(text, bytea, text, uuid)'),"
        " to_regclass('billing.cost_tracking_completed_by_tool'), to_regclass('billing.cost_tracking_billed_by_tool')"
    ).fetchone()
    assert gone == (None, None, None, None)
    assert migrate.upgrade(db_url, DB_DIR) == ["0004_gateway", *later]
    assert catalog_snapshot(db_url) == before
