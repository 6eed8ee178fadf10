"""Managed Redis and PostgreSQL over TLS: Debian's ``redis-server`` (TLS only, client certificates required) and
PostgreSQL 15 (``hostssl`` only), each with a certificate from a CA this test makes. A login goes through the whole
stack over both; a service given the wrong CA refuses the server with a clear line. The embedded Redis and
PostgreSQL are built without TLS, so where the machine's binaries are missing or lack TLS the test skips."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.ports import free_ports
from services.processes import is_ready
from shared.config import GatewayConfig, load_config
from tests.stack import ROOT, Stack
from tests.test_runner import demo_login

pytestmark = pytest.mark.timeout(120)

REDIS_SERVER = "/usr/bin/redis-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"


@dataclass
class CA:
    cert: Path
    key: ec.EllipticCurvePrivateKey
    name: x509.Name


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def make_ca(directory: Path, name: str) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(path, key, subject)


def issue(ca: CA, directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by ``ca``: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, _write_key(key, directory / f"{name}.key")


@dataclass
class TLSServers:
    ca: Path
    wrong_ca: Path
    client_cert: Path
    client_key: Path
    redis_url: str
    pg_url: str  # the server's "postgres" database, without TLS parameters

    def database_url(self, database: str, ca: Path | None = None) -> str:
        root = ca or self.ca
        return f"{self.pg_url.rsplit('/', 1)[0]}/{database}?sslmode=verify-full&sslrootcert={root}"

    def redis_env(self, ca: Path | None = None) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "REDIS_TLS_CA_FILE": str(ca or self.ca),
            "REDIS_TLS_CERT_FILE": str(self.client_cert),
            "REDIS_TLS_KEY_FILE": str(self.client_key),
        }


def _skip_unless(condition: bool, why: str) -> None:
    if not condition:
        pytest.skip(why)


def _start_redis(directory: Path, cert: Path, key: Path, ca: Path, port: int) -> subprocess.Popen[bytes]:
    args = [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", HOST, "--tls-cert-file", str(cert)]
    args += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "yes"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    with (directory / "redis.log").open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def _as_postgres() -> list[str]:
    """The prefix that runs a PostgreSQL binary as a non-root user (postgres refuses root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def servers(open_tmp: Callable[[str], Path]) -> Iterator[TLSServers]:
    _skip_unless(Path(REDIS_SERVER).exists(), f"TLS test skipped: no {REDIS_SERVER}")
    _skip_unless((PG_BIN / "postgres").exists(), f"TLS test skipped: no {PG_BIN}/postgres")
    if os.geteuid() == 0:
        _skip_unless(shutil.which("runuser") is not None, "TLS test skipped: root without runuser")
        pg_user = pwd.getpwnam("postgres")
    directory = open_tmp("tls")
    ca = make_ca(directory, "test-ca")
    wrong = make_ca(directory, "wrong-ca")
    server_cert, server_key = issue(ca, directory, "server")
    client_cert, client_key = issue(ca, directory, "client")
    redis_port, pg_port = free_ports(2)

    redis_proc = _start_redis(directory, server_cert, server_key, ca.cert, redis_port)
    pg_data = directory / "pgdata"
    pg_key = directory / "pg-server.key"
    shutil.copy(server_key, pg_key)
    pg_key.chmod(0o600)
    pg_proc: subprocess.Popen[bytes] | None = None
    try:
        if os.geteuid() == 0:
            pg_data.mkdir(mode=0o700)
            os.chown(pg_data, pg_user.pw_uid, pg_user.pw_gid)
            os.chown(pg_key, pg_user.pw_uid, pg_user.pw_gid)
        initdb = [*_as_postgres(), str(PG_BIN / "initdb"), "-D", str(pg_data), "-U", "postgres", "--auth=trust"]
        subprocess.run([*initdb, "--no-sync"], check=True, capture_output=True, timeout=60)
        # TLS or nothing over TCP.
        (pg_data / "pg_hba.conf").write_text(f"local all all trust\nhostssl all all {HOST}/32 trust\n")
        pg_args = [
            *_as_postgres(),
            str(PG_BIN / "postgres"),
            "-D",
            str(pg_data),
            "-p",
            str(pg_port),
            "-k",
            str(pg_data),
        ]
        pg_args += ["-c", f"listen_addresses={HOST}", "-c", "ssl=on", "-c", f"ssl_cert_file={server_cert}"]
        pg_args += ["-c", f"ssl_key_file={pg_key}", "-c", "fsync=off", "-c", "max_connections=60"]
        with (directory / "postgres.log").open("wb") as log:
            pg_proc = subprocess.Popen(pg_args, stdout=log, stderr=subprocess.STDOUT)
        found = TLSServers(
            ca=ca.cert,
            wrong_ca=wrong.cert,
            client_cert=client_cert,
            client_key=client_key,
            redis_url=f"rediss://{HOST}:{redis_port}/0",
            pg_url=f"postgresql://postgres@{HOST}:{pg_port}/postgres",
        )
        _wait_for_redis(redis_proc, found, directory / "redis.log")
        asyncio.run(_wait_for_postgres(pg_proc, found, directory / "postgres.log"))
        yield found
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        if pg_proc is not None:
            pg_proc.terminate()
            pg_proc.wait(20)


def _redis_client(servers: TLSServers) -> redis.Redis:
    config = load_config(
        GatewayConfig, {"INTERNAL_TOKEN": "t" * 16, "USER_STORE_URL": "http://x", **servers.redis_env()}
    )
    return redis.Redis.from_url(config.redis_url, **config.redis_options())


def _wait_for_redis(proc: subprocess.Popen[bytes], servers: TLSServers, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")
            _skip_unless("tls" not in out.lower(), f"TLS test skipped: {REDIS_SERVER} has no TLS ({out[-200:]!r})")
            raise AssertionError(f"redis-server exited: {out[-2000:]}")
        try:
            with _redis_client(servers) as client:
                if client.ping():
                    return
        except redis.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("redis-server did not answer over TLS")


async def _wait_for_postgres(proc: subprocess.Popen[bytes], servers: TLSServers, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError(f"postgres exited: {err[-2000:]}")
        try:
            conn = await asyncpg.connect(servers.database_url("postgres"), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        await conn.close()
        return
    raise AssertionError("postgres did not answer over TLS")


async def _create_database(servers: TLSServers, name: str) -> str:
    conn = await asyncpg.connect(servers.database_url("postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return servers.database_url(name)


async def _tls_connections(servers: TLSServers, database: str) -> tuple[int, int]:
    """(connections to ``database`` over TLS, those without) as PostgreSQL sees them."""
    conn = await asyncpg.connect(servers.database_url("postgres"))
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) FILTER (WHERE NOT s.ssl) AS plain"
            " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
            database,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["tls"]), int(row["plain"])


def _run_briefly(module: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**base, "INTERNAL_TOKEN": "t" * 16, "LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class TestTLS:
    def test_login_through_the_stack_over_tls_to_redis_and_postgres(self, servers, open_tmp):
        """``make run`` given a ``rediss://`` REDIS_URL with a CA and client certificate, and a DATABASE_URL with
        ``sslmode=verify-full``: the demo login works, and every connection the user store holds is TLS."""
        database_url = asyncio.run(_create_database(servers, "minidoor_tls"))
        stack = Stack(open_tmp("tls-stack") / "state", {"DATABASE_URL": database_url, "AUTH_WORKERS": "1",
                                                          **servers.redis_env()})  # fmt: skip
        try:
            stack.start()
            answer = demo_login(stack, "o-tls")
            assert answer["token_type"] == "Bearer" and answer["access_token"]
            tls, plain = asyncio.run(_tls_connections(servers, "minidoor_tls"))
            assert tls > 0 and plain == 0, (tls, plain)
            with _redis_client(servers) as client:
                clients = client.client_list()
            # The gateway's, the worker's and the user store's connections (the only port Redis has is TLS).
            assert len(clients) >= 4, clients
        finally:
            assert stack.stop() == 0

    def test_a_wrong_postgres_ca_stops_the_user_store_with_one_line(self, servers):
        """The user store refuses a PostgreSQL whose certificate its ``sslrootcert`` did not sign: at once (no
        retries), exit code 1, one line saying what to check."""
        port = free_ports(1)[0]
        env = {"DATABASE_URL": servers.database_url("postgres", servers.wrong_ca), "USER_STORE_PORT": str(port)}
        out = _run_briefly("user_store", env)
        assert out.returncode == 1, out.stderr[-3000:]
        assert "postgres_connect_retry" not in out.stderr
        assert "user-store: PostgreSQL's certificate was refused (unable to get local issuer certificate)" in out.stderr
        assert "Traceback" not in out.stderr, out.stderr[-3000:]

    def test_a_wrong_redis_ca_makes_the_gateway_unready_saying_why(self, servers):
        """A gateway whose REDIS_TLS_CA_FILE did not sign Redis's certificate answers /readyz 503 naming the
        failed verification; so does a client without the certificate Redis asks for."""
        with _redis_client(servers) as client:
            client.ping()
        bare = redis.Redis.from_url(servers.redis_url, ssl_ca_certs=str(servers.ca))
        with pytest.raises(redis.ConnectionError):
            bare.ping()
        bare.close()

        port, store_port = free_ports(2)
        env = {**servers.redis_env(servers.wrong_ca), "GATEWAY_PORT": str(port)}
        env["USER_STORE_URL"] = f"http://{HOST}:{store_port}"
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            cwd=ROOT,
            env={**base, "INTERNAL_TOKEN": "t" * 16, "LOG_FORMAT": "json", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            body = _readyz_body(f"http://{HOST}:{port}/readyz", proc)
        finally:
            proc.terminate()
            proc.wait(20)
        assert "certificate verify failed" in body, body


def _readyz_body(url: str, proc: subprocess.Popen[bytes]) -> str:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return f"{resp.status} {resp.read().decode()}"
        except urllib.error.HTTPError as exc:
            return f"{exc.code} {exc.read().decode()}"
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered; ready: {is_ready(url)}")
