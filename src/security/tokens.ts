// Signed tokens (JWTs): signing with the current key, verification against the key ring, the
// claim checks, and the cache of verified tokens. No HTTP here: services and the CLI use it too.
//
// Every token has a purpose. A purpose fixes the JOSE header `typ` and the audience (`aud`), and
// the verifier of a purpose demands both, so a token minted for one purpose is refused by every
// other (RFC 8725 §3.11 and §3.12: explicit typing and audience per kind of token). Two purposes:
// the access token (RFC 9068) and the MFA token, which carries a password grant that was right
// over to its second step (services/mfa.ts). Another single-purpose token is one more entry of
// PURPOSES, with its own claims type in TokenClaims, its own `typ` and its own audience.
//
// fast-jwt is used directly: it is the library that @fastify/jwt wraps (same signer and verifier,
// same options), without the Fastify plugin around it, which this layer must not depend on.
import { randomUUID } from 'node:crypto'
import { createSigner, createVerifier } from 'fast-jwt'
import type { Config } from '../config.js'
import { InvalidTokenError } from '../errors.js'
import type { SigningKey } from '../keys.js'
import type { TokenCounts } from '../metrics.js'

/** Claims every token of ours carries (RFC 7519 §4.1). Times are NumericDates: seconds since the epoch. */
export interface RegisteredClaims {
  /** The user's id. */
  sub: string
  iss: string
  aud: string
  iat: number
  exp: number
  jti: string
}

/** The claims of an access token (RFC 9068 §2.2; header typ "at+jwt"). */
export interface AccessClaims extends RegisteredClaims {
  /** Space-separated scopes granted (RFC 9068 §2.2.3). */
  scope: string
  /** The session (refresh-token family) this token belongs to: revoking the session kills it. */
  sid: string
  /** The user's token generation when issued; a later bump (password change, disable) kills it. */
  ver: number
}

/**
 * The claims of an MFA token (header typ "mfa+jwt"): the password of `sub` was right, a second
 * factor is due. Never an access token: its own `typ` and audience, refused everywhere else.
 */
export interface MfaClaims extends RegisteredClaims {
  /** The scope the password grant was granted, issued once the second factor is given. */
  scope: string
  /** The account's token generation when issued: a password change or a disable voids the token. */
  ver: number
  /** The factor it was issued for (its enrolment time, ms): MFA turned off and on again voids it. */
  fct: number
}

/** How long an MFA token lives: the time to open an authenticator app and type a code. */
export const MFA_TOKEN_TTL_SECONDS = 300

/** The claims of each token purpose. */
export interface TokenClaims {
  access: AccessClaims
  mfa: MfaClaims
}

export type TokenPurpose = keyof TokenClaims

/** What a caller supplies when signing: everything but the registered claims, which we set. */
export type ClaimsInput<P extends TokenPurpose> = Omit<TokenClaims[P], Exclude<keyof RegisteredClaims, 'sub'>>

interface PurposeSpec<C extends RegisteredClaims> {
  /** The JOSE header `typ` (RFC 8725 §3.11). */
  typ: string
  audience(jwt: Config['jwt']): string
  /** Lifetime in seconds. */
  ttlSeconds(jwt: Config['jwt']): number
  /** Claims beyond the registered ones, which verification requires. */
  claims: readonly string[]
  /** Type checks of the purpose's own claims (the library checks presence and values only). */
  check(payload: Record<string, unknown>): boolean
  /** Remember verified tokens until they expire (for tokens presented on every request). */
  cached: boolean
  /** Phantom field carrying the claims type. */
  readonly _claims?: C
}

const PURPOSES: { readonly [P in TokenPurpose]: PurposeSpec<TokenClaims[P]> } = {
  access: {
    typ: 'at+jwt',
    audience: (jwt) => jwt.audience,
    ttlSeconds: (jwt) => jwt.accessTokenTtlSeconds,
    claims: ['scope', 'sid', 'ver'],
    check: (c) =>
      typeof c.scope === 'string' && typeof c.sid === 'string' && c.sid.length > 0 && Number.isSafeInteger(c.ver),
    cached: true,
  },
  mfa: {
    typ: 'mfa+jwt',
    audience: (jwt) => `${jwt.issuer}#mfa`,
    ttlSeconds: () => MFA_TOKEN_TTL_SECONDS,
    claims: ['scope', 'ver', 'fct'],
    check: (c) => typeof c.scope === 'string' && Number.isSafeInteger(c.ver) && Number.isSafeInteger(c.fct),
    // Presented once or a few times, and each use is checked against the store anyway.
    cached: false,
  },
}

const REGISTERED = ['sub', 'iss', 'aud', 'iat', 'exp', 'jti'] as const

type Signer = (payload: Record<string, unknown>) => string
type Verifier = (token: string) => { header: Record<string, unknown>; payload: unknown }

/**
 * Signs and verifies our JWTs. `sign` always uses the current key; `verify` accepts the current
 * and the previous keys (a rotation), each pinned to its own single algorithm (RFC 8725 §3.1), the
 * key chosen by the header's `kid` among ours only (never key material from the token).
 */
export class TokenService {
  readonly #jwt: Config['jwt']
  readonly #signers = new Map<TokenPurpose, Signer>()
  /** purpose → kid → verifier. */
  readonly #verifiers = new Map<TokenPurpose, Map<string, Verifier>>()
  /** One cache per cached purpose, so that a hit can never answer for another purpose. */
  readonly #caches = new Map<TokenPurpose, VerifiedTokens>()
  /** With a single key, no header needs reading to pick the verifier. */
  readonly #singleKid: string | undefined
  /** Verifications and cache hits, counted in place for the metrics (read when scraped). */
  readonly #counts: TokenCounts

  constructor(
    jwt: Config['jwt'],
    {
      cacheSize = 10_000,
      counts = { valid: 0, invalid: 0, cacheHits: 0 },
    }: { cacheSize?: number; counts?: TokenCounts } = {},
  ) {
    this.#jwt = jwt
    this.#counts = counts
    const ring = [jwt.keys.current, ...jwt.keys.previous]
    this.#singleKid = ring.length === 1 ? jwt.keys.current.kid : undefined
    for (const purpose of Object.keys(PURPOSES) as TokenPurpose[]) {
      const spec = PURPOSES[purpose]
      if (spec.cached) this.#caches.set(purpose, new VerifiedTokens(cacheSize, jwt.clockSkewSeconds))
      const current = jwt.keys.current
      this.#signers.set(
        purpose,
        createSigner({
          key: signingKey(current),
          algorithm: current.alg,
          kid: current.kid,
          header: { alg: current.alg, typ: spec.typ },
        }) as Signer,
      )
      const byKid = new Map<string, Verifier>()
      for (const key of ring) {
        byKid.set(
          key.kid,
          createVerifier({
            key: key.verifyKey,
            algorithms: [key.alg],
            // Plain strings, never RegExps (fast-jwt CVE-2026-35041, GHSA-3j8v-cgw4-2g6q).
            allowedIss: jwt.issuer,
            allowedAud: spec.audience(jwt),
            requiredClaims: [...REGISTERED, ...spec.claims],
            checkTyp: spec.typ,
            clockTolerance: jwt.clockSkewSeconds * 1000,
            complete: true,
          }) as Verifier,
        )
      }
      this.#verifiers.set(purpose, byKid)
    }
  }

  /**
   * Signs a token of `purpose` with the current key. iss, aud, iat, exp and a fresh jti are set
   * here; the returned claims are exactly the ones signed.
   */
  sign<P extends TokenPurpose>(purpose: P, input: ClaimsInput<P>): { token: string; claims: TokenClaims[P] } {
    const iat = Math.floor(Date.now() / 1000)
    const claims = {
      ...input,
      iss: this.#jwt.issuer,
      aud: PURPOSES[purpose].audience(this.#jwt),
      iat,
      exp: iat + PURPOSES[purpose].ttlSeconds(this.#jwt),
      jti: randomUUID(),
    } as TokenClaims[P]
    const token = (this.#signers.get(purpose) as Signer)(claims as unknown as Record<string, unknown>)
    return { token, claims }
  }

  /**
   * The claims of a valid token of `purpose`: signature by one of our keys under its own
   * algorithm, `typ`, issuer, audience, every claim present and of its type, not expired, not
   * issued in the future (beyond the clock skew). Throws InvalidTokenError on any failure.
   * Revocation is not checked here (SessionService.authorize does that).
   */
  verify<P extends TokenPurpose>(purpose: P, token: string): TokenClaims[P] {
    const cache = this.#caches.get(purpose)
    const hit = cache?.get(token)
    if (hit) {
      this.#counts.cacheHits++
      this.#counts.valid++
      return hit as TokenClaims[P]
    }
    const claims = this.#check(purpose, token)
    if (!claims) {
      this.#counts.invalid++
      throw new InvalidTokenError()
    }
    this.#counts.valid++
    cache?.set(token, claims)
    return claims
  }

  /** The frozen claims of a token that passes every check of verify(), or undefined. */
  #check<P extends TokenPurpose>(purpose: P, token: string): TokenClaims[P] | undefined {
    const spec = PURPOSES[purpose]
    const kid = this.#singleKid ?? headerKid(token)
    const verifier = kid === undefined ? undefined : this.#verifiers.get(purpose)?.get(kid)
    if (!verifier) return undefined
    let decoded: ReturnType<Verifier>
    try {
      decoded = verifier(token)
    } catch {
      return undefined
    }
    const { header, payload } = decoded
    // The library checks presence and values; we also check types, since it lets some through
    // (a numeric `sub`, an array `aud` containing ours, a payload that is not an object).
    if (
      header.kid !== kid ||
      !hasRegisteredClaims(payload, this.#jwt.issuer, spec.audience(this.#jwt)) ||
      !spec.check(payload as unknown as Record<string, unknown>) ||
      payload.iat > Date.now() / 1000 + this.#jwt.clockSkewSeconds
    ) {
      return undefined
    }
    return Object.freeze(payload) as TokenClaims[P]
  }
}

/**
 * Tokens that passed verification, keyed by the whole token string, each dropped once its token
 * expires (with the same clock skew the verifier allows). Revocation and the user checks still run
 * on every request: this only skips re-checking a signature already checked. Written by hand:
 * fast-jwt's own cache keys entries by a SHA-256 of the token, which for HS256 costs about as much
 * as the HMAC it saves (verification was 10% of the CPU of GET /users/me when profiled); a Map
 * keyed by the token itself costs one string hash.
 */
class VerifiedTokens {
  readonly #entries = new Map<string, RegisteredClaims>()

  constructor(
    private readonly maxEntries: number,
    private readonly skewSeconds: number,
  ) {}

  get(token: string): RegisteredClaims | undefined {
    const claims = this.#entries.get(token)
    if (claims === undefined) return undefined
    if (Date.now() >= (claims.exp + this.skewSeconds) * 1000) {
      this.#entries.delete(token)
      return undefined
    }
    return claims
  }

  set(token: string, claims: RegisteredClaims): void {
    if (this.#entries.size >= this.maxEntries) {
      const oldest = this.#entries.keys().next().value
      if (oldest !== undefined) this.#entries.delete(oldest)
    }
    this.#entries.set(token, claims)
  }
}

function signingKey(key: SigningKey): string {
  if (!key.privateKey) throw new Error('the current signing key has no private half')
  return key.privateKey
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

function hasRegisteredClaims(p: unknown, issuer: string, audience: string): p is RegisteredClaims {
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
    c.jti.length > 0
  )
}
