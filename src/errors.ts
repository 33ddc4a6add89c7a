// Our errors, and the one error handler and not-found handler that decide what a client sees.
// Every error body is JSON with a human-readable `detail` (the tutorial's clients read it); the
// OAuth endpoints (/token, /revoke) add RFC 6749 §5.2 `error` and `error_description`.
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod'

export interface FieldError {
  field: string
  message: string
}

/**
 * An answer to the client, not a bug: it carries no stack trace. Capturing one made each 401 cost
 * more than a whole successful request (issue 4), and requests with bad tokens are exactly what an
 * attacker can send in bulk.
 */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly detail: string,
    readonly headers: Record<string, string> = {},
    readonly oauthError?: OAuthErrorCode,
  ) {
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    super(detail)
    Error.stackTraceLimit = limit
    this.name = 'ApiError'
  }
}

export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_grant'
  | 'unsupported_grant_type'
  | 'invalid_scope'
  | 'temporarily_unavailable'
  | 'unsupported_token_type'
  | 'server_error'

/** An RFC 6749 §5.2 error: 400 unless told otherwise; the body has exactly error, error_description, detail. */
export class OAuthError extends ApiError {
  constructor(code: OAuthErrorCode, description: string, statusCode = 400, headers: Record<string, string> = {}) {
    super(statusCode, description, headers, code)
    this.name = 'OAuthError'
  }
}

export class ValidationError extends ApiError {
  constructor(readonly errors: FieldError[]) {
    super(422, summarise(errors))
    this.name = 'ValidationError'
  }
}

export class UsernameTakenError extends ApiError {
  constructor() {
    super(409, 'Username already registered')
  }
}

export const INVALID_CREDENTIALS = 'Invalid credentials'
export const invalidGrant = () => new OAuthError('invalid_grant', INVALID_CREDENTIALS)

export class ServiceUnavailableError extends ApiError {
  constructor(detail: string, retryAfterSeconds: number) {
    super(503, detail, { 'retry-after': String(retryAfterSeconds) }, 'temporarily_unavailable')
  }
}

/** RFC 6750 §3: 401 with a Bearer challenge. No credentials → no error code; a bad token → invalid_token. */
export class BearerError extends ApiError {
  constructor(realm: string, kind: 'missing' | 'invalid') {
    const challenge = kind === 'missing' ? `Bearer realm="${realm}"` : `Bearer realm="${realm}", error="invalid_token"`
    super(401, kind === 'missing' ? 'Not authenticated' : 'Could not validate credentials', {
      'www-authenticate': challenge,
    })
    this.name = 'BearerError'
  }
}

function summarise(errors: FieldError[]): string {
  const first = errors[0]
  if (!first) return 'Invalid request'
  const more = errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''
  return `${first.field === '' ? 'body' : first.field}: ${first.message}${more}`
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Errors on this route use the RFC 6749 §5.2 body (error, error_description, detail). */
    oauthErrors?: boolean
  }
}

// Fastify's own client errors we answer with our body; anything else unknown is a 500.
const FASTIFY_CLIENT_ERRORS: Record<string, { status: number; detail: string }> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { status: 415, detail: 'Unsupported Media Type' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { status: 400, detail: 'Invalid Content-Length' },
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, detail: 'Request body too large' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { status: 400, detail: 'Request body is empty' },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, detail: 'Request body is not valid JSON' },
  FST_ERR_CTP_EMPTY_TYPE: { status: 415, detail: 'Unsupported Media Type' },
  FST_ERR_CTP_INVALID_TYPE: { status: 415, detail: 'Unsupported Media Type' },
  FST_ERR_BAD_URL: { status: 400, detail: 'Malformed URL' },
  FST_ERR_ASYNC_CONSTRAINT: { status: 400, detail: 'Bad Request' },
}

function toApiError(err: FastifyError | Error, request: FastifyRequest): ApiError | undefined {
  if (err instanceof ApiError) return err
  const fe = err as FastifyError
  if (hasZodFastifySchemaValidationErrors(fe)) {
    const errors = fe.validation.map((v) => ({
      field: (v.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.'),
      message: v.message ?? 'Invalid value',
    }))
    if (request.routeOptions.config.oauthErrors) {
      return new OAuthError('invalid_request', describeOAuthValidation(fe.validation))
    }
    return new ValidationError(errors)
  }
  if (fe.code && FASTIFY_CLIENT_ERRORS[fe.code]) {
    const { status, detail } = FASTIFY_CLIENT_ERRORS[fe.code] as { status: number; detail: string }
    return new ApiError(status, detail)
  }
  // JSON.parse of a deeply nested body overflows the stack; that is the client's input, not our bug.
  if (err instanceof SyntaxError || (err instanceof RangeError && /call stack/i.test(err.message))) {
    return new ApiError(400, 'Request body is not valid JSON')
  }
  // @fastify/rate-limit and other plugins throw plain errors that carry a 4xx statusCode.
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new ApiError(fe.statusCode, fe.statusCode === 429 ? 'Too many requests' : 'Bad Request')
  }
  return undefined
}

type ZodValidationIssue = { instancePath?: string }

function describeOAuthValidation(issues: ZodValidationIssue[]): string {
  const field = (issues[0]?.instancePath ?? '').replace(/^\//, '')
  return field ? `Invalid parameter '${field}'` : 'Invalid request body'
}

/** The body for an error, in the shape its route uses. */
export function errorBody(err: ApiError, request: FastifyRequest): Record<string, unknown> {
  if (request.routeOptions.config?.oauthErrors) {
    const code: OAuthErrorCode =
      err.oauthError ??
      (err.statusCode === 429 || err.statusCode === 503
        ? 'temporarily_unavailable'
        : err.statusCode >= 500
          ? 'server_error'
          : 'invalid_request')
    return { error: code, error_description: err.detail, detail: err.detail }
  }
  if (err instanceof ValidationError) return { detail: err.detail, errors: err.errors }
  return { detail: err.detail }
}

export function sendError(reply: FastifyReply, err: ApiError): FastifyReply {
  reply.code(err.statusCode)
  for (const [name, value] of Object.entries(err.headers)) reply.header(name, value)
  return reply.send(errorBody(err, reply.request))
}

/**
 * Installs the error handler and the not-found handler on the root instance (both are encapsulated,
 * so installing them anywhere else would miss routes). Unknown errors are logged with the request id
 * and answered with a generic 500: details never reach the client.
 */
export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    const apiError = toApiError(err, request)
    if (apiError) {
      // Debug, not warn: a storm sheds thousands of requests a second, one log write each.
      if (apiError.statusCode >= 500) request.log.debug({ err: apiError.detail }, 'request shed')
      return sendError(reply, apiError)
    }
    request.log.error({ err }, 'unhandled error')
    return sendError(reply, new ApiError(500, 'Internal Server Error'))
  })

  // Fastify answers a known path with a wrong method as 404; we answer 405 with Allow (RFC 9110 §15.5.6).
  const routes = new Map<string, { pattern: RegExp; methods: Set<string> }>()
  app.addHook('onRoute', (route) => {
    let entry = routes.get(route.url)
    if (!entry) {
      const source = route.url
        .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
        .replace(/:[^/]+/g, '[^/]+')
        .replace(/\*/g, '.*')
      entry = { pattern: new RegExp(`^${source}$`), methods: new Set() }
      routes.set(route.url, entry)
    }
    for (const m of [route.method].flat()) entry.methods.add(m)
  })
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?', 1)[0] ?? ''
    const allowed = new Set<string>()
    for (const r of routes.values()) if (r.pattern.test(path)) for (const m of r.methods) allowed.add(m)
    if (allowed.size > 0) {
      return sendError(reply, new ApiError(405, 'Method Not Allowed', { allow: [...allowed].sort().join(', ') }))
    }
    return sendError(reply, new ApiError(404, 'Not Found'))
  })
}

/** A dependency (database, cache) is unreachable: 503 quickly, never a hang or a 500. */
export class StoreUnavailableError extends ServiceUnavailableError {
  constructor(readonly dependency: string) {
    super(`Service temporarily unavailable: ${dependency} is not reachable`, 5)
    this.name = 'StoreUnavailableError'
  }
}
