-- Content safety (WeChat's content security, ``user_store/content_safety.py``): an application may have the display
-- names and avatars its users submit screened first (``make set-content-safety``).
ALTER TABLE applications ADD COLUMN content_safety boolean NOT NULL DEFAULT false;

-- An uploaded avatar waiting for WeChat's verdict (media_check_async answers later, by message push). It is served
-- at its unguessable URL (WeChat downloads it from there) but is nobody's avatar until it passes; ``shown`` marks one
-- the timeout policy showed before any verdict came, which a late risky verdict still reverts to ``previous_avatar``:
-- its row then holds the user's previous uploaded avatar (``previous_id`` and its bytes), to be put back.
CREATE TABLE avatar_reviews (
    id              text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id       text NOT NULL,
    content_type    text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png', 'image/webp')),
    content         bytea NOT NULL,
    etag            text NOT NULL,
    width           integer NOT NULL CHECK (width > 0),
    height          integer NOT NULL CHECK (height > 0),
    url             text NOT NULL,
    trace_id        text UNIQUE,
    shown           boolean NOT NULL DEFAULT false,
    previous_avatar text NOT NULL DEFAULT '',
    previous_id     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX avatar_reviews_user_id ON avatar_reviews (user_id);
CREATE INDEX avatar_reviews_created_at ON avatar_reviews (created_at);

-- A verdict WeChat pushed before the check's trace_id was recorded (the push can beat the submitting worker's
-- answer): applied when the trace_id arrives, pruned after a day.
CREATE TABLE content_verdicts (
    trace_id    text PRIMARY KEY,
    suggest     text NOT NULL,
    label       integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
