"""Every minidoor process as a separate OS process the test controls one by one, for the fault tests.

PostgreSQL (a cluster of its own, so it can be stopped and started), Redis (append-only, so a restart keeps the
stream and the exchange records), the WeChat sandbox, the user store, N auth workers and M gateways. Each process
logs JSON lines to ``<root>/logs/<name>.log``; ``kill`` is SIGKILL, ``stop`` is SIGTERM and returns the exit code.

Processes are started from the test's main thread only: ``die_with_parent`` ties a child to the thread that forked it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from services.bench.stack import ONE_ADDRESS_LIMITS, ONE_ADDRESS_NOTE
from services.demo import Demo, seed_demo
from services.embedded import EmbeddedPostgres, EmbeddedRedis
from services.ports import free_ports
from services.processes import child_setup
from tests.stack import REUSED_WECHAT_USERS_LIMIT

ROOT = Path(__file__).resolve().parent.parent
_INHERITED_OUT = ("DATABASE_URL", "REDIS_URL", "WECHAT_API_BASE", "STATE_DIR", "KEY_PREFIX", "INTERNAL_TOKEN")


class Proc:
    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path, ready_url: str) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.ready_url = ready_url
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_setup,
            )
        return self

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(self.ready_url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code once it has exited: long enough for a stuck stop's watchdog (twice
        SHUTDOWN_GRACE plus 15 s) to log where it is stuck and exit 1."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 10)
            raise AssertionError(f"{self.name} still ran {timeout:.0f}s after SIGTERM:\n{self.log_tail()}") from None

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await asyncio.to_thread(self.process.wait, 10)

    def shutdown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines


class ControlledPostgres(EmbeddedPostgres):
    """The embedded PostgreSQL (``services.embedded``) in a directory of the test's own, which the test also stops
    and starts again; ``cleanup`` ends it for good."""

    def stop(self) -> None:
        """A fast shutdown with pg_ctl, keeping pgserver's handle so that ``start`` brings it back."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, one per binary

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        super().stop()


class Cluster:
    def __init__(self, root: Path, *, workers: int = 3, gateways: int = 2, login_timeout: float = 10.0) -> None:
        self.root = root
        self.login_timeout = login_timeout
        self.n_workers = workers
        self.n_gateways = gateways
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"chaos-{secrets.token_hex(4)}"
        self.pg: ControlledPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.database_url = ""
        self.demo: Demo | None = None
        self.sandbox: Proc | None = None
        self.user_store: Proc | None = None
        self.workers: list[Proc] = []
        self.gateways: list[Proc] = []
        self.worker_ports: list[int] = []

    @property
    def demo_appid(self) -> str:
        assert self.demo is not None
        return self.demo.wechat_app_id

    @property
    def demo_client_id(self) -> str:
        assert self.demo is not None
        return self.demo.client_id

    @property
    def sandbox_url(self) -> str:
        assert self.sandbox is not None
        return self.sandbox.ready_url.removesuffix("/healthz")

    def gateway_url(self, i: int) -> str:
        return self.gateways[i].ready_url.removesuffix("/readyz")

    def worker_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.worker_ports[i]}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    @property
    def user_store_url(self) -> str:
        assert self.user_store is not None
        return self.user_store.ready_url.removesuffix("/readyz")

    @property
    def processes(self) -> list[Proc]:
        singles = [p for p in (self.sandbox, self.user_store) if p is not None]
        return [*singles, *self.workers, *self.gateways]

    def start(self) -> Cluster:
        self.pg = ControlledPostgres(self.root / "pg")
        self.database_url = self.pg.database_url("minidoor")
        self.redis = EmbeddedRedis(self.root / "redis", persistent=True)
        chosen = free_ports(2 + self.n_gateways + self.n_workers)
        ports = {"sandbox": chosen[0], "user_store": chosen[1]}
        gateway_ports = chosen[2 : 2 + self.n_gateways]
        self.worker_ports = chosen[2 + self.n_gateways :]
        sandbox_url = f"http://127.0.0.1:{ports['sandbox']}"
        gateway_url = f"http://127.0.0.1:{gateway_ports[0]}"
        self.demo = asyncio.run(seed_demo(self.database_url, self.root, gateway_url, sandbox_url))
        base = {k: v for k, v in os.environ.items() if k not in _INHERITED_OUT}
        base.update(
            LOG_FORMAT="json",
            LOG_LEVEL="info",
            KEY_PREFIX=self.prefix,
            INTERNAL_TOKEN=secrets.token_urlsafe(24),
            REDIS_URL=self.redis.url,
            USER_STORE_URL=f"http://127.0.0.1:{ports['user_store']}",
            SHUTDOWN_GRACE="8",
            ISSUER=gateway_url,
            # The load comes from one address: the per-IP rate limits are raised (ONE_ADDRESS_NOTE).
            **ONE_ADDRESS_LIMITS,
            # The loads reuse a few hundred openids many times a minute.
            **REUSED_WECHAT_USERS_LIMIT,
        )
        print(ONE_ADDRESS_NOTE, file=sys.stderr)
        #: What a scraper of /metrics presents.
        self.internal_token = base["INTERNAL_TOKEN"]
        self.sandbox = Proc(
            "sandbox",
            "services.wechat_sandbox",
            {**base, "WECHAT_SANDBOX_PORT": str(ports["sandbox"]), "SANDBOX_APPS": self.demo.sandbox_apps},
            self.log_dir,
            f"{sandbox_url}/healthz",
        )
        store_env = {**base, "DATABASE_URL": self.database_url, "USER_STORE_PORT": str(ports["user_store"])}
        self.user_store = Proc("user-store", "user_store", store_env, self.log_dir, f"{base['USER_STORE_URL']}/readyz")
        for i, port in enumerate(self.worker_ports):
            env = {**base, "WECHAT_API_BASE": sandbox_url, "WORKER_NAME": f"worker-{i + 1}"}
            env["WORKER_HTTP_PORT"] = str(port)
            self.workers.append(
                Proc(f"worker-{i + 1}", "auth_worker", env, self.log_dir, f"http://127.0.0.1:{port}/readyz")
            )
        for i, port in enumerate(gateway_ports):
            env = {**base, "GATEWAY_PORT": str(port), "LOGIN_TIMEOUT": str(self.login_timeout)}
            self.gateways.append(
                Proc(f"gateway-{i + 1}", "gateway", env, self.log_dir, f"http://127.0.0.1:{port}/readyz")
            )
        for proc in self.processes:
            proc.start()
        asyncio.run(self._all_ready())
        return self

    async def _all_ready(self) -> None:
        await asyncio.gather(*(proc.ready() for proc in self.processes))

    async def restart_redis(self, down_for: float) -> None:
        assert self.redis is not None
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(down_for)  # the outage itself
        self.redis = EmbeddedRedis(self.root / "redis", persistent=True)  # main thread: see the module docstring

    async def stop_postgres(self) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.stop)

    async def start_postgres(self) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.start)

    def shutdown(self) -> None:
        for proc in reversed(self.processes):
            proc.shutdown()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.cleanup()
