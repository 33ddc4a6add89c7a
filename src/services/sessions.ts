// Sessions: refresh-token families with rotation and reuse detection, and revocation of access
// tokens and sessions (RFC 6749 §6 and §10.4, RFC 9700 §4.14, RFC 7009).
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import type { Config } from '../config.js'
import { emailNotVerified, InvalidTokenError, NotFoundError, OAuthError, ReuseDetectedError } from '../errors.js'
import type { AccessClaims, TokenService } from '../security/tokens.js'
import type { ClientInfo, DenyList, NewRefreshToken, RefreshTokenRecord, SessionStore } from '../store/sessions.js'
import type { UserRecord, UserStore } from '../store/users.js'
import { refreshScope } from './scopes.js'

export interface IssuedTokens {
  accessToken: string
  refreshToken: string
  expiresIn: number
  scope: string
  claims: AccessClaims
  /** True when a refresh was served by the reuse grace (a spent token presented again): for the audit log. */
  graceReissue?: boolean
}

/**
 * Who is asking for tokens, as the HTTP edge knows it: the User-Agent header and the client address
 * (request.ip). Either may be missing. Recorded on the session, for its user to tell sessions apart.
 */
export interface SessionClient {
  userAgent?: string
  ip?: string
}

/** One of a user's live sessions, as list() returns it. Holds no token. */
export interface SessionSummary {
  /** The session id: the `sid` of its access tokens. */
  id: string
  createdAt: Date
  /** When it last got tokens (its login, or its latest refresh). */
  lastUsedAt: Date
  /** When it ends unless refreshed before: its refresh token's expiry, capped by its absolute lifetime. */
  expiresAt: Date
  /** The User-Agent of the request that last got tokens (at most 256 characters), or null. */
  userAgent: string | null
  /** The client address of that request, or null. */
  ip: string | null
  /** True for the session named by `currentSid` (the caller's own). */
  current: boolean
}

/** The longest User-Agent a session keeps, in UTF-16 code units: enough to tell browsers apart. */
const USER_AGENT_MAX_LENGTH = 256
/** The longest client address kept: an IPv6 address with a zone fits (they are at most ~50). */
const IP_MAX_LENGTH = 64

/**
 * A header value as a session keeps it: control characters dropped (PostgreSQL text cannot hold
 * NUL, and the value is shown to people), cut to `max` code units without splitting a surrogate
 * pair, and null when nothing is left.
 */
function clientText(value: string | undefined, max: number): string | null {
  if (value === undefined) return null
  let text = value.replace(/\p{Cc}/gu, '')
  if (text.length > max) {
    const cut = /[\uD800-\uDBFF]/.test(text.charAt(max - 1)) ? max - 1 : max
    text = text.slice(0, cut)
  }
  return text === '' ? null : text
}

/** The client info the store records, at `at` (ms since the epoch). */
function clientInfo(client: SessionClient | undefined, at: number): ClientInfo {
  return {
    userAgent: clientText(client?.userAgent, USER_AGENT_MAX_LENGTH),
    ip: clientText(client?.ip, IP_MAX_LENGTH),
    at: new Date(at),
  }
}

/** Refresh tokens are opaque: a prefix (so scanners and humans can tell them apart) and 256 random bits. */
const REFRESH_PREFIX = 'rt_'
const REFRESH_MAX_LENGTH = 128
const hashToken = (token: string) => createHash('sha256').update(token).digest('base64url')

/**
 * The store key of something presented as a refresh token: the base64url SHA-256 it is stored
 * under, or undefined when it cannot be one of ours (no `rt_` prefix, longer than 128 characters),
 * so that it is not even looked up. For refresh() and for introspection alike.
 */
export function refreshTokenKey(token: string): string | undefined {
  return token.startsWith(REFRESH_PREFIX) && token.length <= REFRESH_MAX_LENGTH ? hashToken(token) : undefined
}

/** Denylist keys: an access token by its jti, a session by its family id. */
const deniedToken = (jti: string) => `j:${jti}`
const deniedSession = (sid: string) => `s:${sid}`
/** Every token of one generation of a user (after a password change, disable or deletion). */
const deniedGeneration = (sub: string, ver: number) => `u:${sub}:${ver}`

export class SessionService {
  constructor(
    private readonly sessions: SessionStore,
    private readonly users: UserStore,
    private readonly denylist: DenyList,
    private readonly jwt: Config['jwt'],
    private readonly tokens: TokenService,
    /**
     * REQUIRE_VERIFIED_EMAIL: a refresh, like a password grant, is refused to a non-admin account
     * without a verified address (its session ends), so that turning the setting on, or a role
     * change, cannot leave such an account a session that outlives the rule.
     */
    private readonly requireVerifiedEmail = false,
  ) {}

  /**
   * The user a verified access token speaks for, if the token is still good: not revoked (by its
   * jti, its session or its user's generation), and its user exists, is enabled and has the
   * generation the token carries. Throws InvalidTokenError otherwise. Revocation is checked before
   * the user lookup and fails closed while the denylist may be stale: a list kept in PostgreSQL
   * answers with the database's 503, one kept in Redis with InvalidTokenError (docs/security.md,
   * "Denylist failure modes"). The generation entry makes a change made on another instance count
   * here at once, whatever this instance's user cache still holds.
   */
  async authorize(claims: AccessClaims): Promise<UserRecord> {
    const denylist = this.denylist
    if (!denylist.healthy()) throw denylist.unavailableError?.() ?? new InvalidTokenError()
    if (
      denylist.has(deniedToken(claims.jti)) ||
      denylist.has(deniedSession(claims.sid)) ||
      denylist.has(deniedGeneration(claims.sub, claims.ver))
    ) {
      throw new InvalidTokenError()
    }
    const record = await this.users.findById(claims.sub)
    if (!record || record.disabled || record.tokenVersion !== claims.ver) throw new InvalidTokenError()
    return record
  }

  #issueAccessToken(user: UserRecord, scope: string, sid: string): { accessToken: string; claims: AccessClaims } {
    const { token, claims } = this.tokens.sign('access', { sub: user.id, scope, sid, ver: user.tokenVersion })
    return { accessToken: token, claims }
  }

  /**
   * A new session for a user who just proved their password. `client` (the User-Agent and address
   * of the login request) is recorded on it for list(); without it the session shows neither.
   */
  async start(user: UserRecord, scope: string, client?: SessionClient): Promise<IssuedTokens> {
    const now = Date.now()
    const familyId = randomUUID()
    const refreshToken = REFRESH_PREFIX + randomBytes(32).toString('base64url')
    const { userAgent, ip } = clientInfo(client, now)
    await this.sessions.createFamily(
      {
        id: familyId,
        userId: user.id,
        scope,
        createdAt: new Date(now),
        absoluteExpiresAt: new Date(now + this.jwt.refreshAbsoluteTtlSeconds * 1000),
        lastUsedAt: new Date(now),
        userAgent,
        ip,
      },
      {
        hash: hashToken(refreshToken),
        expiresAt: this.#refreshExpiry(now, now + this.jwt.refreshAbsoluteTtlSeconds * 1000),
      },
    )
    const { accessToken, claims } = this.#issueAccessToken(user, scope, familyId)
    return { accessToken, refreshToken, expiresIn: this.jwt.accessTokenTtlSeconds, scope, claims }
  }

  /**
   * grant_type=refresh_token: rotates the refresh token. A token that was already rotated is reuse:
   * the whole family is revoked (the legitimate holder's current token dies too) → invalid_grant.
   * `requestedScope`, if given, may only narrow the family's scope (RFC 6749 §6).
   *
   * The reuse grace (jwt.refreshReuseGraceSeconds; 0 turns it off): a token presented again within
   * that many seconds of its rotation, the first time, is taken for a concurrent refresh (a second
   * tab, a retry after a lost answer), not for theft: it gets a new pair in the same session and
   * nothing is revoked. The same when rotate() loses a race against a refresh with the same token.
   * Every other check (lifetimes, user, scope) applies as to any refresh. A second reuse, or one
   * after the grace, revokes the family as above.
   *
   * A refresh that succeeds (grace re-issues included) records `client` on the session as its last
   * use (lastUsedAt now; userAgent and ip as given, null when not).
   */
  async refresh(
    refreshToken: string,
    requestedScope: string | undefined,
    client?: SessionClient,
  ): Promise<IssuedTokens> {
    const invalid = () => new OAuthError('invalid_grant', 'Invalid refresh token')
    const key = refreshTokenKey(refreshToken)
    if (key === undefined) throw invalid()
    const found = await this.sessions.findToken(key)
    if (!found) throw invalid()
    const { token, family } = found
    const now = Date.now()
    if (family.revoked) throw invalid()
    const reuse = async () => {
      await this.revokeSession(family.id)
      return new ReuseDetectedError(family.id, family.userId)
    }
    if (token.rotated && !this.#mayReissue(token, now)) throw await reuse()
    if (token.expiresAt.getTime() <= now || family.absoluteExpiresAt.getTime() <= now) throw invalid()
    const user = await this.users.findById(family.userId)
    if (!user || user.disabled) {
      await this.revokeSession(family.id)
      throw invalid()
    }
    if (this.requireVerifiedEmail && !user.emailVerified && !user.roles.includes('admin')) {
      await this.revokeSession(family.id)
      throw emailNotVerified()
    }
    // The scope can only shrink: what the family was granted, within what the roles allow today.
    const scope = refreshScope(family.scope, user.roles, requestedScope)
    const next = REFRESH_PREFIX + randomBytes(32).toString('base64url')
    const nextRecord = {
      hash: hashToken(next),
      expiresAt: this.#refreshExpiry(now, family.absoluteExpiresAt.getTime()),
    }
    const used = clientInfo(client, now)
    // Not rotated when read but rotate() says false: a concurrent refresh with the same token
    // rotated it a moment ago, which is the grace case too (or the family was just revoked, which
    // the grace refuses as well).
    const graceReissue = token.rotated || !(await this.sessions.rotate(family.id, token.hash, nextRecord, used))
    if (graceReissue && !(await this.#reissueWithinGrace(family.id, token.hash, nextRecord, used))) throw await reuse()
    const { accessToken, claims } = this.#issueAccessToken(user, scope, family.id)
    return {
      accessToken,
      refreshToken: next,
      expiresIn: this.jwt.accessTokenTtlSeconds,
      scope,
      claims,
      graceReissue,
    }
  }

  /** Revokes a session: its refresh tokens stop working, and so do its access tokens (by `sid`). */
  async revokeSession(familyId: string): Promise<void> {
    await this.sessions.revokeFamily(familyId)
    await this.denylist.add(deniedSession(familyId), this.#lastAccessExpiry())
  }

  /** Revokes one access token until it would have expired anyway. */
  async revokeAccessToken(claims: AccessClaims): Promise<void> {
    await this.denylist.add(deniedToken(claims.jti), claims.exp + this.jwt.clockSkewSeconds)
  }

  /** /logout: this access token and its session; the user's other sessions keep working. */
  async logout(claims: AccessClaims): Promise<void> {
    await this.revokeAccessToken(claims)
    await this.revokeSession(claims.sid)
  }

  /**
   * RFC 7009: revoke whatever this token is (a refresh token → its family; an access token of
   * ours → it and its session). Unknown or invalid tokens are not an error.
   */
  async revoke(token: string, hint: string | undefined): Promise<void> {
    const asRefresh = async () => {
      if (!token.startsWith(REFRESH_PREFIX)) return false
      const found = await this.sessions.findToken(hashToken(token))
      if (found) await this.revokeSession(found.family.id)
      return found !== undefined
    }
    const asAccess = async () => {
      let claims: AccessClaims
      try {
        claims = this.tokens.verify('access', token)
      } catch {
        return false
      }
      await this.logout(claims)
      return true
    }
    // The hint only orders the lookups (RFC 7009 §2.1); both kinds are tried.
    if (hint === 'access_token') {
      if (!(await asAccess())) await asRefresh()
    } else if (!(await asRefresh())) await asAccess()
  }

  /**
   * The user's live sessions (SessionStore.listActive: not revoked, within their absolute lifetime,
   * with a refresh token that still works), newest first. `current` is true for the one whose id is
   * `currentSid` (the `sid` of the caller's access token), false for every other, and for all of
   * them when `currentSid` is omitted (an admin looking). Empty for an unknown user.
   */
  async list(userId: string, currentSid?: string): Promise<SessionSummary[]> {
    const active = await this.sessions.listActive(userId, new Date())
    return active.map((session) => ({
      id: session.id,
      createdAt: session.createdAt,
      lastUsedAt: session.lastUsedAt,
      expiresAt: session.expiresAt,
      userAgent: session.userAgent,
      ip: session.ip,
      current: session.id === currentSid,
    }))
  }

  /**
   * Ends one of the user's sessions, as logout does: its refresh tokens stop working, and so does
   * every access token it issued, at once on every instance (the denylist, by `sid`).
   * NotFoundError('Session') (404) unless `sid` is one of the user's live sessions (list()): another
   * user's session is not found either, so that an id tells nothing about whose it is.
   */
  async endSession(userId: string, sid: string): Promise<void> {
    const active = await this.sessions.listActive(userId, new Date())
    if (!active.some((session) => session.id === sid)) throw new NotFoundError('Session')
    await this.revokeSession(sid)
  }

  /**
   * Ends every session of the user except `currentSid` (the caller's own, which keeps working), as
   * endSession does. Returns how many ended.
   *
   * Also those that stopped being live so recently that an access token they issued may still be
   * valid (past their absolute lifetime, say): the store is asked for the sessions live at the
   * earliest instant such a token can have been issued, which includes every session live now.
   */
  async endOtherSessions(userId: string, currentSid: string): Promise<number> {
    const since = new Date(Date.now() - (this.jwt.accessTokenTtlSeconds + this.jwt.clockSkewSeconds) * 1000)
    const others = (await this.sessions.listActive(userId, since)).filter((session) => session.id !== currentSid)
    await Promise.all(others.map((session) => this.revokeSession(session.id)))
    return others.length
  }

  /**
   * Every session of the user ends, and every access token of the generation `tokenVersion`
   * (password change, disable, delete): at once on every instance, through the denylist.
   */
  async endAllSessions(userId: string, tokenVersion: number): Promise<void> {
    await this.denylist.add(deniedGeneration(userId, tokenVersion), this.#lastAccessExpiry())
    await this.endSessionsOf(userId)
  }

  /**
   * Every session of the user ends, with every access token each one issued (denied by `sid`), at
   * once on every instance; the account itself is untouched: its generation stays, so that it can
   * log in again at once. Returns how many sessions ended. An admin ending a user's sessions.
   */
  async endSessionsOf(userId: string): Promise<number> {
    const until = this.#lastAccessExpiry()
    const ids = await this.sessions.revokeAllForUser(userId)
    await Promise.all(ids.map((id) => this.denylist.add(deniedSession(id), until)))
    return ids.length
  }

  /** Every access token of this generation of the user stops working (roles changed). */
  async denyGeneration(userId: string, tokenVersion: number): Promise<void> {
    await this.denylist.add(deniedGeneration(userId, tokenVersion), this.#lastAccessExpiry())
  }

  /** A rotated token may still get its one grace re-issue: rotated within the grace, grace unused. */
  #mayReissue(token: RefreshTokenRecord, now: number): boolean {
    const graceMs = this.jwt.refreshReuseGraceSeconds * 1000
    return graceMs > 0 && !token.graceUsed && token.rotatedAt !== null && token.rotatedAt.getTime() >= now - graceMs
  }

  /** The store's atomic re-issue, measured from now; false at once when the grace is off. */
  async #reissueWithinGrace(
    familyId: string,
    oldHash: string,
    next: NewRefreshToken,
    client: ClientInfo,
  ): Promise<boolean> {
    const graceMs = this.jwt.refreshReuseGraceSeconds * 1000
    if (graceMs === 0) return false
    return this.sessions.reissueWithinGrace(familyId, oldHash, next, new Date(Date.now() - graceMs), client)
  }

  #refreshExpiry(now: number, absoluteExpiry: number): Date {
    return new Date(Math.min(now + this.jwt.refreshTokenTtlSeconds * 1000, absoluteExpiry))
  }

  /** No access token issued before now outlives this instant. */
  #lastAccessExpiry(): number {
    return Math.ceil(Date.now() / 1000) + this.jwt.accessTokenTtlSeconds + this.jwt.clockSkewSeconds
  }
}
