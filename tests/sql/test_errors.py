"""The error-code registry: the BL SQLSTATEs raised in db/, api.ledger.errors.ERROR_CODES and db/README.md must
agree, each code must map to its own exception class and a fitting HTTP status, and every refusal that
reaches Python must carry a readable message and a DETAIL that parses into a dict of Decimal figures.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.gateway.config import DEFAULT_DB_DIR
from api.ledger import errors
from api.ledger import sync as ledger
from api.ledger.errors import ERROR_CODES, EXCEPTIONS, BillingError, LimitExceeded
from tests import helpers as h

D = Decimal
DB_DIR: Path = DEFAULT_DB_DIR
CODE = re.compile(r"\bBL\d{3}\b")

# What each kind of refusal means to an HTTP client, by the registry's stable name. Several statuses
# are acceptable where reasonable people differ; codes of different kinds must never share one.
FITTING_STATUSES: dict[str, set[int]] = {
    "insufficient_funds": {402},
    "daily_limit_exceeded": {429},
    "monthly_limit_exceeded": {429},
    "account_inactive": {403},
    "idempotency_conflict": {409},
    "invalid_amount": {400, 422},
    "unknown_user": {404},
    "unknown_request": {404},
    "invalid_argument": {400, 422},
    "unknown_transaction": {404},
    "refund_exceeds_charge": {409, 422},
    "invalid_state": {409},
    "no_exchange_rate": {422, 503},
    "unsupported_currency": {400, 422},
    "unknown_api_key": {404},
    "unknown_payment": {404},
    "anonymous_denied": {401},
    "anonymous_quota_exceeded": {429},
    "refund_cap_exceeded": {409, 422},
    "unknown_flag": {404},
    "ledger_append_only": {403, 409, 500},
}


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)



def _sql_files() -> list[Path]:
    files = sorted(DB_DIR.rglob("*.sql"))
    assert len(files) > 20, f"expected the db/ tree at {DB_DIR}"
    return files


def _codes_in_sql() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _sql_files():
        for code in CODE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(code, []).append(str(path.relative_to(DB_DIR)))
    return found


# --- the registry ---------------------------------------------------------------------------------


def test_every_code_raised_in_sql_is_registered_and_every_registered_code_is_raised():
    in_sql = set(_codes_in_sql())
    registered = {code.sqlstate for code in ERROR_CODES}
    assert in_sql - registered == set(), "raised in db/ but missing from api.ledger.errors.ERROR_CODES"
    assert registered - in_sql == set(), "registered in api.ledger.errors.ERROR_CODES but raised nowhere in db/"


def test_every_raise_in_sql_names_its_sqlstate():
    # A RAISE EXCEPTION without ERRCODE would reach Python as P0001 and bypass the registry.
    raise_statement = re.compile(r"RAISE\s+EXCEPTION\b.*?;", re.DOTALL | re.IGNORECASE)
    missing = []
    for path in _sql_files():
        for statement in raise_statement.findall(path.read_text(encoding="utf-8")):
            if not re.search(r"ERRCODE\s*=\s*(?:'BL\d{3}'|CASE\b)", statement):
                missing.append(f"{path.relative_to(DB_DIR)}: {statement[:80]}")
    assert missing == []


def test_registry_entries_are_unique_and_well_formed():
    sqlstates = [code.sqlstate for code in ERROR_CODES]
    names = [code.name for code in ERROR_CODES]
    assert len(set(sqlstates)) == len(sqlstates)
    assert len(set(names)) == len(names)
    for code in ERROR_CODES:
        assert re.fullmatch(r"BL\d{3}", code.sqlstate)
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code.name)
        assert code.meaning.strip()
        assert errors.BY_SQLSTATE[code.sqlstate] is code


def test_every_code_maps_to_its_own_exception_class():
    assert set(EXCEPTIONS) == {code.sqlstate for code in ERROR_CODES}
    classes = list(EXCEPTIONS.values())
    assert len(set(classes)) == len(classes), "two codes share an exception class"
    for sqlstate, cls in EXCEPTIONS.items():
        assert issubclass(cls, BillingError)
        assert cls.sqlstate == sqlstate
        instance = cls("message")
        assert instance.error_code is errors.BY_SQLSTATE[sqlstate]
        assert (instance.status, instance.code) == (instance.error_code.http_status, instance.error_code.name)
        assert instance.detail == {}
    assert issubclass(EXCEPTIONS["BL002"], LimitExceeded)
    assert issubclass(EXCEPTIONS["BL003"], LimitExceeded)


def test_every_code_has_a_fitting_http_status():
    assert set(FITTING_STATUSES) == {code.name for code in ERROR_CODES}
    for code in ERROR_CODES:
        assert code.http_status in FITTING_STATUSES[code.name], (code.name, code.http_status)
        assert EXCEPTIONS[code.sqlstate]("m").status == code.http_status


def test_different_kinds_of_refusal_have_different_http_statuses():
    kinds = {
        "funds": {"insufficient_funds"},
        "limits": {"daily_limit_exceeded", "monthly_limit_exceeded"},
        "inactive": {"account_inactive"},
        "not_found": {"unknown_user", "unknown_request", "unknown_transaction", "unknown_api_key"},
        "invalid": {"invalid_amount", "invalid_argument", "unsupported_currency"},
    }
    status = {code.name: code.http_status for code in ERROR_CODES}
    for kind, names in kinds.items():
        assert len({status[name] for name in names}) == 1, f"{kind} codes answer with different statuses"
    per_kind = {kind: status[next(iter(names))] for kind, names in kinds.items()}
    assert len(set(per_kind.values())) == len(per_kind), per_kind


def test_db_readme_lists_every_code():
    readme = DB_DIR / "README.md"
    if not readme.exists():
        pytest.skip("db/README.md is not written yet")
    text = readme.read_text(encoding="utf-8")
    listed = set(CODE.findall(text))
    for code in ERROR_CODES:
        assert code.sqlstate in listed, f"{code.sqlstate} is not in db/README.md"
        assert code.name in text, f"{code.name} is not in db/README.md"
    assert listed <= {code.sqlstate for code in ERROR_CODES}, "db/README.md lists codes that do not exist"


# --- refusals as Python sees them -----------------------------------------------------------------


def _scenarios(db) -> dict[str, Callable[[], Any]]:
    """One call per code that makes the database raise it (each in its own transaction)."""
    user_id = h.funded_user(db, 5)
    charged = ledger.charge(db, user_id, "charged-1", D("1.5"))
    assert charged.transaction_id is not None
    topup_id = h.ledger_rows(db, user_id)[0]["id"]
    inactive = h.funded_user(db, 5)
    ledger.update_settings(db, inactive, is_active=False)
    capped = h.funded_user(db, 50)
    ledger.update_settings(db, capped, daily_limit_usd=D(100), monthly_limit_usd=D("2.5"))
    ledger.set_tool_pricing(db, "priced-anonymously", D("0.02"))
    ledger.set_tool_pricing(db, "quota-of-one", D(0), anonymous="free:1/day")
    ledger.begin_anonymous_call(db, "quota-of-one", None)

    def append_only() -> None:
        with errors.translate_errors():
            db.execute("UPDATE billing.billing_transactions SET description = 'changed'")

    return {
        "BL001": lambda: ledger.charge(db, user_id, "r-funds", D("3.6")),
        "BL002": lambda: _daily(db),
        "BL003": lambda: ledger.charge(db, capped, "r-monthly", D("2.75")),
        "BL004": lambda: ledger.charge(db, inactive, "r-inactive", D("0.5")),
        "BL005": lambda: ledger.charge(db, user_id, "charged-1", D("1.25")),
        "BL006": lambda: ledger.charge(db, user_id, "r-nan", D("NaN")),
        "BL007": lambda: ledger.summary(db, uuid.uuid4()),
        "BL008": lambda: ledger.release(db, "no-such-request"),
        "BL009": lambda: ledger.ensure_account(db, "   "),
        "BL010": lambda: ledger.refund(db, 424242, D("0.5"), "r", "k-1"),
        "BL011": lambda: ledger.refund(db, charged.transaction_id, D("1.75"), "r", "k-2"),  # type: ignore[arg-type]
        "BL012": lambda: ledger.refund(db, topup_id, D("0.5"), "r", "k-3"),
        "BL013": lambda: ledger.top_up(db, user_id, D("100.5"), "mono", "uah-1", currency="UAH"),
        "BL014": lambda: ledger.top_up(db, user_id, D("100.5"), "stripe", "eur-1", currency="EUR"),
        "BL015": lambda: ledger.revoke_api_key(db, "no-such-key"),
        "BL016": lambda: ledger.payment_intent(db, uuid.uuid4()),
        "BL040": lambda: ledger.begin_anonymous_call(db, "priced-anonymously", None),
        "BL041": lambda: ledger.begin_anonymous_call(db, "quota-of-one", None),
        "BL030": lambda: _refund_cap(db, charged.transaction_id),  # type: ignore[arg-type]
        "BL031": lambda: ledger.decide_account_flag(db, 424242, "clear", "ops", "a false alarm"),
        "BL090": append_only,
    }


def _refund_cap(db, transaction_id: int) -> Any:
    """A cap of 0.5 USD of refunds per 30 days (this part commits), then a refund of 1 USD."""
    ledger.set_abuse_policy(db, "velocity.refund_cap_usd", D("0.5"), "test")
    return ledger.refund(db, transaction_id, D(1), "r", "k-cap")


def _daily(db) -> Any:
    """Spends 9.5 of a 10 daily limit (this part commits), then asks for 0.75 more."""
    rich = h.funded_user(db, 50)
    ledger.charge(db, rich, "r-daily-1", D("9.5"))
    return ledger.charge(db, rich, "r-daily-2", D("0.75"))


def test_every_code_reaches_python_as_its_exception_with_a_readable_message_and_detail(db):
    scenarios = _scenarios(db)
    assert set(scenarios) == {code.sqlstate for code in ERROR_CODES}
    for sqlstate, call in scenarios.items():
        with pytest.raises(BillingError) as caught:
            call()
        error = caught.value
        assert type(error) is EXCEPTIONS[sqlstate], (sqlstate, type(error).__name__)
        assert isinstance(error.__cause__, psycopg.Error)
        assert error.__cause__.sqlstate == sqlstate
        assert error.message.strip(), sqlstate
        assert str(error) == error.message
        assert "None" not in error.message, (sqlstate, error.message)
        assert "%" not in error.message, (sqlstate, error.message)
        assert isinstance(error.detail, dict), sqlstate
        assert "text" not in error.detail, f"{sqlstate}: DETAIL is not a JSON object: {error.detail}"
        if sqlstate != "BL090":  # the append-only trigger explains itself in the message and hint
            assert error.detail, f"{sqlstate} carries no DETAIL"
        for value in h.walk_decimals(error.detail):
            assert not isinstance(value, float), (sqlstate, error.detail)
        if error.hint is not None:
            assert error.hint.strip() and "None" not in error.hint


def test_refusal_figures_are_decimals(db):
    user_id = h.funded_user(db, D("2.5"))
    with pytest.raises(errors.InsufficientFunds) as caught:
        ledger.charge(db, user_id, "r-1", D("3.25"))
    detail = caught.value.detail
    assert detail["required_usd"] == D("3.25") and type(detail["required_usd"]) is Decimal
    assert detail["shortfall_usd"] == D("0.75") and type(detail["shortfall_usd"]) is Decimal
    assert type(detail["available_usd"]) is Decimal


def test_refusal_figures_are_decimals_even_when_they_are_whole_numbers(db):
    # Money in a DETAIL must reach Python as Decimal whatever its value: a client that formats or adds
    # detail["required_usd"] must not get an int for $5 and a Decimal for $5.5.
    user_id = h.funded_user(db, 2)
    with pytest.raises(errors.InsufficientFunds) as caught:
        ledger.charge(db, user_id, "r-1", D(5))
    money = {key: value for key, value in caught.value.detail.items() if key.endswith("_usd")}
    assert set(money) == {"required_usd", "balance_usd", "held_usd", "available_usd", "shortfall_usd"}
    not_decimal = {key: type(value).__name__ for key, value in money.items() if type(value) is not Decimal}
    assert not_decimal == {}


def test_unknown_user_message_names_a_missing_id_without_python_none(db):
    for user_id in (None, uuid.uuid4()):
        with pytest.raises(errors.UnknownUser) as caught:
            ledger.check_balance(db, user_id, 1)  # type: ignore[arg-type]
        assert "None" not in caught.value.message
        assert caught.value.status == 404


def test_other_database_errors_pass_through_untranslated(db):
    with pytest.raises(psycopg.errors.UndefinedFunction), errors.translate_errors():
        db.execute("SELECT billing.no_such_function()")
    assert errors.from_psycopg(psycopg.errors.UniqueViolation("x")) is None


def test_parse_detail():
    assert errors.parse_detail(None) == {}
    assert errors.parse_detail("") == {}
    parsed = errors.parse_detail('{"required_usd": 0.00030000, "nested": {"x": [1.5]}}')
    assert parsed == {"required_usd": D("0.0003"), "nested": {"x": [D("1.5")]}}
    assert type(parsed["required_usd"]) is Decimal
    assert errors.parse_detail("not json") == {"text": "not json"}
    assert errors.parse_detail("[1]") == {"value": [1]}
