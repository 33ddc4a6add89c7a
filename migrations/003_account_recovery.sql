-- 003: account recovery and verified e-mail. An address belongs to at most one account, accounts
-- record whether their address was verified, and the links of password reset and e-mail
-- verification are stored (as hashes) until used or expired (src/store/tokens.ts,
-- src/services/recovery.ts). Applied by src/store/migrate.ts inside one transaction, like 001.

-- emailKey(email), computed by the application (src/store/users.ts): the whole address
-- lower-cased. Kept in a column of its own, like username_key, rather than an index on
-- lower(email): the application decides which two addresses are the same one, for both stores
-- alike, and PostgreSQL's lower() follows the database's locale (under "C" it lower-cases ASCII
-- only). COLLATE "C": compared byte for byte.
ALTER TABLE users ADD COLUMN email_key text COLLATE "C";

-- Rows from before this migration get lower(email), which is emailKey(email) for every address
-- whose upper-case letters are ASCII. No deployment predates this migration, so no database holds
-- two accounts with one address and there is nothing to resolve. Were there such a pair, the
-- constraint below would fail this migration, naming the constraint, and nothing of it would be
-- applied (one transaction); the pair would have to be resolved by hand first.
UPDATE users SET email_key = lower(email) WHERE email IS NOT NULL;

-- What keeps an address to one account, also when two instances register it at the same moment:
-- the second insert waits for the first and then fails (src/store/postgres.ts, emailConflict).
-- NULLs are distinct: any number of accounts may have no address.
ALTER TABLE users ADD CONSTRAINT users_email_key_unique UNIQUE (email_key);

-- True once a link sent to the address was followed. Existing accounts start unverified.
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;

CREATE TABLE one_time_tokens (
  -- SHA-256 of the token (base64url); the token itself is never stored.
  hash text PRIMARY KEY,
  purpose text NOT NULL CHECK (purpose IN ('password_reset', 'email_verify')),
  -- The account's tokens go with it.
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- The address the link was sent to.
  email text NOT NULL,
  -- users.token_version when issued: a token older than a password change is refused.
  user_version integer NOT NULL,
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  -- One live token per account and purpose: issuing a new one replaces the old (ON CONFLICT).
  CONSTRAINT one_time_tokens_one_per_purpose UNIQUE (user_id, purpose)
);

CREATE INDEX one_time_tokens_expires_at_idx ON one_time_tokens (expires_at);
