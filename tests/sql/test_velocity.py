"""Velocity flags and refund caps in the ledger (docs/abuse.md, "Velocity flags and refund caps").

billing.detect_velocity flags spend spikes (against each account's own trailing average, with min_spend_usd
as the floor of a baseline) and fan-out over API keys or client addresses; one open flag per account and
rule, also under concurrent detectors; with velocity.pause = 1 a flag deactivates the account, a paused
account's calls are answered "paused pending review", and an operator's clear reactivates it. billing.refund
is capped per account and period, exactly under concurrent refunds from many connections, and the refusal
is recorded by billing.record_refused_refund. The detector and the decisions run as the operator's login.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.ledger import db as api_db
from api.ledger import sync as ledger
from api.ledger.errors import AccountInactive, InvalidArgument, InvalidState, RefundCapExceeded, UnknownFlag
from tests import helpers as h
from tests.helpers_concurrency import RowGate, assert_no_deadlock, open_connections, run_together

pytestmark = pytest.mark.timeout(120)

D = Decimal
NOW = dt.datetime(2031, 5, 14, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


@pytest.fixture
def operator(operator_url: str, connect: Any) -> psycopg.Connection[Any]:
    """A connection as the gateway's operator login (the detector's and the decisions' role)."""
    conn: psycopg.Connection[Any] = connect(operator_url)
    api_db.configure(conn)
    return conn


@pytest.fixture(autouse=True)
def _clock(db: psycopg.Connection[Any]) -> None:
    h.set_clock(db, NOW)


def spender(db: psycopg.Connection[Any], amount: int = 10_000) -> uuid.UUID:
    """A funded account whose limits do not get in the way of a spike."""
    user = h.funded_user(db, amount)
    ledger.update_settings(db, user, daily_limit_usd=D(100_000), monthly_limit_usd=D(1_000_000))
    return user


def charge_at(db: psycopg.Connection[Any], user: uuid.UUID, when: dt.datetime, amount: Decimal) -> None:
    h.set_clock(db, when)
    ledger.charge(db, user, f"c-{uuid.uuid4().hex}", amount)


def steady_history(db: psycopg.Connection[Any], user: uuid.UUID, per_hour: Decimal, days: int = 3) -> None:
    """An account opened `days` days before NOW (the trailing average runs over the days it existed), charged
    `per_hour` USD every hour since, up to an hour before NOW."""
    db.execute("UPDATE billing.users SET created_at = %s WHERE id = %s", (NOW - dt.timedelta(days=days), user))
    for hours in range(days * 24, 0, -1):
        charge_at(db, user, NOW - dt.timedelta(hours=hours), per_hour)
    h.set_clock(db, NOW)


def open_flags(db: psycopg.Connection[Any], user: uuid.UUID | None = None) -> list[ledger.AccountFlag]:
    return ledger.list_account_flags(db, user_id=user)


def events(db: psycopg.Connection[Any], user: uuid.UUID, rule: str = "velocity") -> list[tuple[str, str]]:
    return [(e.rule, e.action) for e in reversed(ledger.list_abuse_events(db, user_id=user, rule=rule))]


def is_active(db: psycopg.Connection[Any], user: uuid.UUID) -> bool:
    return bool(h.account_row(db, user)["is_active"])


# --- spend spikes ------------------------------------------------------------------------------------


def test_a_spend_far_above_the_accounts_own_trailing_average_is_flagged(db, operator):
    # 12 USD an hour for three days: 2 USD per 10-minute window on average, so the threshold is 20 USD.
    steady = spender(db)
    steady_history(db, steady, D(12))
    charge_at(db, steady, NOW - dt.timedelta(minutes=5), D(15))  # 15 < 20: its usual rate, busier
    h.set_clock(db, NOW)
    run = ledger.detect_velocity(operator, force=True)
    assert (run.status, run.flags_raised) == ("ran", 0)
    assert open_flags(db, steady) == []

    charge_at(db, steady, NOW - dt.timedelta(minutes=1), D(6))  # 21 USD in the window: past 10 x 2
    h.set_clock(db, NOW)
    run = ledger.detect_velocity(operator, force=True)
    assert (run.status, run.flags_raised, run.accounts_paused) == ("ran", 1, 0)
    [flag] = open_flags(db, steady)
    assert (flag.rule, flag.status, flag.paused, flag.account_active) == ("velocity.spend_spike", "open", False, True)
    assert flag.detail["spent_usd"] == D(21)
    assert flag.detail["trailing_average_usd"] == D(2)
    assert flag.detail["threshold_usd"] == D(20)
    assert (flag.detail["window_minutes"], flag.detail["spike_factor"]) == (10, 10)
    assert events(db, steady) == [("velocity.spend_spike", "flagged")]
    assert is_active(db, steady)  # velocity.pause is off by default: flagged, not paused


def test_an_account_with_no_history_is_compared_with_the_floor(db, operator):
    # No trailing spend: the baseline is min_spend_usd (1 USD), so more than 10 USD in the window is a spike.
    quiet, fresh = spender(db), spender(db)
    charge_at(db, quiet, NOW - dt.timedelta(minutes=2), D(10))
    charge_at(db, fresh, NOW - dt.timedelta(minutes=2), D("10.00000001"))
    h.set_clock(db, NOW)
    assert ledger.detect_velocity(operator, force=True).flags_raised == 1
    assert open_flags(db, quiet) == []
    [flag] = open_flags(db, fresh)
    assert (flag.detail["trailing_average_usd"], flag.detail["threshold_usd"]) == (0, D(10))


def test_spends_outside_the_window_and_below_the_floor_are_not_spikes(db, operator):
    ledger.set_abuse_policy(db, "velocity.min_spend_usd", D(5), "test")
    small, earlier = spender(db), spender(db)
    charge_at(db, small, NOW - dt.timedelta(minutes=1), D(40))  # below 10 x 5
    charge_at(db, earlier, NOW - dt.timedelta(minutes=11), D(500))  # before the 10-minute window
    h.set_clock(db, NOW)
    assert ledger.detect_velocity(operator, force=True).flags_raised == 0


def test_a_spike_factor_or_window_of_zero_turns_the_rule_off(db, operator):
    user = spender(db)
    charge_at(db, user, NOW - dt.timedelta(minutes=1), D(500))
    h.set_clock(db, NOW)
    ledger.set_abuse_policy(db, "velocity.spike_factor", D(0), "test")
    assert ledger.detect_velocity(operator, force=True).flags_raised == 0
    ledger.set_abuse_policy(db, "velocity.spike_factor", D(10), "test")
    ledger.set_abuse_policy(db, "velocity.window_minutes", D(0), "test")
    assert ledger.detect_velocity(operator, force=True).flags_raised == 0
    ledger.set_abuse_policy(db, "velocity.window_minutes", D(10), "test")
    assert ledger.detect_velocity(operator, force=True).flags_raised == 1


def test_the_roll_up_counts_each_charge_once_across_runs(db, operator):
    user = spender(db)
    for minutes in (200, 130, 70):
        charge_at(db, user, NOW - dt.timedelta(minutes=minutes), D(3))
        h.set_clock(db, NOW - dt.timedelta(minutes=minutes - 2))
        ledger.detect_velocity(operator, force=True)
    h.set_clock(db, NOW)
    ledger.detect_velocity(operator, force=True)
    row = db.execute("SELECT sum(spend_usd) FROM billing.spend_buckets WHERE user_id = %s", (user,)).fetchone()
    assert row == (D(9),)


# --- fan-out -----------------------------------------------------------------------------------------


def test_calls_through_more_api_keys_than_allowed_are_flagged(db, operator, metering_url, connect):
    ledger.set_abuse_policy(db, "velocity.fanout_api_keys", D(3), "test")
    user, other = spender(db), spender(db)
    metering = connect(metering_url)
    for i in range(4):
        ledger.begin_request(metering, f"k-{i}", "search", user, f"key-{i}")
    for i in range(3):
        ledger.begin_request(metering, f"o-{i}", "search", other, f"key-{i}")
    run = ledger.detect_velocity(operator, force=True)
    assert (run.flags_raised, run.fanout_candidates) == (1, 1)
    [flag] = open_flags(db, user)
    assert flag.rule == "velocity.fanout_api_keys"
    assert (flag.detail["api_keys"], flag.detail["limit"], flag.detail["calls"]) == (4, 3, 4)
    assert open_flags(db, other) == []


def test_calls_from_more_client_addresses_than_allowed_are_flagged(db, operator, metering_url, connect):
    user, other = spender(db), spender(db)
    metering = connect(metering_url)
    for i in range(21):  # the default allows 20 addresses in a window
        ledger.begin_request(metering, f"ip-{i}", "search", user, client_ip=ipaddress.ip_address(f"203.0.113.{i}"))
    for i in range(20):
        ledger.begin_request(metering, f"v6-{i}", "search", other, client_ip=ipaddress.ip_address(f"2001:db8::{i:x}"))
    ledger.begin_request(metering, "v6-again", "search", other, client_ip=ipaddress.ip_address("2001:db8::1"))
    assert ledger.detect_velocity(operator, force=True).flags_raised == 1
    [flag] = open_flags(db, user)
    assert (flag.rule, flag.detail["client_ips"], flag.detail["limit"]) == ("velocity.fanout_ips", 21, 20)
    assert open_flags(db, other) == []
    stored = h.tracking_row(db, "ip-7")["client_ip"]
    assert stored == ipaddress.ip_address("203.0.113.7")


def test_calls_older_than_the_window_do_not_count_towards_a_fan_out(db, operator, metering_url, connect):
    user = spender(db)
    metering = connect(metering_url)
    h.set_clock(db, NOW - dt.timedelta(minutes=30))
    for i in range(15):
        ledger.begin_request(metering, f"old-{i}", "search", user, client_ip=ipaddress.ip_address(f"198.51.100.{i}"))
    h.set_clock(db, NOW)
    for i in range(15, 30):
        ledger.begin_request(metering, f"new-{i}", "search", user, client_ip=ipaddress.ip_address(f"198.51.100.{i}"))
    assert ledger.detect_velocity(operator, force=True).flags_raised == 0


# --- flags: idempotent, one detector at a time --------------------------------------------------------


def test_a_repeated_finding_keeps_one_open_flag(db, operator):
    user = spender(db)
    charge_at(db, user, NOW - dt.timedelta(minutes=3), D(50))
    h.set_clock(db, NOW)
    assert ledger.detect_velocity(operator, force=True).flags_raised == 1
    h.set_clock(db, NOW + dt.timedelta(minutes=1))
    assert ledger.detect_velocity(operator, force=True).flags_raised == 0
    assert len(open_flags(db, user)) == 1
    assert events(db, user) == [("velocity.spend_spike", "flagged")]


def test_a_run_within_half_the_interval_is_skipped_unless_forced(db, operator):
    assert ledger.detect_velocity(operator).status == "ran"
    assert ledger.detect_velocity(operator).status == "recent"
    assert ledger.detect_velocity(operator, force=True).status == "ran"
    ledger.set_abuse_policy(db, "velocity.check_interval_seconds", D(0), "test")
    assert ledger.detect_velocity(operator).status == "ran"


def test_a_second_detector_while_one_runs_does_nothing(db, operator, operator_url, connect):
    user = spender(db)
    charge_at(db, user, NOW - dt.timedelta(minutes=3), D(50))
    h.set_clock(db, NOW)
    first = connect(operator_url, autocommit=False)
    api_db.configure(first)
    assert ledger.detect_velocity(first, force=True).flags_raised == 1  # its transaction is still open
    assert ledger.detect_velocity(operator, force=True).status == "busy"
    first.commit()
    assert ledger.detect_velocity(operator, force=True) == ledger.VelocityRun("ran", 0, 0, 1, 0, 0)
    assert len(open_flags(db, user)) == 1


def test_concurrent_detectors_raise_one_flag(db, connect, operator_url):
    ledger.set_abuse_policy(db, "velocity.pause", D(1), "test")
    users = [spender(db) for _ in range(3)]
    for user in users:
        charge_at(db, user, NOW - dt.timedelta(minutes=3), D(50))
    h.set_clock(db, NOW)
    conns = open_connections(connect, operator_url, 12)
    outcomes = run_together(conns, lambda i, c: ledger.detect_velocity(c, force=True))
    assert_no_deadlock(outcomes)
    assert [o.error for o in outcomes] == [None] * 12
    runs = [o.value for o in outcomes]
    assert sum(run.flags_raised for run in runs) == 3
    assert sum(run.accounts_paused for run in runs) == 3
    assert {run.status for run in runs} <= {"ran", "busy"}
    for user in users:
        assert len(open_flags(db, user)) == 1
        assert events(db, user) == [("velocity.spend_spike", "flagged"), ("velocity.spend_spike", "paused")]
        assert not is_active(db, user)


# --- pause, clear, confirm ---------------------------------------------------------------------------


def paused_spender(db: psycopg.Connection[Any], operator: psycopg.Connection[Any]) -> tuple[uuid.UUID, int]:
    ledger.set_abuse_policy(db, "velocity.pause", D(1), "test")
    user = spender(db)
    charge_at(db, user, NOW - dt.timedelta(minutes=3), D(50))
    h.set_clock(db, NOW)
    run = ledger.detect_velocity(operator, force=True)
    assert (run.flags_raised, run.accounts_paused) == (1, 1)
    [flag] = open_flags(db, user)
    return user, flag.id


def test_a_paused_accounts_calls_are_refused_as_paused_pending_review(db, operator, metering_url, connect):
    user, flag_id = paused_spender(db, operator)
    [flag] = open_flags(db, user)
    assert (flag.paused, flag.account_active) == (True, False)
    assert events(db, user) == [("velocity.spend_spike", "flagged"), ("velocity.spend_spike", "paused")]
    metering = connect(metering_url)
    for call in (
        lambda: ledger.begin_request(metering, "after-pause", "search", user, estimate_usd=D("0.1")),
        lambda: ledger.begin_request(metering, "after-pause-free", "search", user, estimate_usd=D(0)),
        lambda: ledger.charge(metering, user, "after-pause-charge", D(1)),
    ):
        with pytest.raises(AccountInactive) as refused:
            call()
        assert refused.value.message.startswith("Account paused pending review")
        assert refused.value.detail["paused"] is True
        assert refused.value.detail["flag_id"] == flag_id
        assert refused.value.detail["rule"] == "velocity.spend_spike"
        assert f"#{flag_id}" in (refused.value.hint or "")


def test_clearing_a_flag_that_paused_the_account_reactivates_it(db, operator, metering_url, connect):
    user, flag_id = paused_spender(db, operator)
    cleared = ledger.decide_account_flag(operator, flag_id, "clear", "ops@example.com", "a planned batch job")
    assert (cleared.status, cleared.account_active, cleared.replayed) == ("cleared", True, False)
    assert (cleared.decided_by, cleared.reason) == ("ops@example.com", "a planned batch job")
    assert is_active(db, user)
    ledger.begin_request(connect(metering_url), "after-clear", "search", user, estimate_usd=D("0.1"))
    [event] = ledger.list_abuse_events(db, user_id=user, rule="velocity.spend_spike", limit=1)
    assert (event.action, event.actor, event.detail["flag_id"], event.detail["reason"]) == (
        "cleared", "ops@example.com", flag_id, "a planned batch job")
    # Idempotent on repeat: the first decision as it was, nothing written.
    before = h.counts(db)
    again = ledger.decide_account_flag(operator, flag_id, "clear", "someone-else", "another reason")
    assert (again.replayed, again.decided_by, again.reason) == (True, "ops@example.com", "a planned batch job")
    assert h.counts(db) == before
    with pytest.raises(InvalidState):
        ledger.decide_account_flag(operator, flag_id, "confirm", "ops", "changed my mind")
    # The activity already seen is not flagged again; the list of open flags is empty.
    assert ledger.detect_velocity(operator, force=True).flags_raised == 0
    assert open_flags(db, user) == []
    assert [f.status for f in ledger.list_account_flags(db, user_id=user, status=None)] == ["cleared"]


def test_confirming_a_flag_keeps_the_account_deactivated(db, operator):
    user, flag_id = paused_spender(db, operator)
    confirmed = ledger.decide_account_flag(operator, flag_id, "confirm", "ops", "stolen card, per the bank")
    assert (confirmed.status, confirmed.account_active) == ("confirmed", False)
    assert not is_active(db, user)
    assert events(db, user)[-1] == ("velocity.spend_spike", "confirmed")


def test_confirming_a_flag_that_did_not_pause_deactivates_the_account(db, operator):
    user = spender(db)
    charge_at(db, user, NOW - dt.timedelta(minutes=3), D(50))
    h.set_clock(db, NOW)
    ledger.detect_velocity(operator, force=True)
    [flag] = open_flags(db, user)
    assert is_active(db, user)
    assert ledger.decide_account_flag(operator, flag.id, "confirm", "ops", "confirmed fraud").account_active is False
    assert not is_active(db, user)


def test_clearing_one_of_two_flags_that_paused_an_account_keeps_it_paused(db, operator, metering_url, connect):
    user, spike = paused_spender(db, operator)
    ledger.update_settings(db, user, is_active=True)  # reactivated by hand meanwhile, to make calls
    metering = connect(metering_url)
    for i in range(21):
        ledger.begin_request(metering, f"ip-{i}", "search", user, client_ip=ipaddress.ip_address(f"192.0.2.{i}"))
    ledger.update_settings(db, user, is_active=False)
    assert ledger.detect_velocity(operator, force=True).flags_raised == 1
    fanout = next(f for f in open_flags(db, user) if f.rule == "velocity.fanout_ips")
    assert fanout.paused  # found paused by the other open flag
    assert ledger.decide_account_flag(operator, spike, "clear", "ops", "fine").account_active is False
    assert ledger.decide_account_flag(operator, fanout.id, "clear", "ops", "fine too").account_active is True


def test_an_account_an_operator_deactivated_is_not_reactivated_by_clearing_a_flag(db, operator):
    ledger.set_abuse_policy(db, "velocity.pause", D(1), "test")
    user = spender(db)
    charge_at(db, user, NOW - dt.timedelta(minutes=3), D(50))
    ledger.update_settings(db, user, is_active=False)
    h.set_clock(db, NOW)
    run = ledger.detect_velocity(operator, force=True)
    assert (run.flags_raised, run.accounts_paused) == (1, 0)
    [flag] = open_flags(db, user)
    assert flag.paused is False
    assert ledger.decide_account_flag(operator, flag.id, "clear", "ops", "fine").account_active is False


def test_decisions_need_an_actor_a_reason_and_a_known_flag(db, operator):
    _, flag_id = paused_spender(db, operator)
    for decision, actor, reason in (("clear", "ops", " "), ("clear", "", "r"), ("approve", "ops", "r")):
        with pytest.raises(InvalidArgument):
            ledger.decide_account_flag(operator, flag_id, decision, actor, reason)
    with pytest.raises(UnknownFlag):
        ledger.decide_account_flag(operator, flag_id + 1000, "clear", "ops", "r")
    with pytest.raises(InvalidArgument):
        ledger.list_account_flags(operator, status="closed")


# --- the refund cap ----------------------------------------------------------------------------------


def charges(db: psycopg.Connection[Any], user: uuid.UUID, n: int, amount: Decimal) -> list[int]:
    ids = []
    for i in range(n):
        charged = ledger.charge(db, user, f"rc-{uuid.uuid4().hex}-{i}", amount)
        assert charged.transaction_id is not None
        ids.append(charged.transaction_id)
    return ids


def test_refunds_past_the_cap_are_refused_with_the_figures_and_the_refusal_is_recorded(db, operator):
    ledger.set_abuse_policy(db, "velocity.refund_cap_usd", D(5), "test")
    user = spender(db)
    first, second = charges(db, user, 2, D(4))
    ledger.refund(operator, first, D(4), "broken tool", "rf-1", actor="ops@example.com")
    before = h.counts(db)
    with pytest.raises(RefundCapExceeded) as refused:
        ledger.refund(operator, second, D("1.00000001"), "also broken", "rf-2", actor="ops@example.com")
    assert refused.value.status == 409
    assert refused.value.detail == {
        "transaction_id": second, "cap_usd": D(5), "period_days": 30, "refunded_usd": D(4),
        "requested_usd": D("1.00000001"), "remaining_usd": D(1),
    }
    assert "5 USD" in refused.value.message and "30 days" in refused.value.message
    assert h.counts(db) == before  # the refusal itself wrote nothing
    event_id = ledger.record_refused_refund(operator, second, D("1.00000001"), "also broken", "ops@example.com")
    [event] = ledger.list_abuse_events(db, user_id=user, rule="velocity.refund_cap")
    assert (event.id, event.action, event.actor) == (event_id, "refused", "ops@example.com")
    assert event.detail["requested_usd"] == D("1.00000001") and event.detail["reason"] == "also broken"
    # Up to the cap exactly is allowed; record_refused_refund records nothing for a refund within it.
    assert ledger.record_refused_refund(operator, second, D(1), "fine", "ops") is None
    assert ledger.refund(operator, second, D(1), "also broken", "rf-3", actor="ops").amount_usd == D(1)


def test_refunds_older_than_the_period_leave_the_cap(db, operator):
    ledger.set_abuse_policy(db, "velocity.refund_cap_usd", D(5), "test")
    user = spender(db)
    h.set_clock(db, NOW - dt.timedelta(days=31))
    [old] = charges(db, user, 1, D(5))
    ledger.refund(operator, old, D(5), "month-old refund", "rf-old")
    h.set_clock(db, NOW)
    [new] = charges(db, user, 1, D(5))
    assert ledger.refund(operator, new, D(5), "fresh refund", "rf-new").amount_usd == D(5)


def test_a_cap_of_zero_turns_the_refund_cap_off(db, operator):
    ledger.set_abuse_policy(db, "velocity.refund_cap_usd", D(0), "test")
    user = spender(db)
    [big] = charges(db, user, 1, D(500))
    assert ledger.refund(operator, big, D(500), "whole refund", "rf-big").amount_usd == D(500)


def test_a_refund_replay_is_answered_whatever_the_cap_says_now(db, operator):
    user = spender(db)
    [tx] = charges(db, user, 1, D(8))
    first = ledger.refund(operator, tx, D(8), "sorry", "rf-replay")
    ledger.set_abuse_policy(db, "velocity.refund_cap_usd", D(1), "test")
    again = ledger.refund(operator, tx, D(8), "sorry", "rf-replay")
    assert (again.transaction_id, again.replayed) == (first.transaction_id, True)


def test_a_refund_records_its_actor_and_needs_a_reason(db, operator):
    user = spender(db)
    a, b = charges(db, user, 2, D(1))
    named = ledger.refund(operator, a, D("0.5"), "sorry", "rf-a", actor="ops@example.com")
    unnamed = ledger.refund(operator, b, D("0.5"), "sorry", "rf-b")
    actors = dict(db.execute(
        "SELECT id, actor FROM billing.billing_transactions WHERE id = ANY(%s)",
        ([named.transaction_id, unnamed.transaction_id],),
    ).fetchall())
    assert actors[named.transaction_id] == "ops@example.com"
    assert actors[unnamed.transaction_id] == "tollgate_gw_operator"  # the login that called
    for reason in ("", "   "):
        with pytest.raises(InvalidArgument):
            ledger.refund(operator, a, D("0.1"), reason, f"rf-blank-{len(reason)}")


def test_concurrent_refunds_of_one_account_never_pass_the_cap(db, connect, operator_url):
    ledger.set_abuse_policy(db, "velocity.refund_cap_usd", D(10), "test")
    user = spender(db)
    txs = charges(db, user, 25, D(1))
    conns = open_connections(connect, operator_url, 25)
    gate = RowGate(connect, [user])
    outcomes = run_together(conns, lambda i, c: ledger.refund(c, txs[i], D(1), "race", f"rf-race-{i}"), gate=gate)
    assert_no_deadlock(outcomes)
    assert gate.waiters == 25
    won = [o for o in outcomes if o.ok]
    refused = [o.error for o in outcomes if not o.ok]
    assert len(won) == 10
    assert len(refused) == 15 and all(isinstance(e, RefundCapExceeded) for e in refused)
    total = db.execute(
        "SELECT sum(amount_usd) FROM billing.billing_transactions WHERE user_id = %s AND type = 'refund'", (user,)
    ).fetchone()
    assert total == (D(10),)
