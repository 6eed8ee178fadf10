-- Password changes of one user in flight at once, counted across every user store replica: each change holds one
-- of the user's PASSWORD_CHANGES_PER_USER slots while its new password is hashed (``user_store/password_slots.py``).
-- A slot whose store died mid-hash is free again once ``expires_at`` has passed.
--
-- No foreign key to users: the check would take a KEY SHARE lock on the user's row, which update-user holds FOR
-- UPDATE, and a claim must never wait on it. A row outlives its user by one lease at most.
CREATE TABLE password_change_slots (
    user_id     uuid NOT NULL,
    slot        smallint NOT NULL,
    holder      uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, slot)
);
