// The two ways to check an access token of the auth server. Both resolve to the same Principal, so
// that the route (app.js) does not know which one runs:
//
// - jwks: the token is a signed JWT (RFC 9068); check its signature here against the auth server's
//   public keys (fetched once and cached by jose), then its claims. No call per request, but the
//   auth server is not asked, so a token revoked there (logout, password change) still passes
//   until its `exp`.
// - introspection: ask the auth server about every token (RFC 7662). One call per request, and a
//   revocation shows at once. Deliberately no cache: a cache would bring back the very delay this
//   mode is chosen to avoid.
//
// Each verifier throws InvalidTokenError when the token is not good (the route answers 401) and
// UnavailableError when it cannot tell (the auth server is down or refuses us: 503, so that a client
// does not throw away a token that may well be valid).
import { createRemoteJWKSet, errors as joseErrors, jwtVerify } from 'jose'
import { endpoint } from './config.js'

/**
 * @typedef {object} Principal
 * @property {string} sub  the user's id
 * @property {string[]} scopes
 * @property {string} [username]  introspection only: the access token itself carries no username
 *
 * @typedef {object} Verifier
 * @property {import('./config.js').Mode} mode
 * @property {(token: string) => Promise<Principal>} verify
 * @property {() => Promise<string | undefined>} preflight  at start: a warning, or undefined when
 *   all is well; throws a FatalError when the settings cannot work (no keys, client refused)
 */

/** The token is not one we accept: expired, revoked, forged, for someone else, or not a token. */
export class InvalidTokenError extends Error {}
/** The token could not be checked right now; says nothing about the token. */
export class UnavailableError extends Error {}
/** The settings cannot work against this auth server: the process should not start. */
export class FatalError extends Error {}

/**
 * The algorithms the auth server can sign with, all asymmetric. HS256 is left out on purpose: its
 * key is a shared secret that is never published, and allowing it here is how "alg confusion"
 * attacks start. jose also pins each key of the JWKS to the `alg` it is published with.
 */
const ASYMMETRIC_ALGORITHMS = ['EdDSA', 'ES256', 'RS256']
/** The auth server's default JWT_CLOCK_SKEW_SECONDS: the same leeway on both sides. */
const CLOCK_TOLERANCE_SECONDS = 5
const FETCH_TIMEOUT_MS = 3000
/** Errors of jose that mean "could not get the keys", not "bad token". */
const KEY_FETCH_FAILURES = new Set(['ERR_JWKS_TIMEOUT', 'ERR_JWKS_INVALID', 'ERR_JOSE_GENERIC'])

/**
 * @param {{ authServerUrl: string, issuer: string, audience: string }} options
 * @returns {Verifier}
 */
export function jwksVerifier({ authServerUrl, issuer, audience }) {
  const url = endpoint(authServerUrl, '.well-known/jwks.json')
  // jose caches the set (cacheMaxAge, 10 min) and fetches it again when a token names an unknown
  // `kid` (a rotation), at most once per cooldownDuration, so a flood of forged kids cannot turn
  // into a flood of requests to the auth server.
  const keys = createRemoteJWKSet(url, { timeoutDuration: FETCH_TIMEOUT_MS })
  return {
    mode: 'jwks',
    async verify(token) {
      let payload
      try {
        ;({ payload } = await jwtVerify(token, keys, {
          issuer,
          audience,
          // RFC 9068 §4: an access token says so in its header; this refuses any other JWT of the
          // same issuer (the auth server's MFA tokens are `mfa+jwt`, with another audience too).
          typ: 'at+jwt',
          algorithms: ASYMMETRIC_ALGORITHMS,
          requiredClaims: ['sub', 'exp', 'iat', 'scope'],
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
        }))
      } catch (err) {
        if (err instanceof joseErrors.JOSEError && !KEY_FETCH_FAILURES.has(err.code))
          throw new InvalidTokenError(err.code)
        // A network error (fetch's TypeError), a timeout, or the key set not answering 200 or not
        // being a key set: nothing known about the token.
        throw new UnavailableError(`cannot get the keys from ${url}`, { cause: err })
      }
      if (typeof payload.sub !== 'string' || typeof payload.scope !== 'string')
        throw new InvalidTokenError('sub or scope is not a string')
      return { sub: payload.sub, scopes: splitScope(payload.scope) }
    },
    async preflight() {
      let res
      try {
        res = await fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), redirect: 'error' })
      } catch (err) {
        return `cannot reach ${url} yet (${describeFetchError(err)}): the keys will be fetched at the first request`
      }
      if (res.status !== 200) return `${url} answered ${res.status}: the keys will be fetched at the first request`
      const body = /** @type {{ keys?: unknown }} */ (await res.json().catch(() => ({})))
      if (!Array.isArray(body.keys)) return `${url} did not answer a JWK Set`
      if (body.keys.length === 0)
        throw new FatalError(
          `${url} lists no keys: the auth server signs with HS256, whose key is a shared secret it never publishes, so no token can be verified here. Run the auth server with JWT_ALGORITHM=EdDSA (or ES256, RS256) and JWT_PRIVATE_KEY_FILE, or run this example with MODE=introspection`,
        )
      return undefined
    },
  }
}

/**
 * @param {{ authServerUrl: string, issuer: string, audience: string,
 *   clientId: string, clientSecret: string }} options
 * @returns {Verifier}
 */
export function introspectionVerifier({ authServerUrl, issuer, audience, clientId, clientSecret }) {
  const url = endpoint(authServerUrl, 'introspect')
  // RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
  const basic = `Basic ${Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`).toString('base64')}`

  /** @param {string} token */
  async function introspect(token) {
    try {
      return await fetch(url, {
        method: 'POST',
        headers: { authorization: basic, accept: 'application/json' },
        // URLSearchParams sends application/x-www-form-urlencoded;charset=UTF-8.
        body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
        signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
        // A redirect would carry the client secret elsewhere: refuse it.
        redirect: 'error',
      })
    } catch (err) {
      throw new UnavailableError(`cannot reach ${url} (${describeFetchError(err)})`, { cause: err })
    }
  }

  return {
    mode: 'introspection',
    async verify(token) {
      const res = await introspect(token)
      if (res.status === 401 || res.status === 403) {
        await res.body?.cancel()
        throw new UnavailableError(
          `${url} refused our client credentials (${res.status}): check INTROSPECTION_CLIENT_ID/SECRET against the auth server's INTROSPECTION_CLIENTS`,
        )
      }
      if (res.status !== 200) {
        await res.body?.cancel()
        throw new UnavailableError(`${url} answered ${res.status}`)
      }
      /** @type {unknown} */
      let json
      try {
        json = await res.json()
      } catch (err) {
        throw new UnavailableError(`${url} did not answer JSON`, { cause: err })
      }
      if (json === null || typeof json !== 'object') throw new UnavailableError(`${url} did not answer an object`)
      const answer = /** @type {Record<string, unknown>} */ (json)
      // RFC 7662 §2.2: `active` is the only member always there; anything but true is "no".
      if (answer.active !== true) throw new InvalidTokenError('inactive')
      // Active is not enough. The endpoint also vouches for refresh tokens (token_type
      // `refresh_token`, no `aud`): taken here, a refresh token, which lives for days and is
      // meant for the auth server alone, would open the notes. So: an access token (`Bearer`),
      // for this API (`aud`), from our issuer (`iss`, when given).
      if (typeof answer.token_type === 'string' && answer.token_type.toLowerCase() !== 'bearer')
        throw new InvalidTokenError(`token_type ${answer.token_type}`)
      if (!(Array.isArray(answer.aud) ? answer.aud : [answer.aud]).includes(audience))
        throw new InvalidTokenError('audience')
      if (answer.iss !== undefined && answer.iss !== issuer) throw new InvalidTokenError('issuer')
      if (typeof answer.exp === 'number' && answer.exp * 1000 + CLOCK_TOLERANCE_SECONDS * 1000 <= Date.now())
        throw new InvalidTokenError('expired')
      if (typeof answer.sub !== 'string') throw new InvalidTokenError('no sub')
      return {
        sub: answer.sub,
        scopes: typeof answer.scope === 'string' ? splitScope(answer.scope) : [],
        ...(typeof answer.username === 'string' ? { username: answer.username } : {}),
      }
    },
    async preflight() {
      // A token that cannot be valid: the answer checks the endpoint and our credentials, nothing else.
      let res
      try {
        res = await introspect('preflight-check')
      } catch (err) {
        return `${/** @type {Error} */ (err).message}: tokens will be checked when it answers`
      }
      await res.body?.cancel()
      if (res.status === 401 || res.status === 403)
        throw new FatalError(
          `${url} refused INTROSPECTION_CLIENT_ID/INTROSPECTION_CLIENT_SECRET (${res.status}): they must be one of the auth server's INTROSPECTION_CLIENTS (id:secret)`,
        )
      if (res.status === 404)
        throw new FatalError(
          `${url} answered 404: this auth server has no introspection endpoint, or it is off (INTROSPECTION_CLIENTS unset there)`,
        )
      if (res.status !== 200) return `${url} answered ${res.status} to a test request`
      return undefined
    },
  }
}

/** @param {string} scope  space-separated (RFC 6749 §3.3) */
function splitScope(scope) {
  return scope.split(' ').filter(Boolean)
}

/** @param {string} value */
function formEncode(value) {
  return new URLSearchParams({ v: value }).toString().slice(2)
}

/**
 * fetch's errors say "fetch failed" and hide the reason in `cause`.
 * @param {unknown} err
 */
export function describeFetchError(err) {
  const e = /** @type {Error & { cause?: { code?: string, message?: string } }} */ (err)
  if (e?.name === 'TimeoutError') return `no answer within ${FETCH_TIMEOUT_MS / 1000} s`
  return e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err)
}
