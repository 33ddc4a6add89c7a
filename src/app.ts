// buildApp(config, deps): the whole application as a Fastify instance, wired but not listening.
// This file only wires; each piece it names owns its behaviour.
import { randomUUID } from 'node:crypto'
import rateLimit from '@fastify/rate-limit'
import fastJson from 'fast-json-stringify'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
// fastify-type-provider-zod 7 rather than @fastify/type-provider-zod 1: the same API, but the latter
// fails `tsc` under module NodeNext unless skipLibCheck hides its broken type import.
import { validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { Config } from './config.js'
import { auditLogger, childLoggerFactory } from './logging.js'
import { createMetrics } from './metrics.js'
import authPlugin from './plugins/auth.js'
import bodyPlugin from './plugins/body.js'
import corsPlugin from './plugins/cors.js'
import docsPlugin from './plugins/docs.js'
import errorPlugin, { answerClientError, answerFrameworkError } from './plugins/errors.js'
import headersPlugin from './plugins/headers.js'
import metricsPlugin from './plugins/metrics.js'
import { accountRoutes } from './routes/account.js'
import { adminRoutes } from './routes/admin.js'
import { authRoutes } from './routes/auth.js'
import { discoveryRoutes } from './routes/discovery.js'
import { introspectionRoutes } from './routes/introspection.js'
import { metaRoutes } from './routes/meta.js'
import { mfaRoutes } from './routes/mfa.js'
import { sessionRoutes } from './routes/sessions.js'
import { userRoutes } from './routes/users.js'
import { createServices, type ServiceOptions, type Services } from './services/index.js'
import { createIntrospection } from './services/introspection.js'
import { openStores, type Stores } from './store/index.js'

export interface AppDeps extends Pick<ServiceOptions, 'clock'> {
  /**
   * Stores that replace the ones the configuration would open (tests: a failing store, or stores
   * shared by two apps). Each is closed with the app.
   */
  stores?: Partial<Pick<Stores, 'users' | 'sessions' | 'denylist' | 'counters' | 'oneTimeTokens' | 'mfa'>>
  /** Fastify's logger options (server.ts passes pino options); off when omitted. */
  logger?: FastifyServerOptions['logger']
  /** Where audit events go. Defaults to a pino logger on stdout when AUDIT_LOG is on. */
  audit?: FastifyBaseLogger
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    users: Services['users']
    sessions: Services['sessions']
    tokens: Services['tokens']
    hasher: Services['hasher']
    /** Undefined when MFA is off (no key to seal secrets with). */
    mfa: Services['mfa']
    audit: FastifyBaseLogger
  }
}

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: deps.logger ?? false,
    bodyLimit: config.bodyLimit,
    // Fastify's defaults are 0 (no limit); a slow client must not hold a socket forever.
    requestTimeout: config.requestTimeoutMs,
    connectionTimeout: config.requestTimeoutMs,
    trustProxy: config.trustProxy,
    genReqId: () => randomUUID(),
    childLoggerFactory,
    clientErrorHandler: answerClientError,
    frameworkErrors: answerFrameworkError,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Kept at their default 'error' on purpose: a body with a __proto__ or constructor.prototype
    // key is refused with 400 rather than parsed with the key dropped (docs/security.md).
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
  }).withTypeProvider<ZodTypeProvider>()

  app.setValidatorCompiler(validatorCompiler)
  app.setSerializerCompiler(serializerCompiler)

  const metrics = createMetrics({ enabled: config.metrics.port !== null })
  const opened = await openStores(config, app.log, metrics)
  const stores = { ...opened, ...deps.stores }
  const audit = deps.audit ?? auditLogger(config)
  const services = createServices(config, stores, { audit, log: app.log, metrics, clock: deps.clock })
  app.decorate('config', config)
  app.decorate('audit', audit)
  app.decorate('users', services.users)
  app.decorate('sessions', services.sessions)
  app.decorate('tokens', services.tokens)
  app.decorate('hasher', services.hasher)
  app.decorate('mfa', services.mfa)
  app.addHook('preClose', async () => services.users.stopBackgroundWork()) // as closing begins: see there
  app.addHook('onClose', async () => {
    await services.close()
    // Stores handed in through deps replace opened ones; each is closed once, then the connections.
    await Promise.allSettled(Object.values(deps.stores ?? {}).map((s) => s.close()))
    await opened.close()
  })

  await app.register(errorPlugin, { realm: config.realm })
  // The request histogram and the separate /metrics listener; nothing at all when metrics are off.
  await app.register(metricsPlugin, { metrics, ...config.metrics })
  await app.register(headersPlugin)
  // CORS ('*' or a list) before auth and rate limits: preflights answered first, errors carry its headers.
  if (config.corsOrigins.length > 0) await app.register(corsPlugin, { origins: config.corsOrigins })
  // The only body parsers, JSON and forms, both UTF-8 only; any other media type gets 415.
  await app.register(bodyPlugin)
  // Per-route request caps (routes set config.rateLimit); keyed on request.ip, which honours
  // TRUST_PROXY and nothing else, so a forged X-Forwarded-For changes nothing.
  // With Redis the caps count across instances; if Redis fails they are skipped (the failure-based
  // login throttle still holds, with local counters). Their keys carry REDIS_PREFIX like all of ours.
  await app.register(rateLimit, {
    global: false,
    ...(opened.redis
      ? { redis: opened.redis, nameSpace: `${config.storage.redisPrefix}rate:`, skipOnError: true }
      : {}),
  })
  if (config.docsEnabled) await app.register(docsPlugin)
  await app.register(authPlugin, { tokens: services.tokens, sessions: services.sessions })

  if (config.admin) {
    const { username, password } = config.admin
    app.addHook('onReady', async () => {
      const { user, created } = await services.users.ensureAdmin(username, password)
      audit.info({ event: created ? 'admin_created' : 'admin_promoted', username: user.username, userId: user.id })
    })
  }

  await app.register(metaRoutes, { config, checks: opened.checks })
  await app.register(authRoutes, { config, metrics })
  await app.register(userRoutes)
  await app.register(sessionRoutes)
  await app.register(adminRoutes)
  await app.register(accountRoutes, { config, recovery: services.recovery })
  if (services.mfa) await app.register(mfaRoutes, { mfa: services.mfa })
  // RFC 7662 only with INTROSPECTION_CLIENTS; RFC 8414 metadata (not registered in production without PUBLIC_URL).
  const introspection = createIntrospection(config, services, stores)
  if (introspection) await app.register(introspectionRoutes, { config, introspection })
  await app.register(discoveryRoutes, { config })
  return app
}

/**
 * Responses are serialised by fast-json-stringify from the JSON Schema of each zod response schema,
 * as Fastify does for JSON Schemas: only declared fields are written (a password hash can never
 * leak), and it is several times faster than the type provider's zod parse + JSON.stringify, which
 * showed in the profile of GET /users/me. One serialiser per schema, shared by every route and app
 * that declares it: each route lists every error it can answer, mostly with the same few bodies.
 */
const serializers = new WeakMap<object, (data: unknown) => string>()
function serializerCompiler({ schema }: { schema: unknown }): (data: unknown) => string {
  const compiled = serializers.get(schema as object)
  if (compiled) return compiled
  const opts = { io: 'output', target: 'draft-7', unrepresentable: 'any' } as const
  const serialize = fastJson(z.toJSONSchema(schema as z.ZodType, opts) as object)
  serializers.set(schema as object, serialize)
  return serialize
}
