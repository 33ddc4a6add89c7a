// The PostgreSQL stores: users, refresh-token families, the access-token denylist, one-time tokens
// and second factors, behind the same interfaces as the in-memory ones. Every query is
// parameterised. A database that cannot be reached becomes StoreUnavailableError('postgres') (a
// quick 503), never a hang or a 500.
import pg from 'pg'
import { EmailTakenError, LastAdminError, StoreUnavailableError } from '../errors.js'
import type { MfaRecord, MfaStore, SealedSecret } from './mfa.js'
import {
  type ActiveSession,
  type ClientInfo,
  type DenyList,
  MemoryDenyList,
  type NewRefreshToken,
  type RefreshFamily,
  type RefreshTokenRecord,
  type SessionStore,
} from './sessions.js'
import type { OneTimeTokenPurpose, OneTimeTokenRecord, OneTimeTokenStore } from './tokens.js'
import {
  emailKey,
  isEnabledAdmin,
  type ListQuery,
  type NewUser,
  normaliseUsername,
  patchMayRemoveAdmin,
  type Role,
  type UserPatch,
  type UserRecord,
  type UserStore,
  type WriteOptions,
} from './users.js'

export interface PgPoolOptions {
  /** Puts this schema first on every connection's search_path (tests use one schema per run). */
  schema?: string
  /** Largest number of connections (default 10). */
  max?: number
  /** How long to wait for a connection, from the pool or from the server (default 2000 ms). */
  connectionTimeoutMillis?: number
  /** Client-side and server-side limit on each statement (default 2000 ms). */
  queryTimeoutMs?: number
  /** Shown in pg_stat_activity (default 'fastify-auth-server'). */
  applicationName?: string
  /** Errors of idle connections (the server restarted, the network dropped); ignored when omitted. */
  onError?: (err: Error) => void
  /** Called each time a store over this pool raises StoreUnavailableError (the metrics count them). */
  onUnavailable?: () => void
  /**
   * Runs on each new connection before the pool hands it out; a rejection closes the connection and
   * fails whatever asked for it with that error (the schema gate, store/schema-gate.ts).
   */
  onConnect?: (client: pg.ClientBase) => Promise<void>
}

/**
 * Each pool's onUnavailable, by pool: the query helpers below are handed the pool and nothing else.
 * Per pool, so two apps in one process (tests) count apart.
 */
const unavailableListeners = new WeakMap<pg.Pool, () => void>()

/** An unquoted SQL identifier: safe to put in the startup `options` without quoting. */
const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/

/**
 * A pool with short timeouts, so that an unreachable or stuck database fails requests in seconds.
 * The 'error' listener matters: without one, an idle connection dropped by the server would emit
 * an unhandled 'error' and end the process.
 */
export function createPgPool(url: string, options: PgPoolOptions = {}): pg.Pool {
  if (options.schema !== undefined && !SCHEMA_NAME.test(options.schema)) {
    throw new Error('invalid schema name: letters, digits and _ only, not starting with a digit')
  }
  const queryTimeoutMs = options.queryTimeoutMs ?? 2_000
  const pool = new pg.Pool({
    connectionString: url,
    max: options.max ?? 10,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 2_000,
    idleTimeoutMillis: 30_000,
    query_timeout: queryTimeoutMs,
    statement_timeout: queryTimeoutMs,
    // A transaction left open by a crashed request must not hold its row locks for long.
    idle_in_transaction_session_timeout: 10_000,
    keepAlive: true,
    application_name: options.applicationName ?? 'fastify-auth-server',
    ...(options.schema === undefined ? {} : { options: `-c search_path=${options.schema}` }),
    ...(options.onConnect === undefined ? {} : { onConnect: options.onConnect }),
  })
  pool.on('error', options.onError ?? (() => {}))
  if (options.onUnavailable) unavailableListeners.set(pool, options.onUnavailable)
  return pool
}

const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up, shutting down)
  '57014', // query_canceled: statement_timeout
  '25P03', // idle_in_transaction_session_timeout
])
const UNAVAILABLE_MESSAGE =
  /Connection terminated|timeout exceeded when trying to connect|Query read timeout|Client has encountered a connection error|Client was closed|Cannot use a pool after calling end/i

/**
 * True when the error says the database cannot be reached or did not answer in time: SQLSTATE
 * classes 08 (connection exception) and 53 (insufficient resources, e.g. too many connections),
 * shutdowns, timeouts, and the socket errors of node:net (AggregateError when several addresses
 * were tried).
 */
export function isPgUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string' && (UNAVAILABLE_CODES.has(code) || /^(08|53)/.test(code))) return true
  if (err instanceof AggregateError && err.errors.some(isPgUnavailable)) return true
  return UNAVAILABLE_MESSAGE.test(err.message)
}

/** StoreUnavailableError('postgres') for connection failures (the original as `cause`); others unchanged. */
function storeError(err: unknown, pool: pg.Pool): unknown {
  if (err instanceof StoreUnavailableError || !isPgUnavailable(err)) return err
  const wrapped = unavailable(pool)
  wrapped.cause = err
  return wrapped
}

/** A new StoreUnavailableError('postgres'), reported to the pool's onUnavailable. */
function unavailable(pool: pg.Pool): StoreUnavailableError {
  unavailableListeners.get(pool)?.()
  return new StoreUnavailableError('postgres')
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Ids come from randomUUID; anything else cannot be in a uuid column (and would be a 22P02 error). */
const isUuid = (id: string): boolean => UUID.test(id)

/** Escapes LIKE's wildcards (and its escape character, backslash), so a prefix matches literally. */
export function escapeLike(value: string): string {
  return value.replace(/[\\%_]/g, '\\$&')
}

/** The pool to use and whether the store made it (and so ends it on close). */
function openPool(source: pg.Pool | string): { pool: pg.Pool; owned: boolean } {
  return typeof source === 'string' ? { pool: createPgPool(source), owned: true } : { pool: source, owned: false }
}

async function query<R extends pg.QueryResultRow>(
  pool: pg.Pool,
  text: string,
  values: unknown[] = [],
): Promise<pg.QueryResult<R>> {
  try {
    return await pool.query<R>(text, values)
  } catch (err) {
    throw storeError(err, pool)
  }
}

/** Runs `fn` in a transaction on one connection; a connection that failed is discarded, not reused. */
async function transaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  let client: pg.PoolClient
  try {
    client = await pool.connect()
  } catch (err) {
    throw storeError(err, pool)
  }
  try {
    await client.query('BEGIN')
    const result = await fn(client)
    await client.query('COMMIT')
    client.release()
    return result
  } catch (err) {
    const rolledBack = await client.query('ROLLBACK').then(
      () => true,
      () => false,
    )
    client.release(rolledBack ? undefined : true)
    throw storeError(err, pool)
  }
}

async function ping(pool: pg.Pool): Promise<void> {
  await query(pool, 'SELECT 1')
}

// --- users -------------------------------------------------------------------------------------

interface UserRow {
  id: string
  username: string
  email: string | null
  email_verified: boolean
  password_hash: string
  created_at: Date
  roles: string[]
  disabled: boolean
  token_version: number
}

const USER_COLUMNS = 'id, username, email, email_verified, password_hash, created_at, roles, disabled, token_version'

/**
 * EmailTakenError for a violation of the unique address index (migrations/003): the database's
 * answer when two accounts race for one address, or an address was taken since it was checked.
 */
function emailConflict(err: unknown): unknown {
  const { code, constraint } = (err ?? {}) as { code?: unknown; constraint?: unknown }
  return code === '23505' && constraint === 'users_email_key_unique' ? new EmailTakenError() : err
}

/** Frozen like the in-memory store's records: a reader can never change what the store holds. */
function toUser(row: UserRow): UserRecord {
  return Object.freeze({
    id: row.id,
    username: row.username,
    email: row.email,
    emailVerified: row.email_verified,
    passwordHash: row.password_hash,
    createdAt: row.created_at,
    roles: Object.freeze([...row.roles]) as readonly Role[],
    disabled: row.disabled,
    tokenVersion: row.token_version,
  })
}

/**
 * The last-admin check of update and delete with keepAnAdmin, inside their transaction: one
 * statement locks the user `id` (about to lose its admin status, or be deleted) together with every
 * enabled admin. False when that user does not exist; LastAdminError when it is the only enabled
 * admin. A concurrent change of the admins waits for these locks, and then no longer counts a row
 * this one changed (READ COMMITTED re-checks the WHERE of a row it waited for, and returns its
 * new version). The rows are locked in id order, in one statement, so that concurrent callers
 * queue instead of deadlocking: a row that failed that re-check stays locked, so a second
 * statement taking more locks could wait for a caller that waits for it.
 */
async function lockKeepingAnAdmin(client: pg.PoolClient, id: string): Promise<boolean> {
  const { rows } = await client.query<{ id: string; roles: Role[]; disabled: boolean }>(
    `SELECT id, roles, disabled FROM users
     WHERE id = $1 OR ('admin' = ANY(roles) AND NOT disabled)
     ORDER BY id
     FOR UPDATE`,
    [id],
  )
  const target = rows.find((row) => row.id === id)
  if (!target) return false
  if (isEnabledAdmin(target) && !rows.some((row) => row.id !== id && isEnabledAdmin(row))) throw new LastAdminError()
  return true
}

export class PostgresUserStore implements UserStore {
  readonly #pool: pg.Pool
  readonly #ownsPool: boolean

  /** A pool (shared; the caller ends it) or a URL (a pool of its own, ended by close()). */
  constructor(pool: pg.Pool | string) {
    const { pool: p, owned } = openPool(pool)
    this.#pool = p
    this.#ownsPool = owned
  }

  async create(user: NewUser): Promise<UserRecord | null> {
    // ON CONFLICT on the unique username_key: of two concurrent inserts of Bob and bob, the second
    // waits for the first to commit and then inserts nothing. Zero rows back means the name is taken.
    // The unique email_key is not an arbiter, so a taken address (a free name) raises 23505: the
    // name is answered first, as the in-memory store does.
    const { rows } = await query<UserRow>(
      this.#pool,
      `INSERT INTO users (id, username, username_key, email, email_key, password_hash, created_at, roles)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
       ON CONFLICT (username_key) DO NOTHING
       RETURNING ${USER_COLUMNS}`,
      [
        user.id,
        user.username,
        normaliseUsername(user.username),
        user.email,
        user.email === null ? null : emailKey(user.email),
        user.passwordHash,
        user.createdAt,
        [...user.roles],
      ],
    ).catch((err: unknown) => {
      throw emailConflict(err)
    })
    return rows[0] ? toUser(rows[0]) : null
  }

  async findById(id: string): Promise<UserRecord | undefined> {
    if (!isUuid(id)) return undefined
    const { rows } = await query<UserRow>(this.#pool, `SELECT ${USER_COLUMNS} FROM users WHERE id = $1`, [id])
    return rows[0] && toUser(rows[0])
  }

  async findByUsername(username: string): Promise<UserRecord | undefined> {
    const { rows } = await query<UserRow>(this.#pool, `SELECT ${USER_COLUMNS} FROM users WHERE username_key = $1`, [
      normaliseUsername(username),
    ])
    return rows[0] && toUser(rows[0])
  }

  async findByEmail(email: string): Promise<UserRecord | undefined> {
    const { rows } = await query<UserRow>(this.#pool, `SELECT ${USER_COLUMNS} FROM users WHERE email_key = $1`, [
      emailKey(email),
    ])
    return rows[0] && toUser(rows[0])
  }

  async update(id: string, patch: UserPatch, options: WriteOptions = {}): Promise<UserRecord | undefined> {
    if (!isUuid(id)) return undefined
    // One statement for every patch shape: a NULL parameter keeps the column as it is.
    // A new address is checked by the unique email_key: a taken one fails the statement (23505).
    const text = `UPDATE users SET
         password_hash = COALESCE($2, password_hash),
         roles = COALESCE($3::text[], roles),
         disabled = COALESCE($4, disabled),
         token_version = token_version + $5,
         email = COALESCE($6, email),
         email_key = COALESCE($7, email_key),
         email_verified = COALESCE($8, email_verified)
       WHERE id = $1
       RETURNING ${USER_COLUMNS}`
    const values = [
      id,
      patch.passwordHash ?? null,
      patch.roles ? [...patch.roles] : null,
      patch.disabled ?? null,
      patch.bumpTokenVersion ? 1 : 0,
      patch.email ?? null,
      patch.email === undefined ? null : emailKey(patch.email),
      patch.emailVerified ?? null,
    ]
    try {
      if (!options.keepAnAdmin || !patchMayRemoveAdmin(patch)) {
        const { rows } = await query<UserRow>(this.#pool, text, values)
        return rows[0] && toUser(rows[0])
      }
      return await transaction(this.#pool, async (client) => {
        if (!(await lockKeepingAnAdmin(client, id))) return undefined
        const { rows } = await client.query<UserRow>(text, values)
        return rows[0] && toUser(rows[0])
      })
    } catch (err) {
      throw emailConflict(err)
    }
  }

  async delete(id: string, options: WriteOptions = {}): Promise<boolean> {
    if (!isUuid(id)) return false
    if (!options.keepAnAdmin) {
      const { rowCount } = await query(this.#pool, 'DELETE FROM users WHERE id = $1', [id])
      return rowCount === 1
    }
    return transaction(this.#pool, async (client) => {
      if (!(await lockKeepingAnAdmin(client, id))) return false
      const { rowCount } = await client.query('DELETE FROM users WHERE id = $1', [id])
      return rowCount === 1
    })
  }

  async replacePasswordHash(id: string, expected: string, next: string): Promise<boolean> {
    if (!isUuid(id)) return false
    const { rowCount } = await query(
      this.#pool,
      'UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2',
      [id, expected, next],
    )
    return rowCount === 1
  }

  async list(listQuery: ListQuery): Promise<{ items: UserRecord[]; total: number }> {
    const prefix = escapeLike(normaliseUsername(listQuery.usernamePrefix ?? ''))
    // Backslash is LIKE's default escape character; username_key is COLLATE "C", so the order is
    // the in-memory store's and the unique index serves both the prefix match and the ORDER BY.
    const [page, count] = await Promise.all([
      query<UserRow>(
        this.#pool,
        `SELECT ${USER_COLUMNS} FROM users
         WHERE username_key LIKE ($1::text || '%')
         ORDER BY username_key
         LIMIT $2 OFFSET $3`,
        [prefix, listQuery.limit, listQuery.offset],
      ),
      query<{ total: number }>(
        this.#pool,
        `SELECT count(*)::int AS total FROM users WHERE username_key LIKE ($1::text || '%')`,
        [prefix],
      ),
    ])
    return { items: page.rows.map(toUser), total: count.rows[0]?.total ?? 0 }
  }

  /** Readiness: resolves when the database answers, else StoreUnavailableError. */
  ping(): Promise<void> {
    return ping(this.#pool)
  }

  async close(): Promise<void> {
    if (this.#ownsPool) await this.#pool.end()
  }
}

// --- refresh-token families --------------------------------------------------------------------

interface FamilyRow {
  id: string
  user_id: string
  scope: string
  created_at: Date
  absolute_expires_at: Date
  revoked: boolean
  last_used_at: Date
  user_agent: string | null
  ip: string | null
}

const FAMILY_COLUMNS = 'id, user_id, scope, created_at, absolute_expires_at, revoked, last_used_at, user_agent, ip'

function toFamily(row: FamilyRow): RefreshFamily {
  return {
    id: row.id,
    userId: row.user_id,
    scope: row.scope,
    createdAt: row.created_at,
    absoluteExpiresAt: row.absolute_expires_at,
    revoked: row.revoked,
    lastUsedAt: row.last_used_at,
    userAgent: row.user_agent,
    ip: row.ip,
  }
}

interface TokenRow extends Omit<FamilyRow, 'id'> {
  hash: string
  family_id: string
  expires_at: Date
  rotated: boolean
  rotated_at: Date | null
  grace_used: boolean
}

/** Locks the family's row until the transaction ends; false when it is unknown or revoked. */
async function lockLiveFamily(client: pg.PoolClient, familyId: string): Promise<boolean> {
  const { rows } = await client.query<{ revoked: boolean }>(
    'SELECT revoked FROM refresh_families WHERE id = $1 FOR UPDATE',
    [familyId],
  )
  return rows[0] !== undefined && !rows[0].revoked
}

/**
 * Adds a token (not rotated) to a family whose row the transaction has locked; it is the newest.
 * Records on the family who got it, in the same transaction as the token.
 */
async function addFamilyToken(
  tx: pg.PoolClient,
  familyId: string,
  token: NewRefreshToken,
  { userAgent, ip, at }: ClientInfo,
): Promise<void> {
  await tx.query('INSERT INTO refresh_tokens (hash, family_id, expires_at) VALUES ($1, $2, $3)', [
    token.hash,
    familyId,
    token.expiresAt,
  ])
  await tx.query(
    'UPDATE refresh_families SET current_hash = $2, last_used_at = $3, user_agent = $4, ip = $5 WHERE id = $1',
    [familyId, token.hash, at, userAgent, ip],
  )
}

export class PostgresSessionStore implements SessionStore {
  readonly #pool: pg.Pool
  readonly #ownsPool: boolean

  /** A pool (shared; the caller ends it) or a URL (a pool of its own, ended by close()). */
  constructor(pool: pg.Pool | string) {
    const { pool: p, owned } = openPool(pool)
    this.#pool = p
    this.#ownsPool = owned
  }

  async createFamily(family: Omit<RefreshFamily, 'revoked'>, token: NewRefreshToken): Promise<void> {
    // One statement, so the family never exists without its first token.
    await query(
      this.#pool,
      `WITH family AS (
         INSERT INTO refresh_families
           (id, user_id, scope, created_at, absolute_expires_at, current_hash, last_used_at, user_agent, ip)
         VALUES ($1, $2, $3, $4, $5, $6, $8, $9, $10)
         RETURNING id
       )
       INSERT INTO refresh_tokens (hash, family_id, expires_at)
       SELECT $6, id, $7 FROM family`,
      [
        family.id,
        family.userId,
        family.scope,
        family.createdAt,
        family.absoluteExpiresAt,
        token.hash,
        token.expiresAt,
        family.lastUsedAt,
        family.userAgent,
        family.ip,
      ],
    )
  }

  async findToken(hash: string): Promise<{ token: RefreshTokenRecord; family: RefreshFamily } | undefined> {
    const { rows } = await query<TokenRow>(
      this.#pool,
      `SELECT t.hash, t.family_id, t.expires_at, t.rotated, t.rotated_at, t.grace_used,
              f.user_id, f.scope, f.created_at, f.absolute_expires_at, f.revoked, f.last_used_at, f.user_agent, f.ip
       FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
       WHERE t.hash = $1`,
      [hash],
    )
    const row = rows[0]
    if (!row) return undefined
    return {
      token: {
        hash: row.hash,
        familyId: row.family_id,
        expiresAt: row.expires_at,
        rotated: row.rotated,
        rotatedAt: row.rotated_at,
        graceUsed: row.grace_used,
      },
      family: toFamily({ ...row, id: row.family_id }),
    }
  }

  async rotate(familyId: string, oldHash: string, next: NewRefreshToken, client: ClientInfo): Promise<boolean> {
    return transaction(this.#pool, async (tx) => {
      // The family's row lock makes concurrent refreshes of one family take turns: the second one
      // finds the token rotated and gets false (then the service tries the reuse grace). The token
      // itself is checked, not current_hash: after a grace re-issue the family has two tokens that
      // may still rotate (migrations/002_refresh_reuse_grace.sql).
      if (!(await lockLiveFamily(tx, familyId))) return false
      // rotated_at on the application's clock, the one the service measures the grace by.
      const old = await tx.query(
        'UPDATE refresh_tokens SET rotated = true, rotated_at = $3 WHERE hash = $1 AND family_id = $2 AND NOT rotated',
        [oldHash, familyId, new Date()],
      )
      if (old.rowCount !== 1) return false
      await addFamilyToken(tx, familyId, next, client)
      return true
    })
  }

  async reissueWithinGrace(
    familyId: string,
    oldHash: string,
    next: NewRefreshToken,
    rotatedAfter: Date,
    client: ClientInfo,
  ): Promise<boolean> {
    return transaction(this.#pool, async (tx) => {
      // The same lock as rotate(): re-issues, rotations and revocations of one family take turns,
      // and of two concurrent re-issues of one token the second finds grace_used and gets false.
      if (!(await lockLiveFamily(tx, familyId))) return false
      const old = await tx.query(
        `UPDATE refresh_tokens SET grace_used = true
         WHERE hash = $1 AND family_id = $2 AND rotated AND NOT grace_used AND rotated_at >= $3`,
        [oldHash, familyId, rotatedAfter],
      )
      if (old.rowCount !== 1) return false
      await addFamilyToken(tx, familyId, next, client)
      return true
    })
  }

  async revokeFamily(familyId: string): Promise<void> {
    await query(this.#pool, 'UPDATE refresh_families SET revoked = true WHERE id = $1', [familyId])
  }

  async findFamily(id: string): Promise<RefreshFamily | undefined> {
    const { rows } = await query<FamilyRow>(
      this.#pool,
      `SELECT ${FAMILY_COLUMNS} FROM refresh_families WHERE id = $1`,
      [id],
    )
    return rows[0] && toFamily(rows[0])
  }

  async listActive(userId: string, now: Date): Promise<ActiveSession[]> {
    if (!isUuid(userId)) return []
    // One row per family (GROUP BY its primary key) that has a live token; the refresh_families
    // user_id index and the refresh_tokens family_id index serve it. id COLLATE "C": the order of
    // equal created_at is byte order, the one the in-memory store sorts by.
    const { rows } = await query<Omit<FamilyRow, 'revoked'> & { expires_at: Date }>(
      this.#pool,
      `SELECT f.id, f.user_id, f.scope, f.created_at, f.absolute_expires_at, f.last_used_at, f.user_agent, f.ip,
              LEAST(f.absolute_expires_at, max(t.expires_at)) AS expires_at
       FROM refresh_families f JOIN refresh_tokens t ON t.family_id = f.id
       WHERE f.user_id = $1 AND NOT f.revoked AND f.absolute_expires_at > $2
         AND NOT t.rotated AND t.expires_at > $2
       GROUP BY f.id
       ORDER BY f.created_at DESC, f.id COLLATE "C" DESC`,
      [userId, now],
    )
    return rows.map((row) => {
      const { revoked: _r, ...session } = toFamily({ ...row, revoked: false })
      return { ...session, expiresAt: row.expires_at }
    })
  }

  async revokeAllForUser(userId: string): Promise<string[]> {
    if (!isUuid(userId)) return []
    const { rows } = await query<{ id: string }>(
      this.#pool,
      'UPDATE refresh_families SET revoked = true WHERE user_id = $1 AND NOT revoked RETURNING id',
      [userId],
    )
    return rows.map((r) => r.id)
  }

  async sweep(now: Date): Promise<void> {
    // Their tokens go with them (ON DELETE CASCADE).
    await query(this.#pool, 'DELETE FROM refresh_families WHERE absolute_expires_at <= $1', [now])
  }

  /** Readiness: resolves when the database answers, else StoreUnavailableError. */
  ping(): Promise<void> {
    return ping(this.#pool)
  }

  async close(): Promise<void> {
    if (this.#ownsPool) await this.#pool.end()
  }
}

// --- access-token denylist ---------------------------------------------------------------------

export interface PostgresDenyListOptions {
  /** How often to fetch entries other instances added (default 500 ms). */
  pollIntervalMs?: number
  /** healthy() turns false when the last successful poll is older than this (default 2000 ms). */
  staleAfterMs?: number
  /**
   * Each poll re-reads rows added this long before the newest one seen, so that an insert whose
   * commit lagged behind its added_at is still picked up (default 10 s: twice the statement timeout).
   */
  lookbackMs?: number
  /** How often to delete expired rows from the table (default 60 s). */
  sweepIntervalMs?: number
}

/**
 * The denylist in PostgreSQL, for deployments without Redis. has() must stay a Map lookup, so each
 * instance keeps an in-memory mirror and polls the table for rows added since the last poll: a
 * revocation on one instance is enforced on the others within about one poll interval. While the
 * table cannot be read, healthy() is false and callers fail closed.
 */
export class PostgresDenyList implements DenyList {
  readonly #pool: pg.Pool
  readonly #ownsPool: boolean
  readonly #mirror = new MemoryDenyList()
  readonly #staleAfterMs: number
  readonly #lookbackSeconds: number
  readonly #pollTimer: NodeJS.Timeout
  readonly #sweepTimer: NodeJS.Timeout
  /** added_at of the newest row seen, as PostgreSQL printed it (microseconds kept). */
  #cursor: string | null = null
  #lastPollAt = 0
  #lastPollFailed = true
  #polling: Promise<void> | undefined
  #closed = false

  /** A pool (shared; the caller ends it) or a URL (a pool of its own, ended by close()). */
  constructor(pool: pg.Pool | string, options: PostgresDenyListOptions = {}) {
    const { pool: p, owned } = openPool(pool)
    this.#pool = p
    this.#ownsPool = owned
    this.#staleAfterMs = options.staleAfterMs ?? 2_000
    this.#lookbackSeconds = (options.lookbackMs ?? 10_000) / 1000
    this.#pollTimer = setInterval(() => this.#pollInBackground(), options.pollIntervalMs ?? 500)
    this.#pollTimer.unref()
    this.#sweepTimer = setInterval(() => {
      query(this.#pool, 'DELETE FROM revoked_tokens WHERE expires_at <= now()').catch(() => {})
    }, options.sweepIntervalMs ?? 60_000)
    this.#sweepTimer.unref()
    this.#pollInBackground()
  }

  async add(id: string, expiresAtSeconds: number): Promise<void> {
    try {
      if (expiresAtSeconds > Date.now() / 1000) {
        await query(
          this.#pool,
          `INSERT INTO revoked_tokens (id, expires_at) VALUES ($1, to_timestamp($2))
           ON CONFLICT (id) DO UPDATE
             SET expires_at = GREATEST(revoked_tokens.expires_at, EXCLUDED.expires_at), added_at = clock_timestamp()`,
          [id, expiresAtSeconds],
        )
      }
    } finally {
      // Enforced here even when the write failed: this instance at least never accepts the token again.
      this.#mirror.remember(id, expiresAtSeconds)
    }
  }

  has(id: string): boolean {
    return this.#mirror.has(id)
  }

  healthy(): boolean {
    return !this.#lastPollFailed && Date.now() - this.#lastPollAt <= this.#staleAfterMs
  }

  /** Unhealthy means the database does not answer: a 503, as for every request that needs it. */
  unavailableError(): Error {
    return unavailable(this.#pool)
  }

  /** Fetches new entries now (also what the timer does); StoreUnavailableError when the table cannot be read. */
  async refresh(): Promise<void> {
    while (this.#polling) await this.#polling.catch(() => {})
    const poll = this.#poll()
    this.#polling = poll
    try {
      await poll
    } finally {
      if (this.#polling === poll) this.#polling = undefined
    }
  }

  /** Readiness: resolves when the database answers, else StoreUnavailableError. */
  ping(): Promise<void> {
    return ping(this.#pool)
  }

  async close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#pollTimer)
    clearInterval(this.#sweepTimer)
    await this.#polling?.catch(() => {})
    await this.#mirror.close()
    if (this.#ownsPool) await this.#pool.end()
  }

  #pollInBackground(): void {
    if (this.#polling || this.#closed) return
    this.refresh().catch(() => {})
  }

  async #poll(): Promise<void> {
    try {
      // The first poll (cursor NULL) loads every live entry; later ones only what is new.
      const { rows } = await query<{ id: string; exp: number; added_at: string }>(
        this.#pool,
        `SELECT id, extract(epoch FROM expires_at)::float8 AS exp, added_at::text AS added_at
         FROM revoked_tokens
         WHERE expires_at > now()
           AND ($1::timestamptz IS NULL OR added_at > $1::timestamptz - make_interval(secs => $2))
         ORDER BY added_at`,
        [this.#cursor, this.#lookbackSeconds],
      )
      for (const row of rows) this.#mirror.remember(row.id, row.exp)
      const newest = rows.at(-1)
      if (newest) this.#cursor = newest.added_at
      this.#lastPollAt = Date.now()
      this.#lastPollFailed = false
    } catch (err) {
      this.#lastPollFailed = true
      throw err
    }
  }
}

// --- one-time tokens (password reset, e-mail verification) -------------------------------------

interface OneTimeTokenRow {
  hash: string
  purpose: OneTimeTokenPurpose
  user_id: string
  email: string
  user_version: number
  created_at: Date
  expires_at: Date
}

const ONE_TIME_TOKEN_COLUMNS = 'hash, purpose, user_id, email, user_version, created_at, expires_at'

function toOneTimeToken(row: OneTimeTokenRow): OneTimeTokenRecord {
  return Object.freeze({
    hash: row.hash,
    purpose: row.purpose,
    userId: row.user_id,
    email: row.email,
    userVersion: row.user_version,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
  })
}

/** The one_time_tokens table (migrations/003). Expiry is compared with the `now` the caller gives: the application's clock. */
export class PostgresOneTimeTokenStore implements OneTimeTokenStore {
  readonly #pool: pg.Pool
  readonly #ownsPool: boolean

  /** A pool (shared; the caller ends it) or a URL (a pool of its own, ended by close()). */
  constructor(pool: pg.Pool | string) {
    const { pool: p, owned } = openPool(pool)
    this.#pool = p
    this.#ownsPool = owned
  }

  async issue(token: OneTimeTokenRecord): Promise<boolean> {
    if (!isUuid(token.userId)) return false
    // The unique (user_id, purpose) makes the new token replace the old one in one statement: two
    // concurrent issues for one account take turns on that row, and the later one stays.
    try {
      await query(
        this.#pool,
        `INSERT INTO one_time_tokens (${ONE_TIME_TOKEN_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT ON CONSTRAINT one_time_tokens_one_per_purpose DO UPDATE SET
           hash = EXCLUDED.hash, email = EXCLUDED.email, user_version = EXCLUDED.user_version,
           created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at`,
        [token.hash, token.purpose, token.userId, token.email, token.userVersion, token.createdAt, token.expiresAt],
      )
      return true
    } catch (err) {
      // foreign_key_violation: the account was deleted meanwhile.
      if ((err as { code?: unknown }).code === '23503') return false
      throw err
    }
  }

  async find(hash: string, purpose: OneTimeTokenPurpose, now: Date): Promise<OneTimeTokenRecord | undefined> {
    const { rows } = await query<OneTimeTokenRow>(
      this.#pool,
      `SELECT ${ONE_TIME_TOKEN_COLUMNS} FROM one_time_tokens WHERE hash = $1 AND purpose = $2 AND expires_at > $3`,
      [hash, purpose, now],
    )
    return rows[0] && toOneTimeToken(rows[0])
  }

  async consume(hash: string, purpose: OneTimeTokenPurpose, now: Date): Promise<OneTimeTokenRecord | undefined> {
    // DELETE … RETURNING: a concurrent consume of the same token waits for this row lock, then
    // finds the row gone and returns nothing.
    const { rows } = await query<OneTimeTokenRow>(
      this.#pool,
      `DELETE FROM one_time_tokens WHERE hash = $1 AND purpose = $2 AND expires_at > $3
       RETURNING ${ONE_TIME_TOKEN_COLUMNS}`,
      [hash, purpose, now],
    )
    return rows[0] && toOneTimeToken(rows[0])
  }

  async sweep(now: Date): Promise<number> {
    const { rowCount } = await query(this.#pool, 'DELETE FROM one_time_tokens WHERE expires_at <= $1', [now])
    return rowCount ?? 0
  }

  async close(): Promise<void> {
    if (this.#ownsPool) await this.#pool.end()
  }
}

// --- second factors (TOTP) ---------------------------------------------------------------------

interface MfaRow {
  user_id: string
  key_id: string
  secret: string
  active: boolean
  // bigint: pg returns it as a string (it may not fit a double); steps always do.
  last_step: string
  created_at: Date
  codes_left: number
}

function toMfaRecord(row: MfaRow): MfaRecord {
  return Object.freeze({
    userId: row.user_id,
    secret: Object.freeze({ keyId: row.key_id, ciphertext: row.secret }),
    active: row.active,
    lastStep: Number(row.last_step),
    recoveryCodesLeft: row.codes_left,
    createdAt: row.created_at,
  })
}

/** Adds recovery codes to a user's factor; a hash given twice is one code, as in the in-memory store. */
async function addRecoveryCodes(client: pg.PoolClient, userId: string, codeHashes: readonly string[]): Promise<void> {
  if (codeHashes.length === 0) return
  await client.query(
    `INSERT INTO mfa_recovery_codes (user_id, code_hash)
     SELECT $1, unnest($2::text[])
     ON CONFLICT DO NOTHING`,
    [userId, [...codeHashes]],
  )
}

/**
 * The mfa_totp and mfa_recovery_codes tables (migrations/004). Each check and its write are one
 * statement, or one transaction holding the factor's row lock, so that instances racing on one
 * account (two logins with one code, an enrolment and its confirmation) get one winner.
 */
export class PostgresMfaStore implements MfaStore {
  readonly #pool: pg.Pool
  readonly #ownsPool: boolean

  /** A pool (shared; the caller ends it) or a URL (a pool of its own, ended by close()). */
  constructor(pool: pg.Pool | string) {
    const { pool: p, owned } = openPool(pool)
    this.#pool = p
    this.#ownsPool = owned
  }

  /** The factor and how many recovery codes it has left, read in one statement (one snapshot). */
  async get(userId: string): Promise<MfaRecord | undefined> {
    if (!isUuid(userId)) return undefined
    const { rows } = await query<MfaRow>(
      this.#pool,
      `SELECT t.user_id, t.key_id, t.secret, t.active, t.last_step, t.created_at,
         (SELECT count(*) FROM mfa_recovery_codes c WHERE c.user_id = t.user_id)::int AS codes_left
       FROM mfa_totp t WHERE t.user_id = $1`,
      [userId],
    )
    return rows[0] && toMfaRecord(rows[0])
  }

  /**
   * One statement: the upsert's WHERE leaves an active factor alone (no row comes back), and a
   * confirmation racing with it either commits first (then this finds the row active) or waits for
   * this row lock (then its ciphertext no longer matches). A pending factor has no codes; the
   * delete makes sure none survive a restarted enrolment.
   */
  async setPending(userId: string, secret: SealedSecret, now: Date): Promise<boolean> {
    if (!isUuid(userId)) return false
    try {
      const { rows } = await query<{ user_id: string }>(
        this.#pool,
        `WITH pending AS (
           INSERT INTO mfa_totp (user_id, key_id, secret, active, last_step, created_at)
           VALUES ($1, $2, $3, false, -1, $4)
           ON CONFLICT (user_id) DO UPDATE SET
             key_id = EXCLUDED.key_id, secret = EXCLUDED.secret, last_step = -1, created_at = EXCLUDED.created_at
           WHERE mfa_totp.active = false
           RETURNING user_id
         ), cleared AS (
           DELETE FROM mfa_recovery_codes WHERE user_id IN (SELECT user_id FROM pending)
         )
         SELECT user_id FROM pending`,
        [userId, secret.keyId, secret.ciphertext, now],
      )
      return rows.length === 1
    } catch (err) {
      // foreign_key_violation: the account does not exist (or was deleted meanwhile).
      if ((err as { code?: unknown }).code === '23503') return false
      throw err
    }
  }

  /**
   * The conditional UPDATE takes the row lock: a concurrent setPending or activate waits for this
   * transaction, then finds the row active. The codes go in with it, so an active factor is never
   * seen without them.
   */
  async activate(userId: string, ciphertext: string, step: number, codeHashes: readonly string[]): Promise<boolean> {
    if (!isUuid(userId)) return false
    return transaction(this.#pool, async (client) => {
      const { rowCount } = await client.query(
        `UPDATE mfa_totp SET active = true, last_step = $3
         WHERE user_id = $1 AND NOT active AND secret = $2
         RETURNING user_id`,
        [userId, ciphertext, step],
      )
      if (rowCount !== 1) return false
      await addRecoveryCodes(client, userId, codeHashes)
      return true
    })
  }

  /**
   * One conditional UPDATE: of two requests with one code, the second waits for the first's row
   * lock, then re-checks `last_step < $2` against the committed step and changes nothing.
   */
  async useStep(userId: string, step: number): Promise<boolean> {
    if (!isUuid(userId)) return false
    const { rowCount } = await query(
      this.#pool,
      'UPDATE mfa_totp SET last_step = $2 WHERE user_id = $1 AND active AND last_step < $2',
      [userId, step],
    )
    return rowCount === 1
  }

  /** A DELETE of the code's row: a concurrent spend of the same code waits, then finds it gone. */
  async useRecoveryCode(userId: string, codeHash: string): Promise<boolean> {
    if (!isUuid(userId)) return false
    const { rowCount } = await query(
      this.#pool,
      `DELETE FROM mfa_recovery_codes c USING mfa_totp t
       WHERE c.user_id = $1 AND c.code_hash = $2 AND t.user_id = c.user_id AND t.active`,
      [userId, codeHash],
    )
    return rowCount === 1
  }

  /**
   * Locks the active factor first, so that a concurrent delete or replacement takes its turn: the
   * new codes never land beside another call's, nor on a factor deleted meanwhile.
   */
  async replaceRecoveryCodes(userId: string, codeHashes: readonly string[]): Promise<boolean> {
    if (!isUuid(userId)) return false
    return transaction(this.#pool, async (client) => {
      const { rowCount } = await client.query('SELECT 1 FROM mfa_totp WHERE user_id = $1 AND active FOR UPDATE', [
        userId,
      ])
      if (rowCount !== 1) return false
      await client.query('DELETE FROM mfa_recovery_codes WHERE user_id = $1', [userId])
      await addRecoveryCodes(client, userId, codeHashes)
      return true
    })
  }

  /** The codes go with the factor (ON DELETE CASCADE). */
  async delete(userId: string): Promise<boolean> {
    if (!isUuid(userId)) return false
    const { rowCount } = await query(this.#pool, 'DELETE FROM mfa_totp WHERE user_id = $1', [userId])
    return (rowCount ?? 0) > 0
  }

  /** Ids that are not UUIDs cannot have a factor, and would fail the uuid[] cast: they are left out. */
  async activeAmong(userIds: readonly string[]): Promise<Set<string>> {
    const ids = userIds.filter(isUuid)
    if (ids.length === 0) return new Set()
    const { rows } = await query<{ user_id: string }>(
      this.#pool,
      'SELECT user_id FROM mfa_totp WHERE active AND user_id = ANY($1::uuid[])',
      [ids],
    )
    // The caller's spelling of each id (PostgreSQL gives uuids back in lower case).
    const active = new Set(rows.map((row) => row.user_id))
    return new Set(ids.filter((id) => active.has(id.toLowerCase())))
  }

  async close(): Promise<void> {
    if (this.#ownsPool) await this.#pool.end()
  }
}
