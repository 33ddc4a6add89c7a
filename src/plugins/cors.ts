// CORS (@fastify/cors), so that browser front ends on other origins can call the API. Registered
// only when CORS_ORIGINS lists origins; without it no response carries a CORS header.
//
// What each request gets, decided per request by the delegator below:
// - an allowed Origin with OPTIONS and Access-Control-Request-Method (a preflight): 204 with
//   Access-Control-Allow-Origin, -Allow-Methods (every method a route has), -Allow-Headers
//   (Authorization, Content-Type) and -Max-Age, answered in onRequest, before any auth hook;
// - an allowed Origin otherwise: the normal answer plus Access-Control-Allow-Origin and
//   -Expose-Headers. The headers are set in onRequest, so errors answered later (401, 429, 503,
//   and an OPTIONS that is not a preflight: 405 with Allow) carry them too;
// - any other Origin, or none: the normal answer with no CORS header, preflights included (an
//   OPTIONS is then answered by the not-found handler: 405 with Allow, or 404).
// Every response carries `Vary: Origin` (it depends on the Origin header). Never
// Access-Control-Allow-Credentials: the API uses no cookies, tokens travel in Authorization.
import type { FastifyCorsOptions } from '@fastify/cors'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

export interface CorsPluginOptions {
  /** Exact origins, or '*' for any (config refuses '*' in production). */
  origins: '*' | readonly string[]
}

/** How long a browser may reuse a preflight answer (seconds; Chromium caps it at 7200). */
const MAX_AGE_SECONDS = 600
/** Headers a page may send: the bearer token and the body's media type. */
const ALLOWED_HEADERS = 'Authorization, Content-Type'
/** Response headers a page may read besides the CORS-safelisted ones. */
const EXPOSED_HEADERS = 'Retry-After, WWW-Authenticate, x-request-id'

async function corsPlugin(app: FastifyInstance, { origins }: CorsPluginOptions): Promise<void> {
  const { default: cors } = await import('@fastify/cors')
  const allowed = origins === '*' ? null : new Set(origins)

  // The methods of every route, known once all routes are registered (this plugin comes first).
  const methods = new Set<string>()
  app.addHook('onRoute', (route) => {
    for (const m of [route.method].flat()) if (m !== 'OPTIONS') methods.add(m)
  })
  const off: FastifyCorsOptions = { origin: false }
  let actual: FastifyCorsOptions = off
  let preflight: FastifyCorsOptions = off
  app.addHook('onReady', async () => {
    // `origin: true` reflects the request's Origin: only ever one the delegator has checked.
    const origin = allowed === null ? '*' : true
    // `preflight: false` lets an OPTIONS that is not a preflight through to the not-found handler.
    actual = { origin, credentials: false, exposedHeaders: EXPOSED_HEADERS, preflight: false }
    preflight = {
      origin,
      credentials: false,
      methods: [...methods].sort().join(', '),
      allowedHeaders: ALLOWED_HEADERS,
      maxAge: MAX_AGE_SECONDS,
    }
  })

  await app.register(cors, {
    hook: 'onRequest',
    delegator: (request, callback) => {
      const origin = request.headers.origin
      if (origin === undefined || (allowed !== null && !allowed.has(origin))) return callback(null, off)
      const isPreflight = request.method === 'OPTIONS' && request.headers['access-control-request-method'] !== undefined
      callback(null, isPreflight ? preflight : actual)
    },
  })
}

export default fp(corsPlugin, { name: 'cors', fastify: '5.x' })
