"""A user store in the test process (``aiohttp.test_utils``), with a master key or without one, for the tests of
what it seals and how it rotates."""

from __future__ import annotations

from aiohttp import web

from shared.config import Secret, UserStoreConfig
from user_store.app import create_app

#: The internal credential of every store made here.
TOKEN = "t" * 32


def create_store(pg_url: str, master: str, *, previous: str = "", token_previous: str = "") -> web.Application:
    """A user store on ``pg_url`` sealing with ``master`` ("" for none); ``previous`` and ``token_previous`` are the
    old master key and internal token a rollover still accepts."""
    return create_app(
        UserStoreConfig(
            internal_token=Secret(TOKEN),
            database_url=Secret(pg_url),
            issuer="http://issuer.test",
            master_key=Secret(master),
            master_key_previous=Secret(previous),
            internal_token_previous=Secret(token_previous),
        )
    )
