"""``make run``: the whole stack in the foreground, each service its own OS process.

Order of start: embedded PostgreSQL and Redis (unless ``DATABASE_URL``/``REDIS_URL`` are given), migrations and
the demo seed, the WeChat sandbox (unless ``WECHAT_API_BASE`` is given), the user store, the auth workers, the
gateway. Ctrl-C or SIGTERM stops them in the reverse order and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

import structlog

from services.demo import Demo, print_banner, seed_demo
from services.embedded import EmbeddedPostgres, EmbeddedRedis
from services.processes import Child, GaveUp, Supervisor, die_with_parent, stop_in_order
from shared.config import RunnerConfig
from user_store.master_key import MasterKey, ensure_master_key_file, load_master_key

log = structlog.get_logger()

HOST = "127.0.0.1"


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


class Runner:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).resolve()
        self.internal_token = config.internal_token or secrets.token_urlsafe(32)
        self._pg: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self._sandbox: list[Child] = []
        self._user_store: list[Child] = []
        self._workers: list[Child] = []
        self._gateway: list[Child] = []

    def run(self) -> int:
        """Start everything, wait for a signal or a crash, stop everything. 0 on a requested stop."""
        die_with_parent()  # if `make` is killed, we hear of it and stop our children
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
        started = time.monotonic()
        try:
            self._check_ports()
            database_url, redis_url = self._start_infrastructure()
            demo = asyncio.run(
                seed_demo(
                    database_url,
                    self.state_dir,
                    self._gateway_url(),
                    self._sandbox_url(),
                    master=self._master_key(),
                    signing_alg=self.config.default_signing_alg,
                )
            )
            self._start_services(database_url, redis_url, demo)
            print_banner(demo, time.monotonic() - started)
            crashed = self._supervise()
        except _Stop as stop:
            log.info("stopping", signal=str(stop))
            crashed = None
        except Exception as exc:
            log.error("start_failed", error=str(exc))
            crashed = "start"
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._stop_all()
        return 0 if crashed is None else 1

    def _gateway_url(self) -> str:
        return f"http://{HOST}:{self.config.gateway_port}"

    def _sandbox_url(self) -> str:
        return self.config.wechat_api_base or f"http://{HOST}:{self.config.wechat_sandbox_port}"

    def _master_key_env(self) -> dict[str, str]:
        """The user store's master key: the one given, else ``STATE_DIR/master.key``, generated once (mode 0600)."""
        if self.config.master_key or self.config.master_key_file:
            return {}
        path = self.state_dir / "master.key"
        ensure_master_key_file(path)
        return {"MASTER_KEY_FILE": str(path)}

    def _stream_seal_key(self) -> str:
        """The gateway's and workers' Redis sealing key: the one given, else ``STATE_DIR/stream.key`` (0600)."""
        if self.config.stream_seal_key:
            return self.config.stream_seal_key
        path = self.state_dir / "stream.key"
        ensure_master_key_file(path)  # the same kind of secret: 32 random bytes, owner-only
        return path.read_text(encoding="utf-8").strip()

    def _master_key(self) -> MasterKey | None:
        """The user store's master key, so the demo seed prepares the signing keys (and its certificate) as the
        store will."""
        env = self._master_key_env()
        return load_master_key(self.config.master_key, env.get("MASTER_KEY_FILE", self.config.master_key_file))

    def _check_ports(self) -> None:
        ports = {"GATEWAY_PORT": self.config.gateway_port, "USER_STORE_PORT": self.config.user_store_port}
        if not self.config.wechat_api_base:
            ports["WECHAT_SANDBOX_PORT"] = self.config.wechat_sandbox_port
        for name, port in ports.items():
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((HOST, port))
                except OSError:
                    raise RuntimeError(f"port {port} is taken; set {name} to a free port") from None

    def _lock_state_dir(self) -> None:
        """Owner only: it holds the master key, the demo's client secret and Redis's append-only file. Run as root,
        embedded PostgreSQL is pgserver's own OS user, which must traverse it (not list it) to reach its data."""
        self.state_dir.chmod(0o711 if os.geteuid() == 0 and not self.config.database_url else 0o700)

    def _start_infrastructure(self) -> tuple[str, str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir()
        database_url = self.config.database_url
        if not database_url:
            self._pg = EmbeddedPostgres(self.state_dir / "postgres")
            self._lock_state_dir()  # pgserver opens every parent of its data dir to all when run as root
            database_url = self._pg.database_url("minidoor")
            log.info("embedded_postgres", url=database_url)
        redis_url = self.config.redis_url
        if not redis_url:
            self._redis = EmbeddedRedis(self.state_dir / "redis")
            redis_url = self._redis.url
            log.info("embedded_redis", url=redis_url)
        return database_url, redis_url

    def _start_services(self, database_url: str, redis_url: str, demo: Demo) -> None:
        cfg = self.config
        base = {
            **os.environ,
            "LOG_LEVEL": cfg.log_level,
            "LOG_FORMAT": cfg.log_format,
            "KEY_PREFIX": cfg.key_prefix,
            "INTERNAL_TOKEN": self.internal_token,
            "REDIS_URL": redis_url,
            "USER_STORE_URL": f"http://{HOST}:{cfg.user_store_port}",
            "SHUTDOWN_GRACE": str(cfg.shutdown_grace),
            "STREAM_SEAL_KEY": self._stream_seal_key(),
        }
        python = sys.executable
        timeout = cfg.start_timeout
        if not cfg.wechat_api_base:
            env = {**base, "WECHAT_SANDBOX_PORT": str(cfg.wechat_sandbox_port), "SANDBOX_APPS": demo.sandbox_apps}
            sandbox_args = [python, "-m", "services.wechat_sandbox"]
            sandbox = Child("wechat-sandbox", sandbox_args, env, self._sandbox_url() + "/healthz")
            self._sandbox.append(sandbox)
            sandbox.wait_ready(timeout)
        store_env = {
            **base,
            "DATABASE_URL": database_url,
            "USER_STORE_PORT": str(cfg.user_store_port),
            "ISSUER": cfg.issuer or self._gateway_url(),
            **self._master_key_env(),
        }
        store = Child(
            "user-store", [python, "-m", "user_store"], store_env, f"http://{HOST}:{cfg.user_store_port}/readyz"
        )
        self._user_store.append(store)
        store.wait_ready(timeout)
        for i in range(cfg.auth_workers):
            env = {**base, "WECHAT_API_BASE": self._sandbox_url(), "WORKER_NAME": f"worker-{i + 1}-{os.getpid()}"}
            port = cfg.worker_http_port + i if cfg.worker_http_port else 0
            env["WORKER_HTTP_PORT"] = str(port)
            ready_url = f"http://{HOST}:{port}/readyz" if port else ""
            self._workers.append(Child(f"auth-worker-{i + 1}", [python, "-m", "auth_worker"], env, ready_url))
        gateway_env = {**base, "GATEWAY_PORT": str(cfg.gateway_port), "LOGIN_TIMEOUT": str(cfg.login_timeout)}
        gateway_env["ISSUER"] = store_env["ISSUER"]
        gateway = Child("gateway", [python, "-m", "gateway"], gateway_env, self._gateway_url() + "/readyz")
        self._gateway.append(gateway)
        gateway.wait_ready(timeout)

    def _supervise(self) -> str | None:
        """Restart the children that die until a signal (raises ``_Stop``) or a child that keeps dying (returns
        its name, once its one line is logged)."""
        children = [*self._sandbox, *self._user_store, *self._workers, *self._gateway]
        supervisor = Supervisor(children, limit=self.config.restart_limit, window=self.config.restart_window)
        while True:
            try:
                supervisor.check(time.monotonic())
            except GaveUp as gave_up:
                log.error("process_keeps_dying", process=gave_up.process, reason=gave_up.reason)
                return gave_up.process
            time.sleep(0.2)

    def _stop_all(self) -> None:
        groups = [self._gateway, self._workers, self._user_store, self._sandbox]
        codes = stop_in_order(groups, self.config.shutdown_grace)
        if codes:
            log.info("processes_stopped", exit_codes=codes)
        if self._redis is not None:
            self._redis.stop()
        if self._pg is not None:
            self._pg.stop()
        log.info("stopped")
