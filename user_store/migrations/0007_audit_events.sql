-- The audit log: who did what to whom, from where. Never a secret: details hold field names and counts, not values.
--
-- Written in batches by the user store (``user_store/audit.py``) and directly by the admin CLI; read by
-- ``make audit`` (by organization and time) and pruned by time after AUDIT_RETENTION_DAYS.

CREATE TABLE audit_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    action          text NOT NULL,
    outcome         text NOT NULL DEFAULT 'ok',
    -- user, client, admin or system; actor_id is a user id, a client_id or the admin's OS user.
    actor_kind      text NOT NULL DEFAULT '',
    actor_id        text NOT NULL DEFAULT '',
    -- No foreign keys: an event outlives what it names, and a write must never fail on a deleted row.
    target_user_id  uuid,
    organization    text NOT NULL DEFAULT '',
    application     text NOT NULL DEFAULT '',
    client_id       text NOT NULL DEFAULT '',
    client_ip       inet,
    request_id      text NOT NULL DEFAULT '',
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- `make audit` (ORG=..., SINCE=...) and the prune both walk by time; the first within one organization.
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_organization_at ON audit_events (organization, at);
