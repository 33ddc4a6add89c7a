-- 005: what a user sees of their sessions (GET /users/me/sessions): when each refresh-token family
-- was last used, and the User-Agent and client address of the request that last got tokens from it.
-- Written by createFamily, and by rotate() and reissueWithinGrace() in the transaction that adds the
-- new token (src/store/postgres.ts). Never a token: those stay in refresh_tokens, hashed.
-- Applied by src/store/migrate.ts inside one transaction, like 001.

-- When the family last got tokens (its creation, then each refresh), on the application's clock.
-- Families from before this migration were last seen, as far as anyone knows, when they were
-- created.
ALTER TABLE refresh_families ADD COLUMN last_used_at timestamptz;
UPDATE refresh_families SET last_used_at = created_at;
-- The default is for instances of the previous release, still running during a rolling upgrade
-- (migrate first, then replace them): their inserts do not name the column. This release always
-- writes it.
ALTER TABLE refresh_families ALTER COLUMN last_used_at SET DEFAULT now();
ALTER TABLE refresh_families ALTER COLUMN last_used_at SET NOT NULL;

-- The User-Agent header of that request, cut to 256 characters by the application; NULL when it
-- sent none, and for families from before this migration. Shown to the user, never trusted.
ALTER TABLE refresh_families ADD COLUMN user_agent text;

-- The client address of that request (request.ip: TRUST_PROXY decides whether X-Forwarded-For
-- counts); NULL for families from before this migration.
ALTER TABLE refresh_families ADD COLUMN ip text;
