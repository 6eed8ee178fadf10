-- Signing-key rotation: keys encrypted at rest, a certificate per key, and a lifecycle.
--
-- A key is "pending" until activates_at (listed in the JWKS, not yet signing), then signs until a newer key
-- activates; superseded, it still verifies until verify_until (its last token's expiry); retired_at ends it early.
-- Rows from 0001 keep working: they are active since creation, and the user store encrypts their clear PEM and
-- adds a certificate the next time it starts with a master key.

ALTER TABLE signing_keys
    ALTER COLUMN private_key_pem DROP NOT NULL,
    -- AES-256-GCM under the master key: version byte, 12-byte nonce, ciphertext and tag; the kid is the AAD.
    ADD COLUMN private_key_enc bytea,
    -- Self-signed X.509 of the key, PEM: the JWKS x5c, and what Casdoor SDKs take as the "certificate".
    ADD COLUMN certificate_pem text,
    ADD COLUMN activates_at    timestamptz,
    ADD COLUMN superseded_at   timestamptz,
    ADD COLUMN verify_until    timestamptz,
    ADD CONSTRAINT signing_keys_has_private_key CHECK (private_key_pem IS NOT NULL OR private_key_enc IS NOT NULL);

UPDATE signing_keys SET activates_at = created_at;

ALTER TABLE signing_keys
    ALTER COLUMN activates_at SET NOT NULL,
    ALTER COLUMN activates_at SET DEFAULT now();
