"""Every SQL statement of the user store, one module per table group, each a small named function taking a ``Conn``:

- ``applications``: organizations, applications and their mini-program providers.
- ``users``: users, their WeChat identities and their password-change slots.
- ``logins``: the WeChat login's reads and writes for a whole batch of logins, a few statements whatever its size.
- ``tokens``: token rows, and the ``Subject`` of a token pair built from the rows beside them.
- ``audit``: ``audit_events``.
- ``signing_keys``: the signing keys' rings, and the advisory lock their writers hold.
- ``secrets``: the sealed columns (provider secrets, session_keys, signing keys' private keys), for sealing at start
  and master-key rotation.

The rule: asyncpg's exceptions become ``shared.errors`` here and only here. Every statement runs inside
``translate(what)`` (a duplicate is ``Conflict``, a refused value ``BadRequest``, a lost server ``Unavailable``),
and every pooled connection is lent inside ``translate_connection`` (``user_store.db``), which catches what
happens between statements: acquiring, committing, rolling back on a dead connection, a lost serialization race.
Code above this package never imports an asyncpg exception.

Not here, on purpose: the migration runner's own bookkeeping (``user_store/migrate.py``: its advisory lock and
``schema_migrations``, which exist before any table of this package does, and whose failures should stop a start
as they are) and the readiness probe's ``SELECT 1`` (``user_store/views/health.py``, which reads no table and turns any
failure into "not ready" itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import asyncpg

from shared.errors import BadRequest, Conflict, MinidoorError, Unavailable

#: Errors that mean "the database is not reachable right now", as opposed to a bug or bad data.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    # 57xxx: the server is shutting down or restarting (AdminShutdownError when it stops a backend, CannotConnectNow
    # while it starts) or cancelled the statement (statement_timeout): a 503 to retry, not a 500.
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)
#: Errors worth one more try by the caller: the transaction lost a race it could not see coming.
_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)
#: A server lost mid-transaction: asyncpg then fails the rollback or commit on the dead connection with these.
_LOST_ERRORS: tuple[type[BaseException], ...] = (asyncpg.InterfaceError, asyncpg.InternalClientError)


@contextmanager
def translate(what: str, *, duplicate: Callable[[str], MinidoorError] | None = None) -> Iterator[None]:
    """Turn a duplicate into ``Conflict`` naming ``what`` (or saying ``duplicate(constraint name)``), unstorable input
    into ``BadRequest``, a lost database into ``Unavailable``."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if duplicate is None:
            raise Conflict("{what} already exists", what=what) from exc
        raise duplicate(exc.constraint_name or "") from exc
    except asyncpg.CheckViolationError as exc:
        raise BadRequest(
            "invalid {what} ({constraint_name})", what=what, constraint_name=exc.constraint_name or ""
        ) from exc
    except asyncpg.DataError as exc:
        # e.g. a NUL byte, which PostgreSQL text cannot hold: the caller's input, not our failure.
        raise BadRequest("invalid {what}: {kind}", what=what, kind=exc.__class__.__name__) from exc
    except CONNECTION_ERRORS as exc:
        raise _unavailable(exc) from exc


@contextmanager
def translate_connection() -> Iterator[None]:
    """Around a pooled connection's whole use, from acquiring it to releasing it (``user_store.db``): an unreachable
    database, a lost serialization race or deadlock, or a server lost mid-transaction become ``Unavailable``."""
    try:
        yield
    except _RETRYABLE_ERRORS as exc:
        raise _unavailable(exc) from exc
    except _LOST_ERRORS as exc:
        raise Unavailable("the database connection was lost ({kind})", kind=type(exc).__name__, retry_after=1) from exc


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable("the database is unavailable ({kind})", kind=type(exc).__name__, retry_after=1)


def columns(rows: Sequence[Any], width: int) -> list[list[Any]]:
    """``rows`` (dataclasses or tuples of ``width`` fields) as one list per column: the arrays a multi-row
    statement unnests."""
    if not rows:
        return [[] for _ in range(width)]
    tuples = [row if isinstance(row, tuple) else tuple(getattr(row, f.name) for f in fields(row)) for row in rows]
    return [list(column) for column in zip(*tuples, strict=True)]
