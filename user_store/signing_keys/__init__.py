"""Signing keys: the keys that sign access tokens (RSA for RS256, EC P-256 for ES256), and everything done with them.

- ``keyring``: the keys, one ring per algorithm: prepare, rotate, retire, list, and load (``KeyLoader``,
  ``KeyReloader``); its statements are ``user_store/queries/signing_keys.py``.
- ``signer``: ``Signer`` mints each application's JWTs with the current key of its algorithm; the JWKS it publishes.
- ``material``: new keys, their PEM form and their self-signed certificates.
- ``certificates``: an application's certificate (its algorithm's current key's), as Casdoor's ``cert`` objects
  carry it.

The master key that seals private keys at rest is ``user_store/master_key.py``.
"""
