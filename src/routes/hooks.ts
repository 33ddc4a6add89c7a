// Small route-level hooks shared by several routes.
import type { FastifyRequest } from 'fastify'
import { OAuthError, UnsupportedMediaTypeError } from '../errors.js'

export interface MediaTypeOptions {
  /**
   * What a request with no Content-Type and no body at all stands for, instead of 415. The form
   * routes pass `emptyForm`: a form with no fields is a valid form, so a client that sends nothing
   * gets the answer to an empty form (/revoke: 400 "Missing parameter 'token'"). The JSON routes
   * pass nothing and keep 415: JSON has no empty document (an empty body declared as JSON is 400
   * "Request body is empty"), so nothing-at-all is no JSON request, and the 415 names the media
   * type to send.
   */
  noBodyAs?: () => unknown
}

/** The body of an empty form, as the form parser gives it (fast-querystring: a null prototype). */
export const emptyForm = (): Record<string, unknown> => Object.create(null)

/**
 * onRequest hook factory: the route accepts exactly this media type (→ 415 otherwise), checked
 * before the body is parsed. Fastify parses JSON and forms (plugins/body.ts) on every route, so
 * without this /token would take JSON and /register forms: a route that parses a media type it
 * was not written for is how CSRF through simple form posts and parser confusion start. The
 * charset and the bytes are checked by the parsers (plugins/body.ts).
 */
export function requireMediaType(mediaType: string, { noBodyAs }: MediaTypeOptions = {}) {
  return async function checkMediaType(request: FastifyRequest): Promise<void> {
    const header = request.headers['content-type']
    if (header === undefined && noBodyAs && hasNoBody(request)) {
      // Fastify runs no parser for such a request (the same test as its own), so this stays the body.
      request.body = noBodyAs()
      return
    }
    const type = header?.split(';', 1)[0]?.trim().toLowerCase()
    if (type !== mediaType) throw new UnsupportedMediaTypeError(mediaType)
  }
}

/** No body at all: neither Transfer-Encoding nor a Content-Length other than 0. */
function hasNoBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length']
  return request.headers['transfer-encoding'] === undefined && (length === undefined || length === '0')
}

/** The OpenAPI security requirement of a protected route (so Swagger UI sends the token). */
export const BEARER_SECURITY = [{ OAuth2PasswordBearer: [] }]
/** A public route says so (OpenAPI: an empty list of requirements), rather than saying nothing. */
export const PUBLIC_SECURITY: Record<string, string[]>[] = []
export const ADMIN_SECURITY = [{ OAuth2PasswordBearer: ['admin'] }]

/**
 * preValidation for the OAuth form endpoints: RFC 6749 §3.2 says a parameter sent without a value
 * is omitted, and that no parameter may appear twice (the form parser turns a repeated one into an
 * array). `extra` runs next, so that e.g. an unsupported grant_type is reported first.
 */
export function formChecks(fields: readonly string[], extra?: (body: Record<string, unknown>) => void) {
  return async function checkForm(request: FastifyRequest): Promise<void> {
    const body = request.body as Record<string, unknown>
    for (const field of fields) {
      if (body[field] === '') delete body[field]
      if (Array.isArray(body[field])) throw new OAuthError('invalid_request', `Parameter '${field}' is repeated`)
    }
    extra?.(body)
  }
}
