"""The embedded server starts in its data directory, creates the tollgate database, reports its
status from postmaster.pid alone, and stops; `tollgate run` with no configuration serves on it as the
gateway's logins, never as its superuser."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from api.gateway.auth import load_jwt_key, mint_token
from api.gateway.config import load_settings
from api.ops import embedded
from tests.gateway.server import ROOT, free_port, tollgate_command


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


def test_run_with_no_configuration_serves_as_the_gateway_logins_and_stops_the_server(data_dir: Path) -> None:
    """What `make run` does: the embedded server, migrated as its superuser, the gateway's three logins made,
    requests served over them only; Ctrl-C stops the server again."""
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TOLLGATE_")}
    environment.update(
        PYTHONPATH=str(ROOT),
        TOLLGATE_DATA_DIR=str(data_dir),
        TOLLGATE_PORT=str(port),
        TOLLGATE_TOOLS_CONFIG=str(ROOT / "tests" / "gateway" / "tools.toml"),
    )
    data_dir.mkdir(parents=True)
    log_path = data_dir / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*tollgate_command(), "run"], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # initdb on first use
        while True:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        settings = load_settings({"TOLLGATE_DATA_DIR": str(data_dir)})
        token = mint_token(load_jwt_key(settings.gateway, settings.data_dir), "ada@example.com")
        balance = httpx.get(f"{base}/api/billing/balance", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert balance.status_code == 200, balance.text
        owner = embedded.status(settings)
        assert owner is not None
        with psycopg.connect(owner) as conn:
            sessions = conn.execute(
                "SELECT DISTINCT a.application_name, a.usename::text, r.rolsuper FROM pg_stat_activity a"
                " JOIN pg_roles r ON r.rolname = a.usename"
                " WHERE a.datname = 'tollgate' AND a.application_name LIKE 'tollgate %' ORDER BY 1"
            ).fetchall()
        assert sessions == [
            ("tollgate metering", "tollgate_gw_metering", False),
            ("tollgate operator", "tollgate_gw_operator", False),
            ("tollgate payments", "tollgate_gw_payments", False),
        ]
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert "logging in for metering as tollgate_gw_metering, payments as tollgate_gw_payments" in output
    assert "tollgate: embedded PostgreSQL stopped" in output
    assert embedded.status(settings) is None
