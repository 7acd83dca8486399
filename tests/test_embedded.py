"""The embedded server starts in its data directory, creates the tollgate database, reports its
status from postmaster.pid alone, and stops."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from api import embedded
from api.config import load_settings


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: when we are root the server runs as the `pgserver` user,
    # which must be able to traverse every parent directory.
    root = Path(tempfile.mkdtemp(prefix="tollgate-test-embedded-"))
    try:
        yield root / "data"
    finally:
        settings = load_settings({"TOLLGATE_DATA_DIR": str(root / "data")})
        embedded.stop(settings)
        shutil.rmtree(root, ignore_errors=True)


def test_start_status_stop(data_dir: Path) -> None:
    settings = load_settings({"TOLLGATE_DATA_DIR": str(data_dir)})
    assert embedded.status(settings) is None
    assert not settings.pgdata.exists(), "status must not initialise anything"

    admin_url = embedded.start(settings)
    app_url = embedded.status(settings)
    assert app_url is not None
    assert embedded.database_url(settings) == app_url
    with psycopg.connect(admin_url) as conn:
        assert conn.execute(
            "SELECT current_database(), current_setting('server_version_num')::int / 10000"
        ).fetchone() == (
            "postgres",
            embedded.POSTGRES_VERSION,
        )
    with psycopg.connect(app_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (embedded.DATABASE,)

    assert embedded.start(settings) == admin_url, "start is idempotent"
    assert embedded.stop(settings) is True
    assert embedded.status(settings) is None
    assert embedded.stop(settings) is False

    assert embedded.database_url(settings) == app_url, "restarts in the same process"
    assert embedded.stop(settings) is True


def test_database_url_prefers_the_configured_url(data_dir: Path) -> None:
    settings = load_settings({"TOLLGATE_DATA_DIR": str(data_dir), "TOLLGATE_DATABASE_URL": "postgresql:///x"})
    assert embedded.database_url(settings) == "postgresql:///x"
    assert not data_dir.exists()
