-- WeChat AppSecrets encrypted at rest, as signing keys are since 0002.
--
-- A provider holds its secret either in clear (app_secret: no master key configured) or sealed (app_secret_sealed:
-- AES-256-GCM under the master key's provider-secret key; version byte, 12-byte nonce, ciphertext and tag; the
-- provider's id is the AAD). Never both. Rows from 0001 keep their clear secret; the user store seals them the next
-- time it starts with a master key.

ALTER TABLE providers
    ALTER COLUMN app_secret DROP NOT NULL,
    ADD COLUMN app_secret_sealed bytea,
    ADD CONSTRAINT providers_one_app_secret CHECK (num_nonnulls(app_secret, app_secret_sealed) = 1);
