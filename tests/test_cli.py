"""The `tollgate` command line against a real database: output, exit codes, one-line errors."""

from __future__ import annotations

import pytest

from api import cli


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
        "tollgate: error: TOLLGATE_DATABASE_URL is set, so there is no embedded server to stop\n"
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
