"""TLS to managed Redis and PostgreSQL.

Redis: a ``rediss://`` ``REDIS_URL`` is TLS, its certificate checked against ``REDIS_TLS_CA_FILE`` (the system's
CAs when empty) and its host name against the URL's; ``REDIS_TLS_CERT_FILE`` and ``REDIS_TLS_KEY_FILE`` add a client
certificate for servers that ask one (``tls-auth-clients``). ``redis_options`` turns them into the client's options,
for every Redis client of every service (the batcher's and the reply reader's connections, the revocation feed's
pub/sub come from the same pools).

PostgreSQL: libpq's parameters in ``DATABASE_URL``'s query, which asyncpg reads itself: ``sslmode`` (``disable``,
``allow``, ``prefer``, ``require``, ``verify-ca``, ``verify-full``), ``sslrootcert`` (the CA file), ``sslcert`` and
``sslkey``. ``check_database_tls`` refuses, at start, a mode that is not one of those and a file that cannot be read.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.errors import MinidoorError

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class TLSRefused(MinidoorError):
    """A server's certificate was refused at start (wrong CA, wrong host name): retrying cannot help."""


def _check_file(name: str, path: str) -> None:
    if path and not os.access(path, os.R_OK):
        raise ValueError(f"{name} names a file this process cannot read")


def check_redis_tls(redis_url: str, ca_file: str, cert_file: str, key_file: str) -> None:
    """``ValueError`` naming the variable when the TLS settings cannot work with ``redis_url``."""
    if (ca_file or cert_file or key_file) and not redis_url.lower().startswith("rediss://"):
        raise ValueError("REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE need a rediss:// REDIS_URL")
    if bool(cert_file) != bool(key_file):
        raise ValueError("set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE together")
    _check_file("REDIS_TLS_CA_FILE", ca_file)
    _check_file("REDIS_TLS_CERT_FILE", cert_file)
    _check_file("REDIS_TLS_KEY_FILE", key_file)


def redis_options(redis_url: str, ca_file: str = "", cert_file: str = "", key_file: str = "") -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url(redis_url, ...)``: none for ``redis://`` and ``unix://``; for
    ``rediss://``, a verified certificate and host name, against ``ca_file`` or the system's CAs."""
    if not redis_url.lower().startswith("rediss://"):
        return {}
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    if cert_file:
        options["ssl_certfile"] = cert_file
        options["ssl_keyfile"] = key_file
    return options


def check_database_tls(database_url: str) -> None:
    """``ValueError`` for a ``sslmode`` libpq does not know, or an ``sslrootcert``/``sslcert``/``sslkey`` this
    process cannot read; the URL itself is never echoed (it may hold a password)."""
    if not database_url:
        return
    query = parse_qs(urlsplit(database_url).query)
    for mode in query.get("sslmode", []):
        if mode not in SSLMODES:
            raise ValueError(f"DATABASE_URL's sslmode must be one of {', '.join(SSLMODES)}")
    for param in ("sslrootcert", "sslcert", "sslkey"):
        for path in query.get(param, []):
            if path != "system":
                _check_file(f"DATABASE_URL's {param}", path)
