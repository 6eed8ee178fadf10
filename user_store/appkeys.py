"""Typed keys of the user store's app state (aiohttp ``AppKey``).

Not to be confused with Redis key names (``shared/redis_keys.py``) or signing keys (``user_store/signing_keys/``).
The value types are imported for type checking only, so any user-store module may import this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import asyncpg

    from shared.config import UserStoreConfig
    from user_store.audit import AuditWriter
    from user_store.avatars import AvatarStore
    from user_store.master_key import MasterKey
    from user_store.metrics import UserStoreMetrics
    from user_store.revocations import Revocations
    from user_store.signing_keys.signer import Signer
    from user_store.user_rules import UserRules
    from user_store.users import PasswordHashing

CONFIG: web.AppKey[UserStoreConfig] = web.AppKey("config")
PG_POOL: web.AppKey[asyncpg.Pool[asyncpg.Record]] = web.AppKey("pg_pool")
SIGNER: web.AppKey[Signer] = web.AppKey("signer")
#: None without MASTER_KEY / MASTER_KEY_FILE: secrets are then stored in clear.
MASTER_KEY: web.AppKey[MasterKey | None] = web.AppKey("master_key")
#: Broadcasts revocations and key changes to every verifier (a no-op without ``REDIS_URL``).
REVOCATIONS: web.AppKey[Revocations] = web.AppKey("revocations")
#: What valid names, emails and avatars are, built once from the config.
RULES: web.AppKey[UserRules] = web.AppKey("user_rules")
#: Hashes new passwords outside any transaction, with bounded concurrency (``users.PasswordHashing``).
PASSWORD_HASHING: web.AppKey[PasswordHashing] = web.AppKey("password_hashing")
#: Queues audit events for the batched INSERT (``user_store/audit.py``).
AUDIT: web.AppKey[AuditWriter] = web.AppKey("audit")
METRICS: web.AppKey[UserStoreMetrics] = web.AppKey("metrics")
#: Where uploaded avatars live (``user_store/avatars.py``): PostgreSQL by default.
AVATARS: web.AppKey[AvatarStore] = web.AppKey("avatars")
