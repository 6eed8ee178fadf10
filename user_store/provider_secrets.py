"""WeChat AppSecrets at rest: ``providers.app_secret_sealed`` under the master key, or ``app_secret`` in clear without
one (the user store then warns at start, as it does for signing keys).

Every write of a provider's secret takes its column values from ``secret_columns`` and every read goes through
``open_secret``. The provider's id is the associated data, so a sealed secret copied onto another row does not open.
"""

from __future__ import annotations

import uuid

import structlog

from shared.config import ConfigError
from user_store.db import Conn
from user_store.master_key import MasterKey
from user_store.queries.secrets import (
    clear_provider_secrets,
    live_sealed_signing_key,
    sealed_provider_secrets,
    write_provider_secrets,
)

log = structlog.get_logger()

NO_MASTER_KEY = (
    "the database holds encrypted provider secrets or signing keys but no master key is set: set MASTER_KEY or "
    "MASTER_KEY_FILE (make run keeps it in STATE_DIR/master.key)"
)


def secret_columns(master: MasterKey | None, provider_id: uuid.UUID, secret: str) -> tuple[str | None, bytes | None]:
    """``(app_secret, app_secret_sealed)`` holding ``secret`` for provider ``provider_id``: sealed with a master key."""
    if master is None:
        return secret, None
    return None, master.seal_provider_secret(secret.encode(), str(provider_id))


def open_secret(
    master: MasterKey | None, provider_id: uuid.UUID, name: str, clear: str | None, sealed: bytes | None
) -> str:
    """The secret of provider ``name`` from its two columns; ``ConfigError`` (no master key) or ``WrongMasterKey``
    naming the provider when it is sealed and this store cannot open it."""
    if sealed is None:
        assert clear is not None, "providers_one_app_secret guarantees one of the two columns"
        return clear
    if master is None:
        raise ConfigError(f"the secret of provider {name} is encrypted at rest but no master key is set")
    return master.open_provider_secret(sealed, str(provider_id), name).decode()


async def prepare_provider_secrets(conn: Conn, master: MasterKey | None) -> None:
    """What a starting user store does once, after ``prepare_keys`` accepted its master key: seal every secret
    still in clear, and say which sealed ones it cannot open (their logins answer 503 until that is fixed).

    One transaction with row locks: a store starting at the same time waits for them, then finds nothing to seal."""
    if master is None:
        log.warning("provider_secrets_unencrypted", hint="set MASTER_KEY or MASTER_KEY_FILE to encrypt them at rest")
    else:
        async with conn.transaction():
            rows = await clear_provider_secrets(conn)
            await write_provider_secrets(
                conn, [(row["id"], *secret_columns(master, row["id"], row["app_secret"])) for row in rows]
            )
        log.info("provider_secrets_sealed", count=len(rows))
    unreadable: dict[str, str] = {}
    for row in await sealed_provider_secrets(conn):
        try:
            open_secret(master, row["id"], row["name"], None, row["app_secret_sealed"])
        except ConfigError as exc:
            unreadable[row["name"]] = exc.description
    if unreadable:
        log.error("provider_secrets_unreadable", providers=sorted(unreadable), error=next(iter(unreadable.values())))


async def check_master_key(conn: Conn, master: MasterKey | None) -> None:
    """Before a write: refuse one the user stores could not read back (``WrongMasterKey``), or a secret in clear
    beside encrypted provider secrets or signing keys (``ConfigError``)."""
    providers = await sealed_provider_secrets(conn, limit=1)
    provider = providers[0] if providers else None
    key = await live_sealed_signing_key(conn)
    if provider is None and key is None:
        return
    if master is None:
        raise ConfigError(NO_MASTER_KEY)
    if provider is not None:
        master.open_provider_secret(provider["app_secret_sealed"], str(provider["id"]), provider["name"])
    else:
        assert key is not None
        master.open(key["private_key_enc"], key["kid"])  # the stores' key: a secret sealed under another is useless
