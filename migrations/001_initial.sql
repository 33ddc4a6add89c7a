-- 001: users, refresh-token families and their tokens, and the revoked-access-token list.
-- Applied by src/store/migrate.ts inside one transaction; the table names are unqualified, so they
-- land in the connection's search_path (tests migrate into a schema of their own).

CREATE TABLE users (
  id uuid PRIMARY KEY,
  -- As registered (display form).
  username text NOT NULL,
  -- normaliseUsername(username), computed by the application (src/store/users.ts). The UNIQUE
  -- constraint is what makes two instances racing to register Bob and bob end with one account.
  -- COLLATE "C": byte order, the order the in-memory store lists in (JavaScript code-unit order
  -- for this ASCII charset), and a plain btree that also serves LIKE 'prefix%' (no locale rules).
  username_key text COLLATE "C" NOT NULL,
  email text,
  password_hash text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  roles text[] NOT NULL DEFAULT '{user}',
  disabled boolean NOT NULL DEFAULT false,
  token_version integer NOT NULL DEFAULT 0,
  CONSTRAINT users_username_key_unique UNIQUE (username_key)
);

-- Prefix listing (GET /users?username_prefix=) whatever the column's collation: the unique index
-- above already serves it under "C", this one keeps it indexed if the collation is ever changed.
CREATE INDEX users_username_key_prefix_idx ON users (username_key text_pattern_ops);

CREATE TABLE refresh_families (
  -- The session id (`sid` of access tokens); text, since the service chooses its format.
  id text PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  scope text NOT NULL,
  created_at timestamptz NOT NULL,
  absolute_expires_at timestamptz NOT NULL,
  revoked boolean NOT NULL DEFAULT false,
  -- The one token of the family that may still be exchanged; rotate() compares against it.
  current_hash text NOT NULL
);

CREATE INDEX refresh_families_user_id_idx ON refresh_families (user_id);
CREATE INDEX refresh_families_absolute_expires_at_idx ON refresh_families (absolute_expires_at);

CREATE TABLE refresh_tokens (
  -- SHA-256 of the opaque token; the token itself is never stored.
  hash text PRIMARY KEY,
  family_id text NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
  expires_at timestamptz NOT NULL,
  rotated boolean NOT NULL DEFAULT false
);

CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);

-- The access-token denylist when there is no Redis: instances mirror it in memory by polling
-- rows by added_at (clock_timestamp(): the time of the insert, not of its transaction's start).
CREATE TABLE revoked_tokens (
  -- A jti (one access token) or a family id (every access token of that session).
  id text PRIMARY KEY,
  expires_at timestamptz NOT NULL,
  added_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX revoked_tokens_added_at_idx ON revoked_tokens (added_at);
CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);
