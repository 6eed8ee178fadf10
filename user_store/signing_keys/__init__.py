"""Signing keys: the RSA keys that sign access tokens, and everything done with them.

- ``keyring``: the ``signing_keys`` rows: prepare, rotate, retire, list, and load (``KeyLoader``, ``KeyReloader``).
- ``signer``: ``Signer`` mints and verifies JWTs with the live keys; the JWKS it publishes.
- ``material``: new keys, their PEM form and their self-signed certificates.
- ``certificates``: the certificate of the current key, as Casdoor's ``cert`` objects carry it.

The master key that seals private keys at rest is ``user_store/master_key.py``.
"""
