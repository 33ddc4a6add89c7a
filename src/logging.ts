// Logging: what never reaches a log line (redaction), how a request is written, the lazy
// per-request logger, the audit logger (security events that survive LOG_LEVEL=warn), the
// human-readable form for a developer's terminal, and the start-up line.
import type { AddressInfo } from 'node:net'
import type { FastifyBaseLogger, FastifyServerOptions } from 'fastify'
import { type Bindings, type ChildLoggerOptions, type DestinationStream, type LoggerOptions, pino } from 'pino'
import type { Config } from './config.js'

/** What never reaches a log line: credentials, tokens and secrets, wherever they appear. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  '*.password',
  '*.hashed_password',
  '*.current_password',
  '*.new_password',
  '*.access_token',
  '*.refresh_token',
  '*.token',
  '*.client_secret',
]

/**
 * Fastify's logger options for the server process (pino), at the configured level: JSON lines on
 * stdout, or through `stream` (prettyStream) when one is given.
 */
export function loggerOptions(
  config: Pick<Config, 'logLevel'>,
  stream?: DestinationStream,
): LoggerOptions & { stream?: DestinationStream } {
  return {
    ...(stream ? { stream } : {}),
    level: config.logLevel,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: {
      // The path without its query string: a token pasted into a URL never reaches the log.
      req: (req: { method: string; url: string; ip?: string }) => ({
        method: req.method,
        url: req.url.split('?', 1)[0],
        remoteAddress: req.ip,
      }),
    },
  }
}

/** The audit logger: its own pino instance on stdout (or `stream`), on unless AUDIT_LOG=false. */
export function auditLogger(config: Pick<Config, 'auditLog'>, stream?: DestinationStream): FastifyBaseLogger {
  return pino({ enabled: config.auditLog, base: { audit: true } }, stream)
}

/**
 * pino-pretty, pino's own pretty printer, for a developer reading a terminal: in development when
 * stdout is a TTY, else undefined (JSON lines: what log collectors read, and always what a pipe or
 * a file gets). A stream in this thread rather than a transport's worker: lines keep their order
 * with what the process writes itself, and none is lost when a failed boot exits at once. Loaded
 * only then: it is not needed anywhere else.
 */
export async function prettyStream(
  config: Pick<Config, 'env'>,
  stdoutIsTTY: boolean,
): Promise<DestinationStream | undefined> {
  if (config.env !== 'development' || !stdoutIsTTY) return undefined
  const { default: pretty } = await import('pino-pretty')
  return pretty({ sync: true, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname' })
}

/** host:port/path of a URL: where a service is, never its credentials or query string. */
export function addressOf(url: string | undefined): string {
  if (!url) return 'unset'
  try {
    const { hostname, port, pathname } = new URL(url)
    return `${hostname}${port ? `:${port}` : ''}${pathname === '/' ? '' : pathname}`
  } catch {
    return 'an unparsable URL'
  }
}

/** The URL of a listening server's address (http://127.0.0.1:8000, http://[::1]:8000). */
export function listenUrl(address: AddressInfo | string | null): string {
  if (address === null || typeof address === 'string') return String(address)
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return `http://${host}:${address.port}`
}

/**
 * The start-up line: what runs and where. The version, the address really bound (PORT=0 included),
 * the store (PostgreSQL by host and database), Redis (by host) or off, the signing algorithm and
 * key ids (they are in every token header), the docs, how mail goes out (`smtp` by host, `log`,
 * or `off`) and the metrics listener (its real address, or off). Never a credential: URLs go
 * through addressOf.
 */
export function startupLine(
  config: Pick<Config, 'env' | 'storage' | 'jwt' | 'docsEnabled' | 'mail' | 'mfa'>,
  { version, url, metrics }: { version: string; url: string; metrics?: string | null },
): { fields: Record<string, unknown>; msg: string } {
  const { storage, jwt } = config
  const docs = config.docsEnabled ? `${url}/docs` : 'off'
  return {
    msg: `fastify-auth-server ${version} listening on ${url}${config.docsEnabled ? `, docs at ${docs}` : ''}`,
    fields: {
      event: 'startup',
      version,
      env: config.env,
      url,
      store: storage.kind,
      ...(storage.kind === 'postgres' ? { database: addressOf(storage.databaseUrl) } : {}),
      redis: storage.redisUrl ? addressOf(storage.redisUrl) : 'off',
      jwt: { algorithm: jwt.algorithm, kid: jwt.kid, previousKids: jwt.keys.previous.map((k) => k.kid) },
      docs,
      mail: config.mail.mode === 'smtp' ? `smtp ${addressOf(config.mail.smtpUrl as string)}` : config.mail.mode,
      metrics: metrics ?? 'off',
      // Where the key sealing TOTP secrets comes from; `off`: no MFA (an asymmetric JWT algorithm
      // and no MFA_ENCRYPTION_KEY).
      mfa: config.mfa.keySource === 'off' ? 'off (no MFA_ENCRYPTION_KEY)' : `on (key from ${config.mfa.keySource})`,
    },
  }
}

/**
 * The logger of the start-up line: the server's, at info whatever LOG_LEVEL says (a production
 * default of warn must not hide what is running; the line is no warning), except that
 * LOG_LEVEL=silent stays silent (undefined).
 */
export function startupLogger(log: FastifyBaseLogger, config: Pick<Config, 'logLevel'>): FastifyBaseLogger | undefined {
  return config.logLevel === 'silent' ? undefined : log.child({}, { level: 'info' })
}

/**
 * The secret values among these variables, for redact(): JWT_SECRET, ADMIN_PASSWORD, MFA_ENCRYPTION_KEY, the
 * passwords of DATABASE_URL, REDIS_URL and SMTP_URL, the HS256 secrets of JWT_PREVIOUS_KEYS, and the client
 * secrets of INTROSPECTION_CLIENTS. Values shorter than 4 characters are left out: replacing them would garble the text, not hide much.
 */
export function secretValues(env: Record<string, string | undefined>): string[] {
  const values = [env.JWT_SECRET, env.ADMIN_PASSWORD, env.MFA_ENCRYPTION_KEY]
  for (const name of ['DATABASE_URL', 'REDIS_URL', 'SMTP_URL']) {
    try {
      const password = new URL(env[name] ?? '').password
      values.push(password, decodeURIComponent(password))
    } catch {
      // Not a URL: nothing to pick out.
    }
  }
  for (const entry of (env.JWT_PREVIOUS_KEYS ?? '').split(',')) {
    if (!/^\s*[/.]/.test(entry)) values.push(entry.trim())
  }
  // client_id:secret entries: the secret is what follows the first ':'. An entry without one may be
  // a secret pasted alone, so it counts as one whole.
  for (const entry of (env.INTROSPECTION_CLIENTS ?? '').split(',')) {
    const trimmed = entry.trim()
    const colon = trimmed.indexOf(':')
    values.push(colon === -1 ? trimmed : trimmed.slice(colon + 1))
  }
  return [...new Set(values.filter((v): v is string => typeof v === 'string' && v.length >= 4))]
}

/** `text` with each of `secrets` replaced by [redacted]: the last guard of a line that leaves the process. */
export function redact(text: string, secrets: readonly string[]): string {
  // Longest first: a secret that contains another is replaced whole.
  return [...secrets].sort((a, b) => b.length - a.length).reduce((t, s) => t.replaceAll(s, '[redacted]'), text)
}

/** Fastify's childLoggerFactory: the lazy child unless the caller asks for child options. */
export const childLoggerFactory: NonNullable<FastifyServerOptions['childLoggerFactory']> = (
  logger,
  bindings,
  options,
) =>
  isEmpty(options) ? (new LazyChild(logger, bindings) as unknown as FastifyBaseLogger) : logger.child(bindings, options)

// Without Object.keys: Fastify passes a fresh `{}` on every request, and this runs for each.
function isEmpty(o: object): boolean {
  for (const _ in o) return false
  return true
}

type LogFn = (...args: unknown[]) => void

/**
 * Each request's logger (with its reqId), whose pino child is created only when something is
 * logged at an enabled level. Creating a pino child per request cost 4% of GET /users/me when
 * profiled (its bindings serialised and redacted each time), although at LOG_LEVEL=warn a normal
 * request logs nothing. Written by hand: Fastify's childLoggerFactory hook exists for this, pino
 * has no lazy child. A class, so that a request costs one small object: the closures and accessors
 * of an object literal built per request cost some 3 µs of CPU a request, more than any other
 * piece of GET /users/me. Whether a level is enabled is asked of the parent at each call, so
 * Fastify's two info lines a request cost one level comparison each at LOG_LEVEL=warn.
 */
class LazyChild {
  #real: FastifyBaseLogger | undefined
  readonly #parent: FastifyBaseLogger
  readonly #bindings: Bindings

  constructor(parent: FastifyBaseLogger, bindings: Bindings) {
    this.#parent = parent
    this.#bindings = bindings
  }

  #get(): FastifyBaseLogger {
    this.#real ??= this.#parent.child(this.#bindings)
    return this.#real
  }

  /** Calls the child's `level` method when that level is enabled (the child's own level once it exists). */
  #log(level: (typeof LEVELS)[number], args: unknown[]): void {
    const logger = this.#real ?? this.#parent
    const enabled = (logger as unknown as { isLevelEnabled?: (l: string) => boolean }).isLevelEnabled?.(level) ?? true
    if (enabled) (this.#get()[level] as LogFn)(...args)
  }

  get level(): string {
    return (this.#real ?? this.#parent).level
  }

  set level(value: string) {
    this.#get().level = value
  }

  silent(): void {}

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.#get().child(bindings, options)
  }

  fatal(...args: unknown[]): void {
    this.#log('fatal', args)
  }

  error(...args: unknown[]): void {
    this.#log('error', args)
  }

  warn(...args: unknown[]): void {
    this.#log('warn', args)
  }

  info(...args: unknown[]): void {
    this.#log('info', args)
  }

  debug(...args: unknown[]): void {
    this.#log('debug', args)
  }

  trace(...args: unknown[]): void {
    this.#log('trace', args)
  }
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const
