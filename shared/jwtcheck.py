"""A strict, fast check of the JWTs minidoor issues (RS256 or ES256), shared by ``shared.verifier`` and the user store.

PyJWT's parser validates base64 one character at a time in Python: ~100 µs per segment pass, more than the RSA
signature itself. Here a compiled regex does that job, msgspec decodes the JSON, and ``cryptography`` checks the
signature; the rules are PyJWT's (``exp <= now - leeway`` is expired, ``nbf``/``iat`` later than ``now + leeway``
are not valid yet, any expected audience in ``aud`` is enough). Only public-key algorithms exist here: RSA
(RS*/PS*) and ECDSA on P-256 (ES256). There is no HMAC path to confuse with a public key, ``none`` is not an
algorithm, and an algorithm of one family with a key of the other (RS256 with an EC key, ES256 with an RSA key) is
refused before any signature check. Every failure is ``InvalidToken``.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.errors import InvalidToken

MAX_TOKEN_CHARS = 8192
REQUIRED_CLAIMS = ("exp", "iat", "nbf", "iss", "sub", "aud", "jti")
_HASHES: dict[str, hashes.HashAlgorithm] = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
#: Padding and hash of every RSA algorithm this module can check (PSS salted with the hash's length, as PyJWT does).
_RSA_SCHEMES: dict[str, tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]] = {
    **{f"RS{bits}": (padding.PKCS1v15(), hashed) for bits, hashed in _HASHES.items()},
    **{
        f"PS{bits}": (padding.PSS(mgf=padding.MGF1(hashed), salt_length=hashed.digest_size), hashed)
        for bits, hashed in _HASHES.items()
    },
}
RSA_ALGORITHMS = frozenset(_RSA_SCHEMES)
#: Curve, hash and coordinate size of each ECDSA algorithm; the JWS signature is ``r || s``, each that many bytes.
_EC_SCHEMES: dict[str, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm, int]] = {
    "ES256": (ec.SECP256R1, hashes.SHA256(), 32)
}
EC_ALGORITHMS = frozenset(_EC_SCHEMES)
ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS
#: What an application signs with (``applications.signing_alg``): RS256, Casdoor's default, or ES256, several times
#: cheaper to sign (a login) but about twice as dear to verify (an introspection, a local check).
SigningAlg = Literal["RS256", "ES256"]
SIGNING_ALGORITHMS: tuple[SigningAlg, ...] = ("RS256", "ES256")
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_decode_json = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class ParsedJwt:
    """A JWS split and decoded, not yet trusted."""

    header: dict[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes

    @property
    def alg(self) -> object:
        return self.header.get("alg")

    @property
    def kid(self) -> object:
        return self.header.get("kid")


def parse(token: object) -> ParsedJwt:
    """Split a compact JWS and decode its header; ``InvalidToken("the token is malformed")`` otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("the token is malformed")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("the token is malformed")
    header_part, payload_part, signature_part = parts
    header = _object(_segment(header_part))
    if "crit" in header:
        raise InvalidToken("the token requires extensions this verifier does not support")
    payload, signature = _segment(payload_part), _segment(signature_part)
    # Both parts matched the base64url alphabet, so the signing input is ASCII.
    return ParsedJwt(
        header=header,
        signing_input=f"{header_part}.{payload_part}".encode("ascii"),
        payload=payload,
        signature=signature,
    )


def check(
    parsed: ParsedJwt,
    key: PublicKey,
    *,
    algorithms: Collection[str],
    issuer: str,
    audience: str | Collection[str] | None,
    leeway: float = 0.0,
    required: Collection[str] = REQUIRED_CLAIMS,
) -> dict[str, Any]:
    """The claims of ``parsed`` once its signature (by ``key``, with its own ``alg`` from ``algorithms``, which
    must fit the key's type), ``iss``, ``aud`` (skipped when ``audience`` is None), ``exp``, ``nbf`` and ``iat``
    hold, and every ``required`` claim is there."""
    alg = parsed.alg
    if not isinstance(alg, str) or alg not in algorithms or alg not in ALGORITHMS:
        raise InvalidToken("the token's algorithm {alg!r} is not accepted", alg=str(alg))
    if not fits(alg, key):
        raise InvalidToken("the token's algorithm does not match its key")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            scheme, hash_algorithm = _RSA_SCHEMES[alg]
            key.verify(parsed.signature, parsed.signing_input, scheme, hash_algorithm)
        else:
            _curve, hash_algorithm, size = _EC_SCHEMES[alg]
            signature = parsed.signature
            if len(signature) != 2 * size:
                raise InvalidSignature
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), parsed.signing_input, ec.ECDSA(hash_algorithm))
    except InvalidSignature:
        raise InvalidToken("the token's signature does not verify") from None
    claims = _object(parsed.payload)
    _check_claims(claims, issuer=issuer, audience=audience, leeway=leeway, required=required)
    return claims


def fits(alg: str, key: PublicKey) -> bool:
    """Whether ``alg`` is an algorithm of ``key``'s type (and, for ECDSA, of its curve)."""
    if alg in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    scheme = _EC_SCHEMES.get(alg)
    return scheme is not None and isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, scheme[0])


def _check_claims(
    claims: dict[str, Any],
    *,
    issuer: str,
    audience: str | Collection[str] | None,
    leeway: float,
    required: Collection[str],
) -> None:
    for name in required:
        if name not in claims:
            raise InvalidToken("the token lacks the claim {name!r}", name=name)
    now = time.time()
    if "exp" in claims and _number(claims, "exp") <= now - leeway:
        raise InvalidToken("the token has expired")
    for name in ("nbf", "iat"):
        if name in claims and _number(claims, name) > now + leeway:
            raise InvalidToken("the token is not valid yet")
    if "iss" in claims and claims["iss"] != issuer:
        raise InvalidToken("the token is from another issuer")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise InvalidToken("the token's {name!r} is not a string", name=name)
    aud = claims.get("aud")
    if aud is None and audience is None:
        return
    given = [aud] if isinstance(aud, str) else aud
    if not isinstance(given, list) or not all(isinstance(item, str) for item in given):
        raise InvalidToken("the token's audience is missing or malformed")
    if audience is not None:
        expected = [audience] if isinstance(audience, str) else audience
        if not any(item in given for item in expected):
            raise InvalidToken("the token is for another audience")


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("the token's {name!r} is not a number", name=name)
    return value


def _segment(part: str) -> bytes:
    if not _SEGMENT.fullmatch(part) or len(part) % 4 == 1:
        raise InvalidToken("the token is malformed")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("the token is malformed") from None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        value = _decode_json.decode(raw)
    except msgspec.DecodeError:
        raise InvalidToken("the token is malformed") from None
    if not isinstance(value, dict):
        raise InvalidToken("the token is malformed")
    return value
