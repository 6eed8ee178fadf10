-- The account API: unique email and phone per organization, and refresh-token rotation.
--
-- Email is unique case-insensitively; empty means "none" and never collides.
CREATE UNIQUE INDEX users_organization_email ON users (organization_id, lower(email)) WHERE email <> '';
CREATE UNIQUE INDEX users_organization_phone ON users (organization_id, phone) WHERE phone <> '';

-- Set when a refresh replaced the row: presenting its refresh token again is a replay, which revokes the family.
ALTER TABLE tokens ADD COLUMN replaced_by uuid;
