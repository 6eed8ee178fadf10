"""Signing keys and token minting: an application's tokens are signed with the current key of its algorithm.

There is one current key per algorithm (RS256, ES256: ``keyring`` keeps a ring of each); every live key of every
algorithm verifies and is in the JWKS. Keys are parsed from PEM once, when loaded, and kept as ``cryptography`` key
objects: PyJWT re-parsing a PEM on every signature costs ~27 ms, signing with a loaded key well under 1 ms. Loading,
encryption at rest and rotation live in ``user_store.signing_keys.keyring``; a running store swaps a ``Signer``'s
keys in place with ``Signer.update``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.errors import Unavailable
from shared.jwtcheck import PublicKey, SigningAlg
from shared.messages import Jwk, JwkSet, TokenResponse
from user_store.signing_keys.material import PrivateKey, algorithm_of

SCOPE = "profile"
#: A refresh token is this prefix and 256 random bits: opaque, since clients never parse it (Casdoor's SDKs and its
#: mini-program example only send it back), so a login costs one signature. The prefix tells it from a JWT at a
#: glance and lets secret scanners find leaked ones.
REFRESH_PREFIX = "mdr_"
_REFRESH_RANDOM_BYTES = 32
_OPAQUE_REFRESH = re.compile(re.escape(REFRESH_PREFIX) + r"[A-Za-z0-9_-]{43}")
#: Bytes of each coordinate of a P-256 point; a JWK's ``x`` and ``y`` keep their leading zeros (RFC 7518 6.2.1.2).
_P256_BYTES = 32


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: PrivateKey
    created_at: datetime
    #: DER of the key's self-signed certificate, the JWKS ``x5c``.
    certificate_der: bytes = b""
    #: Follows from the key's type (RSA: RS256, EC P-256: ES256), which ``keyring`` checks against the row's.
    algorithm: SigningAlg = field(init=False)
    public_key: PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", algorithm_of(self.private_key))
        object.__setattr__(self, "public_key", self.private_key.public_key())

    def jwk(self) -> Jwk:
        x5c = [base64.b64encode(self.certificate_der).decode()] if self.certificate_der else []
        public = self.public_key
        if isinstance(public, rsa.RSAPublicKey):
            rsa_numbers = public.public_numbers()
            n, e = _b64url_uint(rsa_numbers.n), _b64url_uint(rsa_numbers.e)
            return Jwk(kty="RSA", kid=self.kid, alg=self.algorithm, use="sig", n=n, e=e, x5c=x5c)
        ec_numbers = public.public_numbers()
        x, y = _b64url_uint(ec_numbers.x, _P256_BYTES), _b64url_uint(ec_numbers.y, _P256_BYTES)
        return Jwk(kty="EC", kid=self.kid, alg=self.algorithm, use="sig", crv="P-256", x=x, y=y, x5c=x5c)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a token is for and through which application: everything its claims need."""

    user_id: str
    user_name: str
    display_name: str
    avatar: str
    organization: str
    client_id: str
    expire_in_hours: float
    refresh_expire_in_hours: float
    #: The application's ``signing_alg``: which current key signs.
    signing_alg: SigningAlg = "RS256"


@dataclass(frozen=True, slots=True)
class MintedTokens:
    token_id: str
    response: TokenResponse
    access_hash: bytes
    refresh_hash: bytes
    expires_at: int
    refresh_expires_at: int


class Signer:
    """Mints an application's JWTs with ``current[its signing_alg]``; ``keys`` are every key that still verifies
    (current, pending, superseded; of every algorithm), newest first. Handlers share one Signer; the key reloader
    replaces its keys with ``update`` (one synchronous step, so a handler never sees half a change)."""

    def __init__(
        self, issuer: str, keys: Sequence[SigningKey], current: Mapping[SigningAlg, SigningKey] | None = None
    ) -> None:
        self.issuer = issuer
        self.update(keys, current)

    def update(self, keys: Sequence[SigningKey], current: Mapping[SigningAlg, SigningKey] | None = None) -> None:
        """Swap in ``keys``; ``current`` is the key that signs for each algorithm (default: the newest of each)."""
        if not keys:
            raise ValueError("a Signer needs at least one signing key")
        if current is None:
            current = {key.algorithm: key for key in reversed(keys)}
        for alg, key in current.items():
            if key not in keys or key.algorithm != alg:
                raise ValueError(f"the current {alg} key {key.kid} must be one of the keys, and an {alg} key")
        self.keys = tuple(keys)
        self.current: Mapping[SigningAlg, SigningKey] = MappingProxyType(dict(current))
        self._by_kid = {key.kid: key for key in self.keys}
        self._jwk_set = JwkSet(keys=[key.jwk() for key in self.keys])

    @property
    def state(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(current kids, every kid)``: what a reload compares to decide whether anything changed."""
        return tuple(key.kid for _, key in sorted(self.current.items())), tuple(self._by_kid)

    def key(self, kid: object) -> SigningKey | None:
        """The key that verifies tokens with this ``kid`` header, if it still may."""
        return self._by_kid.get(kid) if isinstance(kid, str) else None

    def public_keys(self) -> dict[str, PublicKey]:
        """Public half of every verifying key, by kid."""
        return {key.kid: key.public_key for key in self.keys}

    def jwk_set(self) -> JwkSet:
        """The ``/.well-known/jwks`` document: every key that verifies, pending ones included."""
        return self._jwk_set

    def jwks(self) -> dict[str, Any]:
        """``jwk_set()`` as plain JSON types."""
        return dict(msgspec.to_builtins(self._jwk_set))

    def signing_key(self, signing_alg: SigningAlg) -> SigningKey:
        """The current key of ``signing_alg``; ``Unavailable`` while there is none."""
        key = self.current.get(signing_alg)
        if key is None:
            # Only between an application's first key of a new algorithm and this store's next reload.
            raise Unavailable("no {signing_alg} signing key is loaded yet", retry_after=2, signing_alg=signing_alg)
        return key

    def mint(self, subject: Subject, *, token_id: str, now: int) -> MintedTokens:
        """An access JWT for ``subject`` and an opaque refresh token; ``token_id`` is the token row's id and the access
        token's ``jti``."""
        expires_in = int(subject.expire_in_hours * 3600)
        refresh_in = int(subject.refresh_expire_in_hours * 3600) or expires_in
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject.user_id,
            "aud": [subject.client_id],
            "iat": now,
            "nbf": now,
            "jti": token_id,
            "azp": subject.client_id,
            "scope": SCOPE,
            "owner": subject.organization,
            "name": subject.user_name,
            "displayName": subject.display_name,
            "avatar": subject.avatar,
        }
        key = self.signing_key(subject.signing_alg)
        access = _sign(key, {**claims, "exp": now + expires_in, "tokenType": "access-token"})
        refresh = new_refresh_token()
        response = TokenResponse(
            access_token=access,
            # Casdoor returns the access token as the id token too; mini programs written for it expect that.
            id_token=access,
            refresh_token=refresh,
            token_type="Bearer",
            expires_in=expires_in,
            scope=SCOPE,
        )
        return MintedTokens(
            token_id=token_id,
            response=response,
            access_hash=token_hash(access),
            refresh_hash=token_hash(refresh),
            expires_at=now + expires_in,
            refresh_expires_at=now + refresh_in,
        )


def _sign(key: SigningKey, claims: Mapping[str, Any]) -> str:
    return jwt.encode(dict(claims), key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(_REFRESH_RANDOM_BYTES)


def is_opaque_refresh_token(token: str) -> bool:
    """Shaped like ``new_refresh_token``'s output (what is presented still has to match a row's hash)."""
    return _OPAQUE_REFRESH.fullmatch(token) is not None


def token_hash(token: str) -> bytes:
    """What the tokens table stores instead of a token."""
    return hashlib.sha256(token.encode()).digest()


def _b64url_uint(value: int, size: int = 0) -> str:
    raw = value.to_bytes(size or (value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
