"""Signing-key material: new RSA keys, their PEM form, and the self-signed certificate each key has (Casdoor's
``cert`` objects carry one; ``certificates.py`` serves it). Keys are sealed at rest by ``user_store/master_key.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.config import ConfigError

KEY_BITS = 2048


#: Casdoor's built-in certificate lives 20 years; ours are only a container for the public key, so the same.
CERT_VALIDITY = timedelta(days=20 * 365)


def new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(kid: str, pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"signing key {kid} is not an RSA key")
    return key


def self_signed_certificate(key: rsa.RSAPrivateKey, kid: str) -> str:
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
