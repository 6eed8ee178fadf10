-- minidoor's first schema: Casdoor's model trimmed to what the WeChat mini-program login needs.

CREATE TABLE organizations (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name           text NOT NULL UNIQUE,
    display_name   text NOT NULL DEFAULT '',
    default_avatar text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE applications (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                    text NOT NULL UNIQUE,
    organization_id         uuid NOT NULL REFERENCES organizations (id),
    client_id               text NOT NULL UNIQUE CHECK (client_id ~ '^[0-9a-f]{20}$'),
    -- sha256 of the 40-hex secret: a secret is shown once, never stored in clear.
    client_secret_hash      bytea NOT NULL,
    enable_sign_up          boolean NOT NULL DEFAULT true,
    expire_in_hours         double precision NOT NULL DEFAULT 168 CHECK (expire_in_hours > 0),
    -- 0 means "same as the access token".
    refresh_expire_in_hours double precision NOT NULL DEFAULT 0 CHECK (refresh_expire_in_hours >= 0),
    created_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX applications_organization_id ON applications (organization_id);

CREATE TABLE providers (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE,
    type       text NOT NULL CHECK (type = 'WeChatMiniProgram'),
    appid      text NOT NULL,
    -- In clear for now: encryption at rest is a later issue.
    app_secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE application_providers (
    application_id uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    provider_id    uuid NOT NULL REFERENCES providers (id),
    position       integer NOT NULL,
    PRIMARY KEY (application_id, provider_id),
    UNIQUE (application_id, position)
);

CREATE TABLE users (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL REFERENCES organizations (id),
    name               text NOT NULL,
    display_name       text NOT NULL DEFAULT '',
    avatar             text NOT NULL DEFAULT '',
    email              text NOT NULL DEFAULT '',
    phone              text NOT NULL DEFAULT '',
    country_code       text NOT NULL DEFAULT '',
    password_hash      text,
    type               text NOT NULL DEFAULT 'normal-user',
    signup_application text NOT NULL DEFAULT '',
    is_admin           boolean NOT NULL DEFAULT false,
    is_forbidden       boolean NOT NULL DEFAULT false,
    is_deleted         boolean NOT NULL DEFAULT false,
    properties         jsonb NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);

-- One row per (mini program, openid): openids differ per WeChat app, the unionid links them (casdoor#511, #1056).
CREATE TABLE wechat_identities (
    organization_id uuid NOT NULL REFERENCES organizations (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    appid           text NOT NULL,
    openid          text NOT NULL,
    unionid         text,
    session_key     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, appid, openid)
);
CREATE INDEX wechat_identities_unionid ON wechat_identities (organization_id, unionid);
CREATE INDEX wechat_identities_user_id ON wechat_identities (user_id);

CREATE TABLE tokens (
    id                 uuid PRIMARY KEY,
    family_id          uuid NOT NULL,
    application_id     uuid NOT NULL REFERENCES applications (id),
    user_id            uuid NOT NULL REFERENCES users (id),
    -- sha256 of the JWT strings: raw tokens are never stored.
    access_hash        bytea NOT NULL UNIQUE,
    refresh_hash       bytea NOT NULL UNIQUE,
    scope              text NOT NULL,
    session_key        text NOT NULL DEFAULT '',
    expires_at         timestamptz NOT NULL,
    refresh_expires_at timestamptz NOT NULL,
    revoked_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tokens_user_id ON tokens (user_id);
CREATE INDEX tokens_family_id ON tokens (family_id);

CREATE TABLE signing_keys (
    kid             text PRIMARY KEY,
    algorithm       text NOT NULL DEFAULT 'RS256' CHECK (algorithm = 'RS256'),
    private_key_pem text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz
);
