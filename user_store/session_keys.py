"""WeChat session_keys at rest: ``session_key_sealed`` under the master key, or ``session_key`` in clear without one.

A row's natural key is the associated data (``identity_row`` for ``wechat_identities``, ``family_row`` for
``tokens``), so a sealed session_key copied onto another row does not open. Every token of a login family holds the
same session_key, which is why the family and not the token is the AAD: a refresh copies both columns as they are.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from shared.config import ConfigError
from user_store.db import Conn
from user_store.master_key import MasterKey
from user_store.queries.secrets import (
    clear_identity_session_keys,
    clear_token_session_keys,
    write_identity_session_keys,
    write_token_session_keys,
)

log = structlog.get_logger()


def identity_row(organization_id: Any, appid: str, openid: str) -> str:
    return "\x00".join(("identity", str(organization_id), appid, openid))


def family_row(family_id: uuid.UUID) -> str:
    return f"family:{family_id}"


def session_key_columns(master: MasterKey | None, row: str, session_key: str) -> tuple[str, bytes | None]:
    """``(session_key, session_key_sealed)`` holding ``session_key`` for ``row``: sealed with a master key."""
    if master is None or not session_key:
        return session_key, None
    return "", master.seal_session_key(session_key.encode(), row)


def open_session_key(master: MasterKey | None, row: str, clear: str, sealed: bytes | None) -> str:
    """The session_key of ``row`` from its two columns (``WrongMasterKey`` or ``ConfigError`` when sealed and this
    store cannot open it)."""
    if sealed is None:
        return clear
    if master is None:
        raise ConfigError(f"the session_key of {row} is encrypted at rest but no master key is set")
    return master.open_session_key(sealed, row).decode()


async def prepare_session_keys(conn: Conn, master: MasterKey | None) -> None:
    """What a starting user store does once: seal every session_key still in clear (rows from before 0006 or
    written without a master key). One transaction with row locks, as for provider secrets."""
    if master is None:
        log.warning("session_keys_unencrypted", hint="set MASTER_KEY or MASTER_KEY_FILE to encrypt them at rest")
        return
    async with conn.transaction():
        identities = await clear_identity_session_keys(conn)
        await write_identity_session_keys(
            conn,
            [
                (
                    r["organization_id"],
                    r["appid"],
                    r["openid"],
                    *session_key_columns(
                        master, identity_row(r["organization_id"], r["appid"], r["openid"]), r["session_key"]
                    ),
                )
                for r in identities
            ],
        )
        tokens = await clear_token_session_keys(conn)
        await write_token_session_keys(
            conn,
            [(r["id"], *session_key_columns(master, family_row(r["family_id"]), r["session_key"])) for r in tokens],
        )
    log.info("session_keys_sealed", identities=len(identities), tokens=len(tokens))
