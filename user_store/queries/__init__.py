"""The user store's SQL, one module per table group. Each helper takes a connection and runs its statements inside
``translate``: asyncpg's exceptions become ``shared.errors`` here and only here.

- ``applications``: organizations, applications and their mini-program providers.
- ``users``: users and their WeChat identities.
- ``tokens``: token rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from shared.errors import BadRequest, Conflict, Unavailable
from user_store.db import CONNECTION_ERRORS


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn a duplicate into ``Conflict`` naming ``what``, unstorable input into ``BadRequest``, a lost database into
    ``Unavailable``."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"{what} already exists") from exc
    except asyncpg.CheckViolationError as exc:
        raise BadRequest(f"invalid {what} ({exc.constraint_name})") from exc
    except asyncpg.DataError as exc:
        # e.g. a NUL byte, which PostgreSQL text cannot hold: the caller's input, not our failure.
        raise BadRequest(f"invalid {what}: {exc.__class__.__name__}") from exc
    except CONNECTION_ERRORS as exc:
        raise Unavailable(f"the database is unavailable ({type(exc).__name__})", retry_after=1) from exc
