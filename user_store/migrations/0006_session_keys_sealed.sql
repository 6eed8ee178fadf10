-- WeChat session_keys encrypted at rest, as provider secrets are since 0005.
--
-- With a master key, session_key holds '' and session_key_sealed the key sealed under the master key's session-key
-- key (version byte, 12-byte nonce, ciphertext and tag). The AAD is the row's natural key: 'identity:' followed by
-- organization_id, appid and openid joined by NUL for wechat_identities, 'family:' and family_id for tokens (every
-- token of a login family carries the same session_key, so a refresh copies the blob without opening it). Rows
-- written before 0006 keep their clear session_key; the user store seals them the next time it starts with a
-- master key.

ALTER TABLE wechat_identities ADD COLUMN session_key_sealed bytea;
ALTER TABLE tokens ADD COLUMN session_key_sealed bytea;
ALTER TABLE wechat_identities
    ADD CONSTRAINT wechat_identities_one_session_key CHECK (session_key_sealed IS NULL OR session_key = '');
ALTER TABLE tokens ADD CONSTRAINT tokens_one_session_key CHECK (session_key_sealed IS NULL OR session_key = '');
