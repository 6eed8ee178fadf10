"""Signing-key material: new keys of each algorithm (RSA 2048 for RS256, EC P-256 for ES256), their PEM form, and the
self-signed certificate each key has (Casdoor's ``cert`` objects carry one; ``certificates.py`` serves it). Keys are
sealed at rest by ``user_store/master_key.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shared.config import ConfigError
from shared.jwtcheck import SigningAlg

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Casdoor's cert ``bitSize``: the RSA modulus, or the EC curve's order.
KEY_BITS: dict[SigningAlg, int] = {"RS256": 2048, "ES256": 256}
#: Casdoor's built-in certificate lives 20 years; ours are only a container for the public key, so the same.
CERT_VALIDITY = timedelta(days=20 * 365)


def new_private_key(alg: SigningAlg) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS[alg])


def algorithm_of(key: PrivateKey) -> SigningAlg:
    """The algorithm a key of this type signs with."""
    return "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(kid: str, pem: bytes, alg: SigningAlg = "RS256") -> PrivateKey:
    """The key in ``pem``; ``ConfigError`` when it is not a key of ``alg`` (the row's ``algorithm``)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if alg == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"signing key {kid} is not an EC P-256 key, as ES256 needs")
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"signing key {kid} is not an RSA key, as {alg} needs")
    return key


def self_signed_certificate(key: PrivateKey, kid: str) -> str:
    """A PEM X.509 certificate of ``key``, issued by itself: the JWKS ``x5c`` and Casdoor's cert ``certificate``."""
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "minidoor"), x509.NameAttribute(NameOID.COMMON_NAME, kid)]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def certificate_der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
