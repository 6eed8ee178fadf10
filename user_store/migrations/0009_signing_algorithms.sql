-- Each application signs its tokens RS256 or ES256 (Casdoor's tokenSigningMethod), and signing keys form one ring
-- per algorithm: each algorithm has its own current key, rotated on its own (user_store/signing_keys/keyring.py).
--
-- Existing applications and keys stay RS256. Upgrade every user store and gateway before an application is given
-- ES256: an older store reads every live key as RSA (an ES256 key stops its key reloads and its next start), and an
-- older gateway cannot decode an EC key in the JWKS.

ALTER TABLE signing_keys
    DROP CONSTRAINT signing_keys_algorithm_check,
    ADD CONSTRAINT signing_keys_algorithm_check CHECK (algorithm IN ('RS256', 'ES256'));

ALTER TABLE applications
    ADD COLUMN signing_alg text NOT NULL DEFAULT 'RS256' CHECK (signing_alg IN ('RS256', 'ES256'));
