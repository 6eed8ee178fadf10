"""Numbered SQL migrations (``migrations/NNNN_name.sql``), applied in order under a session advisory lock."""

from __future__ import annotations

import re
from pathlib import Path

import structlog

from user_store.db import Conn

log = structlog.get_logger()

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Arbitrary but fixed: every user store serialises its migrations on this advisory lock key.
_LOCK_KEY = 0x6D696E69646F6F72  # "minidoor"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration file, by version; a duplicate version is an error."""
    found: dict[int, tuple[int, str, str]] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE_NAME.match(path.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two migrations share version {version}: {found[version][1]}, {path.stem}")
        found[version] = (version, path.stem, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def apply_migrations(conn: Conn) -> list[str]:
    """Apply every migration not yet recorded in ``schema_migrations``; return the names applied.

    Safe when several processes call it at once: they queue on one advisory lock and re-read what is applied.
    """
    migrations = load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        names: list[str] = []
        for version, name, sql in migrations:
            if version in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("migration_applied", version=version, migration=name)
            names.append(name)
        return names
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
