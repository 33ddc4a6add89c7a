// Token introspection (RFC 7662): a resource server that holds one of our tokens asks whether it
// is active right now, and what it stands for. Only the clients of INTROSPECTION_CLIENTS may ask
// (RFC 7662 §2.1: the endpoint MUST be protected, or anyone could probe tokens with it), each
// authenticated by a secret compared in constant time.
//
// "Active" means exactly what the rest of the server would do with the token at this instant:
// - an access token is active when GET /users/me would take it: its signature and claims verify
//   (TokenService.verify) and SessionService.authorize passes: not denylisted by its jti, its
//   session or its user's generation (logout, /revoke, a session ended, a password change, a
//   disabled or deleted account), and its user exists, is enabled and is of that generation. The
//   denylist is shared across instances (PostgreSQL or Redis), so every instance answers alike.
// - a refresh token is active when a refresh with it would succeed, as SessionService.refresh
//   decides: known, not rotated, not expired, its session not revoked and within its absolute
//   lifetime, its user there and enabled, REQUIRE_VERIFIED_EMAIL satisfied, and some scope left.
//   A rotated token is inactive even within the reuse grace: the grace re-issues once to a client
//   that lost a race, and a resource server must not take such a token for a live one.
// Anything else (expired, revoked, garbage, a token of another purpose such as an MFA token) is
// `{"active": false}` and nothing more (RFC 7662 §2.2: no hint of why).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import type { Config, IntrospectionClient } from '../config.js'
import { InvalidTokenError } from '../errors.js'
import type { AccessClaims, TokenService } from '../security/tokens.js'
import type { Stores } from '../store/index.js'
import type { SessionStore } from '../store/sessions.js'
import type { UserRecord, UserStore } from '../store/users.js'
import type { Services } from './index.js'
import { refreshScope } from './scopes.js'
import { refreshTokenKey, type SessionService } from './sessions.js'
import type { LoginThrottle } from './throttle.js'

/** RFC 7662 §2.1 token_type_hint values; any other hint is ignored (§2.1: the search extends to every type). */
export type TokenTypeHint = 'access_token' | 'refresh_token'

/** RFC 7662 §2.2 for an access token: what its claims say, plus the account's username. */
export interface ActiveAccessToken {
  active: true
  token_type: 'Bearer'
  scope: string
  sub: string
  username: string
  iss: string
  aud: string
  exp: number
  iat: number
  jti: string
  /** The session (refresh-token family) the token belongs to. */
  sid: string
}

/** RFC 7662 §2.2 for a refresh token: it carries no claims, so these come from its session. */
export interface ActiveRefreshToken {
  active: true
  token_type: 'refresh_token'
  /** The scope a refresh with this token would grant now (the session's, within today's roles). */
  scope: string
  sub: string
  username: string
  iss: string
  /** When this token stops working: its own expiry, never past its session's absolute lifetime. */
  exp: number
  sid: string
}

export type IntrospectionResponse = { active: false } | ActiveAccessToken | ActiveRefreshToken

/** The answer, and which kind of token was found active (null: inactive), for the audit line. */
export interface Introspection {
  response: IntrospectionResponse
  tokenType: TokenTypeHint | null
}

export interface IntrospectionOptions {
  clients: readonly IntrospectionClient[]
  jwt: Config['jwt']
  requireVerifiedEmail: boolean
  tokens: TokenService
  sessions: SessionService
  /** The store SessionService keeps refresh tokens in: read here, never written. */
  sessionStore: SessionStore
  users: UserStore
  /** The per-address budget of failed credentials (services/throttle.ts). */
  throttle: LoginThrottle
}

const INACTIVE: Introspection = Object.freeze({ response: Object.freeze({ active: false as const }), tokenType: null })

export class IntrospectionService {
  readonly #o: IntrospectionOptions
  /** A key of this process only: the digests below mean nothing anywhere else. */
  readonly #key = randomBytes(32)
  /** client id → HMAC of its secret. */
  readonly #digests = new Map<string, Buffer>()
  /** What an unknown id is compared with, so that it costs what a known one does. */
  readonly #unknown: Buffer

  constructor(options: IntrospectionOptions) {
    this.#o = options
    for (const { id, secret } of options.clients) this.#digests.set(id, this.#digest(secret))
    this.#unknown = this.#digest(randomBytes(32).toString('base64url'))
  }

  /**
   * True when `id` is a configured client and `secret` is its secret (RFC 6749 §2.3.1). Both sides
   * are HMAC-SHA-256 digests of the same length compared with timingSafeEqual, so the time taken
   * says nothing about how much of the secret was right, whatever its length; an unknown id does
   * the same work against a digest no secret has. Refused credentials count in the address's
   * budget of failed credentials (failed logins and bad one-time tokens share it): past it,
   * TooManyAttemptsError (429) before any comparison, so that secrets cannot be guessed in bulk.
   */
  async authenticateClient(id: string, secret: string, ip: string): Promise<boolean> {
    await this.#o.throttle.beginTokenCheck(ip)
    const expected = this.#digests.get(id)
    const same = timingSafeEqual(this.#digest(secret), expected ?? this.#unknown)
    if (same && expected !== undefined) return true
    await this.#o.throttle.tokenFailed(ip)
    return false
  }

  /**
   * RFC 7662 §2.2: whether `token` is active, and its metadata if so. The hint only orders the
   * lookups (§2.1): the other kind is looked for whenever the first finds nothing, so a wrong or
   * unknown hint changes no answer (a token is at most one of them: an access token is a JWT, a
   * refresh token starts with `rt_`). A store that cannot be reached
   * throws (503), never answers "inactive" for a token that may be good, nor "active" for one
   * that may be revoked; a denylist in Redis that is down makes access tokens inactive, as it
   * makes /users/me refuse them (SessionService.authorize: fail closed).
   */
  async introspect(token: string, hint: string | undefined): Promise<Introspection> {
    const lookups =
      hint === 'refresh_token'
        ? [() => this.#refresh(token), () => this.#access(token)]
        : [() => this.#access(token), () => this.#refresh(token)]
    for (const lookup of lookups) {
      const found = await lookup()
      if (found) return found
    }
    return INACTIVE
  }

  async #access(token: string): Promise<Introspection | undefined> {
    let claims: AccessClaims
    let user: UserRecord
    try {
      claims = this.#o.tokens.verify('access', token)
      user = await this.#o.sessions.authorize(claims)
    } catch (err) {
      if (err instanceof InvalidTokenError) return undefined
      throw err
    }
    return {
      response: {
        active: true,
        token_type: 'Bearer',
        scope: claims.scope,
        sub: claims.sub,
        username: user.username,
        iss: claims.iss,
        aud: claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        jti: claims.jti,
        sid: claims.sid,
      },
      tokenType: 'access_token',
    }
  }

  async #refresh(token: string): Promise<Introspection | undefined> {
    const key = refreshTokenKey(token)
    if (key === undefined) return undefined
    const found = await this.#o.sessionStore.findToken(key)
    if (!found) return undefined
    const { token: record, family } = found
    const now = Date.now()
    if (family.revoked || record.rotated) return undefined
    if (record.expiresAt.getTime() <= now || family.absoluteExpiresAt.getTime() <= now) return undefined
    const user = await this.#o.users.findById(family.userId)
    if (!user || user.disabled) return undefined
    if (this.#o.requireVerifiedEmail && !user.emailVerified && !user.roles.includes('admin')) return undefined
    let scope: string
    try {
      scope = refreshScope(family.scope, user.roles, undefined)
    } catch {
      // No scope left (the roles lost all of the session's): a refresh would be refused.
      return undefined
    }
    const expiresAt = Math.min(record.expiresAt.getTime(), family.absoluteExpiresAt.getTime())
    return {
      response: {
        active: true,
        token_type: 'refresh_token',
        scope,
        sub: user.id,
        username: user.username,
        iss: this.#o.jwt.issuer,
        exp: Math.floor(expiresAt / 1000),
        sid: family.id,
      },
      tokenType: 'refresh_token',
    }
  }

  #digest(secret: string): Buffer {
    return createHmac('sha256', this.#key).update(secret, 'utf8').digest()
  }
}

/** The service over the app's services and stores; undefined when INTROSPECTION_CLIENTS is empty (off). */
export function createIntrospection(
  config: Config,
  services: Pick<Services, 'tokens' | 'sessions' | 'throttle'>,
  stores: Pick<Stores, 'sessions' | 'users'>,
): IntrospectionService | undefined {
  if (config.introspection.clients.length === 0) return undefined
  return new IntrospectionService({
    clients: config.introspection.clients,
    jwt: config.jwt,
    requireVerifiedEmail: config.recovery.requireVerifiedEmail,
    tokens: services.tokens,
    sessions: services.sessions,
    throttle: services.throttle,
    sessionStore: stores.sessions,
    users: stores.users,
  })
}
