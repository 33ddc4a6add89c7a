// Small route-level hooks shared by several routes.
import type { FastifyRequest } from 'fastify'
import { UnsupportedMediaTypeError } from '../errors.js'

/**
 * onRequest hook factory: the route accepts exactly this media type (→ 415 otherwise), checked
 * before the body is parsed. Fastify parses JSON and (with @fastify/formbody) forms on every route,
 * so without this /token would take JSON and /register forms: a route that parses a media type it
 * was not written for is how CSRF through simple form posts and parser confusion start.
 */
export function requireMediaType(mediaType: string) {
  return async function checkMediaType(request: FastifyRequest): Promise<void> {
    const header = request.headers['content-type']
    const type = header?.split(';', 1)[0]?.trim().toLowerCase()
    if (type !== mediaType) throw new UnsupportedMediaTypeError(mediaType)
  }
}

/** The OpenAPI security requirement of a protected route (so Swagger UI sends the token). */
export const BEARER_SECURITY = [{ OAuth2PasswordBearer: [] }]
export const ADMIN_SECURITY = [{ OAuth2PasswordBearer: ['admin'] }]
