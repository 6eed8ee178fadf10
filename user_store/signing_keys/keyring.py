"""Signing keys in PostgreSQL: created, encrypted at rest, rotated, retired, and re-read by running user stores.

Keys form one ring per algorithm (``algorithm``: RS256 or ES256): each ring has its own current key, its own
rotations and its own expiries, and an application's tokens are signed by the current key of its ``signing_alg``.
RS256 always has a ring (the default, and what every application had before ES256); ES256 gets one when the first
application needs it. The life of a key in its ring (columns of ``signing_keys``)::

    pending ──activates_at──► current ──a newer key activates──► superseded ──verify_until──► expired
       └───────────── retired_at (retire-key): out of the JWKS at once, its tokens stop verifying ─────┘

Pending, current and superseded keys are "live": in the JWKS, and they verify. Only the current key of each
algorithm signs. A rotation lists the new key ``activate_in`` seconds before it signs, so every JWKS cache (the HTTP
max-age, PyJWKClient's cooldown, each store's reload) knows it before the first token it signs arrives. A superseded
key stays until ``verify_until``: the activation of its successor (of the same algorithm) plus the longest token
lifetime of any application plus a grace. Every writer holds one transaction-level advisory lock, so concurrent
starts and admin commands serialise.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import asyncpg
import msgspec
import structlog

from shared.config import ConfigError
from shared.errors import BadRequest, NotFound
from shared.jwtcheck import SIGNING_ALGORITHMS, SigningAlg
from user_store.db import Conn, Pool
from user_store.master_key import MasterKey
from user_store.queries import signing_keys as queries
from user_store.queries.secrets import live_sealed_signing_key
from user_store.signing_keys.material import (
    PrivateKey,
    certificate_der,
    load_private_key,
    new_private_key,
    private_key_pem,
    self_signed_certificate,
)
from user_store.signing_keys.signer import Signer, SigningKey

log = structlog.get_logger()

#: Longer than the JWKS ``max-age`` (60 s) plus a store's reload interval, and than PyJWKClient's 30 s cooldown.
DEFAULT_ACTIVATE_IN = 90.0
#: How long a superseded key outlives the longest token lifetime: stores not yet reloaded, clock skew.
SUPERSEDE_GRACE = timedelta(minutes=10)
_NO_MASTER_KEY = (
    "the signing keys are encrypted at rest but no master key is set: set MASTER_KEY or MASTER_KEY_FILE "
    "(make run keeps it in STATE_DIR/master.key)"
)


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A signing key as ``list-keys`` shows it; never any private material."""

    kid: str
    algorithm: str
    #: pending, current, superseded, expired or retired (current, superseded: within the key's algorithm).
    status: str
    encrypted: bool
    created_time: datetime
    activates_at: datetime
    verify_until: datetime | None = None
    retired_time: datetime | None = None


def _key_info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        kid=row["kid"],
        algorithm=row["algorithm"],
        status=row["status"],
        encrypted=row["encrypted"],
        created_time=row["created_at"],
        activates_at=row["activates_at"],
        verify_until=row["verify_until"],
        retired_time=row["retired_at"],
    )


async def list_keys(conn: Conn) -> list[KeyInfo]:
    """Every signing key, newest first."""
    return [_key_info(row) for row in await queries.key_infos(conn)]


async def current_certificate(conn: Conn, alg: SigningAlg) -> tuple[str, str] | None:
    """``(kid, certificate PEM)`` of the current ``alg`` key, if there is one and it has its certificate."""
    row = await queries.current_certificate(conn, alg)
    if row is None or not row["certificate_pem"]:
        return None
    return row["kid"], row["certificate_pem"]


async def _get_info(conn: Conn, kid: str) -> KeyInfo:
    row = await queries.key_info(conn, kid)
    if row is None:
        raise NotFound("signing key {kid!r} does not exist", kid=kid)
    return _key_info(row)


async def algorithms_in_use(conn: Conn) -> list[SigningAlg]:
    """RS256, the algorithm of every application and of every live key: the rings to keep, in a fixed order."""
    found = {"RS256", *await queries.algorithms_in_use(conn)}
    return [alg for alg in SIGNING_ALGORITHMS if alg in found]


async def prepare_keys(conn: Conn, master: MasterKey | None) -> None:
    """What a starting user store does once: check the master key against the stored keys (``ConfigError`` with a
    clear message when it is missing or wrong), encrypt keys still in clear when there is one, give every key a
    certificate, and create a key for each algorithm in use that has no current one."""
    async with conn.transaction():
        await queries.lock(conn)
        for row in await queries.all_keys(conn):
            kid, pem = row["kid"], row["private_key_pem"]
            if row["retired_at"] is None:
                key = _private_key(row, master)
                if row["certificate_pem"] is None:
                    await queries.write_certificate(conn, kid, self_signed_certificate(key, kid))
            if master is not None and pem is not None:
                await queries.seal_private_key(conn, kid, master.seal(pem.encode(), kid))
                log.info("signing_key_encrypted", kid=kid)
        created = False
        for alg in await algorithms_in_use(conn):
            if not await _has_current(conn, alg):
                kid = await _insert_key(conn, master, alg, activate_in=0.0)
                log.info("signing_key_created", kid=kid, algorithm=alg)
                created = True
        if created:
            await _recompute_expiry(conn)
    if master is None:
        log.warning("signing_keys_unencrypted", hint="set MASTER_KEY or MASTER_KEY_FILE to encrypt them at rest")


async def rotate_keys(
    conn: Conn,
    master: MasterKey | None,
    algorithms: Sequence[SigningAlg] | None = None,
    *,
    activate_in: float = DEFAULT_ACTIVATE_IN,
) -> list[KeyInfo]:
    """A new signing key for each of ``algorithms`` (default: every algorithm in use), listed in the JWKS now and
    signing in ``activate_in`` seconds (at once for an algorithm with no current key). The keys they supersede keep
    verifying until their last token expires."""
    if not 0 <= activate_in <= 7 * 24 * 3600:
        raise BadRequest("activate_in must be between 0 seconds and 7 days")
    async with conn.transaction():
        await queries.lock(conn)
        await _check_master_key(conn, master)
        kids = []
        for alg in algorithms or await algorithms_in_use(conn):
            has_current = await _has_current(conn, alg)
            kids.append(await _insert_key(conn, master, alg, activate_in=activate_in if has_current else 0.0))
        await _recompute_expiry(conn)
        infos = [await _get_info(conn, kid) for kid in kids]
    return infos


async def ensure_key(conn: Conn, master: MasterKey | None, alg: SigningAlg) -> KeyInfo | None:
    """A current ``alg`` key, made now and signing at once, unless there is one (then None): what creating an
    application of ``alg`` does, so its first login finds a key. Refuses a master key that would not open the others."""
    async with conn.transaction():
        await queries.lock(conn)
        if await _has_current(conn, alg):
            return None
        await _check_master_key(conn, master)
        kid = await _insert_key(conn, master, alg, activate_in=0.0)
        await _recompute_expiry(conn)
        info = await _get_info(conn, kid)
    log.info("signing_key_created", kid=kid, algorithm=alg)
    return info


async def retire_key(conn: Conn, kid: str) -> KeyInfo:
    """Take ``kid`` out of the JWKS now: tokens it signed stop verifying. A current key cannot be retired."""
    async with conn.transaction():
        await queries.lock(conn)
        info = await _get_info(conn, kid)
        if info.status == "retired":
            return info
        if info.status == "current":
            raise BadRequest(
                "{kid} is the current {algorithm} signing key; run rotate-keys --alg {algorithm} --activate-in 0 first,"
                " then retire it",
                kid=kid,
                algorithm=info.algorithm,
            )
        await queries.retire(conn, kid)
        await _recompute_expiry(conn)
        info = await _get_info(conn, kid)
    return info


async def import_key(
    conn: Conn, master: MasterKey | None, kid: str, alg: SigningAlg, private_pem: bytes, certificate_pem: str
) -> None:
    """Adopt a key that has been signing elsewhere (Casdoor's cert, ``user_store.casdoor_import``) as its ring's
    current key, at once: its tokens keep their ``kid``, and a client configured with its certificate keeps
    verifying the tokens minidoor signs. The key it replaces is superseded, as by a rotation."""
    async with conn.transaction():
        await queries.lock(conn)
        await _check_master_key(conn, master)
        await queries.insert_key(
            conn,
            kid=kid,
            alg=alg,
            private_key_pem=None if master is not None else private_pem.decode(),
            private_key_enc=master.seal(private_pem, kid) if master is not None else None,
            certificate_pem=certificate_pem,
            activate_in=0.0,
        )
        await _recompute_expiry(conn)


async def _has_current(conn: Conn, alg: SigningAlg) -> bool:
    return await queries.current_kid(conn, alg) is not None


async def _check_master_key(conn: Conn, master: MasterKey | None) -> None:
    """``ConfigError``/``WrongMasterKey`` unless ``master`` opens the stored keys: a key the running stores could
    not open is never added."""
    sealed = await live_sealed_signing_key(conn)
    if sealed is not None:
        if master is None:
            raise ConfigError(_NO_MASTER_KEY)
        master.open(sealed["private_key_enc"], sealed["kid"])  # a key sealed under another master key is useless


async def _insert_key(conn: Conn, master: MasterKey | None, alg: SigningAlg, *, activate_in: float) -> str:
    key = await asyncio.to_thread(new_private_key, alg)
    kid = f"key-{secrets.token_hex(4)}"
    pem = private_key_pem(key)
    await queries.insert_key(
        conn,
        kid=kid,
        alg=alg,
        private_key_pem=None if master is not None else pem.decode(),
        private_key_enc=master.seal(pem, kid) if master is not None else None,
        certificate_pem=self_signed_certificate(key, kid),
        activate_in=activate_in,
    )
    return kid


async def _recompute_expiry(conn: Conn) -> None:
    """Give each live key the activation of its successor in its algorithm's ring as ``superseded_at`` and, from it,
    ``verify_until``.

    Expired keys are left alone, so retiring a key never brings an older one back."""
    rows = await queries.live_expiries(conn)
    lifetime = timedelta(hours=await queries.longest_token_hours(conn)) + SUPERSEDE_GRACE
    for _alg, group in itertools.groupby(rows, key=lambda row: row["algorithm"]):
        ring = list(group)
        successors: list[asyncpg.Record | None] = [*ring[1:], None]
        for row, successor in zip(ring, successors, strict=True):
            superseded_at: datetime | None = None
            verify_until: datetime | None = None
            if successor is not None:
                superseded_at = successor["activates_at"]
                verify_until = superseded_at + lifetime
                if row["superseded_at"] == superseded_at and row["verify_until"] is not None:
                    verify_until = max(verify_until, row["verify_until"])
            if (superseded_at, verify_until) != (row["superseded_at"], row["verify_until"]):
                await queries.write_expiry(conn, row["kid"], superseded_at, verify_until)


def _private_key(row: asyncpg.Record, master: MasterKey | None) -> PrivateKey:
    kid, alg = row["kid"], row["algorithm"]
    if row["private_key_enc"] is not None:
        if master is None:
            raise ConfigError(_NO_MASTER_KEY)
        return load_private_key(kid, master.open(row["private_key_enc"], kid), alg)
    return load_private_key(kid, row["private_key_pem"].encode(), alg)


class KeyLoader:
    """Reads the live keys; each key is decrypted and parsed once, then kept while it stays live."""

    def __init__(self, master: MasterKey | None) -> None:
        self._master = master
        self._loaded: dict[str, SigningKey] = {}

    async def live_keys(self, conn: Conn) -> tuple[list[SigningKey], dict[SigningAlg, SigningKey]]:
        """Every live key, newest first, and the current key of each algorithm (none for an algorithm whose keys
        are all pending, which the rules never leave)."""
        rows = await queries.live_keys(conn)
        missing = [row["kid"] for row in rows if row["kid"] not in self._loaded]
        if missing:
            for row in await queries.private_keys(conn, missing):
                self._loaded[row["kid"]] = self._signing_key(row)
        keys = [self._loaded[row["kid"]] for row in rows if row["kid"] in self._loaded]
        self._loaded = {key.kid: key for key in keys}
        current: dict[SigningAlg, SigningKey] = {}
        for row in rows:
            if row["active"] and row["kid"] in self._loaded:
                current.setdefault(row["algorithm"], self._loaded[row["kid"]])
        return keys, current

    def _signing_key(self, row: asyncpg.Record) -> SigningKey:
        key = _private_key(row, self._master)
        pem = row["certificate_pem"] or self_signed_certificate(key, row["kid"])
        return SigningKey(
            kid=row["kid"], private_key=key, created_at=row["created_at"], certificate_der=certificate_der(pem)
        )


class KeyReloader:
    """Re-reads the live keys every ``interval`` seconds and swaps them into ``signer`` when they changed, then
    calls ``on_change`` with the new kids (the store publishes them so verifiers re-read the JWKS at once)."""

    def __init__(
        self,
        pool: Pool,
        signer: Signer,
        loader: KeyLoader,
        interval: float,
        on_change: Callable[[Sequence[str]], Awaitable[None]],
    ) -> None:
        self._pool = pool
        self._signer = signer
        self._loader = loader
        self._interval = interval
        self._on_change = on_change

    async def reload(self) -> bool:
        """One pass; True when the signer's keys changed."""
        async with self._pool.acquire() as conn:
            keys, current = await self._loader.live_keys(conn)
        if not current:
            log.error("no_current_signing_key", kids=[key.kid for key in keys])
            return False
        kids = tuple(key.kid for key in keys)
        current_kids = tuple(key.kid for _, key in sorted(current.items()))
        if (current_kids, kids) == self._signer.state:
            return False
        self._signer.update(keys, current)
        log.info("signing_keys_reloaded", current=list(current_kids), kids=list(kids))
        await self._on_change(kids)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reload()
            except Exception as exc:  # whatever failed, the next pass retries: a dead reloader would freeze the keys
                log.warning("signing_keys_reload_failed", error=f"{type(exc).__name__}: {exc}")
