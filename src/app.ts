// buildApp(config, deps): the whole application as a Fastify instance, wired but not listening.
import { randomUUID } from 'node:crypto'
import formbody from '@fastify/formbody'
import rateLimit from '@fastify/rate-limit'
import fastJson from 'fast-json-stringify'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
// fastify-type-provider-zod 7 rather than @fastify/type-provider-zod 1: same API, but the latter
// fails `tsc` under module NodeNext without skipLibCheck (DECISIONS.md).
import { validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod'
import helmet from 'helmet'
import { type Bindings, type ChildLoggerOptions, pino } from 'pino'
import { z } from 'zod'
import type { Config } from './config.js'
import { installErrorHandlers } from './errors.js'
import authPlugin from './plugins/auth.js'
import { adminRoutes } from './routes/admin.js'
import { authRoutes } from './routes/auth.js'
import { metaRoutes } from './routes/meta.js'
import { userRoutes } from './routes/users.js'
import { PasswordHasher } from './security/password.js'
import { SessionService } from './services/sessions.js'
import { LoginThrottle } from './services/throttle.js'
import { UserService } from './services/users.js'
import type { CounterStore } from './store/counters.js'
import { openStores, type Stores } from './store/index.js'
import type { DenyList, SessionStore } from './store/sessions.js'
import type { UserStore } from './store/users.js'

export interface AppDeps {
  /** Stores already opened; by default openStores(config) picks them from the configuration. */
  stores?: Stores
  /** Overrides of single stores (tests: a failing store, or stores shared by two apps). */
  store?: UserStore
  sessions?: SessionStore
  denylist?: DenyList
  counters?: CounterStore
  /** Fastify's logger options (server.ts passes pino options); off when omitted. */
  logger?: FastifyServerOptions['logger']
  /** Where audit events go. Defaults to a pino logger on stdout when AUDIT_LOG is on. */
  audit?: FastifyBaseLogger
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    users: UserService
    sessions: SessionService
    hasher: PasswordHasher
    audit: FastifyBaseLogger
  }
}

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

const NO_STORE = { 'cache-control': 'no-store', pragma: 'no-cache' }

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: deps.logger ?? false,
    bodyLimit: config.bodyLimit,
    // Fastify's defaults are 0 (no limit); a slow client must not hold a socket forever.
    requestTimeout: config.requestTimeoutMs,
    connectionTimeout: config.requestTimeoutMs,
    trustProxy: config.trustProxy,
    genReqId: () => randomUUID(),
    childLoggerFactory: (logger, bindings, options) =>
      Object.keys(options).length > 0 ? logger.child(bindings, options) : lazyChild(logger, bindings),
    // Errors Node's HTTP parser raises before Fastify sees a request (oversized headers, both
    // Content-Length and Transfer-Encoding, garbage) get our JSON body too.
    clientErrorHandler: answerClientError,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Kept at their default 'error' on purpose (STANDARDS.md §5.3): __proto__ bodies get a 400.
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
  }).withTypeProvider<ZodTypeProvider>()

  app.setValidatorCompiler(validatorCompiler)
  app.setSerializerCompiler(serializerCompiler)
  // Only JSON (built in) and forms (@fastify/formbody) are parsed; text/plain bodies get 415.
  app.removeContentTypeParser('text/plain')

  const stores = deps.stores ?? (await openStores(config, app.log))
  const store = deps.store ?? stores.users
  const sessionStore = deps.sessions ?? stores.sessions
  const denylist = deps.denylist ?? stores.denylist
  const counters = deps.counters ?? stores.counters
  const hasher = new PasswordHasher({
    rounds: config.password.bcryptRounds,
    concurrency: config.password.hashConcurrency,
    queueMax: config.password.hashQueueMax,
    maxWaitMs: config.password.hashMaxWaitMs,
  })
  // Started now, awaited on the first failed login: off the path to the first request.
  hasher.dummyHash().catch(() => {})

  const audit = deps.audit ?? pino({ enabled: config.auditLog, base: { audit: true } })
  app.decorate('config', config)
  app.decorate('hasher', hasher)
  app.decorate('audit', audit)

  installErrorHandlers(app)
  // Fastify closes idle keep-alive sockets once, when close() starts; the socket of a request still in
  // flight would stay open for its keep-alive timeout and hold the shutdown past the grace delay.
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
  })
  const securityHeaders = computeSecurityHeaders()
  // One hook for what every response carries. No API response may be cached unless its route
  // says otherwise (JWKS): tokens and user data must never be (RFC 6749 §5.1, OWASP REST).
  app.addHook('onSend', async (request, reply) => {
    reply.headers(securityHeaders)
    reply.header('x-request-id', request.id)
    if (!reply.hasHeader('cache-control')) reply.headers(NO_STORE)
    if (closing) reply.header('connection', 'close')
  })
  app.addHook('onClose', async () => {
    // Stores handed in through deps replace opened ones; each is closed once, then the connections.
    const overrides = [deps.store, deps.sessions, deps.denylist, deps.counters].filter((s) => s !== undefined)
    await Promise.allSettled(overrides.map((s) => s.close()))
    await stores.close()
  })

  await app.register(formbody)
  // Per-route request caps (routes set config.rateLimit); keyed on request.ip, which honours
  // TRUST_PROXY and nothing else, so a forged X-Forwarded-For changes nothing.
  // With Redis the caps count across instances; if Redis fails they are skipped (the failure-based
  // login throttle still holds, with local counters). Their keys carry REDIS_PREFIX like all of ours.
  await app.register(rateLimit, {
    global: false,
    ...(stores.redis
      ? { redis: stores.redis, nameSpace: `${config.storage.redisPrefix}rate:`, skipOnError: true }
      : {}),
  })
  if (config.docsEnabled) await registerDocs(app)
  await app.register(authPlugin, { config, store, denylist })

  const sessions = new SessionService(sessionStore, store, denylist, config.jwt, app.tokens.issueAccessToken)
  const throttle = new LoginThrottle(counters, config.throttle)
  const users = new UserService(store, hasher, throttle, sessions, config.password.minLength, (username, ip) =>
    audit.warn({ event: 'lockout', username: username.slice(0, 64), ip }),
  )
  app.decorate('sessions', sessions)
  app.decorate('users', users)

  // Refresh families past their absolute lifetime can never work again: forget them.
  const sweep = setInterval(
    () => sessionStore.sweep(new Date()).catch((err) => app.log.warn({ err }, 'sweep failed')),
    3_600_000,
  )
  sweep.unref()
  app.addHook('onClose', async () => clearInterval(sweep))

  if (config.admin) {
    const { username, password } = config.admin
    app.addHook('onReady', async () => {
      const { user, created } = await users.ensureAdmin(username, password)
      audit.info({ event: created ? 'admin_created' : 'admin_promoted', username: user.username, userId: user.id })
    })
  }

  await app.register(metaRoutes, { config, checks: stores.checks })
  await app.register(authRoutes, { config })
  await app.register(userRoutes)
  await app.register(adminRoutes)
  return app
}

function answerClientError(err: NodeJS.ErrnoException, socket: import('node:net').Socket): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const [status, reason, detail] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large', 'Request headers too large']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', 'Request timeout']
        : [400, 'Bad Request', 'Malformed HTTP request']
  const body = JSON.stringify({ detail })
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  )
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const
const noop = () => {}

/**
 * Each request's logger (with its reqId), created only when something is logged at an enabled
 * level. Creating a pino child per request cost 4% of GET /users/me (issue 4 profile: bindings
 * serialised and redacted each time) although at LOG_LEVEL=warn a normal request logs nothing.
 * Written by hand: Fastify's childLoggerFactory hook exists for this, pino has no lazy child.
 */
function lazyChild(parent: FastifyBaseLogger, bindings: Bindings): FastifyBaseLogger {
  let real: FastifyBaseLogger | undefined
  const get = () => {
    real ??= parent.child(bindings)
    return real
  }
  const lazy = {
    get level() {
      return parent.level
    },
    set level(value: string) {
      get().level = value
    },
    silent: noop,
    child: (b: Bindings, o?: ChildLoggerOptions) => get().child(b, o),
  } as unknown as FastifyBaseLogger
  const enabled = (level: string) =>
    (parent as unknown as { isLevelEnabled?: (l: string) => boolean }).isLevelEnabled?.(level) ?? true
  for (const level of LEVELS) {
    ;(lazy as unknown as Record<string, unknown>)[level] = enabled(level)
      ? (...args: unknown[]) => (get()[level] as (...a: unknown[]) => void)(...args)
      : noop
  }
  return lazy
}

/**
 * helmet's headers, computed once. @fastify/helmet runs helmet's whole middleware chain (and
 * re-parses the CSP directives) on every request: 20% of the CPU of GET /users/me in the issue 4
 * profile. For a JSON API the headers never vary, so we ask helmet for them once at start and set
 * them from the one onSend hook. /docs replaces the CSP with its own (swagger-ui staticCSP).
 */
function computeSecurityHeaders(): Record<string, string> {
  const headers: Record<string, string> = {}
  const res = {
    setHeader: (name: string, value: string) => {
      headers[name.toLowerCase()] = value
    },
    removeHeader: (name: string) => {
      delete headers[name.toLowerCase()]
    },
    getHeader: (name: string) => headers[name.toLowerCase()],
  }
  const middleware = helmet({
    // A JSON API: nothing may be loaded or framed.
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    frameguard: { action: 'deny' },
    crossOriginResourcePolicy: { policy: 'same-origin' },
    // Headers that only matter for HTML documents or for browsers long gone (IE's download
    // dialog, Flash's cross-domain policies, the XSS auditor, DNS prefetch of links, the opener
    // of a window, origin-keyed agent clusters): every response would carry ~250 bytes for nothing.
    crossOriginOpenerPolicy: false,
    originAgentCluster: false,
    xDnsPrefetchControl: false,
    xDownloadOptions: false,
    xPermittedCrossDomainPolicies: false,
    xXssProtection: false,
  })
  let failed: unknown
  middleware({ headers: {} } as never, res as never, (err?: unknown) => {
    failed = err
  })
  if (failed || !headers['content-security-policy']) throw new Error('helmet did not produce its headers')
  return headers
}

/**
 * Responses are serialised by fast-json-stringify from the JSON Schema of each zod response schema,
 * as Fastify does for JSON Schemas: only declared fields are written (a password hash can never
 * leak), and it is several times faster than the type provider's zod parse + JSON.stringify, which
 * showed in the /users/me profile (issue 4).
 */
function serializerCompiler({ schema }: { schema: unknown }): (data: unknown) => string {
  return fastJson(
    z.toJSONSchema(schema as z.ZodType, { io: 'output', target: 'draft-7', unrepresentable: 'any' }) as object,
  )
}

async function registerDocs(app: FastifyInstance): Promise<void> {
  // Imported only when the docs are served (off by default in production): less to load at start.
  const [{ default: swagger }, { default: swaggerUi }, { jsonSchemaTransform }] = await Promise.all([
    import('@fastify/swagger'),
    import('@fastify/swagger-ui'),
    import('fastify-type-provider-zod'),
  ])
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Fastify auth API',
        description:
          'Registration, the OAuth2 password and refresh-token grants, JWT bearer tokens, revocation and account administration. "Authorize" logs in through /token.',
        version: '0.1.0',
      },
      // No `servers`: Swagger UI then calls the origin it was loaded from (STANDARDS.md Part 3).
      components: {
        securitySchemes: {
          OAuth2PasswordBearer: {
            type: 'oauth2',
            flows: {
              password: {
                tokenUrl: '/token',
                refreshUrl: '/token',
                scopes: { user: 'Your own account', admin: 'Manage every account' },
              },
            },
          },
        },
      },
    },
    transform: jsonSchemaTransform,
  })
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}
