-- Users' rights (PIPL Art. 45, 47): an erased user is a tombstone.
--
-- Erasing a user (``user_store/erasure.py``) deletes its WeChat identities and password-change slots, blanks its
-- profile (display name, avatar, email, phone, password, properties) and the session_keys of its token rows, and
-- renames it ``erased:<id>``, which no user name can be (':' is outside Casdoor's alphabet), so its name, openid,
-- email and phone are free for a new sign-up at once while the unique constraints stay as they are (a user store
-- of the previous version keeps working during a rolling upgrade). The row stays for what refers to it (token rows,
-- audit events), marked by erased_at; every lookup of the account API skips it.

ALTER TABLE users ADD COLUMN erased_at timestamptz;

-- The data export reads a user's recent events, and an erasure forgets the addresses they hold.
CREATE INDEX audit_events_target_user_at ON audit_events (target_user_id, at) WHERE target_user_id IS NOT NULL;

-- Moving from Casdoor (``make import-casdoor``): an application keeps its Casdoor clientId, which need not be the
-- 20 hex digits minidoor mints (init_data.json may name any); the gateway's rule for a client id holds instead.
ALTER TABLE applications
    DROP CONSTRAINT applications_client_id_check,
    ADD CONSTRAINT applications_client_id_check CHECK (client_id ~ '^[A-Za-z0-9_-]{1,64}$');
