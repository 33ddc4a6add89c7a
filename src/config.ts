// Configuration: every setting comes from the environment, validated once with zod at start.
// loadConfig never echoes a value back (a value may be a secret): errors name the variable only.
import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { availableParallelism } from 'node:os'
import proxyAddr from '@fastify/proxy-addr'
import { z } from 'zod'
import { ConfigError, KeyConfigError } from './errors.js'
import { type JwtAlgorithm, type KeyRing, loadKeyRing } from './keys.js'

/** The placeholder shipped in .env.example; production refuses it. */
export const JWT_SECRET_PLACEHOLDER = 'change-me-to-a-random-secret-of-at-least-32-bytes'

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

// An empty variable (`PORT=`) counts as unset, never as 0 or "": that is what a blank line in an
// env file or `VAR=` in a shell means to the person who wrote it.
const unsetIfEmpty = (value: unknown) => (value === '' ? undefined : value)
const int = (min: number, max: number) => z.preprocess(unsetIfEmpty, z.coerce.number().int().min(min).max(max))
// z.coerce.boolean() turns "false" into true; stringbool parses true/false/1/0/yes/no/on/off.
const bool = () => z.preprocess(unsetIfEmpty, z.stringbool())
const text = (max = 256) => z.preprocess(unsetIfEmpty, z.string().trim().min(1).max(max))

const EnvSchema = z.object({
  NODE_ENV: z.preprocess(unsetIfEmpty, z.enum(['development', 'production', 'test']).default('development')),
  PORT: int(0, 65535).default(8000),
  HOST: text().default('127.0.0.1'),
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
        .regex(/^[\x20-\x7e]{1,64}$/)
        .refine((v) => !/["\\]/.test(v)),
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
  DOCS_ENABLED: bool().optional(),
  BODY_LIMIT_BYTES: int(1024, 1024 * 1024).default(16 * 1024),
  REQUEST_TIMEOUT_MS: int(1000, 600_000).default(15_000),
})

export type Env = z.infer<typeof EnvSchema>

export interface Config {
  readonly env: 'development' | 'production' | 'test'
  readonly port: number
  readonly host: string
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
  readonly docsEnabled: boolean
  readonly bodyLimit: number
  readonly requestTimeoutMs: number
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

  if (e.JWT_SECRET !== undefined) {
    if (e.JWT_SECRET.trim() === '') problems.push('JWT_SECRET: must not be empty')
    else if (production && Buffer.byteLength(e.JWT_SECRET, 'utf8') < 32)
      problems.push('JWT_SECRET: must be at least 32 bytes in production')
    else if (production && e.JWT_SECRET === JWT_SECRET_PLACEHOLDER)
      problems.push('JWT_SECRET: is the .env.example placeholder; generate a random secret')
  } else if (production) {
    problems.push('JWT_SECRET: is required in production')
  }
  if (production && e.BCRYPT_ROUNDS < 10) problems.push('BCRYPT_ROUNDS: must be at least 10 in production')
  if (e.REFRESH_TOKEN_ABSOLUTE_DAYS < e.REFRESH_TOKEN_EXPIRE_DAYS)
    problems.push('REFRESH_TOKEN_ABSOLUTE_DAYS: must be at least REFRESH_TOKEN_EXPIRE_DAYS')
  if (e.LOGIN_LOCKOUT_MAX_SECONDS < e.LOGIN_LOCKOUT_SECONDS)
    problems.push('LOGIN_LOCKOUT_MAX_SECONDS: must be at least LOGIN_LOCKOUT_SECONDS')
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

  if (problems.length > 0 || !keys) throw new ConfigError(problems)
  return deepFreeze({
    env: e.NODE_ENV,
    port: e.PORT,
    host: e.HOST,
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
    // Off by default in production: the API inventory is for developers (OWASP API9).
    docsEnabled: e.DOCS_ENABLED ?? !production,
    bodyLimit: e.BODY_LIMIT_BYTES,
    requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
  } satisfies Config)
}

function describeIssue(issue: z.core.$ZodIssue): string {
  // zod's messages may quote the received value; keep only the shape of the problem.
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

function deepFreeze<T extends object>(value: T): T {
  for (const v of Object.values(value)) if (v && typeof v === 'object') deepFreeze(v)
  return Object.freeze(value)
}
