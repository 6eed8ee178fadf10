-- Phone sign-in (tag=wechat_miniprogram_phone): an application may sign in only users an admin created beforehand
-- (`make create-user ORG= NAME= PHONE=`), beside sign-up on/off. Phone numbers stay as Casdoor stores them: `phone`
-- digits and `country_code`; 0004's unique index on (organization_id, phone) already makes the pair unique per
-- organization (it is stricter: one set of digits, one country code), and serves the lookup by phone.

ALTER TABLE applications
    ADD COLUMN preprovisioned_only boolean NOT NULL DEFAULT false;
