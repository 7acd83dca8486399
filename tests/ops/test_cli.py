"""The `tollgate` command line against a real database: output, exit codes, one-line errors."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from api.ledger import roles
from api.ledger.roles import Authority
from api.ops import cli


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str) -> str:
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", db_url)
    return db_url


def test_migrate_status_and_up(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate", "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("applied  ") for line in lines)

    assert cli.main(["migrate"]) == 0
    assert capsys.readouterr().out == "functions, views and grants re-applied\n"


def test_migrate_down_to_a_target_and_up(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate", "status"]) == 0
    ids = [line.split()[1] for line in capsys.readouterr().out.splitlines()]

    assert cli.main(["migrate", "down", "--to", ids[0]]) == 0
    assert capsys.readouterr().out.splitlines() == [f"rolled back {i}" for i in reversed(ids[1:])]
    assert cli.main(["migrate", "up"]) == 0
    assert capsys.readouterr().out.splitlines()[: len(ids) - 1] == [f"applied {i}" for i in ids[1:]]


def test_db_url_prints_the_configured_url(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "url"]) == 0
    assert capsys.readouterr().out == env + "\n"


def test_embedded_server_commands_are_refused_with_a_configured_url(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["db", "stop"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == (
        "tollgate: error: a database URL is configured, so there is no embedded server to stop\n"
    )


def test_unreachable_database_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    assert cli.main(["migrate"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("tollgate: error: cannot connect to the database")
    assert err.count("\n") == 1


def test_bad_settings_are_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLGATE_POOL_MAX", "many")
    assert cli.main(["db", "url"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == "tollgate: error: TOLLGATE_POOL_MAX='many' is not an integer\n"


def test_unknown_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["migrate", "--frobnicate"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h user=u password=secret dbname=db", "user=u password=*** dbname=db host=h"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert cli.redact(url) == shown


# --- who the commands log in as ------------------------------------------------------------------------


def test_migrate_makes_the_gateway_logins_members_of_their_roles(
    env: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    conn.execute("REVOKE tollgate_metering FROM tollgate_gw_metering")  # cluster-wide: restored by the migrate
    try:
        assert cli.main(["migrate"]) == 0
    finally:
        conn.execute("GRANT tollgate_metering TO tollgate_gw_metering")
    assert capsys.readouterr().err == ""
    member = conn.execute("SELECT pg_has_role('tollgate_gw_metering', 'tollgate_metering', 'USAGE')").fetchone()
    assert member == (True,)


def test_a_role_that_may_not_make_roles_says_so_and_changes_nothing(operator_url: str) -> None:
    problems = roles.provision_login_roles(operator_url)
    assert len(problems) == 3
    # PostgreSQL's reason ("permission denied to grant role", "must have admin option"), then what to do.
    assert all(f"CREATE ROLE {a.login_role} LOGIN" in problem for a, problem in zip(Authority, problems, strict=True))


def test_ledger_commands_log_in_as_the_operator(
    env: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["user", "create", "cli-operator"]) == 0
    capsys.readouterr()
    assert cli.main(["topup", "cli-operator", "2.50", "--payment-id", "cli-op-1"]) == 0
    assert "balance_after_usd: 2.50000000" in capsys.readouterr().out
    # Not as the owner whose URL is configured: without its group role, the operator's login is refused.
    conn.execute("REVOKE tollgate_operator FROM tollgate_gw_operator")  # cluster-wide: restored below
    try:
        assert cli.main(["topup", "cli-operator", "2.50", "--payment-id", "cli-op-2"]) == cli.EXIT_ERROR
    finally:
        conn.execute("GRANT tollgate_operator TO tollgate_gw_operator")
    assert "tollgate_gw_operator does not have the privileges of tollgate_operator" in capsys.readouterr().err


def test_ledger_commands_refuse_a_superuser_login(
    env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLGATE_OPERATOR_DATABASE_URL", env)  # the owner's (superuser) URL
    assert cli.main(["ledger", "verify"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("tollgate: error: refusing the operator connection: ")
    assert "is a superuser" in err
    assert err.count("\n") == 1


def test_run_without_the_owners_url_must_be_told_not_to_migrate(
    monkeypatch: pytest.MonkeyPatch, operator_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for authority in Authority:
        monkeypatch.setenv(authority.url_variable, operator_url)
    monkeypatch.delenv("TOLLGATE_DATABASE_URL", raising=False)
    assert cli.main(["run"]) == cli.EXIT_ERROR
    assert "tollgate run migrates first, as the owner: set TOLLGATE_DATABASE_URL, or pass --no-migrate" in (
        capsys.readouterr().err
    )
    assert cli.main(["migrate", "status"]) == cli.EXIT_ERROR
    assert "needs the owner's URL, TOLLGATE_DATABASE_URL" in capsys.readouterr().err


def test_pricing_set_and_list_show_the_declared_bounds(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["pricing", "set", "summarize", "--base", "0", "--markup", "20", "--variable"]
    assert cli.main([*args, "--max-price", "0.16", "--per-input-char", "0.0000013"]) == 0
    assert cli.main(["pricing", "set", "echo", "--base", "0.0003"]) == 0
    capsys.readouterr()
    assert cli.main(["pricing", "list"]) == 0
    header, echo, summarize = capsys.readouterr().out.splitlines()
    assert header.split() == ["tool", "base_usd", "markup_%", "estimate_usd", "max_price_usd", "per_input_char_usd",
                              "variable", "anonymous"]
    assert echo.split() == ["echo", "0.00030000", "0.0000", "-", "-", "-", "no", "deny", "(default)"]
    assert summarize.split() == [
        "summarize", "0.00000000", "20.0000", "-", "0.16000000", "0.000001300000", "yes", "deny", "(default)"
    ]
    # a maximum below the base price is refused by the database, as a one-line error
    assert cli.main(["pricing", "set", "echo", "--base", "0.01", "--max-price", "0.005"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("tollgate: error: ") and "max_price_usd" in err and err.count("\n") == 1


def test_pricing_set_anonymous_stores_the_policy_and_refuses_an_unknown_one(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["pricing", "set", "echo", "--base", "0.0003", "--anonymous", "free:20/day"]) == 0
    assert cli.main(["pricing", "set", "free", "--base", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["pricing", "list"]) == 0
    _, echo, free = capsys.readouterr().out.splitlines()
    assert echo.split()[-1] == "free:20/day"
    assert free.split()[-2:] == ["free", "(default)"]
    assert cli.main(["pricing", "set", "echo", "--base", "0.0003", "--anonymous", "sometimes"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "anonymous must be deny, free or free:N/day" in err and err.count("\n") == 1


def test_ledger_prune_anonymous_deletes_old_days(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ledger", "prune-anonymous", "--keep-days", "30"]) == 0
    assert "anonymous usage rows deleted" in capsys.readouterr().out
    assert cli.main(["ledger", "prune-anonymous", "--keep-days", "-1"]) == cli.EXIT_ERROR


def test_token_lifetime_is_capped_like_the_gateway_caps_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    import jwt

    monkeypatch.setenv("TOLLGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TOLLGATE_JWT_SECRET", "s" * 40)
    assert cli.main(["token", "--user", "ada", "--hours", "48"]) == cli.EXIT_ERROR
    assert "--hours must be from 1 to 24" in capsys.readouterr().err
    monkeypatch.setenv("TOLLGATE_JWT_MAX_LIFETIME_SECONDS", str(72 * 3600))
    assert cli.main(["token", "--user", "ada", "--hours", "48"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), "s" * 40, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 48 * 3600
