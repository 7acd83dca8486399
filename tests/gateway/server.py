"""A real gateway for the end-to-end tests: `tollgate run --no-migrate` in a subprocess, on a loopback port.

It is given the URLs of the three gateway logins (tollgate_gw_metering, tollgate_gw_payments and
tollgate_gw_operator, made by api.ledger.roles.provision_login_roles) and never the owner's, and it checks at
start that each is exactly its authority; so every test through it also proves the role split: the
call path works with the metering role's EXECUTE grants alone, nothing touches a table directly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.abuse.config import RateLimitSettings
from api.gateway.auth import mint_token
from api.ledger.roles import Authority, derive_login_url

ROOT = Path(__file__).resolve().parents[2]
TOOLS_CONFIG = ROOT / "tests" / "gateway" / "tools.toml"
SECRET = "test-secret-" + "x" * 60  # >= 64 bytes: long enough for HS512 too
ADMIN_SCOPE = "tollgate:admin"
# The test gateways serve hundreds of calls, sessions and billing requests from one address (127.0.0.1) in a
# few seconds: every rate limit is generous here, so that only the tests of the rate limits themselves (which
# pass their own) meet one. The defaults are not weakened. A test may override any of these through `env`.
GENEROUS_RATE_LIMITS = {
    f"TOLLGATE_ABUSE_RATE_LIMITS_{knob.upper()}": "100000/second"
    for knob in RateLimitSettings().limits()
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tollgate_command() -> list[str]:
    return [str(Path(sys.executable).with_name("tollgate"))]


@dataclass
class Gateway:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def token(self, subject: str | None = None, *, admin: bool = False, **kwargs: Any) -> str:
        return mint_token(
            SECRET, subject or f"user-{uuid.uuid4().hex[:12]}", admin_scope=ADMIN_SCOPE if admin else None, **kwargs
        )

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def login_env(owner_url: str) -> dict[str, str]:
    """TOLLGATE_<AUTHORITY>_DATABASE_URL of the gateway's three logins, on the database of `owner_url`
    (and through the same host and port: a proxy in front of the server too)."""
    return {authority.url_variable: derive_login_url(owner_url, authority) for authority in Authority}


def start_gateway(owner_url: str, data_dir: Path, **env: str) -> Gateway:
    """A gateway serving the migrated database of `owner_url` over the three gateway logins (`env` may
    replace any of their TOLLGATE_*_DATABASE_URL); the owner's URL itself is not passed to it."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "gateway.log"
    inherited = {name: value for name, value in os.environ.items() if not name.endswith("DATABASE_URL")}
    environment = {
        **inherited,
        "PYTHONPATH": str(ROOT),
        **login_env(owner_url),
        "TOLLGATE_DATA_DIR": str(data_dir),
        "TOLLGATE_JWT_SECRET": SECRET,
        "TOLLGATE_TOOLS_CONFIG": str(TOOLS_CONFIG),
        "TOLLGATE_PORT": str(port),
        "TOLLGATE_SPOOL_RETRY_SECONDS": "1",
        "TOLLGATE_POOL_MAX": "8",
        **GENEROUS_RATE_LIMITS,
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*tollgate_command(), "run", "--no-migrate"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    gateway = Gateway(f"http://127.0.0.1:{port}", process, log_path, environment)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{gateway.logs()}")
        try:
            if httpx.get(f"{gateway.base_url}/health", timeout=1).status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    gateway.stop(signal.SIGKILL)
    raise RuntimeError(f"the gateway did not become healthy:\n{gateway.logs()}")
