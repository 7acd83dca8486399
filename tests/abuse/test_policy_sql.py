"""billing.abuse_policy (the figures the ledger's rules read) and billing.abuse_events (their audit trail)."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from api.ledger import sync as ledger
from api.ledger.errors import InvalidAmount, InvalidArgument


def test_a_figure_is_stored_once_and_a_repeat_writes_nothing(connect, operator_url):
    operator = connect(operator_url)
    first = ledger.set_abuse_policy(operator, "payments.intents_per_hour_per_user", Decimal(4), "config")
    assert (first.value, first.changed, first.updated_by) == (Decimal(4), True, "config")
    again = ledger.set_abuse_policy(operator, "payments.intents_per_hour_per_user", Decimal(4), "someone-else")
    assert (again.changed, again.updated_by, again.updated_at) == (False, "config", first.updated_at)
    changed = ledger.set_abuse_policy(operator, "payments.intents_per_hour_per_user", Decimal("4.5"), "ops")
    assert (changed.value, changed.changed, changed.updated_by) == (Decimal("4.5"), True, "ops")
    assert [(p.name, p.value) for p in ledger.list_abuse_policy(operator)] == [
        ("payments.intents_per_hour_per_user", Decimal("4.5"))
    ]


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("Payments.Caps", Decimal(1), InvalidArgument),
        ("", Decimal(1), InvalidArgument),
        ("payments.cap", Decimal(-1), InvalidAmount),
        ("payments.cap", Decimal("NaN"), InvalidAmount),
        ("payments.cap", Decimal("1e12"), InvalidAmount),
    ],
)
def test_a_malformed_figure_is_refused(connect, operator_url, name, value, error):
    with pytest.raises(error):
        ledger.set_abuse_policy(connect(operator_url), name, value, "ops")


def test_a_missing_figure_is_the_rules_default(db):
    assert db.execute("SELECT billing._policy('velocity.window_minutes', 10)").fetchone() == (Decimal(10),)
    db.execute("INSERT INTO billing.abuse_policy (name, value, updated_by) VALUES ('velocity.window_minutes', 3, 't')")
    assert db.execute("SELECT billing._policy('velocity.window_minutes', 10)").fetchone() == (Decimal(3),)


def test_events_are_listed_newest_first_by_user_and_rule_prefix(db, connect, operator_url):
    user = ledger.ensure_account(db, "abuse-events-user")
    for rule in ("payments.intents_per_hour_per_user", "velocity.spend_spike", "payments.failed_per_day_per_ip"):
        db.execute(
            "SELECT billing._record_abuse_event(%s, 'refused', %s, '198.51.100.7', '{\"limit\": 3}')", (rule, user)
        )
    operator = connect(operator_url)
    payments = ledger.list_abuse_events(operator, rule="payments")
    assert [e.rule for e in payments] == ["payments.failed_per_day_per_ip", "payments.intents_per_hour_per_user"]
    assert str(payments[0].client_ip) == "198.51.100.7" and payments[0].detail == {"limit": 3}
    assert len(ledger.list_abuse_events(operator, user_id=user, limit=1)) == 1
    assert ledger.list_abuse_events(operator, rule="payments.intents") == []  # a prefix is a whole dotted part
    with pytest.raises(InvalidArgument):
        ledger.list_abuse_events(operator, limit=0)


def test_the_audit_trail_cannot_be_rewritten(db):
    db.execute("SELECT billing._record_abuse_event('velocity.spend_spike', 'flagged', NULL, NULL)")
    for statement in ("UPDATE billing.abuse_events SET action = 'cleared'", "DELETE FROM billing.abuse_events",
                      "TRUNCATE billing.abuse_events"):
        with pytest.raises(psycopg.Error) as refused:
            db.execute(statement)
        assert refused.value.sqlstate == "BL090"


def test_the_gateway_logins_cannot_touch_the_tables(connect, metering_url, operator_url):
    for url in (metering_url, operator_url):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connect(url).execute("SELECT * FROM billing.abuse_policy")
