// Token introspection (RFC 7662) over HTTP: POST /introspect for the clients of
// INTROSPECTION_CLIENTS, authenticated with HTTP Basic (RFC 7617; id and secret form-urlencoded
// first, RFC 6749 §2.3.1). What is active is what the server itself would take: an access token
// that /users/me accepts, a refresh token that a refresh accepts; everything else is exactly
// {"active":false}. The flows run on the memory store and on PostgreSQL with Redis, plus two
// instances sharing both. Also the setting itself (loadConfig) and its redaction from logs.
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Secret, TOTP } from 'otpauth'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import type { AppDeps } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { ConfigError } from '../src/errors.js'
import { redact, secretValues } from '../src/logging.js'
import { MemoryDenyList, MemorySessionStore } from '../src/store/sessions.js'
import { MemoryUserStore } from '../src/store/users.js'
import {
  authed,
  buildTestApp,
  decodeClaims,
  type Env,
  FORM,
  forgeToken,
  getMe,
  type JsonBody,
  lineCollector,
  listen,
  login,
  nowSeconds,
  OTHER_SECRET,
  oauthError,
  portOf,
  postForm,
  postToken,
  rawHttp,
  refresh,
  register,
  TEST_PASSWORD,
  TEST_SECRET,
  type TokenBody,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const CLIENT_ID = 'resource-api'
const CLIENT_SECRET = 'kT4vQ9xLm2Rz7WcN5pJh8YbD3sFg6AeU1oVi0nXq'
/** A second client whose id and secret need form-urlencoding: `+`, `:`, `%`, a space inside, non-ASCII. */
const ODD_ID = 'svc.reports_2'
const ODD_SECRET = 'p+ss:w%rd é/=~*&x y-0123456789abcdefghij'
const CLIENTS = `${CLIENT_ID}:${CLIENT_SECRET}, ${ODD_ID}:${ODD_SECRET}`
const ADMIN = { ADMIN_USERNAME: 'intro_chief', ADMIN_PASSWORD: 'granite-Orchid-63-velvet' }
const NEW_PASSWORD = 'copper-Meadow-71-falcon'
const ISSUER = 'fastify-auth-server'
const BASIC_CHALLENGE = 'Basic realm="fastify-auth-api"'
const INACTIVE = { active: false }

/** application/x-www-form-urlencoded encoding of one value (space → `+`), as RFC 6749 §2.3.1 has clients do. */
const formEncode = (value: string) => new URLSearchParams([['', value]]).toString().slice(1)
/** The Authorization header of HTTP Basic with `id` and `secret` form-urlencoded first. */
const basic = (id: string, secret: string) =>
  `Basic ${Buffer.from(`${formEncode(id)}:${formEncode(secret)}`, 'utf8').toString('base64')}`
/** The same without the form-urlencoding: what a client that skips RFC 6749 §2.3.1 sends. */
const rawBasic = (credentials: string | Buffer) => `Basic ${Buffer.from(credentials).toString('base64')}`
const CLIENT_AUTH = basic(CLIENT_ID, CLIENT_SECRET)

function introspect(
  app: FastifyInstance,
  fields: Record<string, string> | string,
  /** null: no Authorization header at all. */
  authorization: string | null = CLIENT_AUTH,
): Promise<LightMyRequestResponse> {
  return postForm(app, '/introspect', fields, authorization === null ? {} : { authorization })
}

/** The body of a 200 introspection answer (fails the test on any other status). */
async function inspect(app: FastifyInstance, token: string, hint?: string): Promise<JsonBody> {
  const res = await introspect(app, hint === undefined ? { token } : { token, token_type_hint: hint })
  expect(res.statusCode, res.body).toBe(200)
  expect(res.headers['cache-control']).toBe('no-store')
  return res.json()
}

/** 401 invalid_client with the Basic challenge, never cached. */
function expectInvalidClient(res: LightMyRequestResponse, description: string | RegExp = /./): void {
  expect(res.statusCode, res.body).toBe(401)
  expect(res.headers['www-authenticate']).toBe(BASIC_CHALLENGE)
  expect(res.headers['cache-control']).toBe('no-store')
  const body = res.json()
  expect(body).toEqual(oauthError('invalid_client', body.error_description))
  if (typeof description === 'string') expect(body.error_description).toBe(description)
  else expect(body.error_description).toMatch(description)
}

interface Session {
  id: string
  username: string
  tokens: TokenBody
}

async function newSession(app: FastifyInstance, fields: Record<string, string> = {}): Promise<Session> {
  const username = uniqueUsername('intro')
  const reg = await register(app, { username, password: TEST_PASSWORD, ...fields })
  expect(reg.statusCode, reg.body).toBe(201)
  return { id: reg.json().id, username, tokens: await login(app, username) }
}

/** The answer for an active access token: its own claims, and the username. */
function activeAccess(token: string, username: string): JsonBody {
  const c = decodeClaims(token)
  return {
    active: true,
    token_type: 'Bearer',
    scope: c.scope,
    sub: c.sub,
    username,
    iss: c.iss,
    aud: c.aud,
    exp: c.exp,
    iat: c.iat,
    jti: c.jti,
    sid: c.sid,
  }
}

async function expectBothInactive(app: FastifyInstance, tokens: TokenBody): Promise<void> {
  expect(await inspect(app, tokens.access_token)).toEqual(INACTIVE)
  expect(await inspect(app, tokens.refresh_token)).toEqual(INACTIVE)
}

async function adminToken(app: FastifyInstance): Promise<string> {
  return (await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
}

/** An mfa_token, from the password step of an account that enrolled TOTP over HTTP. */
async function mfaToken(app: FastifyInstance): Promise<{ token: string; userId: string }> {
  const { id, username, tokens } = await newSession(app)
  const started = await authed(app, 'POST', '/users/me/mfa/totp', tokens.access_token, { password: TEST_PASSWORD })
  expect(started.statusCode, started.body).toBe(200)
  const totp = new TOTP({ secret: Secret.fromBase32(started.json().secret), algorithm: 'SHA1', digits: 6, period: 30 })
  const confirmed = await authed(app, 'POST', '/users/me/mfa/totp/confirm', tokens.access_token, {
    code: totp.generate(),
  })
  expect(confirmed.statusCode, confirmed.body).toBe(200)
  const res = await postToken(app, { username, password: TEST_PASSWORD })
  expect(res.statusCode, res.body).toBe(403)
  return { token: res.json().mfa_token, userId: id }
}

type Open = (env?: Env, deps?: AppDeps) => Promise<FastifyInstance>

/** The behaviour every store must give. */
function introspectionSuite(open: Open): void {
  describe('client authentication', () => {
    it('answers 401 invalid_client with the Basic challenge to every missing, malformed or wrong credential', async () => {
      const app = await open()
      const { tokens } = await newSession(app)
      const token = tokens.access_token
      const missing = /^Client authentication required/
      const malformed = 'Malformed Basic credentials'
      const failed = 'Client authentication failed'
      const cases: [string | null, string | RegExp][] = [
        [null, missing],
        ['', missing],
        [`Bearer ${token}`, missing],
        ['Digest username="resource-api"', missing],
        ['Basic', malformed],
        ['Basic ', malformed],
        ['Basic !!!not-base64!!!', malformed],
        ['Basic cmVzb3VyY2UtYXBp', malformed], // "resource-api": no colon
        ['Basic cmVzb3VyY2UtYXBpOng', malformed], // unpadded base64
        [rawBasic(Buffer.from([0x72, 0x3a, 0xff, 0xfe])), malformed], // not UTF-8
        [rawBasic(`${CLIENT_ID}:%ZZ`), malformed], // a bad %XX escape
        [basic(CLIENT_ID, 'not-the-secret'), failed],
        [basic(CLIENT_ID, `${CLIENT_SECRET}x`), failed],
        [basic(CLIENT_ID, CLIENT_SECRET.slice(0, -1)), failed],
        [basic(CLIENT_ID, ''), failed],
        [basic('unknown-client', CLIENT_SECRET), failed],
        [basic('', CLIENT_SECRET), failed],
        [basic(ODD_ID, CLIENT_SECRET), failed], // another client's id with this one's secret
        // The odd secret sent without form-urlencoding: its `+` reads as a space, its `%rd` as a bad escape.
        [rawBasic(`${ODD_ID}:${ODD_SECRET}`), malformed],
        [rawBasic(`${ODD_ID}:${ODD_SECRET.replace('%', '%25')}`), failed],
      ]
      for (const [authorization, description] of cases) {
        const res = await introspect(app, { token }, authorization)
        expectInvalidClient(res, description)
      }
    })

    it('decodes the form-urlencoded id and secret, and takes the scheme in any case', async () => {
      const app = await open()
      const { tokens, username } = await newSession(app)
      const expected = activeAccess(tokens.access_token, username)
      for (const authorization of [
        basic(ODD_ID, ODD_SECRET),
        CLIENT_AUTH.replace('Basic', 'basic'),
        CLIENT_AUTH.replace('Basic', 'BASIC'),
        // Escapes a client need not use are decoded all the same.
        rawBasic(`resource%2Dapi:${CLIENT_SECRET.replace('k', '%6B')}`),
      ]) {
        const res = await introspect(app, { token: tokens.access_token }, authorization)
        expect(res.statusCode, `${authorization}: ${res.body}`).toBe(200)
        expect(res.json()).toEqual(expected)
      }
    })

    it('authenticates the client before anything else: a bad form or media type without credentials is 401', async () => {
      const app = await open()
      expectInvalidClient(await introspect(app, {}, null))
      expectInvalidClient(await introspect(app, 'token=a&token=b', basic(CLIENT_ID, 'wrong')))
      const json = await app.inject({
        method: 'POST',
        url: '/introspect',
        headers: { 'content-type': 'application/json' },
        payload: '{"token":"x"}',
      })
      expectInvalidClient(json)
    })
  })

  describe('the request', () => {
    it('answers 400 invalid_request without a token, with a repeated one, and 415 for another media type', async () => {
      const app = await open()
      const missing = oauthError('invalid_request', "Missing parameter 'token'")
      const forms: Record<string, string>[] = [{}, { token: '' }, { token_type_hint: 'access_token' }]
      for (const fields of forms) {
        const res = await introspect(app, fields)
        expect(res.statusCode).toBe(400)
        expect(res.json()).toEqual(missing)
      }
      // No body and no Content-Type at all: an empty form.
      const empty = await app.inject({ method: 'POST', url: '/introspect', headers: { authorization: CLIENT_AUTH } })
      expect(empty.statusCode).toBe(400)
      expect(empty.json()).toEqual(missing)
      const repeated = await introspect(app, 'token=a&token=b')
      expect(repeated.statusCode).toBe(400)
      expect(repeated.json()).toEqual(oauthError('invalid_request', "Parameter 'token' is repeated"))
      const json = await app.inject({
        method: 'POST',
        url: '/introspect',
        headers: { authorization: CLIENT_AUTH, 'content-type': 'application/json' },
        payload: '{"token":"x"}',
      })
      expect(json.statusCode).toBe(415)
      expect(json.json()).toMatchObject({ error: 'invalid_request' })
      const get = await app.inject({ method: 'GET', url: '/introspect', headers: { authorization: CLIENT_AUTH } })
      expect(get.statusCode).toBe(405)
      expect(get.headers.allow).toBe('POST')
    })
  })

  describe('access tokens', () => {
    it('answers an active access token with exactly its claims and the username, never cached', async () => {
      const app = await open()
      const { id, username, tokens } = await newSession(app)
      const body = await inspect(app, tokens.access_token)
      expect(body).toEqual(activeAccess(tokens.access_token, username))
      expect(body).toMatchObject({ sub: id, iss: ISSUER, aud: 'fastify-auth-api', scope: 'user' })
      // What /users/me says of the same token.
      expect((await getMe(app, `Bearer ${tokens.access_token}`)).statusCode).toBe(200)
    })

    it('gives the same answer whatever the token_type_hint', async () => {
      const app = await open()
      const { username, tokens } = await newSession(app)
      const access = activeAccess(tokens.access_token, username)
      const refreshed = await inspect(app, tokens.refresh_token)
      for (const hint of [undefined, 'access_token', 'refresh_token', 'something_else']) {
        expect(await inspect(app, tokens.access_token, hint)).toEqual(access)
        expect(await inspect(app, tokens.refresh_token, hint)).toEqual(refreshed)
        expect(await inspect(app, 'garbage', hint)).toEqual(INACTIVE)
      }
    })

    it('is inactive after logout', async () => {
      const app = await open()
      const { tokens } = await newSession(app)
      expect((await authed(app, 'POST', '/logout', tokens.access_token)).statusCode).toBe(204)
      await expectBothInactive(app, tokens)
    })

    it('is inactive once its session is revoked through /revoke (either token)', async () => {
      const app = await open()
      for (const which of ['refresh_token', 'access_token'] as const) {
        const { tokens } = await newSession(app)
        const res = await postForm(app, '/revoke', { token: tokens[which] })
        expect(res.statusCode).toBe(200)
        await expectBothInactive(app, tokens)
      }
    })

    it('is inactive after a password change, and the new session is active', async () => {
      const app = await open()
      const { username, tokens } = await newSession(app)
      const changed = await authed(app, 'POST', '/users/me/password', tokens.access_token, {
        current_password: TEST_PASSWORD,
        new_password: NEW_PASSWORD,
      })
      expect(changed.statusCode, changed.body).toBe(204)
      await expectBothInactive(app, tokens)
      const fresh = await login(app, username, NEW_PASSWORD)
      expect(await inspect(app, fresh.access_token)).toEqual(activeAccess(fresh.access_token, username))
    })

    it('is inactive once an admin disables the account, and after it is deleted', async () => {
      const app = await open()
      const admin = await adminToken(app)
      const disabled = await newSession(app)
      const patch = await authed(app, 'PATCH', `/users/${disabled.id}`, admin, { disabled: true })
      expect(patch.statusCode, patch.body).toBe(200)
      await expectBothInactive(app, disabled.tokens)

      const deleted = await newSession(app)
      expect((await authed(app, 'DELETE', `/users/${deleted.id}`, admin)).statusCode).toBe(204)
      await expectBothInactive(app, deleted.tokens)

      const self = await newSession(app)
      const gone = await authed(app, 'DELETE', '/users/me', self.tokens.access_token, { password: TEST_PASSWORD })
      expect(gone.statusCode, gone.body).toBe(204)
      await expectBothInactive(app, self.tokens)
    })

    it('answers exactly {"active":false} for garbage, forged, expired and other-purpose tokens', async () => {
      const app = await open()
      const { id, tokens } = await newSession(app)
      const { sid } = decodeClaims(tokens.access_token) as { sid: string }
      const now = nowSeconds()
      const mfa = await mfaToken(app)
      // A genuine token of ours, valid for its own purpose: still not an access token.
      expect(() => app.tokens.verify('mfa', mfa.token)).not.toThrow()
      for (const token of [
        'garbage',
        'a.b.c',
        'rt_',
        `rt_${'A'.repeat(43)}`,
        `rt_${'A'.repeat(200)}`,
        tokens.access_token.slice(0, -2),
        mfa.token,
        forgeToken(app, id, { claims: { sid, iat: now - 3600, exp: now - 600 } }), // expired
        forgeToken(app, id, { claims: { sid }, secret: OTHER_SECRET }), // not our key
        forgeToken(app, id, { claims: { sid, aud: `${ISSUER}#mfa` } }), // another audience
        forgeToken(app, id, { header: { typ: 'mfa+jwt' }, claims: { sid } }), // another typ
        forgeToken(app, id, { header: { alg: 'none' }, claims: { sid }, signature: '' }),
      ]) {
        const res = await introspect(app, { token })
        expect(res.statusCode).toBe(200)
        // Exactly this body: nothing says why.
        expect(res.body).toBe('{"active":false}')
      }
      // A token forged with our own key and correct claims would be active: the checks above are
      // the signature, the expiry, the audience and the type, not an accident of the claims.
      const sound = forgeToken(app, id, { claims: { sid } })
      expect((await inspect(app, sound)).active).toBe(true)
    })
  })

  describe('refresh tokens', () => {
    it('answers an active refresh token with its session, and the rotated one as inactive', async () => {
      const app = await open()
      const { id, username, tokens } = await newSession(app)
      const { sid } = decodeClaims(tokens.access_token) as { sid: string }
      const before = nowSeconds()
      const body = await inspect(app, tokens.refresh_token)
      expect(body).toEqual({
        active: true,
        token_type: 'refresh_token',
        scope: 'user',
        sub: id,
        username,
        iss: ISSUER,
        exp: expect.any(Number),
        sid,
      })
      // REFRESH_TOKEN_EXPIRE_DAYS (14) from the login.
      expect(Math.abs(body.exp - (before + 14 * 86_400))).toBeLessThanOrEqual(5)

      const rotated = await refresh(app, tokens.refresh_token)
      expect(rotated.statusCode, rotated.body).toBe(200)
      const next = rotated.json<TokenBody>()
      // Within REFRESH_REUSE_GRACE_SECONDS a refresh would still re-issue once; introspection
      // never calls a spent token active.
      expect(await inspect(app, tokens.refresh_token)).toEqual(INACTIVE)
      expect(await inspect(app, next.refresh_token)).toMatchObject({ active: true, sid, sub: id })
      // Rotation does not end the access tokens of the session.
      expect((await inspect(app, tokens.access_token)).active).toBe(true)
      expect(await inspect(app, next.access_token)).toEqual(activeAccess(next.access_token, username))
    })

    it('lists the admin scope of an admin session', async () => {
      const app = await open()
      const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
      expect(await inspect(app, admin.access_token)).toMatchObject({
        scope: 'user admin',
        username: ADMIN.ADMIN_USERNAME,
      })
      expect(await inspect(app, admin.refresh_token)).toMatchObject({ scope: 'user admin' })
    })

    it('is inactive once expired (the clock moved past its lifetime), like the access token', async () => {
      const app = await open()
      const { tokens } = await newSession(app)
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + 15 * 86_400_000 })
      try {
        await expectBothInactive(app, tokens)
      } finally {
        vi.useRealTimers()
      }
      expect((await inspect(app, tokens.refresh_token)).active).toBe(true)
    })
  })

  describe('audit and limits', () => {
    it('audits each answer with the client id, never the token', async () => {
      const audit = lineCollector()
      const app = await open({}, { audit: pino(audit.stream) })
      const { tokens } = await newSession(app)
      await inspect(app, tokens.access_token)
      await inspect(app, tokens.refresh_token)
      expect((await introspect(app, { token: 'garbage' }, basic(ODD_ID, ODD_SECRET))).statusCode).toBe(200)
      const events = audit.records().filter((r) => r.event === 'introspection')
      expect(events).toEqual([
        expect.objectContaining({ clientId: CLIENT_ID, active: true, tokenType: 'access_token' }),
        expect.objectContaining({ clientId: CLIENT_ID, active: true, tokenType: 'refresh_token' }),
        expect.objectContaining({ clientId: ODD_ID, active: false, tokenType: null }),
      ])
      const text = audit.lines.join('\n')
      for (const secret of [tokens.access_token, tokens.refresh_token, 'garbage', CLIENT_SECRET, ODD_SECRET])
        expect(text).not.toContain(secret)
    })

    it('counts refused client credentials in the address budget of failed credentials: 429 past LOGIN_IP_MAX_FAILURES', async () => {
      const app = await open({ LOGIN_IP_MAX_FAILURES: '3' })
      for (let i = 0; i < 3; i++)
        expectInvalidClient(await introspect(app, { token: 'garbage' }, basic(CLIENT_ID, `wrong${i}`)))
      // Even the right secret is not compared now: secrets cannot be guessed in bulk from one address.
      const over = await introspect(app, { token: 'garbage' })
      expect(over.statusCode).toBe(429)
      expect(over.json()).toEqual(oauthError('temporarily_unavailable', 'Too many failed attempts; try again later'))
      expect(Number(over.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    })

    it('caps requests per client: 429 past INTROSPECTION_RATE_LIMIT_PER_MINUTE, other clients unaffected', async () => {
      const app = await open({ INTROSPECTION_RATE_LIMIT_PER_MINUTE: '3' })
      for (let i = 0; i < 3; i++) expect((await introspect(app, { token: 'garbage' })).statusCode).toBe(200)
      const over = await introspect(app, { token: 'garbage' })
      expect(over.statusCode).toBe(429)
      expect(over.json()).toEqual(
        oauthError('temporarily_unavailable', expect.stringMatching(/^Too many requests; retry in /)),
      )
      expect(Number(over.headers['retry-after'])).toBeGreaterThanOrEqual(1)
      expect(over.headers['cache-control']).toBe('no-store')
      // The cap is the client's, not the address's.
      expect((await introspect(app, { token: 'garbage' }, basic(ODD_ID, ODD_SECRET))).statusCode).toBe(200)
      // Bad credentials are refused before the cap: still 401, not 429.
      expectInvalidClient(await introspect(app, { token: 'garbage' }, basic(CLIENT_ID, 'wrong')))
    })
  })
}

// --- Memory store ---------------------------------------------------------------------------------

describe('POST /introspect (memory store)', () => {
  const apps: FastifyInstance[] = []
  afterEach(async () => {
    await Promise.allSettled(apps.splice(0).map((app) => app.close()))
  })
  const open: Open = async (env = {}, deps = {}) => {
    const app = await buildTestApp({ INTROSPECTION_CLIENTS: CLIENTS, ...ADMIN, ...env }, deps)
    apps.push(app)
    return app
  }

  introspectionSuite(open)

  it('is off without INTROSPECTION_CLIENTS: 404, and absent from the OpenAPI document', async () => {
    const app = await open({ INTROSPECTION_CLIENTS: '' })
    const res = await introspect(app, { token: 'garbage' })
    expect(res.statusCode).toBe(404)
    expect(res.json()).toEqual({ detail: 'Not Found' })
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
    expect(doc.paths['/introspect']).toBeUndefined()
    expect(doc.components.securitySchemes.IntrospectionClient).toBeUndefined()
  })

  it('documents the operation when on: each status, the Basic scheme and the challenge header', async () => {
    const app = await open()
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
    const op = doc.paths['/introspect'].post
    expect(op.security).toEqual([{ IntrospectionClient: [] }])
    expect(doc.components.securitySchemes.IntrospectionClient).toMatchObject({ type: 'http', scheme: 'basic' })
    expect(Object.keys(op.responses).sort()).toEqual(['200', '400', '401', '405', '413', '415', '429', '500', '503'])
    expect(op.responses['401'].headers['WWW-Authenticate']).toBeDefined()
    expect(op.responses['429'].headers['Retry-After']).toBeDefined()
  })

  it('refuses two Authorization headers (a proxy may read the other one)', async () => {
    const app = await open()
    const port = portOf(await listen(app))
    const body = 'token=garbage'
    const res = await rawHttp(
      port,
      `POST /introspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${CLIENT_AUTH}\r\nAuthorization: ${basic(ODD_ID, ODD_SECRET)}\r\nContent-Type: ${FORM}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    )
    expect(res.status).toBe(401)
    expect(res.headers['www-authenticate']).toBe(BASIC_CHALLENGE)
    expect(JSON.parse(res.body)).toEqual(oauthError('invalid_client', 'Malformed Basic credentials'))
  })

  it('calls a refresh token inactive when a refresh would be refused for an unverified address (REQUIRE_VERIFIED_EMAIL)', async () => {
    // Two apps on the same stores: the account logged in before the setting was turned on.
    const stores = () => ({ users, sessions, denylist })
    const users = new MemoryUserStore()
    const sessions = new MemorySessionStore()
    const denylist = new MemoryDenyList()
    const before = await open({}, { stores: stores() })
    const { username, tokens } = await newSession(before, { email: `${uniqueUsername('m')}@example.com` })
    expect((await inspect(before, tokens.refresh_token)).active).toBe(true)
    const after = await open({ REQUIRE_VERIFIED_EMAIL: 'true' }, { stores: stores() })
    expect(await inspect(after, tokens.refresh_token)).toEqual(INACTIVE)
    // The access token is what /users/me takes, and /users/me does not ask for a verified address.
    expect(await inspect(after, tokens.access_token)).toEqual(activeAccess(tokens.access_token, username))
    expect((await getMe(after, `Bearer ${tokens.access_token}`)).statusCode).toBe(200)
    // What introspection foresaw: the refresh is refused (and ends the session, access token included).
    const refused = await refresh(after, tokens.refresh_token)
    expect(refused.json()).toEqual(oauthError('invalid_grant', 'Email address not verified'))
    expect(await inspect(after, tokens.access_token)).toEqual(INACTIVE)
  })
})

// --- PostgreSQL with Redis ----------------------------------------------------------------------------

describeWith(['postgres', 'redis'], 'POST /introspect on PostgreSQL with Redis', () => {
  let db: TestSchema
  const apps: FastifyInstance[] = []
  const prefixes: string[] = []

  /** An app on the schema and Redis under `prefix` (a new one unless given), closed after the test. */
  async function openOn(prefix: string, env: Env = {}, deps: AppDeps = {}): Promise<FastifyInstance> {
    if (!prefixes.includes(prefix)) prefixes.push(prefix)
    const app = await buildTestApp(
      {
        STORE: 'postgres',
        DATABASE_URL: db.url,
        REDIS_URL,
        REDIS_PREFIX: prefix,
        INTROSPECTION_CLIENTS: CLIENTS,
        ...ADMIN,
        ...env,
      },
      deps,
    )
    apps.push(app)
    return app
  }

  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterEach(async () => {
    await Promise.allSettled(apps.splice(0).map((app) => app.close()))
  })
  afterAll(async () => {
    await Promise.allSettled(prefixes.map(deleteRedisKeys))
    await db?.drop()
  })

  introspectionSuite((env, deps) => openOn(redisPrefix(), env, deps))

  it('two instances: a logout on A makes both tokens inactive on B at once', async () => {
    const shared = redisPrefix()
    const [a, b] = [await openOn(shared), await openOn(shared)]
    const { username, tokens } = await newSession(a)
    expect(await inspect(b, tokens.access_token)).toEqual(activeAccess(tokens.access_token, username))
    expect((await inspect(b, tokens.refresh_token)).active).toBe(true)
    expect((await authed(a, 'POST', '/logout', tokens.access_token)).statusCode).toBe(204)
    await expectBothInactive(b, tokens)
    // And so does /users/me there: the same check.
    expect((await getMe(b, `Bearer ${tokens.access_token}`)).statusCode).toBe(401)
  })

  it('two instances: a password change on A makes the tokens inactive on B at once', async () => {
    const shared = redisPrefix()
    const [a, b] = [await openOn(shared), await openOn(shared)]
    const { tokens } = await newSession(a)
    expect((await inspect(b, tokens.access_token)).active).toBe(true)
    const changed = await authed(a, 'POST', '/users/me/password', tokens.access_token, {
      current_password: TEST_PASSWORD,
      new_password: NEW_PASSWORD,
    })
    expect(changed.statusCode).toBe(204)
    await expectBothInactive(b, tokens)
  })
})

// --- The setting -----------------------------------------------------------------------------------

describe('INTROSPECTION_CLIENTS and INTROSPECTION_RATE_LIMIT_PER_MINUTE', () => {
  const PRODUCTION = { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET }
  const LONG = 'Zx8-Lq2_Vn5.Rt7~Hb4+Kc1/Mw9=Pd3!Jf6'

  function problems(env: Env): string[] {
    try {
      loadConfig(env)
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError)
      return (err as ConfigError).problems
    }
    throw new Error('expected loadConfig to throw')
  }

  it('is off by default, with a cap of 600 a minute', () => {
    for (const env of [{}, { INTROSPECTION_CLIENTS: '' }, { INTROSPECTION_CLIENTS: ' , ,' }]) {
      expect(loadConfig(env).introspection).toEqual({ clients: [], perMinute: 600 })
    }
  })

  it('parses client_id:secret entries: spaces around entries dropped, the secret is all after the first colon', () => {
    const config = loadConfig({
      INTROSPECTION_CLIENTS: ` a:${LONG} ,, B.b_-9:x:y:z ,${'i'.repeat(64)}:${LONG}`,
      INTROSPECTION_RATE_LIMIT_PER_MINUTE: '42',
    })
    expect(config.introspection).toEqual({
      clients: [
        { id: 'a', secret: LONG },
        { id: 'B.b_-9', secret: 'x:y:z' },
        { id: 'i'.repeat(64), secret: LONG },
      ],
      perMinute: 42,
    })
  })

  it('refuses a malformed entry or a repeated id in every mode, naming the entry or the id, never a secret', () => {
    for (const base of [{}, { NODE_ENV: 'test' }, PRODUCTION]) {
      for (const [value, line] of [
        [`${LONG}`, 'entry 1'],
        [`ok:${LONG},:${LONG}`, 'entry 2'],
        [`ok:${LONG},bad id:${LONG}`, 'entry 2'],
        [`ok:${LONG},bad/id:${LONG}`, 'entry 2'],
        [`${'i'.repeat(65)}:${LONG}`, 'entry 1'],
        ['noSecret:', 'entry 1'],
      ]) {
        const found = problems({ ...base, INTROSPECTION_CLIENTS: value })
        expect(found).toEqual([
          expect.stringMatching(new RegExp(`^INTROSPECTION_CLIENTS: ${line} must be client_id:secret`)),
        ])
        expect(found.join('\n')).not.toContain(LONG)
      }
      expect(problems({ ...base, INTROSPECTION_CLIENTS: `dup:${LONG},other:${LONG},dup:${LONG}x` })).toEqual([
        'INTROSPECTION_CLIENTS: client id "dup" is listed more than once',
      ])
    }
  })

  it('refuses a secret under 32 characters in production only, naming the client, never the secret', () => {
    const short = 'short-secret-31-characters-long'
    expect([...short]).toHaveLength(31)
    expect(problems({ ...PRODUCTION, INTROSPECTION_CLIENTS: `good:${LONG},weak:${short}` })).toEqual([
      'INTROSPECTION_CLIENTS: the secret of client "weak" must be at least 32 characters in production',
    ])
    expect(loadConfig({ ...PRODUCTION, INTROSPECTION_CLIENTS: `weak:${short}x` }).introspection.clients).toHaveLength(1)
    for (const env of [{}, { NODE_ENV: 'test' }])
      expect(loadConfig({ ...env, INTROSPECTION_CLIENTS: 'dev:pw' }).introspection.clients).toEqual([
        { id: 'dev', secret: 'pw' },
      ])
  })

  it('refuses a cap that is not a whole number from 1', () => {
    for (const value of ['0', '-1', '1.5', 'ten'])
      expect(problems({ INTROSPECTION_RATE_LIMIT_PER_MINUTE: value })).toEqual([
        expect.stringMatching(/^INTROSPECTION_RATE_LIMIT_PER_MINUTE: /),
      ])
  })

  it('redacts the client secrets from what leaves the process', () => {
    const env = { INTROSPECTION_CLIENTS: `a:${LONG}, b:${ODD_SECRET},pasted-alone-secret-value` }
    const secrets = secretValues(env)
    expect(secrets).toEqual(expect.arrayContaining([LONG, ODD_SECRET, 'pasted-alone-secret-value']))
    expect(redact(`x ${LONG} y ${ODD_SECRET} z`, secrets)).toBe('x [redacted] y [redacted] z')
  })
})
