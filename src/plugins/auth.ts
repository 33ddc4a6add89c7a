// Access tokens: @fastify/jwt configured once per signing key (algorithm pinned, claims required),
// the `authenticate` hook that protects routes, and `requireScope`. Every verification failure
// becomes our 401: the library's own errors (some of which it answers with 500) never reach a client.
import { randomUUID } from 'node:crypto'
import fastifyJwt, { type JWT } from '@fastify/jwt'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { ApiError, BearerError } from '../errors.js'
import type { SigningKey } from '../security/keys.js'
import type { DenyList } from '../store/sessions.js'
import type { UserRecord, UserStore } from '../store/users.js'

/** The claims we issue and require (RFC 9068 §2.2; header typ "at+jwt"). */
export interface AccessClaims {
  sub: string
  iss: string
  aud: string
  iat: number
  exp: number
  jti: string
  /** Space-separated scopes granted (RFC 9068 §2.2.3). */
  scope: string
  /** The session (refresh-token family) this token belongs to: revoking the session kills it. */
  sid: string
  /** The user's token generation when issued; a later bump (password change, disable) kills it. */
  ver: number
}

export interface AuthenticatedUser {
  record: UserRecord
  claims: AccessClaims
}

declare module 'fastify' {
  interface FastifyInstance {
    tokens: {
      issueAccessToken(user: UserRecord, scope: string, sid: string): { accessToken: string; claims: AccessClaims }
      /** Verifies signature, type and claims; throws BearerError('invalid') on any failure. */
      verifyAccessToken(token: string): AccessClaims
    }
    authenticate(request: FastifyRequest): Promise<void>
    requireScope(scope: string): (request: FastifyRequest) => Promise<void>
  }
  interface FastifyRequest {
    auth: AuthenticatedUser | null
  }
}

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/
const ACCESS_TOKEN_TYPE = 'at+jwt'
const REQUIRED_CLAIMS = ['sub', 'iss', 'aud', 'iat', 'exp', 'jti', 'scope', 'sid', 'ver']

export interface AuthPluginOptions {
  config: Config
  store: UserStore
  denylist: DenyList
}

/** Denylist keys: an access token by its jti, a session by its family id. */
export const deniedToken = (jti: string) => `j:${jti}`
export const deniedSession = (sid: string) => `s:${sid}`
/** Every token of one generation of a user (after a password change, disable or deletion). */
export const deniedGeneration = (sub: string, ver: number) => `u:${sub}:${ver}`

async function authPlugin(app: FastifyInstance, { config, store, denylist }: AuthPluginOptions): Promise<void> {
  const { jwt, realm } = config
  const ring = [jwt.keys.current, ...jwt.keys.previous]
  const verifiers = new Map<string, JWT>()

  // One @fastify/jwt namespace per key: each gets its own verifier, built once, pinned to that
  // key's single algorithm (RFC 8725 §3.1: one algorithm per key). Only the current key signs.
  for (const [i, key] of ring.entries()) {
    const namespace = `k${i}`
    await app.register(fastifyJwt, {
      namespace,
      secret: keyMaterial(key),
      sign: {
        algorithm: key.alg,
        kid: key.kid,
        iss: jwt.issuer,
        aud: jwt.audience,
        // A number: seconds. @fastify/jwt before 10.2.3 silently dropped unparseable strings.
        expiresIn: jwt.accessTokenTtlSeconds,
        header: { alg: key.alg, typ: ACCESS_TOKEN_TYPE },
      },
      verify: {
        algorithms: [key.alg],
        // Plain strings, never RegExps (fast-jwt CVE-2026-35041, GHSA-3j8v-cgw4-2g6q).
        allowedIss: jwt.issuer,
        allowedAud: jwt.audience,
        requiredClaims: REQUIRED_CLAIMS,
        checkTyp: ACCESS_TOKEN_TYPE,
        clockTolerance: jwt.clockSkewSeconds * 1000,
        complete: true,
      },
    })
    verifiers.set(key.kid, (app.jwt as unknown as Record<string, JWT>)[namespace] as JWT)
  }
  const signer = verifiers.get(jwt.keys.current.kid) as JWT
  const single = ring.length === 1 ? { kid: jwt.keys.current.kid, verifier: signer } : undefined

  function issueAccessToken(user: UserRecord, scope: string, sid: string) {
    const jti = randomUUID()
    const iat = Math.floor(Date.now() / 1000)
    // iat is passed explicitly so that the claims we return are exactly the ones signed.
    const accessToken = signer.sign({ sub: user.id, jti, scope, sid, ver: user.tokenVersion, iat })
    const claims: AccessClaims = {
      sub: user.id,
      iss: jwt.issuer,
      aud: jwt.audience,
      iat,
      exp: iat + jwt.accessTokenTtlSeconds,
      jti,
      scope,
      sid,
      ver: user.tokenVersion,
    }
    return { accessToken, claims }
  }

  const verified = new VerifiedTokens(10_000, jwt.clockSkewSeconds)

  function verifyAccessToken(token: string): AccessClaims {
    const cached = verified.get(token)
    if (cached) return cached
    const kid = single ? single.kid : headerKid(token)
    const verifier = single ? single.verifier : kid === undefined ? undefined : verifiers.get(kid)
    if (!verifier) throw new BearerError(realm, 'invalid')
    let decoded: { header: Record<string, unknown>; payload: unknown }
    try {
      decoded = verifier.verify(token) as unknown as typeof decoded
    } catch {
      throw new BearerError(realm, 'invalid')
    }
    const { header, payload } = decoded
    // The library checks presence and values; we also check types, since it lets some through
    // (a numeric `sub`, an array `aud` containing ours, a payload that is not an object).
    // A token "issued" in the future (beyond the clock skew) was not issued by us.
    if (
      header.kid !== kid ||
      !isAccessClaims(payload, jwt.issuer, jwt.audience) ||
      payload.iat > Date.now() / 1000 + jwt.clockSkewSeconds
    ) {
      throw new BearerError(realm, 'invalid')
    }
    verified.set(token, Object.freeze(payload))
    return payload
  }

  app.decorate('tokens', { issueAccessToken, verifyAccessToken })
  app.decorateRequest('auth', null)

  app.decorate('authenticate', async function authenticate(request: FastifyRequest): Promise<void> {
    const claims = verifyAccessToken(bearerToken(request, realm))
    // Revocation is checked before the user lookup, and fails closed when the list may be stale.
    // The generation entry makes a change on another instance count here at once, whatever this
    // instance's user cache still holds. A list kept in PostgreSQL fails closed with the database's
    // 503; one kept in Redis with a 401, by choice (README, "Faults").
    if (!denylist.healthy()) throw denylist.unavailableError?.() ?? new BearerError(realm, 'invalid')
    if (
      denylist.has(deniedToken(claims.jti)) ||
      denylist.has(deniedSession(claims.sid)) ||
      denylist.has(deniedGeneration(claims.sub, claims.ver))
    ) {
      throw new BearerError(realm, 'invalid')
    }
    const record = await store.findById(claims.sub)
    if (!record || record.disabled || record.tokenVersion !== claims.ver) {
      throw new BearerError(realm, 'invalid')
    }
    request.auth = { record, claims }
  })

  /** onRequest hook factory: authenticate, then demand `scope` (RFC 6750 §3.1 insufficient_scope → 403). */
  app.decorate(
    'requireScope',
    (scope: string) =>
      async function requireScope(request: FastifyRequest) {
        await app.authenticate(request)
        const granted = (request.auth as AuthenticatedUser).claims.scope.split(' ')
        if (!granted.includes(scope)) {
          throw new ApiError(403, 'Insufficient scope', {
            'www-authenticate': `Bearer realm="${realm}", error="insufficient_scope", scope="${scope}"`,
          })
        }
      },
  )
}

/**
 * Tokens that passed verification, keyed by the whole token string, each dropped once its token
 * expires (with the same clock skew the verifier allows). Revocation and the user checks still run
 * on every request: this only skips re-checking a signature already checked. Written by hand:
 * fast-jwt's own cache keys entries by a SHA-256 of the token, which for HS256 costs about as much
 * as the HMAC it saves (the issue 4 profile: verification was 10% of GET /users/me); a Map keyed by
 * the token itself costs one string hash.
 */
class VerifiedTokens {
  readonly #entries = new Map<string, AccessClaims>()

  constructor(
    private readonly maxEntries: number,
    private readonly skewSeconds: number,
  ) {}

  get(token: string): AccessClaims | undefined {
    const claims = this.#entries.get(token)
    if (claims === undefined) return undefined
    if (Date.now() >= (claims.exp + this.skewSeconds) * 1000) {
      this.#entries.delete(token)
      return undefined
    }
    return claims
  }

  set(token: string, claims: AccessClaims): void {
    if (this.#entries.size >= this.maxEntries) {
      const oldest = this.#entries.keys().next().value
      if (oldest !== undefined) this.#entries.delete(oldest)
    }
    this.#entries.set(token, claims)
  }
}

function keyMaterial(key: SigningKey): string | { private?: string; public: string } {
  if (key.alg === 'HS256') return key.verifyKey
  // A previous key has no private half: @fastify/jwt then builds a verifier only.
  return key.privateKey ? { private: key.privateKey, public: key.verifyKey } : { public: key.verifyKey }
}

/** The kid of a token's header, read without trusting anything else in it. */
function headerKid(token: string): string | undefined {
  const dot = token.indexOf('.')
  if (dot <= 0) return undefined
  try {
    const header: unknown = JSON.parse(Buffer.from(token.slice(0, dot), 'base64url').toString('utf8'))
    const kid = (header as { kid?: unknown } | null)?.kid
    return typeof kid === 'string' ? kid : undefined
  } catch {
    return undefined
  }
}

function isAccessClaims(p: unknown, issuer: string, audience: string): p is AccessClaims {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return false
  const c = p as Record<string, unknown>
  return (
    typeof c.sub === 'string' &&
    c.sub.length > 0 &&
    c.iss === issuer &&
    c.aud === audience &&
    Number.isSafeInteger(c.iat) &&
    Number.isSafeInteger(c.exp) &&
    typeof c.jti === 'string' &&
    c.jti.length > 0 &&
    typeof c.scope === 'string' &&
    typeof c.sid === 'string' &&
    c.sid.length > 0 &&
    Number.isSafeInteger(c.ver)
  )
}

/**
 * The token from the Authorization header, the only place we read one (RFC 6750 §2.3: never the
 * query string; the body method is optional and we do not offer it). No header or another scheme
 * → "missing" (no error code); a Bearer header that is malformed or sent twice → "invalid".
 */
function bearerToken(request: FastifyRequest, realm: string): string {
  const header = request.headers.authorization
  if (header === undefined || header === '') throw new BearerError(realm, 'missing')
  const space = header.indexOf(' ')
  const scheme = (space === -1 ? header : header.slice(0, space)).toLowerCase()
  if (scheme !== 'bearer') throw new BearerError(realm, 'missing')
  // Node keeps only the first of two Authorization headers; a proxy may use the last. Refuse both.
  if (countAuthorizationHeaders(request.raw.rawHeaders) > 1) throw new BearerError(realm, 'invalid')
  const token = space === -1 ? '' : header.slice(space + 1)
  if (!B64TOKEN.test(token)) throw new BearerError(realm, 'invalid')
  return token
}

function countAuthorizationHeaders(raw: string[]): number {
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === 'authorization') n++
  return n
}

export default fp(authPlugin, { name: 'auth', fastify: '5.x' })
