"""The ledger's hash chain: every writer chains its row onto the account's head,
verify_ledger recomputes the chain, and anchors kept elsewhere prove that history was not rewritten
even by someone who recomputes the hashes.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.ledger import anchors
from api.ledger import sync as ledger
from api.ops import cli
from tests import helpers as h

D = Decimal


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


@pytest.fixture
def ledger_may_break() -> None:
    """Opts a test that breaks the ledger on purpose out of the final verify_ledger check."""


def _every_kind_of_row(db: psycopg.Connection[Any]) -> uuid.UUID:
    """An account with a row from every writer: fast and exact charge, fast and exact settle, top-up in
    USD and UAH, refund, adjustment, and a charge through complete_request."""
    ledger.set_exchange_rate(db, D("41.25"))
    user_id = h.funded_user(db, D(10))
    ledger.top_up(db, user_id, D("412.50"), "fondy", f"order-{uuid.uuid4().hex}", "UAH", "a UAH top-up, 'quoted', x")
    charged = ledger.charge(db, user_id, "c-fast", D("0.0003"), "fast charge", {"k": "v,|'"})
    ledger.reserve(db, user_id, "s-fast", D("0.05"))
    ledger.settle(db, "s-fast", D("0.02"), "fast settle")
    ledger.reserve(db, user_id, "s-exact", D("0.05"))
    ledger.release(db, "s-exact")
    ledger.reserve(db, user_id, "s-zero", D("0.01"))
    ledger.settle(db, "s-zero", D("0"))
    assert charged.transaction_id is not None
    ledger.refund(db, charged.transaction_id, D("0.0001"), "partial", "r-1")
    ledger.adjust(db, user_id, D("-1.5"), "correction", "ops@example.com", "a-1")
    ledger.start_request(db, "cr-1", "search", user_id)
    ledger.complete_request(db, "cr-1", True, D("0.004"))
    ledger.update_settings(db, user_id, billing_enabled=False)
    ledger.charge(db, user_id, "c-off", D("0.01"))  # not billed: no row
    ledger.update_settings(db, user_id, billing_enabled=True, is_active=False)
    ledger.top_up(db, user_id, D(1), "manual", "inactive-topup")
    return user_id


def _rows(db: psycopg.Connection[Any], user_id: uuid.UUID) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT t.id, t.type, t.entry_hash, billing._row_hash(lag(t.entry_hash) OVER (ORDER BY t.version), t)"
            " AS recomputed"
            " FROM billing.billing_transactions t WHERE t.user_id = %s ORDER BY t.version",
            (user_id,),
        ).fetchall()


def test_every_writer_chains_its_row_onto_the_account_head(db: psycopg.Connection[Any]) -> None:
    user_id = _every_kind_of_row(db)
    rows = _rows(db, user_id)
    assert len(rows) == 8
    assert {row["type"] for row in rows} == {"topup", "charge", "refund", "adjustment"}
    for row in rows:
        assert row["entry_hash"] == row["recomputed"], row
    assert len({bytes(row["entry_hash"]) for row in rows}) == len(rows)
    head = db.execute("SELECT ledger_head FROM billing.user_billing WHERE user_id = %s", (user_id,)).fetchone()
    assert head == (rows[-1]["entry_hash"],)
    assert ledger.verify_ledger(db) == []
    assert [(h_.user_id, h_.version) for h_ in ledger.ledger_heads(db)] == [(user_id, 8)]


def test_the_hash_is_the_same_whatever_the_session_time_zone_or_date_style(db: psycopg.Connection[Any]) -> None:
    user_id = _every_kind_of_row(db)
    db.execute("SET TimeZone = 'Pacific/Chatham'")
    db.execute("SET DateStyle = 'SQL, DMY'")
    db.execute("SET extra_float_digits = -3")
    assert all(row["entry_hash"] == row["recomputed"] for row in _rows(db, user_id))


def test_a_forged_top_up_appended_with_balance_and_version_to_match_is_caught(
    db: psycopg.Connection[Any], ledger_may_break: None
) -> None:
    """Before the chain, verify_ledger said OK to this: a top-up row inserted by someone with table
    access, the account's balance and version moved to match, every other invariant kept."""
    user_id = h.funded_user(db, D(5))
    ledger.charge(db, user_id, "real-1", D("0.02"))
    assert ledger.verify_ledger(db) == []
    db.execute(
        """
        INSERT INTO billing.billing_transactions (user_id, version, type, amount_usd, balance_before_usd,
            balance_after_usd, payment_provider, payment_id, description, entry_hash)
        SELECT b.user_id, b.version + 1, 'topup', 1000, b.balance_usd, b.balance_usd + 1000, 'stripe', 'pi_forged',
               'Top-up via Stripe', sha256('forged'::bytea)
          FROM billing.user_billing b WHERE b.user_id = %s
        """,
        (user_id,),
    )
    db.execute(
        "UPDATE billing.user_billing SET balance_usd = balance_usd + 1000, version = version + 1 WHERE user_id = %s",
        (user_id,),
    )
    found = {(v.invariant, v.user_id) for v in ledger.verify_ledger(db)}
    assert found == {("hash_chain", user_id)}


def test_a_row_rewritten_in_place_breaks_the_chain_from_there_on(
    db: psycopg.Connection[Any], ledger_may_break: None
) -> None:
    user_id = h.funded_user(db, D(5))
    for n in range(3):
        ledger.charge(db, user_id, f"r-{n}", D("0.02"))
    db.execute("ALTER TABLE billing.billing_transactions DISABLE TRIGGER billing_transactions_append_only")
    db.execute(
        "UPDATE billing.billing_transactions SET description = 'nothing to see' WHERE user_id = %s AND version = 2",
        (user_id,),
    )
    broken = [v for v in ledger.verify_ledger(db) if v.invariant == "hash_chain"]
    assert len(broken) == 1 and "entry_hash" in broken[0].detail


def _rechain(db: psycopg.Connection[Any], user_id: uuid.UUID) -> None:
    """What a careful forger does: recompute every hash of the account and its head."""
    db.execute("ALTER TABLE billing.billing_transactions DISABLE TRIGGER billing_transactions_append_only")
    head = None
    for row in db.execute(
        "SELECT id FROM billing.billing_transactions WHERE user_id = %s ORDER BY version", (user_id,)
    ).fetchall():
        updated = db.execute(
            "UPDATE billing.billing_transactions t SET entry_hash = billing._row_hash(%s, t) WHERE t.id = %s"
            " RETURNING t.entry_hash",
            (head, row[0]),
        ).fetchone()
        assert updated is not None
        head = updated[0]
    db.execute("UPDATE billing.user_billing SET ledger_head = %s WHERE user_id = %s", (head, user_id))
    db.execute("ALTER TABLE billing.billing_transactions ENABLE TRIGGER billing_transactions_append_only")


def test_a_history_rewritten_with_a_recomputed_chain_is_caught_by_an_anchor(
    db: psycopg.Connection[Any], ledger_may_break: None
) -> None:
    victim = h.funded_user(db, D(5))
    bystander = h.funded_user(db, D(5))
    ledger.charge(db, victim, "v-1", D("0.50"))
    ledger.charge(db, bystander, "b-1", D("0.10"))
    anchored = ledger.ledger_heads(db)
    assert ledger.verify_anchors(db, anchored) == []
    ledger.charge(db, victim, "v-2", D("0.25"))  # history goes on after the anchor
    assert ledger.verify_anchors(db, anchored) == []
    # The first charge is rewritten to 0.05, the balances of later rows follow, the chain is recomputed.
    db.execute("ALTER TABLE billing.billing_transactions DISABLE TRIGGER billing_transactions_append_only")
    db.execute(
        "UPDATE billing.billing_transactions SET balance_after_usd = balance_after_usd + 0.45,"
        " amount_usd = amount_usd + CASE WHEN version = 2 THEN 0.45 ELSE 0 END,"
        " balance_before_usd = balance_before_usd + CASE WHEN version > 2 THEN 0.45 ELSE 0 END"
        " WHERE user_id = %s AND version >= 2",
        (victim,),
    )
    db.execute(
        "UPDATE billing.user_billing SET balance_usd = balance_usd + 0.45, total_spent_usd = total_spent_usd - 0.45,"
        " day_spent_usd = day_spent_usd - 0.45, month_spent_usd = month_spent_usd - 0.45 WHERE user_id = %s",
        (victim,),
    )
    _rechain(db, victim)
    assert ledger.verify_ledger(db) == []  # every invariant, the chain included, holds again...
    broken = ledger.verify_anchors(db, anchored)
    assert [(b.user_id, b.problem) for b in broken] == [(victim, "rewritten")]  # ...but not the anchor


def test_a_history_cut_short_is_caught_by_an_anchor(db: psycopg.Connection[Any], ledger_may_break: None) -> None:
    user_id = h.funded_user(db, D(5))
    ledger.charge(db, user_id, "c-1", D("1"))
    anchored = ledger.ledger_heads(db)
    db.execute("ALTER TABLE billing.billing_transactions DISABLE TRIGGER billing_transactions_append_only")
    db.execute("DELETE FROM billing.billing_transactions WHERE user_id = %s AND version = 2", (user_id,))
    assert [(b.user_id, b.version, b.problem) for b in ledger.verify_anchors(db, anchored)] == [
        (user_id, 2, "missing")
    ]


def test_verify_anchors_refuses_arrays_that_do_not_line_up(db: psycopg.Connection[Any]) -> None:
    for versions in ("ARRAY[1, 2]", "ARRAY[1]"):  # lengths differ; a hash that is not 32 bytes
        with pytest.raises(psycopg.Error) as refused:
            db.execute(
                f"SELECT * FROM billing.verify_anchors(ARRAY[gen_random_uuid()], {versions}, ARRAY['\\x00'::bytea])"
            )
        assert refused.value.sqlstate == "BL009"


# --- tollgate ledger anchor / verify --anchors ---------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, db_url: str) -> str:
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", db_url)
    return db_url


def test_anchor_then_verify_from_the_command_line(
    cli_env: str, db: psycopg.Connection[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    ledger_may_break: None,
) -> None:
    users = [h.funded_user(db, D(3)) for _ in range(3)]
    ledger.charge(db, users[0], "cli-1", D("0.3"))
    assert cli.main(["ledger", "anchor"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# tollgate ledger anchor v1 ") and "accounts=3 " in text
    assert [head.user_id for head in anchors.parse_anchor(text)] == sorted(users)
    anchor_file = tmp_path / "anchor.txt"
    anchor_file.write_text(text)

    assert cli.main(["ledger", "verify", "--anchors", str(anchor_file)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "anchors OK: all 3 hold"

    tampered = tmp_path / "tampered.txt"
    tampered.write_text(text.replace(" 2 ", " 3 ", 1))
    assert cli.main(["ledger", "verify", "--anchors", str(tampered)]) == cli.EXIT_ERROR
    assert "the file was changed" in capsys.readouterr().err

    db.execute("ALTER TABLE billing.billing_transactions DISABLE TRIGGER billing_transactions_append_only")
    db.execute("UPDATE billing.billing_transactions SET description = 'x' WHERE user_id = %s", (users[0],))
    _rechain(db, users[0])
    assert cli.main(["ledger", "verify", "--anchors", str(anchor_file)]) == 1
    out = capsys.readouterr().out
    assert f"anchor: user {users[0]} version 2: rewritten since it was anchored" in out
    assert out.splitlines()[-1] == "1 of 3 anchors broken"


@pytest.mark.parametrize(
    "text",
    ["", "hello\n", "# tollgate ledger anchor v1 2026-01-01T00:00:00Z accounts=1 digest=" + "0" * 64 + "\n",
     "# tollgate ledger anchor v1 2026-01-01T00:00:00Z accounts=1 digest=" + "0" * 64 + "\nnot a line\n"],
)
def test_an_anchor_file_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(anchors.AnchorFileError):
        anchors.parse_anchor(text)


# --- rows written before the chain existed ---------------------------------------------------------------


def test_the_migration_chains_the_rows_written_before_it(db_url: str, db: psycopg.Connection[Any]) -> None:
    from api.ops import migrate
    from tests.conftest import DB_DIR

    user_id = _every_kind_of_row(db)
    before = [(row["id"], row["entry_hash"]) for row in _rows(db, user_id)]
    migrate.downgrade(db_url, DB_DIR, "0005_payments")
    columns = db.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'billing.billing_transactions'::regclass"
        " AND attname = 'entry_hash' AND NOT attisdropped"
    ).fetchone()
    assert columns == (0,)
    migrate.upgrade(db_url, DB_DIR)
    assert [(row["id"], row["entry_hash"]) for row in _rows(db, user_id)] == before
    assert ledger.verify_ledger(db) == []
