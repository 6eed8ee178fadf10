"""Typed keys of the user store's application state."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from shared.config import UserStoreConfig
from user_store.audit import AuditWriter
from user_store.keycrypto import MasterKey
from user_store.revocations import Revocations
from user_store.signing import Signer
from user_store.user_rules import UserRules
from user_store.users import PasswordHashing

CONFIG = web.AppKey("config", UserStoreConfig)
PG_POOL: web.AppKey[asyncpg.Pool[asyncpg.Record]] = web.AppKey("pg_pool")
SIGNER = web.AppKey("signer", Signer)
#: None without MASTER_KEY / MASTER_KEY_FILE: secrets are then stored in clear.
MASTER_KEY: web.AppKey[MasterKey | None] = web.AppKey("master_key")
#: Broadcasts revocations and key changes to every verifier (a no-op without ``REDIS_URL``).
REVOCATIONS = web.AppKey("revocations", Revocations)
#: What valid names, emails and avatars are, built once from the config.
RULES = web.AppKey("user_rules", UserRules)
#: Hashes new passwords outside any transaction, with bounded concurrency (``users.PasswordHashing``).
PASSWORD_HASHING = web.AppKey("password_hashing", PasswordHashing)
#: Queues audit events for the batched INSERT (``user_store/audit.py``).
AUDIT = web.AppKey("audit", AuditWriter)
