-- Expired token rows are deleted in the background (user_store/pruning.py): this index finds them without a scan.
CREATE INDEX tokens_last_expiry ON tokens ((greatest(expires_at, refresh_expires_at)));
