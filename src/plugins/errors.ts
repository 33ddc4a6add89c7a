// What a client sees when something fails: the one error handler, the not-found handler (which
// also answers 405 for a known path with another method), and the answer to requests so broken
// that Node's HTTP parser rejects them before Fastify sees them. Every error body is JSON with a
// human-readable `detail` (the tutorial's clients read it); routes marked `oauthErrors` (/token,
// /revoke) use the RFC 6749 §5.2 shape instead: exactly error, error_description and detail.
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod'
import {
  ApiError,
  BadRequestError,
  BodyTooLargeError,
  InsufficientScopeError,
  InternalError,
  InvalidTokenError,
  MethodNotAllowedError,
  MfaRequiredError,
  MissingTokenError,
  OAuthError,
  type OAuthErrorCode,
  RouteNotFoundError,
  TooManyRequestsError,
  UnsupportedMediaTypeError,
  UriTooLongError,
  ValidationError,
} from '../errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Errors on this route use the RFC 6749 §5.2 body (error, error_description, detail). */
    oauthErrors?: boolean
  }
}

export interface ErrorPluginOptions {
  /** The realm of Bearer challenges (RFC 6750 §3). */
  realm: string
}

// Fastify's own client errors, answered with our body; anything else unknown is a 500.
const FASTIFY_CLIENT_ERRORS: Record<string, () => ApiError> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: () => new UnsupportedMediaTypeError(),
  FST_ERR_CTP_EMPTY_TYPE: () => new UnsupportedMediaTypeError(),
  FST_ERR_CTP_INVALID_TYPE: () => new UnsupportedMediaTypeError(),
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: () => new BadRequestError('Invalid Content-Length'),
  FST_ERR_CTP_BODY_TOO_LARGE: () => new BodyTooLargeError(),
  FST_ERR_CTP_EMPTY_JSON_BODY: () => new BadRequestError('Request body is empty'),
  FST_ERR_CTP_INVALID_JSON_BODY: () => new BadRequestError('Request body is not valid JSON'),
  FST_ERR_BAD_URL: () => new BadRequestError('Malformed URL'),
  FST_ERR_MAX_PARAM_LENGTH: () => new UriTooLongError(),
  FST_ERR_ASYNC_CONSTRAINT: () => new BadRequestError(),
}

/** The catalogue error for anything thrown while handling a request; undefined for a bug (→ 500). */
function toApiError(err: FastifyError | Error, request: FastifyRequest): ApiError | undefined {
  if (err instanceof ApiError) return err
  const fe = err as FastifyError
  if (hasZodFastifySchemaValidationErrors(fe)) {
    if (request.routeOptions.config.oauthErrors) {
      const field = (fe.validation[0]?.instancePath ?? '').replace(/^\//, '')
      return new OAuthError('invalid_request', field ? `Invalid parameter '${field}'` : 'Invalid request body')
    }
    return new ValidationError(
      fe.validation.map((v) => ({
        field: (v.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.'),
        message: v.message ?? 'Invalid value',
      })),
    )
  }
  const known = fe.code ? FASTIFY_CLIENT_ERRORS[fe.code] : undefined
  if (known) return known()
  // JSON.parse of a deeply nested body overflows the stack; that is the client's input, not our bug.
  if (err instanceof SyntaxError || (err instanceof RangeError && /call stack/i.test(err.message))) {
    return new BadRequestError('Request body is not valid JSON')
  }
  // Plugins may throw plain errors that carry a 4xx statusCode.
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    if (fe.statusCode === 413) return new BodyTooLargeError()
    if (fe.statusCode === 415) return new UnsupportedMediaTypeError()
    if (fe.statusCode === 429) return new TooManyRequestsError()
    if (fe.statusCode === 404) return new RouteNotFoundError()
    return new BadRequestError()
  }
  return undefined
}

/** The body for an error, in the shape its route uses. */
function errorBody(err: ApiError, request: FastifyRequest): Record<string, unknown> {
  if (request.routeOptions.config?.oauthErrors) {
    const code: OAuthErrorCode =
      err.oauthError ??
      (err.statusCode === 429 || err.statusCode === 503
        ? 'temporarily_unavailable'
        : err.statusCode >= 500
          ? 'server_error'
          : 'invalid_request')
    const body: Record<string, unknown> = { error: code, error_description: err.detail, detail: err.detail }
    if (err instanceof MfaRequiredError) body.mfa_token = err.mfaToken
    return body
  }
  if (err instanceof ValidationError) return { detail: err.detail, errors: err.errors }
  return { detail: err.detail }
}

async function errorPlugin(app: FastifyInstance, { realm }: ErrorPluginOptions): Promise<void> {
  // RFC 6750 §3: no credentials → a challenge without an error code; a bad token → invalid_token;
  // a token without the scope → insufficient_scope and the scope needed.
  const missing = `Bearer realm="${realm}"`
  const invalid = `Bearer realm="${realm}", error="invalid_token"`
  function send(reply: FastifyReply, err: ApiError): FastifyReply {
    reply.code(err.statusCode)
    for (const name in err.headers) reply.header(name, err.headers[name])
    if (err instanceof InvalidTokenError) reply.header('www-authenticate', invalid)
    else if (err instanceof MissingTokenError) reply.header('www-authenticate', missing)
    else if (err instanceof InsufficientScopeError)
      reply.header('www-authenticate', `${missing}, error="insufficient_scope", scope="${err.scope}"`)
    return reply.send(errorBody(err, reply.request))
  }

  // Encapsulated in Fastify: the plugin is registered with fastify-plugin so both handlers reach
  // every route of the root instance.
  app.setErrorHandler((err: FastifyError, request, reply) => {
    const apiError = toApiError(err, request)
    if (apiError) {
      // Debug, not warn: a storm sheds thousands of requests a second, one log write each.
      request.log.debug({ code: apiError.code, status: apiError.statusCode }, apiError.detail)
      return send(reply, apiError)
    }
    request.log.error({ err, code: 'INTERNAL' }, 'unhandled error')
    return send(reply, new InternalError())
  })

  // Fastify answers a known path with a wrong method as 404; we answer 405 with Allow (RFC 9110 §15.5.6).
  const routes = new Map<string, { pattern: RegExp; methods: Set<string> }>()
  app.addHook('onRoute', (route) => {
    // A catch-all says nothing about a path's methods: it is @fastify/cors's OPTIONS route, which
    // hands every OPTIONS that is not an allowed preflight back to this not-found handler.
    if (route.url === '*') return
    let entry = routes.get(route.url)
    if (!entry) {
      entry = { pattern: routePattern(route.url), methods: new Set() }
      routes.set(route.url, entry)
    }
    for (const m of [route.method].flat()) entry.methods.add(m)
  })
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?', 1)[0] ?? ''
    const allowed = new Set<string>()
    for (const r of routes.values()) if (r.pattern.test(path)) for (const m of r.methods) allowed.add(m)
    return send(reply, allowed.size > 0 ? new MethodNotAllowedError([...allowed].sort()) : new RouteNotFoundError())
  })
}

export default fp(errorPlugin, { name: 'errors', fastify: '5.x' })

/**
 * The paths a route URL matches, as a RegExp: `:name` is one segment, `:name(regex)` one segment
 * matching that regex (so `/users/:id(<uuid>)` does not claim `/users/me`), `*` anything.
 */
function routePattern(url: string): RegExp {
  let source = ''
  for (let i = 0; i < url.length; ) {
    const c = url[i] as string
    if (c === '*') {
      source += '.*'
      i++
    } else if (c !== ':') {
      source += c.replace(/[.+?^${}()|[\]\\]/g, '\\$&')
      i++
    } else {
      // `:name`, then an optional `(regex)` whose parentheses may nest.
      while (i < url.length && url[i] !== '/' && url[i] !== '(') i++
      if (url[i] !== '(') {
        source += '[^/]+'
        continue
      }
      const start = ++i
      for (let depth = 1; i < url.length && depth > 0; i++) depth += url[i] === '(' ? 1 : url[i] === ')' ? -1 : 0
      source += `(?:${url
        .slice(start, i - 1)
        .replace(/^\^/, '')
        .replace(/\$$/, '')})`
    }
  }
  return new RegExp(`^${source}$`)
}

/**
 * Fastify's frameworkErrors: failures before routing, above all a path whose %XX escapes are not
 * UTF-8 (`/users/%FF`, FST_ERR_BAD_URL: 400 "Malformed URL"), or a path segment over maxParamLength
 * (414). Fastify answers these with its own body and none of our hooks; this gives them our
 * `{"detail"}` body and the request id.
 */
export function answerFrameworkError(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const apiError = toApiError(err, request) ?? new InternalError()
  if (apiError instanceof InternalError) request.log.error({ err, code: apiError.code }, 'framework error')
  reply.code(apiError.statusCode).header('x-request-id', request.id).send({ detail: apiError.detail })
}

/**
 * Fastify's clientErrorHandler: errors Node's HTTP parser raises before Fastify sees a request
 * (oversized headers, both Content-Length and Transfer-Encoding, garbage, a request too slow) get
 * our JSON body too, written straight to the socket, which is then closed.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
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
