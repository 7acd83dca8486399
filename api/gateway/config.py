"""Settings of a Tollgate process, read once from the environment.

Every knob is a `TOLLGATE_*` environment variable, so the same image or checkout runs on a
laptop (embedded PostgreSQL, nothing to configure) and in production (a URL and pool sizes).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg.conninfo

from api.abuse.config import AbuseSettings, load_abuse_settings
from api.ledger.roles import PASSWORD_VARIABLE, Authority, configured_logins

# The migrations, functions and views of a source checkout. An installed package (e.g. in
# the Docker image) has no db/ beside it and sets TOLLGATE_DB_DIR instead.
DEFAULT_DB_DIR = Path(__file__).resolve().parents[2] / "db"
DEFAULT_DATA_DIR = Path(".tollgate")
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10
DEFAULT_TOOLS_CONFIG = Path("tollgate.toml")
JWT_ALGORITHMS = frozenset({"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"})


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway serves: listening address, authentication, metering and limits (docs/configuration.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # HS* secret, or the path of a PEM public key for RS*/ES*/PS*. Neither: a development secret is
    # generated into the data directory (see api.gateway.auth.load_jwt_key).
    jwt_secret: str | None = None
    jwt_public_key_file: Path | None = None
    # Pinned from configuration, never read from the token.
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = 30
    # A token whose exp lies further ahead than this is refused: no everlasting tokens (exp = 1e20).
    jwt_max_lifetime_seconds: int = 86400
    # A JWT whose `scope` (space separated) or `scopes`/`scp` (list) holds this is an administrator.
    admin_scope: str = "tollgate:admin"
    allow_anonymous: bool = True
    # Off: tools are served with no tracking and no charge (benchmarks, trusted deployments).
    metering: bool = True
    tools_config: Path | None = None
    max_body_bytes: int = 1_048_576
    tool_timeout_seconds: int = 120
    # How long a request waits for a pooled database connection before answering 503.
    pool_timeout_seconds: int = 10
    # Unbilled completions (database unreachable after a tool ran) are retried this often.
    spool_retry_seconds: int = 10
    log_level: str = "INFO"


@dataclass(frozen=True)
class Settings:
    """Where the ledger lives and how the gateway connects to it (api.ledger.roles: who it logs in as)."""

    # libpq URL or key=value string of the ledger database as its owner (or a superuser): migrations,
    # `tollgate db psql`, and the base the gateway's login URLs are derived from. None, with no login URL
    # either, runs the embedded server.
    database_url: str | None
    # Private state of this installation: the embedded server's cluster lives in data_dir/pgdata.
    data_dir: Path
    # Directory holding migrations/, functions/ and views/.
    db_dir: Path
    pool_min: int
    pool_max: int
    gateway: GatewaySettings = GatewaySettings()
    # The TOLLGATE_* variables payments read (providers, URLs, amount bounds): api.payments builds the
    # providers from them; load_settings has checked them.
    payment_env: dict[str, str] = field(default_factory=dict)
    # TOLLGATE_<AUTHORITY>_DATABASE_URL that are set: the logins of a deployment that makes its own.
    login_urls: dict[Authority, str] = field(default_factory=dict)
    # TOLLGATE_DB_LOGIN_PASSWORD: the password of the derived logins (tollgate_gw_*), given to them
    # when the owner's URL makes them.
    login_password: str | None = None
    # The abuse controls: tollgate.toml's [abuse] section and TOLLGATE_ABUSE_* (api.abuse.config).
    abuse: AbuseSettings = field(default_factory=AbuseSettings)

    @property
    def embedded(self) -> bool:
        """True when no database URL of any kind is configured: the embedded server is the ledger."""
        return self.database_url is None and not self.login_urls

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
    login_urls = configured_logins(env)
    for name, url in [("TOLLGATE_DATABASE_URL", database_url)] + [(a.url_variable, u) for a, u in login_urls.items()]:
        if url is None:
            continue
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            # The message of libpq's parser never contains the password; the URL might.
            raise ValueError(f"{name} is not a valid PostgreSQL URL: {exc}") from None
    # Not stripped: a password may begin or end with a space. Empty counts as unset.
    login_password = env.get(PASSWORD_VARIABLE) or None

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

    payment_env = {name: value for name, value in env.items() if name.startswith(PAYMENT_PREFIXES)}
    _check_payments(payment_env)

    gateway = _load_gateway(env)
    return Settings(
        payment_env=payment_env,
        gateway=gateway,
        abuse=load_abuse_settings(_abuse_table(gateway.tools_config), env),
        database_url=database_url,
        login_urls=login_urls,
        login_password=login_password,
        data_dir=data_dir,
        db_dir=db_dir,
        pool_min=pool_min,
        pool_max=pool_max,
    )


def _abuse_table(path: Path | None) -> dict[str, Any] | None:
    """The [abuse] table of the tool configuration file (tollgate.toml), if any. The file's other sections are
    read, and checked, by api.tools.config when the gateway loads its tools."""
    if path is None:
        return None
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the [abuse] section: {exc}") from None
    table = data.get("abuse")
    if table is not None and not isinstance(table, dict):
        raise ValueError(f"{path}: abuse must be a table ([abuse])")
    return table


PAYMENT_PREFIXES = (
    "TOLLGATE_STRIPE_",
    "TOLLGATE_FONDY_",
    "TOLLGATE_PAYMENT_",
    "TOLLGATE_TOPUP_",
    "TOLLGATE_PUBLIC_URL",
    "TOLLGATE_WEBHOOK_",
)


def _check_payments(env: Mapping[str, str]) -> None:
    """Fail at start-up, naming the variable, when a payment provider is configured wrongly or in part."""
    from api.payments.registry import amount_bounds, load_common, provider_modules

    common = load_common(env)
    amount_bounds(env)
    for module in provider_modules().values():
        module.from_env(env, common)


def _get_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(environ, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use true or false)")


def _load_gateway(env: Mapping[str, str]) -> GatewaySettings:
    secret = _get(env, "TOLLGATE_JWT_SECRET")
    key_file_raw = _get(env, "TOLLGATE_JWT_PUBLIC_KEY_FILE")
    if secret is not None and key_file_raw is not None:
        raise ValueError("set one of TOLLGATE_JWT_SECRET (HS256) and TOLLGATE_JWT_PUBLIC_KEY_FILE (RS/ES), not both")
    key_file = Path(key_file_raw).expanduser().resolve() if key_file_raw else None
    if key_file is not None and not key_file.is_file():
        raise ValueError(f"TOLLGATE_JWT_PUBLIC_KEY_FILE={key_file} is not a readable file")
    if secret is not None and len(secret.encode()) < 32:
        raise ValueError("TOLLGATE_JWT_SECRET must be at least 32 bytes (RFC 7518 section 3.2)")
    raw_algorithms = _get(env, "TOLLGATE_JWT_ALGORITHMS")
    default_algorithm = "RS256" if key_file is not None else "HS256"
    algorithms = tuple(a.strip() for a in (raw_algorithms or default_algorithm).split(",") if a.strip())
    unknown = [a for a in algorithms if a not in JWT_ALGORITHMS]
    if not algorithms or unknown:
        raise ValueError(
            f"TOLLGATE_JWT_ALGORITHMS: unsupported {unknown or 'empty list'}; use {sorted(JWT_ALGORITHMS)}"
        )
    symmetric = {a.startswith("HS") for a in algorithms}
    if len(symmetric) != 1 or symmetric != {key_file is None}:
        raise ValueError(
            "TOLLGATE_JWT_ALGORITHMS must be HS* only with a secret, or RS*/ES*/PS* only with a public key file"
        )
    tools_raw = _get(env, "TOLLGATE_TOOLS_CONFIG")
    tools_config = Path(tools_raw).expanduser().resolve() if tools_raw else None
    if tools_config is not None and not tools_config.is_file():
        raise ValueError(f"TOLLGATE_TOOLS_CONFIG={tools_config} is not a file")
    if tools_config is None and DEFAULT_TOOLS_CONFIG.is_file():
        tools_config = DEFAULT_TOOLS_CONFIG.resolve()
    log_level = (_get(env, "TOLLGATE_LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"TOLLGATE_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")
    return GatewaySettings(
        host=_get(env, "TOLLGATE_HOST") or "127.0.0.1",
        port=_get_int(env, "TOLLGATE_PORT", 8000, minimum=0),
        jwt_secret=secret,
        jwt_public_key_file=key_file,
        jwt_algorithms=algorithms,
        jwt_issuer=_get(env, "TOLLGATE_JWT_ISSUER"),
        jwt_audience=_get(env, "TOLLGATE_JWT_AUDIENCE"),
        jwt_leeway_seconds=_get_int(env, "TOLLGATE_JWT_LEEWAY_SECONDS", 30, minimum=0),
        jwt_max_lifetime_seconds=_get_int(env, "TOLLGATE_JWT_MAX_LIFETIME_SECONDS", 86400, minimum=60),
        admin_scope=_get(env, "TOLLGATE_ADMIN_SCOPE") or "tollgate:admin",
        allow_anonymous=_get_bool(env, "TOLLGATE_ALLOW_ANONYMOUS", True),
        metering=_get_bool(env, "TOLLGATE_METERING", True),
        tools_config=tools_config,
        max_body_bytes=_get_int(env, "TOLLGATE_MAX_BODY_BYTES", 1_048_576, minimum=1024),
        tool_timeout_seconds=_get_int(env, "TOLLGATE_TOOL_TIMEOUT_SECONDS", 120, minimum=1),
        pool_timeout_seconds=_get_int(env, "TOLLGATE_POOL_TIMEOUT_SECONDS", 10, minimum=1),
        spool_retry_seconds=_get_int(env, "TOLLGATE_SPOOL_RETRY_SECONDS", 10, minimum=1),
        log_level=log_level,
    )
