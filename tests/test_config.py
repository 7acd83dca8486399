"""Settings come from TOLLGATE_* variables, with defaults, and bad values are named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.config import DEFAULT_DB_DIR, load_settings


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
