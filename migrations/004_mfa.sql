-- 004: a second factor (TOTP) per account: the secret, sealed by the application before it gets
-- here, whether the enrolment was confirmed, the last time step accepted, and the recovery codes as
-- keyed hashes (src/store/mfa.ts, src/store/postgres.ts PostgresMfaStore). Apart from users on
-- purpose: the user row is read on every authenticated request, and none of this is needed there.
-- Applied by src/store/migrate.ts inside one transaction, like 001.

CREATE TABLE mfa_totp (
  -- One second factor per account, pending or active; it goes with the account.
  user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  -- Which encryption key sealed `secret`: lets the key be rotated while older secrets still open.
  key_id text NOT NULL,
  -- Sealed: AES-256-GCM, base64url of IV, ciphertext and tag; never the plain secret, so that a
  -- copy of the database (a backup, a replica) does not let anyone generate codes.
  secret text NOT NULL,
  -- False while the enrolment waits for its first code; only an active factor is asked for at
  -- login. Confirming compares the ciphertext too, so an enrolment restarted meanwhile (a new
  -- secret) is not confirmed by a code of the secret it replaced.
  active boolean NOT NULL DEFAULT false,
  -- The highest time step whose code was accepted: a code of this step or an older one is
  -- refused, which makes each code work once. The conditional UPDATE on it is what keeps two
  -- instances from both accepting one code. -1 before any. bigint: the application's steps are
  -- JavaScript integers, not bounded by 2^31.
  last_step bigint NOT NULL DEFAULT -1,
  -- When the current secret was stored (an enrolment restarted replaces it).
  created_at timestamptz NOT NULL
);

CREATE TABLE mfa_recovery_codes (
  -- Codes belong to the account's factor: deleting it (or the account) deletes them.
  user_id uuid NOT NULL REFERENCES mfa_totp (user_id) ON DELETE CASCADE,
  -- A keyed hash of the code, never the code: a leaked table cannot be replayed at login. Spending
  -- one is a DELETE of its row, so two requests with one code cannot both succeed.
  code_hash text NOT NULL,
  PRIMARY KEY (user_id, code_hash)
);
