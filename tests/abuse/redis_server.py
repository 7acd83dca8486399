"""A throwaway redis-server for the tests of the shared rate limits: on a free loopback port, in a temporary
directory, nothing saved, stopped at the end.

Debian's ``redis-server`` package provides it (.ci/run installs it). Without it the tests that need Redis
are skipped, saying so, unless TOLLGATE_REQUIRE_REDIS=1 (CI), when that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.server import free_port


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("TOLLGATE_REQUIRE_REDIS") == "1":
            pytest.fail(f"{message}, and TOLLGATE_REQUIRE_REDIS=1")
        pytest.skip(message)
    return found


def start_redis(directory: Path, port: int | None = None) -> RedisServer:
    """A redis-server in ``directory`` on ``port`` (default: a free one), answering PING."""
    binary = redis_server_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = RedisServer(port, process, directory)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = directory / "redis.log"
            output = log.read_text() if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {process.returncode}: {output}")
        if server.ping():
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("redis-server did not answer PING within 20 s")
