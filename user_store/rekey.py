"""Master-key rotation: re-seal every sealed column under the current master key, online.

The user stores run with ``MASTER_KEY`` = the new key and ``MASTER_KEY_PREVIOUS`` = the old one, so they read both
and write only the new; this then re-seals what the old key sealed. Each table is one transaction with row locks
(a concurrent write waits, then is re-sealed or already new); running it twice changes nothing more.
"""

from __future__ import annotations

from typing import Any

from shared.config import ConfigError
from user_store.db import Conn
from user_store.master_key import MasterKey
from user_store.queries.secrets import (
    reseal_identity_session_keys,
    reseal_provider_secrets,
    reseal_signing_keys,
    reseal_token_session_keys,
    sealed_identity_session_keys,
    sealed_provider_secrets,
    sealed_signing_keys,
    sealed_token_session_keys,
)
from user_store.session_keys import family_row, identity_row


async def reseal_all(conn: Conn, master: MasterKey | None) -> dict[str, Any]:
    """Re-seal signing keys, provider secrets and session_keys under ``master``; counts per table.
    ``WrongMasterKey`` (nothing changed in that table) when a row opens with neither key."""
    if master is None:
        raise ConfigError("rotate-master-key needs MASTER_KEY (the new key) and MASTER_KEY_PREVIOUS (the old one)")
    counts: dict[str, Any] = {}
    async with conn.transaction():
        rows = await sealed_signing_keys(conn)
        await reseal_signing_keys(
            conn, [(r["kid"], master.seal(master.open(r["private_key_enc"], r["kid"]), r["kid"])) for r in rows]
        )
        counts["signing_keys"] = len(rows)
    async with conn.transaction():
        rows = await sealed_provider_secrets(conn, lock=True)
        await reseal_provider_secrets(
            conn,
            [
                (
                    r["id"],
                    master.seal_provider_secret(
                        master.open_provider_secret(r["app_secret_sealed"], str(r["id"]), r["name"]), str(r["id"])
                    ),
                )
                for r in rows
            ],
        )
        counts["providers"] = len(rows)
    async with conn.transaction():
        rows = await sealed_identity_session_keys(conn)
        updates = []
        for r in rows:
            row = identity_row(r["organization_id"], r["appid"], r["openid"])
            sealed = master.seal_session_key(master.open_session_key(r["session_key_sealed"], row), row)
            updates.append((r["organization_id"], r["appid"], r["openid"], sealed))
        await reseal_identity_session_keys(conn, updates)
        counts["wechat_identities"] = len(rows)
    async with conn.transaction():
        rows = await sealed_token_session_keys(conn)
        token_updates: list[tuple[Any, bytes]] = []
        for r in rows:
            row = family_row(r["family_id"])
            token_updates.append(
                (r["id"], master.seal_session_key(master.open_session_key(r["session_key_sealed"], row), row))
            )
        await reseal_token_session_keys(conn, token_updates)
        counts["tokens"] = len(rows)
    return counts
