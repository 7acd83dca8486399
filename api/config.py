"""Settings of a Tollgate process, read once from the environment.

Every knob is a `TOLLGATE_*` environment variable, so the same image or checkout runs on a
laptop (embedded PostgreSQL, nothing to configure) and in production (a URL and pool sizes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg.conninfo

# The migrations, functions and views of a source checkout. An installed package (e.g. in
# the Docker image) has no db/ beside it and sets TOLLGATE_DB_DIR instead.
DEFAULT_DB_DIR = Path(__file__).resolve().parent.parent / "db"
DEFAULT_DATA_DIR = Path(".tollgate")
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10


@dataclass(frozen=True)
class Settings:
    """Where the ledger lives and how the gateway connects to it."""

    # libpq URL or key=value string of the ledger database; None runs the embedded server.
    database_url: str | None
    # Private state of this installation: the embedded server's cluster lives in data_dir/pgdata.
    data_dir: Path
    # Directory holding migrations/, functions/ and views/.
    db_dir: Path
    pool_min: int
    pool_max: int

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded PostgreSQL cluster."""
        return self.data_dir / "pgdata"


def _get(environ: Mapping[str, str], name: str) -> str | None:
    # An empty value counts as unset: compose files and shells often export VAR= to mean "none".
    value = environ.get(name, "").strip()
    return value or None


def _get_int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from `environ` (default: the process environment).

    Raises ValueError naming the offending variable when a value is unusable.
    """
    env = os.environ if environ is None else environ

    database_url = _get(env, "TOLLGATE_DATABASE_URL")
    if database_url is not None:
        try:
            psycopg.conninfo.conninfo_to_dict(database_url)
        except psycopg.ProgrammingError as exc:
            # The message of libpq's parser never contains the password; the URL might.
            raise ValueError(f"TOLLGATE_DATABASE_URL is not a valid PostgreSQL URL: {exc}") from None

    data_dir = Path(_get(env, "TOLLGATE_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"TOLLGATE_DATA_DIR={data_dir} exists and is not a directory")

    raw_db_dir = _get(env, "TOLLGATE_DB_DIR")
    db_dir = Path(raw_db_dir).expanduser().resolve() if raw_db_dir else DEFAULT_DB_DIR
    if raw_db_dir is not None and not db_dir.is_dir():
        raise ValueError(f"TOLLGATE_DB_DIR={db_dir} is not a directory")

    pool_min = _get_int(env, "TOLLGATE_POOL_MIN", DEFAULT_POOL_MIN, minimum=0)
    pool_max = _get_int(env, "TOLLGATE_POOL_MAX", DEFAULT_POOL_MAX, minimum=1)
    if pool_max < pool_min:
        raise ValueError(f"TOLLGATE_POOL_MAX={pool_max} is smaller than TOLLGATE_POOL_MIN={pool_min}")

    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        db_dir=db_dir,
        pool_min=pool_min,
        pool_max=pool_max,
    )
