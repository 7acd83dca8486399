"""Settings come from TOLLGATE_* variables, with defaults, and bad values are named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from api.gateway.config import DEFAULT_DB_DIR, load_settings
from api.ledger import roles
from api.ledger.roles import Authority
from api.ops import logins


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings.database_url is None
    assert settings.data_dir == tmp_path.resolve() / ".tollgate"
    assert settings.pgdata == settings.data_dir / "pgdata"
    assert settings.db_dir == DEFAULT_DB_DIR
    assert (DEFAULT_DB_DIR / "migrations").is_dir()
    assert (settings.pool_min, settings.pool_max) == (1, 10)


def test_values_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TOLLGATE_DATABASE_URL": "postgresql://u:p@db:5432/tollgate",
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DB_DIR": str(tmp_path),
            "TOLLGATE_POOL_MIN": "0",
            "TOLLGATE_POOL_MAX": " 3 ",
        }
    )
    assert settings.database_url == "postgresql://u:p@db:5432/tollgate"
    assert settings.data_dir == tmp_path / "data"
    assert settings.db_dir == tmp_path
    assert (settings.pool_min, settings.pool_max) == (0, 3)


def test_empty_values_count_as_unset() -> None:
    settings = load_settings({"TOLLGATE_DATABASE_URL": "", "TOLLGATE_POOL_MAX": ""})
    assert settings.database_url is None
    assert settings.pool_max == 10


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOLLGATE_POOL_MIN": "one"}, "TOLLGATE_POOL_MIN='one' is not an integer"),
        ({"TOLLGATE_POOL_MIN": "-1"}, "TOLLGATE_POOL_MIN=-1 must be at least 0"),
        ({"TOLLGATE_POOL_MAX": "0"}, "TOLLGATE_POOL_MAX=0 must be at least 1"),
        ({"TOLLGATE_POOL_MIN": "5", "TOLLGATE_POOL_MAX": "2"}, "TOLLGATE_POOL_MAX=2 is smaller than"),
        ({"TOLLGATE_DATABASE_URL": "not a url"}, "TOLLGATE_DATABASE_URL is not a valid PostgreSQL URL"),
        (
            {"TOLLGATE_OPERATOR_DATABASE_URL": "postgresql://x@h/db?nonsense=1"},
            "TOLLGATE_OPERATOR_DATABASE_URL is not a valid PostgreSQL URL",
        ),
        ({"TOLLGATE_DB_DIR": "/nonexistent/db"}, "TOLLGATE_DB_DIR=/nonexistent/db is not a directory"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_settings(env)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"TOLLGATE_DATA_DIR=.* is not a directory"):
        load_settings({"TOLLGATE_DATA_DIR": str(tmp_path / "file")})


# --- whom the gateway logs in as (api.ledger.roles) ------------------------------------------------------------


def test_with_no_url_at_all_the_embedded_server_is_the_ledger() -> None:
    assert load_settings({}).embedded is True
    assert load_settings({"TOLLGATE_DATABASE_URL": "postgresql:///x"}).embedded is False
    assert load_settings({"TOLLGATE_METERING_DATABASE_URL": "postgresql:///x"}).embedded is False


def test_login_urls_are_derived_from_the_owners_with_the_gateways_logins_and_password() -> None:
    settings = load_settings(
        {
            "TOLLGATE_DATABASE_URL": "postgresql://owner:owner-secret@db.example:6432/ledger?sslmode=require",
            "TOLLGATE_DB_LOGIN_PASSWORD": "it's a pass word",
        }
    )
    urls = logins.login_urls(settings)
    assert set(urls) == set(Authority)
    for authority, url in urls.items():
        params = conninfo_to_dict(url)
        assert params == {
            "user": f"tollgate_gw_{authority.value}",
            "password": "it's a pass word",  # quoted by libpq's rules, never the owner's
            "host": "db.example",
            "port": "6432",
            "dbname": "ledger",
            "sslmode": "require",
        }


def test_without_a_password_the_derived_logins_have_none() -> None:
    settings = load_settings({"TOLLGATE_DATABASE_URL": "postgresql://owner:owner-secret@/ledger?host=/run/pg"})
    params = conninfo_to_dict(logins.login_url(settings, Authority.PAYMENTS))
    assert params == {"user": "tollgate_gw_payments", "host": "/run/pg", "dbname": "ledger"}


def test_configured_login_urls_win_and_need_no_owner() -> None:
    settings = load_settings(
        {
            "TOLLGATE_METERING_DATABASE_URL": "postgresql://m@h/db",
            "TOLLGATE_PAYMENTS_DATABASE_URL": "postgresql://p@h/db",
            "TOLLGATE_OPERATOR_DATABASE_URL": " postgresql://o@h/db ",
        }
    )
    assert logins.login_urls(settings) == {
        Authority.METERING: "postgresql://m@h/db",
        Authority.PAYMENTS: "postgresql://p@h/db",
        Authority.OPERATOR: "postgresql://o@h/db",
    }
    with pytest.raises(roles.NoDatabaseURL, match="needs the owner's URL, TOLLGATE_DATABASE_URL"):
        logins.owner_url(settings)


def test_a_missing_login_url_with_no_owner_to_derive_it_from_is_named() -> None:
    settings = load_settings({"TOLLGATE_OPERATOR_DATABASE_URL": "postgresql://o@h/db"})
    assert logins.login_url(settings, Authority.OPERATOR) == "postgresql://o@h/db"
    with pytest.raises(roles.NoDatabaseURL, match="TOLLGATE_METERING_DATABASE_URL is not set"):
        logins.login_urls(settings)
