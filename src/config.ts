// Configuration: every setting comes from the environment, validated once with zod at start.
// loadConfig never echoes a value back (a value may be a secret): errors name the variable only.
import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { availableParallelism } from 'node:os'
import proxyAddr from '@fastify/proxy-addr'
// The single validator, not the whole of validator.js (as in schemas.ts).
import isEmailModule from 'validator/lib/isEmail.js'
import { z } from 'zod'
import { ConfigError, KeyConfigError } from './errors.js'
import { type JwtAlgorithm, type KeyRing, loadKeyRing, parseMfaKey, secretStrengthProblem } from './keys.js'

/** The placeholder shipped in .env.example; production refuses it. */
export const JWT_SECRET_PLACEHOLDER = 'change-me-to-a-random-secret-of-at-least-32-bytes'

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** The messages written for this schema (describeIssue shows them; zod's own may quote a value). */
const OWN_MESSAGES = new Set<string>()
function own(message: string): { error: string } {
  OWN_MESSAGES.add(message)
  return { error: message }
}

// An empty variable (`PORT=`) counts as unset, never as 0 or "": that is what a blank line in an
// env file or `VAR=` in a shell means to the person who wrote it.
const unsetIfEmpty = (value: unknown) => (value === '' ? undefined : value)
// Decimal digits only: Number() would also take `8000 ` (spaces), `1e3`, `0x1F` or `+5`, values that
// pass by accident and mean something else to the next reader.
const int = (min: number, max: number) =>
  z.preprocess(
    unsetIfEmpty,
    z
      .string()
      .regex(/^[0-9]+$/, own('must be a whole number in decimal digits (no spaces, sign, decimal point or exponent)'))
      .transform(Number)
      .pipe(z.number().int().min(min).max(max)),
  )
// z.coerce.boolean() turns "false" into true; stringbool parses true/false/1/0/yes/no/on/off.
const bool = () => z.preprocess(unsetIfEmpty, z.stringbool())
const text = (max = 256) =>
  z.preprocess(unsetIfEmpty, z.string().trim().min(1, own('must not be blank (only spaces)')).max(max))

const EnvSchema = z.object({
  NODE_ENV: z.preprocess(unsetIfEmpty, z.enum(['development', 'production', 'test']).default('development')),
  PORT: int(0, 65535).default(8000),
  HOST: text().default('127.0.0.1'),
  // Prometheus metrics on a listener of their own; off unless METRICS_PORT is set (0: any free port).
  METRICS_PORT: int(0, 65535).optional(),
  METRICS_HOST: text().default('127.0.0.1'),
  LOG_LEVEL: z.preprocess(unsetIfEmpty, z.enum(LOG_LEVELS).optional()),
  AUDIT_LOG: bool().default(true),
  // Not run through unsetIfEmpty: an empty JWT_SECRET is refused in every mode, since it is almost
  // certainly a template left unfilled, and development would otherwise quietly generate one.
  JWT_SECRET: z.string().optional(),
  JWT_ALGORITHM: z.preprocess(unsetIfEmpty, z.enum(['HS256', 'EdDSA', 'ES256', 'RS256']).default('HS256')),
  JWT_PRIVATE_KEY_FILE: text(4096).optional(),
  JWT_PUBLIC_KEY_FILE: text(4096).optional(),
  JWT_PREVIOUS_KEYS: z.preprocess(unsetIfEmpty, z.string().optional()),
  JWT_ISSUER: text().default('fastify-auth-server'),
  JWT_AUDIENCE: text().default('fastify-auth-api'),
  AUTH_REALM: z
    .preprocess(
      unsetIfEmpty,
      z
        .string()
        .regex(/^[\x20-\x7e]{1,64}$/, { ...own('must be 1 to 64 printable ASCII characters'), abort: true })
        .refine(
          (v) => !/["\\]/.test(v),
          own('must not contain " or \\ (they would end or escape the quoted realm in WWW-Authenticate)'),
        ),
    )
    .default('fastify-auth-api'),
  ACCESS_TOKEN_EXPIRE_MINUTES: int(1, 24 * 60).default(30),
  JWT_CLOCK_SKEW_SECONDS: int(0, 300).default(5),
  REFRESH_TOKEN_EXPIRE_DAYS: int(1, 365).default(14),
  REFRESH_TOKEN_ABSOLUTE_DAYS: int(1, 3650).default(30),
  REFRESH_REUSE_GRACE_SECONDS: int(0, 300).default(10),
  BCRYPT_ROUNDS: int(4, 15).default(12),
  PASSWORD_MIN_LENGTH: int(1, 64).default(8),
  HASH_CONCURRENCY: int(1, 64).default(Math.max(1, availableParallelism())),
  HASH_QUEUE_MAX: int(0, 100_000).optional(),
  HASH_MAX_WAIT_MS: int(0, 60_000).default(1000),
  LOGIN_MAX_FAILURES: int(1, 100).default(10),
  LOGIN_LOCKOUT_SECONDS: int(1, 86_400).default(60),
  LOGIN_LOCKOUT_MAX_SECONDS: int(1, 86_400).default(900),
  LOGIN_IP_MAX_FAILURES: int(1, 1_000_000).default(100),
  LOGIN_IP_WINDOW_SECONDS: int(1, 86_400).default(900),
  LOGIN_RATE_LIMIT_PER_MINUTE: int(1, 1_000_000).default(30),
  REGISTER_RATE_LIMIT_MAX: int(1, 1_000_000).default(100),
  REGISTER_RATE_LIMIT_WINDOW_SECONDS: int(1, 86_400).default(3600),
  ADMIN_USERNAME: text(32).optional(),
  ADMIN_PASSWORD: z.preprocess(unsetIfEmpty, z.string().optional()),
  STORE: z.preprocess(unsetIfEmpty, z.enum(['memory', 'postgres']).default('memory')),
  DATABASE_URL: text(2048).optional(),
  MIGRATE_ON_START: bool().default(false),
  REDIS_URL: text(2048).optional(),
  REDIS_PREFIX: text(64).default('auth:'),
  USER_CACHE_TTL_MS: int(0, 60_000).default(2000),
  STORE_TIMEOUT_MS: int(100, 60_000).default(2000),
  TRUST_PROXY: text(1024).optional(),
  CORS_ORIGINS: text(4096).optional(),
  DOCS_ENABLED: bool().optional(),
  BODY_LIMIT_BYTES: int(1024, 1024 * 1024).default(16 * 1024),
  REQUEST_TIMEOUT_MS: int(1000, 600_000).default(15_000),
  SMTP_URL: text(2048).optional(),
  MAIL_FROM: text(320).default('no-reply@localhost'),
  PUBLIC_URL: text(2048).optional(),
  PASSWORD_RESET_URL: text(2048).default('{PUBLIC_URL}/reset-password?token={token}'),
  EMAIL_VERIFY_URL: text(2048).default('{PUBLIC_URL}/verify-email?token={token}'),
  MAIL_RETRIES: int(0, 10).default(4),
  MAIL_RETRY_DELAY_MS: int(10, 600_000).default(1000),
  MAIL_TIMEOUT_MS: int(100, 120_000).default(10_000),
  PASSWORD_RESET_TTL_MINUTES: int(5, 24 * 60).default(30),
  EMAIL_VERIFY_TTL_HOURS: int(1, 30 * 24).default(24),
  RECOVERY_MAX_PER_ACCOUNT: int(1, 1000).default(5),
  RECOVERY_MAX_PER_ADDRESS: int(1, 1_000_000).default(20),
  RECOVERY_WINDOW_SECONDS: int(60, 7 * 86_400).default(3600),
  REQUIRE_VERIFIED_EMAIL: bool().default(false),
  // Not through text(): a key is never trimmed, and its value is never echoed in an error.
  MFA_ENCRYPTION_KEY: z.preprocess(unsetIfEmpty, z.string().optional()),
  MFA_ISSUER: text(64).optional(),
  // Not through text(): it holds secrets, which are never trimmed and never echoed in an error.
  INTROSPECTION_CLIENTS: z.preprocess(unsetIfEmpty, z.string().optional()),
  INTROSPECTION_RATE_LIMIT_PER_MINUTE: int(1, 1_000_000).default(600),
})

export type Env = z.infer<typeof EnvSchema>

export interface Config {
  readonly env: 'development' | 'production' | 'test'
  readonly port: number
  readonly host: string
  /**
   * The Prometheus metrics listener (plugins/metrics.ts), never the public port. port null: metrics
   * off (no listener, no per-request hook); 0: a port the OS chooses (tests read app.metricsAddress).
   */
  readonly metrics: { readonly port: number | null; readonly host: string }
  readonly logLevel: (typeof LOG_LEVELS)[number]
  readonly auditLog: boolean
  readonly jwt: {
    readonly secret: string
    /** True when no JWT_SECRET was given and a random one was generated for this process. */
    readonly secretGenerated: boolean
    readonly algorithm: JwtAlgorithm
    readonly keys: KeyRing
    /** The current key's id (keys.current.kid). */
    readonly kid: string
    readonly issuer: string
    readonly audience: string
    readonly accessTokenTtlSeconds: number
    readonly refreshTokenTtlSeconds: number
    readonly refreshAbsoluteTtlSeconds: number
    /**
     * A rotated refresh token presented again within this many seconds of its rotation (a second
     * tab, a retry after a lost answer) gets one more pair in its session instead of revoking it.
     * 0: off, every reuse revokes the session.
     */
    readonly refreshReuseGraceSeconds: number
    readonly clockSkewSeconds: number
  }
  readonly throttle: {
    /** Consecutive failures after which an account is locked. */
    readonly accountMaxFailures: number
    readonly lockoutSeconds: number
    readonly lockoutMaxSeconds: number
    readonly ipMaxFailures: number
    readonly ipWindowSeconds: number
    /** Login requests per account per minute (@fastify/rate-limit): a flood guard in front of bcrypt. */
    readonly loginPerMinute: number
    readonly registerMax: number
    readonly registerWindowSeconds: number
  }
  /** Created or promoted at boot when both are set. */
  readonly admin: { readonly username: string; readonly password: string } | null
  readonly realm: string
  readonly password: {
    readonly bcryptRounds: number
    readonly minLength: number
    readonly hashConcurrency: number
    /** How many hash jobs may wait for a free slot before new ones are shed with 503. */
    readonly hashQueueMax: number
    /** A hash job expected to wait longer than this for a slot is shed with 503. */
    readonly hashMaxWaitMs: number
  }
  readonly storage: {
    readonly kind: 'memory' | 'postgres'
    readonly databaseUrl: string | undefined
    readonly migrateOnStart: boolean
    readonly redisUrl: string | undefined
    readonly redisPrefix: string
    /** How long a user record read from PostgreSQL may be reused (0: never). */
    readonly userCacheTtlMs: number
    /**
     * How long a request waits for PostgreSQL or Redis (a connection, or one statement or command)
     * before the store gives up and the request answers 503 with Retry-After; milliseconds.
     */
    readonly timeoutMs: number
  }
  /** Fastify's trustProxy: false, or the proxy addresses/CIDRs (never `true`, never a hop count). */
  readonly trustProxy: false | string[]
  /**
   * Origins whose pages may call the API from a browser (CORS): exact origins as browsers send them,
   * or '*' (any origin; refused in production). Empty: no CORS at all (the plugin is not registered).
   */
  readonly corsOrigins: '*' | readonly string[]
  readonly docsEnabled: boolean
  readonly bodyLimit: number
  readonly requestTimeoutMs: number
  /** Outgoing mail: account recovery and verification links, notices (src/mail/). */
  readonly mail: MailConfig
  /** Password reset, e-mail verification and e-mail change (services/recovery.ts). */
  readonly recovery: RecoveryConfig
  /** The second factor (services/mfa.ts). */
  readonly mfa: MfaConfig
  /** Token introspection, RFC 7662 (services/introspection.ts): off while `clients` is empty. */
  readonly introspection: IntrospectionConfig
}

/** The least length of an introspection client's secret in production (characters). */
export const INTROSPECTION_SECRET_MIN_LENGTH = 32

export interface IntrospectionConfig {
  /**
   * INTROSPECTION_CLIENTS: the resource servers allowed to call POST /introspect, each with the
   * secret it authenticates with (HTTP Basic). Empty: introspection is off (no route at all).
   */
  readonly clients: readonly IntrospectionClient[]
  /** INTROSPECTION_RATE_LIMIT_PER_MINUTE: requests per client per minute (429 past it). */
  readonly perMinute: number
}

export interface IntrospectionClient {
  /** 1 to 64 of A-Z a-z 0-9 . _ - (never secret: it is in logs and error lines). */
  readonly id: string
  /** Never logged, never echoed (logging.ts secretValues redacts it). */
  readonly secret: string
}

export interface MfaConfig {
  /**
   * Where the key that seals TOTP secrets comes from: MFA_ENCRYPTION_KEY; or, without it, the HS256
   * JWT secret (through HKDF with a label of its own); or nowhere (an asymmetric JWT algorithm and
   * no MFA_ENCRYPTION_KEY), and then MFA is off: its routes answer 404 and /token knows no MFA grant.
   */
  readonly keySource: 'MFA_ENCRYPTION_KEY' | 'JWT_SECRET' | 'off'
  /**
   * The key material, hex, current first: MFA_ENCRYPTION_KEY alone, or the HS256 JWT secrets (the
   * current one, then JWT_PREVIOUS_KEYS), so that secrets sealed before a JWT key rotation still
   * open. Secret: never logged.
   */
  readonly keys: readonly string[]
  /** The issuer shown in authenticator apps (MFA_ISSUER; default AUTH_REALM). */
  readonly issuer: string
}

export interface RecoveryConfig {
  /** How long a password-reset link works (PASSWORD_RESET_TTL_MINUTES), in seconds. */
  readonly resetTtlSeconds: number
  /** How long an e-mail verification link works (EMAIL_VERIFY_TTL_HOURS), in seconds. */
  readonly verifyTtlSeconds: number
  /**
   * Messages with a link that one account may be sent per window (RECOVERY_MAX_PER_ACCOUNT), per
   * kind (resets; verifications and changes). Past it, requests still answer 202 and nothing is
   * sent, so that the limit tells nothing about which accounts exist.
   */
  readonly maxPerAccount: number
  /** Requests one client address may make per window to each route that sends such a link (429 past it). */
  readonly maxPerAddress: number
  readonly windowSeconds: number
  /**
   * REQUIRE_VERIFIED_EMAIL: the password grant refuses accounts without a verified address
   * (invalid_grant, after the password was found right), and /register requires an address.
   * Accounts with the admin role are exempt: the first admin is created without one.
   */
  readonly requireVerifiedEmail: boolean
}

/** The base of links in messages when PUBLIC_URL is unset (development and test only). */
export const DEFAULT_PUBLIC_URL = 'http://127.0.0.1:8000'

export interface MailConfig {
  /**
   * `smtp`: SMTP_URL is set; messages are delivered through it. `log`: no SMTP_URL outside
   * production; each message is written to the log, link and token included, for a developer to
   * copy. `off`: no SMTP_URL in production; nothing can be sent, so the flows that need mail
   * (password reset, e-mail verification) are disabled: their routes answer 404.
   */
  readonly mode: 'smtp' | 'log' | 'off'
  /**
   * SMTP_URL: `smtp://` (STARTTLS when the server offers it) or `smtps://` (TLS from the start),
   * with optional `user:password@`. It may hold a password: never log it. Undefined unless `smtp`.
   */
  readonly smtpUrl: string | undefined
  /** MAIL_FROM: the From header and envelope sender, `name@domain` or `Name <name@domain>`. */
  readonly from: string
  /** PUBLIC_URL without a trailing slash: the base of the links in messages. */
  readonly publicUrl: string
  /**
   * True when PUBLIC_URL was set (and valid); false when publicUrl is DEFAULT_PUBLIC_URL. What
   * builds absolute URLs for clients other than mail (discovery) needs to tell the two apart.
   */
  readonly publicUrlSet: boolean
  /** The password-reset link carrying `token` (PASSWORD_RESET_URL, `{token}` URL-encoded). */
  readonly resetUrl: (token: string) => string
  /** The e-mail verification link carrying `token` (EMAIL_VERIFY_URL, `{token}` URL-encoded). */
  readonly verifyUrl: (token: string) => string
  /** Delivery attempts after a failed first one (MAIL_RETRIES); 0: no retry. */
  readonly retries: number
  /** Milliseconds before the first retry (MAIL_RETRY_DELAY_MS), doubled before each next one. */
  readonly retryDelayMs: number
  /** SMTP connection, greeting and socket-inactivity timeout, each, in milliseconds. */
  readonly timeoutMs: number
}

/** Validates `env` and returns a frozen Config, or throws a ConfigError naming each bad variable. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  // An empty variable is unset: zod's .default() replaces only undefined, so `PORT=` would otherwise
  // reach z.coerce.number() and be refused. JWT_SECRET is kept, so that an empty one is refused.
  const present = Object.fromEntries(
    Object.entries(env).filter(([name, value]) => value !== '' || name === 'JWT_SECRET'),
  )
  const parsed = EnvSchema.safeParse(present)
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${describeIssue(issue)}`)
    throw new ConfigError([...new Set(problems)])
  }
  const e = parsed.data
  const problems: string[] = []
  const production = e.NODE_ENV === 'production'

  // JWT_SECRET signs only with HS256: the other algorithms sign with JWT_PRIVATE_KEY_FILE, so
  // production asks for a strong secret only when it is what signs.
  const signsWithSecret = e.JWT_ALGORITHM === 'HS256'
  if (e.JWT_SECRET !== undefined) {
    const weakness = production && signsWithSecret ? secretStrengthProblem(e.JWT_SECRET) : undefined
    if (e.JWT_SECRET.trim() === '') problems.push('JWT_SECRET: must not be empty')
    else if (production && e.JWT_SECRET === JWT_SECRET_PLACEHOLDER)
      problems.push('JWT_SECRET: is the .env.example placeholder; generate a random secret')
    else if (weakness) problems.push(`JWT_SECRET: ${weakness}`)
  } else if (production && signsWithSecret) {
    problems.push('JWT_SECRET: is required in production with JWT_ALGORITHM=HS256')
  }
  if (production && e.BCRYPT_ROUNDS < 10) problems.push('BCRYPT_ROUNDS: must be at least 10 in production')
  // Within the grace a replayed refresh token forks the session instead of ending it: long enough
  // for two tabs and a retry, never long enough to be a second way into an account.
  if (production && e.REFRESH_REUSE_GRACE_SECONDS > 60)
    problems.push('REFRESH_REUSE_GRACE_SECONDS: must be at most 60 in production')
  if (e.REFRESH_TOKEN_ABSOLUTE_DAYS < e.REFRESH_TOKEN_EXPIRE_DAYS)
    problems.push('REFRESH_TOKEN_ABSOLUTE_DAYS: must be at least REFRESH_TOKEN_EXPIRE_DAYS')
  if (e.LOGIN_LOCKOUT_MAX_SECONDS < e.LOGIN_LOCKOUT_SECONDS)
    problems.push('LOGIN_LOCKOUT_MAX_SECONDS: must be at least LOGIN_LOCKOUT_SECONDS')
  if (e.METRICS_PORT !== undefined && e.METRICS_PORT !== 0 && e.METRICS_PORT === e.PORT)
    problems.push('METRICS_PORT: must differ from PORT (metrics are never served on the public port)')
  if ((e.ADMIN_USERNAME === undefined) !== (e.ADMIN_PASSWORD === undefined))
    problems.push(
      `${e.ADMIN_USERNAME === undefined ? 'ADMIN_USERNAME' : 'ADMIN_PASSWORD'}: ADMIN_USERNAME and ADMIN_PASSWORD go together`,
    )

  if (e.STORE === 'postgres' && !e.DATABASE_URL) problems.push('DATABASE_URL: is required with STORE=postgres')
  for (const [name, url, protocols] of [
    ['DATABASE_URL', e.DATABASE_URL, ['postgres:', 'postgresql:']],
    ['REDIS_URL', e.REDIS_URL, ['redis:', 'rediss:']],
  ] as const) {
    if (url !== undefined && !isUrl(url, protocols)) problems.push(`${name}: must be a ${protocols[0]}// URL`)
  }

  const trustProxy = parseTrustProxy(e.TRUST_PROXY)
  if (trustProxy === null)
    problems.push('TRUST_PROXY: must be a comma-separated list of IP addresses or CIDR ranges (not true or a number)')

  const corsOrigins = parseCorsOrigins(e.CORS_ORIGINS)
  if (corsOrigins === null)
    problems.push(
      'CORS_ORIGINS: must be * alone, or a comma-separated list of origins as browsers send them: scheme://host[:port] with http or https, a lower-case host, no default port, no path or trailing slash',
    )
  else if (corsOrigins === '*' && production)
    problems.push('CORS_ORIGINS: * (any origin) is refused in production; list the origins of your front ends')

  const secretGenerated = e.JWT_SECRET === undefined
  const secret = e.JWT_SECRET ?? randomBytes(32).toString('base64url')
  let keys: KeyRing | undefined
  try {
    keys = loadKeyRing({
      algorithm: e.JWT_ALGORITHM,
      secret,
      privateKeyFile: e.JWT_PRIVATE_KEY_FILE,
      publicKeyFile: e.JWT_PUBLIC_KEY_FILE,
      previousKeys: e.JWT_PREVIOUS_KEYS,
      production,
    })
  } catch (err) {
    if (!(err instanceof KeyConfigError)) throw err
    problems.push(err.message)
  }

  const mail = mailConfig(e, production, problems)
  if (e.REQUIRE_VERIFIED_EMAIL && mail.mode === 'off')
    problems.push('REQUIRE_VERIFIED_EMAIL: needs mail; set SMTP_URL (without it no address can be verified)')

  const mfa = mfaConfig(e, keys, problems)
  const introspectionClients = parseIntrospectionClients(e.INTROSPECTION_CLIENTS, production, problems)

  if (problems.length > 0 || !keys) throw new ConfigError(problems)
  return deepFreeze({
    env: e.NODE_ENV,
    port: e.PORT,
    host: e.HOST,
    metrics: { port: e.METRICS_PORT ?? null, host: e.METRICS_HOST },
    logLevel: e.LOG_LEVEL ?? (production ? 'warn' : 'info'),
    auditLog: e.AUDIT_LOG,
    jwt: {
      secret,
      secretGenerated,
      algorithm: e.JWT_ALGORITHM,
      keys,
      kid: keys.current.kid,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
      accessTokenTtlSeconds: e.ACCESS_TOKEN_EXPIRE_MINUTES * 60,
      refreshTokenTtlSeconds: e.REFRESH_TOKEN_EXPIRE_DAYS * 86_400,
      refreshAbsoluteTtlSeconds: e.REFRESH_TOKEN_ABSOLUTE_DAYS * 86_400,
      refreshReuseGraceSeconds: e.REFRESH_REUSE_GRACE_SECONDS,
      clockSkewSeconds: e.JWT_CLOCK_SKEW_SECONDS,
    },
    throttle: {
      accountMaxFailures: e.LOGIN_MAX_FAILURES,
      lockoutSeconds: e.LOGIN_LOCKOUT_SECONDS,
      lockoutMaxSeconds: e.LOGIN_LOCKOUT_MAX_SECONDS,
      ipMaxFailures: e.LOGIN_IP_MAX_FAILURES,
      ipWindowSeconds: e.LOGIN_IP_WINDOW_SECONDS,
      loginPerMinute: e.LOGIN_RATE_LIMIT_PER_MINUTE,
      registerMax: e.REGISTER_RATE_LIMIT_MAX,
      registerWindowSeconds: e.REGISTER_RATE_LIMIT_WINDOW_SECONDS,
    },
    admin: e.ADMIN_USERNAME && e.ADMIN_PASSWORD ? { username: e.ADMIN_USERNAME, password: e.ADMIN_PASSWORD } : null,
    realm: e.AUTH_REALM,
    password: {
      bcryptRounds: e.BCRYPT_ROUNDS,
      minLength: e.PASSWORD_MIN_LENGTH,
      hashConcurrency: e.HASH_CONCURRENCY,
      hashQueueMax: e.HASH_QUEUE_MAX ?? e.HASH_CONCURRENCY * 8,
      hashMaxWaitMs: e.HASH_MAX_WAIT_MS,
    },
    storage: {
      kind: e.STORE,
      databaseUrl: e.DATABASE_URL,
      migrateOnStart: e.MIGRATE_ON_START,
      redisUrl: e.REDIS_URL,
      redisPrefix: e.REDIS_PREFIX,
      userCacheTtlMs: e.USER_CACHE_TTL_MS,
      timeoutMs: e.STORE_TIMEOUT_MS,
    },
    trustProxy: trustProxy ?? false,
    corsOrigins: corsOrigins ?? [],
    // Off by default in production: the API inventory is for developers (OWASP API9).
    docsEnabled: e.DOCS_ENABLED ?? !production,
    bodyLimit: e.BODY_LIMIT_BYTES,
    requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
    mail,
    recovery: {
      resetTtlSeconds: e.PASSWORD_RESET_TTL_MINUTES * 60,
      verifyTtlSeconds: e.EMAIL_VERIFY_TTL_HOURS * 3600,
      maxPerAccount: e.RECOVERY_MAX_PER_ACCOUNT,
      maxPerAddress: e.RECOVERY_MAX_PER_ADDRESS,
      windowSeconds: e.RECOVERY_WINDOW_SECONDS,
      requireVerifiedEmail: e.REQUIRE_VERIFIED_EMAIL,
    },
    mfa,
    introspection: { clients: introspectionClients, perMinute: e.INTROSPECTION_RATE_LIMIT_PER_MINUTE },
  } satisfies Config)
}

/**
 * INTROSPECTION_CLIENTS: comma-separated `client_id:secret` entries (spaces around an entry are
 * dropped; an empty entry is skipped). The id is 1 to 64 of A-Z a-z 0-9 . _ - (so it never holds a
 * `:`); the secret is the rest after the first `:`. Every problem is pushed naming the variable and
 * the entry's position or the client id, never a secret: an entry without a valid id is named by its
 * position only, since what stands where the id should be may well be a secret pasted alone. A
 * malformed entry or a repeated id is refused in every mode (which secret would count?); a secret
 * shorter than INTROSPECTION_SECRET_MIN_LENGTH characters only in production, so that development
 * can use a short one.
 */
function parseIntrospectionClients(
  value: string | undefined,
  production: boolean,
  problems: string[],
): IntrospectionClient[] {
  const clients: IntrospectionClient[] = []
  const entries = (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  entries.forEach((entry, i) => {
    const colon = entry.indexOf(':')
    const id = colon === -1 ? '' : entry.slice(0, colon)
    const secret = colon === -1 ? '' : entry.slice(colon + 1)
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(id) || secret === '') {
      problems.push(
        `INTROSPECTION_CLIENTS: entry ${i + 1} must be client_id:secret (the id 1 to 64 of A-Z a-z 0-9 . _ -, then a secret)`,
      )
      return
    }
    if (clients.some((c) => c.id === id)) {
      problems.push(`INTROSPECTION_CLIENTS: client id "${id}" is listed more than once`)
      return
    }
    // Code points, as a person counts them; the secret is compared as a digest, whatever its length.
    if (production && [...secret].length < INTROSPECTION_SECRET_MIN_LENGTH)
      problems.push(
        `INTROSPECTION_CLIENTS: the secret of client "${id}" must be at least ${INTROSPECTION_SECRET_MIN_LENGTH} characters in production`,
      )
    clients.push({ id, secret })
  })
  return clients
}

function mfaConfig(e: Env, keys: KeyRing | undefined, problems: string[]): MfaConfig {
  const issuer = e.MFA_ISSUER ?? e.AUTH_REALM
  if (e.MFA_ENCRYPTION_KEY !== undefined) {
    const key = parseMfaKey(e.MFA_ENCRYPTION_KEY)
    if (!key) problems.push('MFA_ENCRYPTION_KEY: must be 32 bytes, as 64 hex digits or base64')
    return { keySource: 'MFA_ENCRYPTION_KEY', keys: key ? [key.toString('hex')] : [], issuer }
  }
  const secrets = keys ? [keys.current, ...keys.previous].filter((k) => k.alg === 'HS256') : []
  if (keys?.current.alg !== 'HS256') return { keySource: 'off', keys: [], issuer }
  return {
    keySource: 'JWT_SECRET',
    keys: secrets.map((k) => Buffer.from(k.verifyKey, 'utf8').toString('hex')),
    issuer,
  }
}

function describeIssue(issue: z.core.$ZodIssue): string {
  // Our own messages (own()) describe the rule; zod's may quote the received value, so of those
  // only the shape of the problem is kept.
  if (OWN_MESSAGES.has(issue.message)) return issue.message
  switch (issue.code) {
    case 'invalid_type':
      return `expected ${issue.expected}`
    case 'too_small':
      return `must be at least ${String(issue.minimum)}`
    case 'too_big':
      return `must be at most ${String(issue.maximum)}`
    case 'invalid_value':
      return `must be one of ${issue.values.map(String).join(', ')}`
    default:
      return 'invalid value'
  }
}

function isUrl(value: string, protocols: readonly string[]): boolean {
  try {
    return protocols.includes(new URL(value).protocol)
  } catch {
    return false
  }
}

/**
 * undefined → no proxy (false); a valid list → the list; anything else → null (invalid). Each entry
 * is a name proxy-addr knows (loopback, linklocal, uniquelocal) or an IP address, optionally with a
 * CIDR prefix. node:net checks the address strictly (proxy-addr alone would take `1` as 0.0.0.1);
 * proxy-addr, the library Fastify uses for trustProxy, then compiles the list, so that anything it
 * would throw on at start-up is refused here, naming the variable.
 */
function parseTrustProxy(value: string | undefined): false | string[] | null {
  if (value === undefined) return false
  const entries = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  if (entries.length === 0) return false
  const known = new Set(['loopback', 'linklocal', 'uniquelocal'])
  if (!entries.every((e) => known.has(e) || isIP(e.split('/', 1)[0] as string) !== 0)) return null
  try {
    proxyAddr.compile(entries)
  } catch {
    return null
  }
  return entries
}

/**
 * undefined or only commas → [] (no CORS); `*` alone → '*'; a list of origins → the list; anything
 * else → null (invalid). Each entry must be an origin exactly as a browser sends it in `Origin`
 * (http or https, lower-case host, no default port, no path, no trailing slash): CORS compares
 * origins as strings, so `https://app.example.com/` would silently match nothing. `null` (what
 * sandboxed frames and file: pages send) is refused: any page can make itself send it.
 */
function parseCorsOrigins(value: string | undefined): '*' | string[] | null {
  const entries = (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  if (entries.includes('*')) return entries.length === 1 ? '*' : null
  const isOrigin = (entry: string) => {
    try {
      const url = new URL(entry)
      // WHATWG URL keeps `*` in a host; no browser sends one, so `https://*.example.com` matches nothing.
      const host = /^(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)$/.test(url.hostname)
      return (url.protocol === 'http:' || url.protocol === 'https:') && host && url.origin === entry
    } catch {
      return false
    }
  }
  return entries.every(isOrigin) ? [...new Set(entries)] : null
}

/**
 * The mail settings, checked together; each problem is pushed to `problems` naming its variable,
 * never its value (SMTP_URL may hold a password). Links carry tokens, hence the stricter rules in
 * production: a public base is required to send mail at all, and links must be https.
 */
function mailConfig(e: Env, production: boolean, problems: string[]): MailConfig {
  const mode = e.SMTP_URL !== undefined ? 'smtp' : production ? 'off' : 'log'
  // `smtp:` is not a scheme the URL parser knows, so `smtp:/x` parses, with no host: check for one.
  if (e.SMTP_URL !== undefined && !(isUrl(e.SMTP_URL, ['smtp:', 'smtps:']) && new URL(e.SMTP_URL).hostname !== ''))
    problems.push('SMTP_URL: must be an smtp:// or smtps:// URL')
  if (!isEmailModule.default(e.MAIL_FROM, { allow_display_name: true, require_tld: false, allow_ip_domain: false }))
    problems.push('MAIL_FROM: must be an e-mail address, name@domain or Name <name@domain>')

  let publicUrl = DEFAULT_PUBLIC_URL
  let publicUrlSet = false
  if (e.PUBLIC_URL !== undefined) {
    const parsed = parsePublicUrl(e.PUBLIC_URL)
    if (parsed === null)
      problems.push('PUBLIC_URL: must be an http:// or https:// URL without credentials, query or fragment')
    else if (production && mode === 'smtp' && !parsed.startsWith('https:'))
      problems.push('PUBLIC_URL: must be an https:// URL in production (links in messages carry tokens)')
    else {
      publicUrl = parsed
      publicUrlSet = true
    }
  } else if (production && mode === 'smtp') {
    problems.push('PUBLIC_URL: is required in production when SMTP_URL is set (the base of links in messages)')
  }

  const template = (name: 'PASSWORD_RESET_URL' | 'EMAIL_VERIFY_URL') => {
    const raw = e[name]
    const withBase = raw.replaceAll('{PUBLIC_URL}', publicUrl)
    const link = (token: string) => withBase.replaceAll('{token}', encodeURIComponent(token))
    if (!withBase.includes('{token}')) problems.push(`${name}: must contain {token}, where the link carries the token`)
    else if (!isUrl(link('t'), ['http:', 'https:']))
      problems.push(`${name}: must be an http:// or https:// URL once {PUBLIC_URL} and {token} are replaced`)
    // A template built on PUBLIC_URL is covered by PUBLIC_URL's own check.
    else if (production && mode === 'smtp' && !raw.includes('{PUBLIC_URL}') && !isUrl(link('t'), ['https:']))
      problems.push(`${name}: must be an https:// URL in production (the link carries a token)`)
    return link
  }

  return {
    mode,
    smtpUrl: e.SMTP_URL,
    from: e.MAIL_FROM,
    publicUrl,
    publicUrlSet,
    resetUrl: template('PASSWORD_RESET_URL'),
    verifyUrl: template('EMAIL_VERIFY_URL'),
    retries: e.MAIL_RETRIES,
    retryDelayMs: e.MAIL_RETRY_DELAY_MS,
    timeoutMs: e.MAIL_TIMEOUT_MS,
  }
}

/**
 * PUBLIC_URL in one form (scheme and host lower-cased, no trailing slash, so that `{PUBLIC_URL}/x`
 * has one slash), or null: not http(s), or with credentials, a query or a fragment, which would
 * end up in the middle of every link.
 */
function parsePublicUrl(value: string): string | null {
  try {
    const url = new URL(value)
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return null
    if (url.username || url.password || value.includes('?') || value.includes('#')) return null
    return url.href.replace(/\/+$/, '')
  } catch {
    return null
  }
}

function deepFreeze<T extends object>(value: T): T {
  for (const v of Object.values(value)) if (v && typeof v === 'object') deepFreeze(v)
  return Object.freeze(value)
}
