-- Uploaded avatars (POST /api/upload-avatar), one per user: a new upload replaces the row, and with it the id in
-- the public URL (GET /avatars/<id>.<ext>), so that URL's bytes never change and may be cached for ever. Deleting
-- a user deletes its avatar.
CREATE TABLE avatars (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    id           text NOT NULL UNIQUE CHECK (id ~ '^[0-9a-f]{32}$'),
    content_type text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png', 'image/webp')),
    content      bytea NOT NULL,
    -- sha256 of content, hex: the ETag.
    etag         text NOT NULL,
    width        integer NOT NULL CHECK (width > 0),
    height       integer NOT NULL CHECK (height > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
