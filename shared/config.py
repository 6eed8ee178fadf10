"""Each process's configuration: a frozen msgspec Struct read from the environment once, in ``__main__``.

Field ``foo_bar`` is read from the variable ``FOO_BAR``. Values are coerced (``"8000"`` -> 8000) and checked
against their constraints, so a bad value stops the process at start with the variable's name in the message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from shared.errors import MinidoorError
from shared.jwtcheck import SigningAlg
from shared.ratelimit import parse_networks
from shared.tls import check_database_tls, check_redis_tls, redis_options


class Secret(str):
    """A string that never shows itself in a repr, so configs and tracebacks can be logged safely."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
#: The longest LOGIN_TIMEOUT a gateway may have. A delivered login answer is kept this long (plus a margin) for jobs
#: published before the delivery, by whichever gateway: no job may wait longer (``auth_worker/exchange.py``).
MAX_LOGIN_TIMEOUT = 60.0
LoginTimeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_LOGIN_TIMEOUT)]
RateCount = Annotated[int, msgspec.Meta(ge=0)]
LogLevel = Annotated[str, msgspec.Meta(pattern="(?i)^(debug|info|warning|error)$")]
LogFormat = Annotated[str, msgspec.Meta(pattern="^(json|console|auto)$")]
#: The shortest INTERNAL_TOKEN (and INTERNAL_TOKEN_PREVIOUS), and the shortest key that derives AES keys:
#: STREAM_SEAL_KEY, MASTER_KEY, MASTER_KEY_PREVIOUS (``shared/streamseal.py``, ``user_store/master_key.py``).
MIN_TOKEN_CHARS = 16
MIN_KEY_CHARS = 32


def check_secret(name: str, value: str, min_chars: int, *, required: bool = False) -> None:
    """``ValueError`` naming the variable when a secret is too short to be one (or missing, when ``required``):
    raised from a config's ``__post_init__``, it stops the process at start with one line, not at first use."""
    if not value and not required:
        return
    if len(value) < min_chars:
        raise ValueError(f"{name} must be at least {min_chars} characters")


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    """``ValueError`` when a set URL has none of ``schemes``; the value is never echoed (it may hold a password)."""
    if value and value.partition("://")[0].lower() not in schemes:
        raise ValueError(f"{name} must be a URL starting {' or '.join(f'{s}://' for s in schemes)}")


class _Common(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    #: Prefix of every Redis key; tests and tenants sharing one Redis set their own.
    key_prefix: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9:_.-]+$")] = "minidoor"
    #: Shared secret that the gateway and the workers present to the user store.
    internal_token: Secret
    #: Seconds a client has to deliver the body its Content-Length announces; then 408.
    body_read_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    #: Redis (each service redeclares it: required for the gateway and the workers, optional for the user store).
    redis_url: str = ""
    #: TLS to a ``rediss://`` REDIS_URL (``shared/tls.py``): the CA that signed the server's certificate (empty: the
    #: system's), and a client certificate and key for a server that asks for one.
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""

    def __post_init__(self) -> None:
        check_secret("INTERNAL_TOKEN", self.internal_token, MIN_TOKEN_CHARS, required=True)
        check_redis_tls(self.redis_url, self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)

    def redis_options(self) -> dict[str, Any]:
        """TLS options for ``Redis.from_url(self.redis_url, ...)`` (none unless ``rediss://``)."""
        return redis_options(self.redis_url, self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)


class GatewayConfig(_Common, frozen=True, kw_only=True, rename="upper"):
    gateway_host: str = "127.0.0.1"
    gateway_port: Port = 8000
    redis_url: str
    user_store_url: str
    #: How long a login may take end to end before the client gets a 504.
    login_timeout: LoginTimeout = 10.0
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    #: How long a client_id lookup is cached (unknown ids for a fifth of it).
    client_cache_ttl: Seconds = 30.0
    #: How long introspection trusts a client secret the user store accepted (``gateway/introspector.py``): after
    #: a rotation (``make rotate-secret``), the old secret is refused everywhere within this many seconds.
    client_secret_ttl: Seconds = 5.0
    #: Approximate cap on the job stream's length (XADD MAXLEN ~).
    stream_max_len: Annotated[int, msgspec.Meta(ge=100)] = 100_000
    shutdown_grace: Seconds = 10.0
    #: The ``iss`` the gateway's token verifier expects: the user store's ``ISSUER``.
    issuer: str = "http://127.0.0.1:8000"
    #: Proxies whose ``X-Forwarded-For`` is believed: CIDRs separated by commas. Empty: the peer is the client.
    trusted_proxies: str = ""
    #: Rate limits (README "Rate limits"); each a number of requests per its period, 0 = off. Per-IP ones are
    #: generous because mobile carriers put many users behind one address.
    rate_limit_token_per_ip: RateCount = 600  # token endpoint requests per IP per minute
    rate_limit_per_code: RateCount = 10  # tries of one wx.login() code per 5 minutes
    rate_limit_client_failures: RateCount = 30  # failed authentications of one client_id per minute
    rate_limit_auth_failures_per_ip: RateCount = 60  # failed client authentications (unknown ids too) per IP/min
    rate_limit_bad_tokens_per_ip: RateCount = 60  # forged or dead bearer tokens per IP per minute
    rate_limit_user_updates: RateCount = 20  # profile and password changes of one user per minute
    rate_limit_account_rights: RateCount = 10  # account deletions and exports asked by one user per minute
    rate_limit_avatar_uploads: RateCount = 10  # avatar uploads of one user per minute
    rate_limit_wechat_data: RateCount = 30  # encryptedData decryptions of one user per minute
    rate_limit_avatars_per_ip: RateCount = 1200  # avatar downloads (GET /avatars/...) per IP per minute
    rate_limit_wechat_push_per_ip: RateCount = 3000  # WeChat's message pushes (/api/wechat-push/...) per IP per minute

    #: Shared with the workers: opens the tokens they seal into Redis (``shared/streamseal.py``); empty: clear.
    stream_seal_key: Secret = Secret("")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_secret("STREAM_SEAL_KEY", self.stream_seal_key, MIN_KEY_CHARS)
        check_url("REDIS_URL", self.redis_url, _REDIS_SCHEMES)
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {exc}") from None


class WorkerConfig(_Common, frozen=True, kw_only=True, rename="upper"):
    redis_url: str
    user_store_url: str
    #: Shared with the gateways: seals session_keys and tokens written to Redis; empty: they are written in clear.
    stream_seal_key: Secret = Secret("")
    wechat_api_base: str = "https://api.weixin.qq.com"
    #: Consumer name in the group; unique per process. Empty: hostname-pid.
    worker_name: str = ""
    worker_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 64
    #: Timeout of one jscode2session call; retries stay inside the job's deadline.
    wechat_timeout: Seconds = 3.0
    wechat_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    #: Consecutive failed WeChat calls that open the circuit breaker, and how long it then fails fast.
    wechat_breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    wechat_breaker_reset: Seconds = 5.0
    #: Logins of one WeChat user (openid, per appid) per minute, counted after jscode2session; 0 = off.
    rate_limit_per_wechat_user: RateCount = 20
    #: A job left untouched this long by its worker (dead or stuck) is claimed by another (XAUTOCLAIM); well
    #: inside LOGIN_TIMEOUT, so a crashed worker's clients still get their answer in time.
    claim_idle: Seconds = 2.5
    #: ``/healthz``, ``/readyz`` and ``/metrics`` of this worker; 0 = no HTTP port.
    worker_http_host: str = "127.0.0.1"
    worker_http_port: Port = 0
    shutdown_grace: Seconds = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_secret("STREAM_SEAL_KEY", self.stream_seal_key, MIN_KEY_CHARS)
        check_url("REDIS_URL", self.redis_url, _REDIS_SCHEMES)


def check_store_settings(master_key: str, master_key_file: str, database_url: str, redis_url: str) -> None:
    """The checks the user store and the runner (which passes these through to it) share."""
    check_secret("MASTER_KEY", master_key, MIN_KEY_CHARS)
    check_url("DATABASE_URL", database_url, _POSTGRES_SCHEMES)
    check_database_tls(database_url)
    check_url("REDIS_URL", redis_url, _REDIS_SCHEMES)
    if master_key and master_key_file:
        raise ValueError("set MASTER_KEY or MASTER_KEY_FILE, not both")


class UserStoreConfig(_Common, frozen=True, kw_only=True, rename="upper"):
    user_store_host: str = "127.0.0.1"
    user_store_port: Port = 8001
    database_url: Secret
    #: The ``iss`` claim of every token; never taken from a request's Host header.
    issuer: str = "http://127.0.0.1:8000"
    pg_pool_min: Annotated[int, msgspec.Meta(ge=1)] = 2
    pg_pool_max: Annotated[int, msgspec.Meta(ge=1)] = 10
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    shutdown_grace: Seconds = 10.0
    #: Where revocations are broadcast to every verifier (denylist + pub/sub); empty: rows are only marked.
    redis_url: str = ""
    #: Encrypts the signing keys at rest (at least 32 characters), given directly or as a file holding it.
    #: Neither: keys stay in clear, and the store refuses to start if the database holds encrypted ones.
    master_key: Secret = Secret("")
    master_key_file: str = ""
    #: During a master-key rollover, the old key: still opens what it sealed, never seals (``make rotate-master-key``).
    master_key_previous: Secret = Secret("")
    #: During an INTERNAL_TOKEN rollover, the token callers still present until they all have the new one.
    internal_token_previous: Secret = Secret("")
    #: How often the store re-reads ``signing_keys``, so a rotation or retirement applies without a restart.
    key_reload_interval: Seconds = 2.0
    #: User names and display names nobody may take, nor anything that looks like them (``user_store/user_rules.py``).
    reserved_names: str = (
        "admin,administrator,root,system,sysadmin,casdoor,minidoor,support,help,security,official,staff,moderator,"
        "wechat,weixin,tencent,service,api,null,undefined,anonymous,superuser"
    )
    #: Host name suffixes an avatar URL may not use: internal names of the deployment's networks.
    avatar_forbidden_suffixes: str = "local,localhost,internal,intranet,lan,home.arpa,svc,cluster.local,corp"
    #: argon2id hashes computed at once (64 MiB and a core each), outside any transaction or pool connection.
    password_hash_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    #: Password changes of one user in flight at once across every user store (``user_store/password_slots.py``);
    #: more answer 429.
    password_changes_per_user: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    #: Audit events older than this many days are deleted (``user_store/pruning.py``), at start and every
    #: PRUNE_INTERVAL seconds, as are token rows whose access and refresh tokens expired over TOKEN_PRUNE_GRACE ago.
    audit_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 180
    prune_interval: Seconds = 600.0
    token_prune_grace: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    #: The audit writer inserts its queue every AUDIT_FLUSH_INTERVAL seconds or AUDIT_BATCH_SIZE events, whichever
    #: comes first; beyond AUDIT_QUEUE_SIZE waiting events new ones are dropped (counted), never waited for.
    audit_flush_interval: Seconds = 0.2
    audit_batch_size: Annotated[int, msgspec.Meta(ge=1)] = 500
    audit_queue_size: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    #: Legacy encryptedData is refused when its watermark timestamp is further than this from now (seconds);
    #: 0 turns the check off (``user_store/wechat_data.py``).
    wechat_data_max_age: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    #: An avatar WeChat's content security has given no verdict on within this many seconds is dropped
    #: (AVATAR_REVIEW_ON_TIMEOUT=hold) or shown, to be taken back if a risky verdict comes later (show).
    avatar_review_timeout: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    avatar_review_on_timeout: Literal["hold", "show"] = "hold"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_secret("INTERNAL_TOKEN_PREVIOUS", self.internal_token_previous, MIN_TOKEN_CHARS)
        check_secret("MASTER_KEY_PREVIOUS", self.master_key_previous, MIN_KEY_CHARS)
        check_store_settings(self.master_key, self.master_key_file, self.database_url, self.redis_url)


class ConfigError(MinidoorError):
    """The environment does not describe a runnable process."""


C = TypeVar("C", bound=msgspec.Struct)


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def load_config(config_type: type[C], environ: Mapping[str, str] | None = None) -> C:
    """Read ``config_type`` from ``environ`` (default ``os.environ``); raise ``ConfigError`` naming the variable."""
    env = os.environ if environ is None else environ
    try:
        return msgspec.convert(dict(env), config_type, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}".replace("$.", "")) from None


class SandboxConfig(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """The WeChat sandbox: a stand-in for api.weixin.qq.com on this machine."""

    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    wechat_sandbox_host: str = "127.0.0.1"
    wechat_sandbox_port: Port = 8002
    #: Apps known at start, ``appid:secret`` pairs separated by commas; more via ``POST /sandbox/apps``.
    sandbox_apps: str = ""
    #: Lifetime of a login code; WeChat's is 5 minutes.
    sandbox_code_ttl: Seconds = 300.0
    #: Lifetime of a stable_token access token; WeChat's is 7200 s.
    sandbox_token_ttl: Seconds = 7200.0
    #: jscode2session calls one user may make per minute before 45011.
    sandbox_user_rate_limit: Annotated[int, msgspec.Meta(ge=1)] = 100


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """``make run``: the whole stack on one machine. Empty URLs mean "start an embedded one"."""

    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    state_dir: str = ".run"
    database_url: str = ""
    redis_url: str = ""
    wechat_api_base: str = ""
    key_prefix: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9:_.-]+$")] = "minidoor"
    internal_token: str = ""
    issuer: str = ""
    #: Passed through to the user store; with neither, one is generated once into ``STATE_DIR/master.key``.
    master_key: str = ""
    master_key_file: str = ""
    #: Passed to the gateway and the workers; empty: one is generated once into ``STATE_DIR/stream.key``.
    stream_seal_key: str = ""
    #: What signs the demo application's tokens (at every start), and new applications' (``create-app``).
    default_signing_alg: SigningAlg = "RS256"
    gateway_port: Port = 8000
    user_store_port: Port = 8001
    wechat_sandbox_port: Port = 8002
    auth_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 2
    #: When set, auth worker N serves /healthz and /metrics on this port + N - 1.
    worker_http_port: Port = 0
    login_timeout: LoginTimeout = 10.0
    #: How long each process may take to become ready.
    start_timeout: Seconds = 60.0
    shutdown_grace: Seconds = 10.0
    #: A child that dies is restarted with backoff; one that dies this many times within RESTART_WINDOW seconds
    #: stops the whole stack (``services/processes.py``).
    restart_limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    restart_window: Seconds = 60.0

    def __post_init__(self) -> None:
        # Passed through to the services: refused here, before anything starts, rather than by a child.
        check_secret("INTERNAL_TOKEN", self.internal_token, MIN_TOKEN_CHARS)
        check_secret("STREAM_SEAL_KEY", self.stream_seal_key, MIN_KEY_CHARS)
        check_store_settings(self.master_key, self.master_key_file, self.database_url, self.redis_url)


def load_config_or_exit(config_type: type[C], prog: str) -> C:
    """``load_config`` for a process's ``__main__``: a bad environment is one line on stderr and exit code 2."""
    try:
        return load_config(config_type)
    except ConfigError as exc:
        print(f"{prog}: {exc.description}", file=sys.stderr)
        raise SystemExit(2) from None
