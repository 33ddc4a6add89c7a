-- 002: the refresh-token reuse grace period (REFRESH_REUSE_GRACE_SECONDS). A rotated token presented
-- again shortly after its rotation (two tabs refreshing at once, a retry after a lost answer) gets
-- one more token in its family instead of revoking the family; these columns record when each token
-- was rotated and whether that one re-issue has been used (src/store/postgres.ts, reissueWithinGrace).
-- Applied by src/store/migrate.ts inside one transaction, like 001.

-- When rotate() marked the token rotated (the application's clock, as the grace is measured by it).
-- NULL for tokens not rotated yet, and for tokens rotated before this migration: those have no
-- grace, so reusing them revokes their family as before.
ALTER TABLE refresh_tokens ADD COLUMN rotated_at timestamptz;

-- True once the token's one grace re-issue has been given: a further reuse revokes the family.
ALTER TABLE refresh_tokens ADD COLUMN grace_used boolean NOT NULL DEFAULT false;

-- refresh_families.current_hash stays: it is still written (the family's newest token), but since a
-- grace re-issue leaves a family with two live tokens (the one the winning refresh issued, the one
-- the grace refresh issued), rotate() no longer compares against it: any token of the family that
-- has not been rotated may rotate, once.
