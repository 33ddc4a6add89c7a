// Bearer authentication at the HTTP edge: reading the access token from the Authorization header,
// the `authenticate` hook that protects routes, and `requireScope`. The token rules live in
// security/tokens.ts (signature, type, claims) and SessionService.authorize (revocation, user).
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { InsufficientScopeError, InvalidTokenError, MissingTokenError } from '../errors.js'
import type { AccessClaims, TokenService } from '../security/tokens.js'
import type { SessionService } from '../services/sessions.js'
import type { UserRecord } from '../store/users.js'

export interface AuthenticatedUser {
  record: UserRecord
  claims: AccessClaims
}

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook: a valid, unrevoked access token of an enabled user, or 401 (RFC 6750 §3.1). */
    authenticate(request: FastifyRequest): Promise<void>
    /** onRequest hook factory: authenticate, then demand `scope` (403 insufficient_scope, RFC 6750 §3.1). */
    requireScope(scope: string): (request: FastifyRequest) => Promise<void>
  }
  interface FastifyRequest {
    /** Set by `authenticate`; null on routes without it. */
    auth: AuthenticatedUser | null
  }
}

export interface AuthPluginOptions {
  tokens: TokenService
  sessions: SessionService
}

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/

async function authPlugin(app: FastifyInstance, { tokens, sessions }: AuthPluginOptions): Promise<void> {
  app.decorateRequest('auth', null)

  app.decorate('authenticate', async function authenticate(request: FastifyRequest): Promise<void> {
    const claims = tokens.verify('access', bearerToken(request))
    request.auth = { record: await sessions.authorize(claims), claims }
  })

  app.decorate(
    'requireScope',
    (scope: string) =>
      async function requireScope(request: FastifyRequest) {
        await app.authenticate(request)
        const granted = (request.auth as AuthenticatedUser).claims.scope.split(' ')
        if (!granted.includes(scope)) throw new InsufficientScopeError(scope)
      },
  )
}

/**
 * The token from the Authorization header, the only place we read one (RFC 6750 §2.3: never the
 * query string; the body method is optional and we do not offer it). No header or another scheme
 * → MissingTokenError (a challenge without an error code); a Bearer header that is malformed or
 * sent twice → InvalidTokenError.
 */
function bearerToken(request: FastifyRequest): string {
  const header = request.headers.authorization
  if (header === undefined || header === '') throw new MissingTokenError()
  const space = header.indexOf(' ')
  const scheme = (space === -1 ? header : header.slice(0, space)).toLowerCase()
  if (scheme !== 'bearer') throw new MissingTokenError()
  // Node keeps only the first of two Authorization headers; a proxy may use the last. Refuse both.
  if (countAuthorizationHeaders(request.raw.rawHeaders) > 1) throw new InvalidTokenError()
  const token = space === -1 ? '' : header.slice(space + 1)
  if (!B64TOKEN.test(token)) throw new InvalidTokenError()
  return token
}

function countAuthorizationHeaders(raw: string[]): number {
  let n = 0
  // The length first: only a 13-character name can be Authorization, and lower-casing every other
  // header name would allocate a string each, on every authenticated request.
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    if (name.length === AUTHORIZATION.length && name.toLowerCase() === AUTHORIZATION) n++
  }
  return n
}
const AUTHORIZATION = 'authorization'

export default fp(authPlugin, { name: 'auth', fastify: '5.x' })
