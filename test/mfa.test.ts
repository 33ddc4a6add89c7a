// The second factor (TOTP, RFC 6238, and recovery codes) end to end over HTTP: enrolment and its
// confirmation, the 403 mfa_required of a right password and the second step at /token (the
// Auth0-shaped mfa-otp and mfa-recovery-code grants), the rules of the mfa_token (single use, its
// own purpose, 5 wrong codes, voided by a password change or a disabled account), the ±1 period
// window and single use of a code, the lockout that wrong codes feed, recovery-code regeneration,
// disabling, the administrator's reset, and MFA switched off when no key can seal secrets.
// The main flows run twice: on the memory store, and on PostgreSQL with Redis (where the replay
// guard is a conditional UPDATE and the counters are shared), plus two instances on one database
// and what the database holds at rest.
// TOTP codes are computed with the otpauth library against a clock the test controls (the app's
// `clock` dependency is what the MFA service checks codes against); tokens still expire on real time.
import { randomBytes, randomUUID } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Secret, TOTP } from 'otpauth'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { totpStep } from '../src/security/mfa.js'
import {
  authed,
  buildTestApp,
  CHALLENGE_INVALID,
  decodeClaims,
  type Env,
  forgeToken,
  getMe,
  INVALID_GRANT,
  type JsonBody,
  lineCollector,
  login,
  nowSeconds,
  oauthError,
  postToken,
  REFRESH_TOKEN_PATTERN,
  refresh,
  register,
  TEST_PASSWORD,
  type TokenBody,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'
import { startSmtpServer, type TestSmtpServer, tokenIn } from './smtp.js'

const OTP_GRANT = 'http://auth0.com/oauth/grant-type/mfa-otp'
const RECOVERY_GRANT = 'http://auth0.com/oauth/grant-type/mfa-recovery-code'
const WRONG_PASSWORD = 'not-the-password-99'
const NEW_PASSWORD = 'tangerine-Comet-47-ledger'
const ADMIN = { ADMIN_USERNAME: 'mfa_chief', ADMIN_PASSWORD: 'granite-Orchid-63-velvet' }
/** The default JWT_ISSUER: the mfa_token's audience is `${issuer}#mfa`. */
const ISSUER = 'fastify-auth-server'
/** Crockford's base32 (no i, l, o, u), two groups of five. */
const RECOVERY_CODE = /^[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}$/
const PERIOD_MS = 30_000

/**
 * Wrong codes feed the account lockout and the per-address failure limit, and every request here
 * comes from inject's 127.0.0.1: both are raised so that only the tests about them meet them.
 */
const BASE: Env = { ...ADMIN, LOGIN_MAX_FAILURES: '20', LOGIN_IP_MAX_FAILURES: '100000' }

const MFA_REQUIRED_TEXT = 'Multi-factor authentication required'
const INVALID_MFA_TOKEN = oauthError('invalid_grant', 'Invalid or expired mfa_token')
const INVALID_OTP = oauthError('invalid_grant', 'Invalid one-time password')
const INVALID_RECOVERY_CODE = oauthError('invalid_grant', 'Invalid recovery code')
const LOCKED = oauthError('temporarily_unavailable', 'Too many failed login attempts; try again later')
const INVALID_CODE = { detail: 'Invalid code' }
const PASSWORD_INCORRECT = { detail: 'Password is incorrect' }
const NOT_ACTIVE = { detail: 'Multi-factor authentication is not active' }

// --- TOTP in the test ---------------------------------------------------------------------------

/** The code an authenticator app with this secret shows at `ms` (SHA1, 6 digits, 30 s). */
function totpAt(secret: string, ms: number): string {
  return new TOTP({ secret: Secret.fromBase32(secret), algorithm: 'SHA1', digits: 6, period: 30 }).generate({
    timestamp: ms,
  })
}

/** A 6-digit code that is none of the three the server accepts at `ms` (previous, current, next period). */
function wrongCodeAt(secret: string, ms: number): string {
  const valid = new Set([-1, 0, 1].map((d) => totpAt(secret, ms + d * PERIOD_MS)))
  for (let n = 0; ; n++) {
    const candidate = String((123_456 + n * 111_111) % 1_000_000).padStart(6, '0')
    if (!valid.has(candidate)) return candidate
  }
}

// --- Harness ------------------------------------------------------------------------------------

interface Harness {
  app: FastifyInstance
  /** The clock TOTP codes are checked against (milliseconds); tick() moves it one period on. */
  clock: { now: number }
  audit: ReturnType<typeof lineCollector>
  /** One period later: the next code is a new one (a code works once, so each login needs its own). */
  tick(periods?: number): void
}

/** Opens an app (BASE and `env` merged over the store's settings), closed after the test. */
type Open = (env?: Env, clock?: { now: number }) => Promise<Harness>

/** A clock 5 s into a period, so that tests never straddle a period boundary by accident. */
const newClock = () => ({ now: Math.floor(Date.now() / PERIOD_MS) * PERIOD_MS + 5_000 })

/** An `Open` over the given store settings; `apps` collects what to close. */
function opener(storeEnv: () => Env, apps: FastifyInstance[]): Open {
  return async (env = {}, clock = newClock()) => {
    const audit = lineCollector()
    const app = await buildTestApp(
      { ...storeEnv(), ...BASE, ...env },
      { clock: () => clock.now, audit: pino(audit.stream) },
    )
    apps.push(app)
    return {
      app,
      clock,
      audit,
      tick(periods = 1) {
        clock.now += periods * PERIOD_MS
      },
    }
  }
}

// --- HTTP shortcuts -----------------------------------------------------------------------------

const mfaStatus = (app: FastifyInstance, token: string) => authed(app, 'GET', '/users/me/mfa', token)
const enrol = (app: FastifyInstance, token: string, password = TEST_PASSWORD) =>
  authed(app, 'POST', '/users/me/mfa/totp', token, { password })
const confirm = (app: FastifyInstance, token: string, code: string) =>
  authed(app, 'POST', '/users/me/mfa/totp/confirm', token, { code })
const regenerate = (app: FastifyInstance, token: string, code: string, password = TEST_PASSWORD) =>
  authed(app, 'POST', '/users/me/mfa/recovery-codes', token, { password, code })
const disableMfa = (app: FastifyInstance, token: string, code: string, password = TEST_PASSWORD) =>
  authed(app, 'DELETE', '/users/me/mfa', token, { password, code })
const otpGrant = (app: FastifyInstance, mfaToken: string, otp: string) =>
  postToken(app, { grant_type: OTP_GRANT, mfa_token: mfaToken, otp })
const recoveryGrant = (app: FastifyInstance, mfaToken: string, code: string) =>
  postToken(app, { grant_type: RECOVERY_GRANT, mfa_token: mfaToken, recovery_code: code })

function expectStatus(res: LightMyRequestResponse, status: number): void {
  expect(res.statusCode, res.body).toBe(status)
}

/** The protected header of a JWT, decoded without verification. */
const decodeHeader = (token: string): JsonBody =>
  JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString('utf8'))

/** A 200 /token answer: the token response, with an access token that works on /users/me. */
async function expectTokens(app: FastifyInstance, res: LightMyRequestResponse, userId: string): Promise<TokenBody> {
  expectStatus(res, 200)
  const body = res.json<TokenBody>()
  expect(body).toEqual({
    access_token: expect.any(String),
    token_type: 'bearer',
    expires_in: expect.any(Number),
    refresh_token: expect.stringMatching(REFRESH_TOKEN_PATTERN),
    scope: 'user',
  })
  expect(body.expires_in).toBeGreaterThan(0)
  const me = await getMe(app, `Bearer ${body.access_token}`)
  expectStatus(me, 200)
  expect(me.json().id).toBe(userId)
  return body
}

interface Account {
  id: string
  username: string
  /** An access token of a session started before MFA was turned on (it stays valid). */
  token: string
}

interface Enrolled extends Account {
  secret: string
  recoveryCodes: string[]
}

async function newAccount(app: FastifyInstance, fields: { email?: string } = {}): Promise<Account> {
  const username = uniqueUsername('mfa')
  const reg = await register(app, { username, password: TEST_PASSWORD, ...fields })
  expectStatus(reg, 201)
  const { access_token } = await login(app, username)
  return { id: reg.json().id, username, token: access_token }
}

/** An account with MFA active; the clock has moved past the period of the confirming code. */
async function enrolled(h: Harness, account?: Account): Promise<Enrolled> {
  const acc = account ?? (await newAccount(h.app))
  const started = await enrol(h.app, acc.token)
  expectStatus(started, 200)
  const { secret } = started.json<{ secret: string }>()
  const confirmed = await confirm(h.app, acc.token, totpAt(secret, h.clock.now))
  expectStatus(confirmed, 200)
  h.tick()
  return { ...acc, secret, recoveryCodes: confirmed.json<{ recovery_codes: string[] }>().recovery_codes }
}

/** The password step of an account with MFA: exactly the 403 mfa_required body; its mfa_token. */
async function mfaToken(app: FastifyInstance, username: string, password = TEST_PASSWORD): Promise<string> {
  const res = await postToken(app, { username, password })
  expectStatus(res, 403)
  const body = res.json()
  expect(body).toEqual({
    error: 'mfa_required',
    error_description: MFA_REQUIRED_TEXT,
    detail: MFA_REQUIRED_TEXT,
    mfa_token: expect.any(String),
  })
  return body.mfa_token as string
}

/** Password step and a current code: 200; the clock then moves on so the next login has a fresh code. */
async function loginWithCode(h: Harness, account: Enrolled): Promise<TokenBody> {
  const res = await otpGrant(h.app, await mfaToken(h.app, account.username), totpAt(account.secret, h.clock.now))
  const tokens = await expectTokens(h.app, res, account.id)
  h.tick()
  return tokens
}

async function adminToken(app: FastifyInstance): Promise<string> {
  return (await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
}

/** The audit record with this event and request id, once written. */
async function auditOf(h: Harness, res: LightMyRequestResponse, event: string): Promise<JsonBody> {
  const reqId = res.headers['x-request-id']
  return vi.waitFor(() => {
    const found = h.audit.records().find((r) => r.reqId === reqId && r.event === event)
    if (!found) throw new Error(`no ${event} audit record for ${String(reqId)} yet`)
    return found as JsonBody
  })
}

// --- RFC 6238 -----------------------------------------------------------------------------------

describe('TOTP computation (RFC 6238 Appendix B, SHA1)', () => {
  // The RFC's SHA1 seed is the 20 ASCII bytes "12345678901234567890"; its table gives 8 digits.
  const seed = Secret.fromUTF8('12345678901234567890')
  const totp = (digits: number) => new TOTP({ secret: seed, algorithm: 'SHA1', digits, period: 30 })

  it.each([
    [59, '94287082'],
    [1111111109, '07081804'],
    [1111111111, '14050471'],
    [1234567890, '89005924'],
    [2000000000, '69279037'],
    [20000000000, '65353130'],
  ])('at T=%i s the code is %s, and the server accepts its 6-digit form at that time only', (seconds, expected) => {
    const ms = seconds * 1000
    // The library the tests (and the server) compute codes with follows the RFC.
    expect(totp(8).generate({ timestamp: ms })).toBe(expected)
    // A 6-digit code is the same truncated value mod 10^6 (RFC 4226 §5.3): the last six digits.
    const six = expected.slice(2)
    expect(totp(6).generate({ timestamp: ms })).toBe(six)
    // The server's own check finds it in the current step, T = floor(seconds / 30)...
    expect(totpStep(seed.base32, six, ms)).toBe(Math.floor(seconds / 30))
    // ...and not three periods later, out of the ±1 window.
    expect(totpStep(seed.base32, six, ms + 3 * PERIOD_MS)).toBeUndefined()
  })
})

// --- The flows, on each store -------------------------------------------------------------------

/** Every test of the MFA flows, against apps from `open` (one store or another). */
function mfaFlows(open: Open): void {
  describe('enrolment', () => {
    it('hands out a 160-bit base32 secret, its otpauth URI and a QR code; confirming turns MFA on with ten recovery codes', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      expect((await mfaStatus(h.app, acc.token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })

      const res = await enrol(h.app, acc.token)
      expectStatus(res, 200)
      const body = res.json()
      expect(Object.keys(body).sort()).toEqual(['otpauth_uri', 'qr_svg', 'secret'])
      // 32 base32 characters of 5 bits: 160 bits.
      expect(body.secret).toMatch(/^[A-Z2-7]{32}$/)
      expect(Secret.fromBase32(body.secret).bytes).toHaveLength(20)
      const uri = new URL(body.otpauth_uri)
      expect(uri.protocol).toBe('otpauth:')
      expect(uri.host).toBe('totp')
      expect(decodeURIComponent(uri.pathname)).toBe(`/fastify-auth-api:${acc.username}`)
      expect(uri.searchParams.get('secret')).toBe(body.secret)
      expect(uri.searchParams.get('issuer')).toBe('fastify-auth-api')
      expect(uri.searchParams.get('algorithm')).toBe('SHA1')
      expect(uri.searchParams.get('digits')).toBe('6')
      expect(uri.searchParams.get('period')).toBe('30')
      expect(body.qr_svg.startsWith('<svg')).toBe(true)

      // Pending: not active yet, and the password alone still logs in.
      expect((await mfaStatus(h.app, acc.token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })
      await login(h.app, acc.username)

      const confirmed = await confirm(h.app, acc.token, totpAt(body.secret, h.clock.now))
      expectStatus(confirmed, 200)
      const codes: string[] = confirmed.json().recovery_codes
      expect(Object.keys(confirmed.json())).toEqual(['recovery_codes'])
      expect(codes).toHaveLength(10)
      for (const code of codes) expect(code).toMatch(RECOVERY_CODE)
      expect(new Set(codes).size).toBe(10)

      expect((await mfaStatus(h.app, acc.token)).json()).toEqual({ totp: true, recovery_codes_left: 10 })
      // From now on the password alone is not enough.
      await mfaToken(h.app, acc.username)
    })

    it('refuses a wrong password (400), and answers 409 once MFA is active', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      const wrong = await enrol(h.app, acc.token, WRONG_PASSWORD)
      expectStatus(wrong, 400)
      expect(wrong.json()).toEqual(PASSWORD_INCORRECT)
      // Nothing is pending after a refused enrolment: a confirmation has nothing to confirm.
      const nothing = await confirm(h.app, acc.token, '123456')
      expectStatus(nothing, 409)
      expect(nothing.json()).toEqual({ detail: 'No multi-factor enrolment is pending' })

      const e = await enrolled(h, acc)
      const again = await enrol(h.app, e.token)
      expectStatus(again, 409)
      expect(again.json()).toEqual({ detail: 'Multi-factor authentication is already active' })
      // A second confirmation, MFA already on: nothing pending either.
      const reconfirm = await confirm(h.app, e.token, totpAt(e.secret, h.clock.now))
      expectStatus(reconfirm, 409)
      // And the factor was left as it was.
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: true, recovery_codes_left: 10 })
    })

    it('refuses a wrong code at confirmation (400) and keeps the enrolment pending', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      const { secret } = (await enrol(h.app, acc.token)).json()
      for (const code of [wrongCodeAt(secret, h.clock.now), 'abcdef', '12345', '']) {
        const res = await confirm(h.app, acc.token, code)
        expectStatus(res, 400)
        expect(res.json()).toEqual(INVALID_CODE)
      }
      expect((await mfaStatus(h.app, acc.token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })
      // The right code still confirms it.
      expectStatus(await confirm(h.app, acc.token, totpAt(secret, h.clock.now)), 200)
    })

    it('replaces the pending secret when enrolment starts again: a code of the first secret no longer confirms', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      const first = (await enrol(h.app, acc.token)).json().secret as string
      const second = (await enrol(h.app, acc.token)).json().secret as string
      expect(second).not.toBe(first)

      const stale = await confirm(h.app, acc.token, totpAt(first, h.clock.now))
      expectStatus(stale, 400)
      expect(stale.json()).toEqual(INVALID_CODE)
      expectStatus(await confirm(h.app, acc.token, totpAt(second, h.clock.now)), 200)
    })

    it('needs a Bearer token for every MFA route of the owner', async () => {
      const h = await open()
      for (const [method, url] of [
        ['GET', '/users/me/mfa'],
        ['POST', '/users/me/mfa/totp'],
        ['POST', '/users/me/mfa/totp/confirm'],
        ['POST', '/users/me/mfa/recovery-codes'],
        ['DELETE', '/users/me/mfa'],
      ] as const) {
        const res = await authed(h.app, method, url, undefined, method === 'GET' ? undefined : {})
        expect(res.statusCode, `${method} ${url}`).toBe(401)
      }
    })
  })

  describe('login with a second factor', () => {
    it('answers a right password with exactly 403 mfa_required; the otp grant then issues tokens that refresh without a code', async () => {
      const h = await open()
      const e = await enrolled(h)
      const res = await postToken(h.app, { username: e.username, password: TEST_PASSWORD })
      expectStatus(res, 403)
      expect(res.json()).toEqual({
        error: 'mfa_required',
        error_description: MFA_REQUIRED_TEXT,
        detail: MFA_REQUIRED_TEXT,
        mfa_token: expect.any(String),
      })
      // It carries a credential: never cached.
      expect(res.headers['cache-control']).toBe('no-store')
      const token = res.json().mfa_token as string
      // A token of its own purpose: its own typ and audience, so no verifier of another purpose takes it.
      expect(decodeHeader(token)).toMatchObject({ typ: 'mfa+jwt' })
      expect(decodeClaims(token)).toMatchObject({ sub: e.id, aud: `${ISSUER}#mfa`, scope: 'user', ver: 0 })

      const tokens = await expectTokens(h.app, await otpGrant(h.app, token, totpAt(e.secret, h.clock.now)), e.id)
      // A session started with MFA goes on without a code.
      const refreshed = await refresh(h.app, tokens.refresh_token)
      await expectTokens(h.app, refreshed, e.id)
    })

    it('carries the scope of the password step over to the tokens', async () => {
      const h = await open()
      const admin = await adminToken(h.app)
      const e = await enrolled(h)
      // An administrator with MFA is where scope matters: give the user the admin role.
      expectStatus(await authed(h.app, 'PATCH', `/users/${e.id}`, admin, { roles: ['user', 'admin'] }), 200)
      const full = await otpGrant(h.app, await mfaToken(h.app, e.username), totpAt(e.secret, h.clock.now))
      expectStatus(full, 200)
      expect(full.json().scope).toBe('user admin')
      expect(decodeClaims(full.json().access_token).scope).toBe('user admin')
      h.tick()
      const res = await postToken(h.app, { username: e.username, password: TEST_PASSWORD, scope: 'user' })
      expectStatus(res, 403)
      const narrowed = await otpGrant(h.app, res.json().mfa_token, totpAt(e.secret, h.clock.now))
      expectStatus(narrowed, 200)
      expect(narrowed.json().scope).toBe('user')
      expect(decodeClaims(narrowed.json().access_token).scope).toBe('user')
    })

    it('answers a wrong password for an account with MFA exactly as for one without (status, body, header names)', async () => {
      const h = await open()
      const withMfa = await enrolled(h)
      const without = await newAccount(h.app)
      const a = await postToken(h.app, { username: withMfa.username, password: WRONG_PASSWORD })
      const b = await postToken(h.app, { username: without.username, password: WRONG_PASSWORD })
      expectStatus(a, 400)
      expect(a.json()).toEqual(INVALID_GRANT)
      expect(b.statusCode).toBe(a.statusCode)
      expect(b.body).toBe(a.body)
      expect(Object.keys(b.headers).sort()).toEqual(Object.keys(a.headers).sort())
    })

    it('takes a recovery code once, in upper case or without its hyphen too', async () => {
      const h = await open()
      const e = await enrolled(h)
      const [first, second, third] = e.recoveryCodes as [string, string, string]

      await expectTokens(h.app, await recoveryGrant(h.app, await mfaToken(h.app, e.username), first), e.id)
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: true, recovery_codes_left: 9 })
      // Spent: a fresh mfa_token does not bring it back.
      const again = await recoveryGrant(h.app, await mfaToken(h.app, e.username), first)
      expectStatus(again, 400)
      expect(again.json()).toEqual(INVALID_RECOVERY_CODE)

      await expectTokens(
        h.app,
        await recoveryGrant(h.app, await mfaToken(h.app, e.username), second.toUpperCase()),
        e.id,
      )
      await expectTokens(
        h.app,
        await recoveryGrant(h.app, await mfaToken(h.app, e.username), third.replace('-', '')),
        e.id,
      )
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: true, recovery_codes_left: 7 })
    })

    it('refuses a wrong code or recovery code with invalid_grant, and missing parameters with invalid_request', async () => {
      const h = await open()
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      for (const otp of [wrongCodeAt(e.secret, h.clock.now), 'abcdef', '1234567']) {
        const res = await otpGrant(h.app, token, otp)
        expectStatus(res, 400)
        expect(res.json()).toEqual(INVALID_OTP)
      }
      // Another mfa_token for the recovery grant: each token takes at most 5 wrong codes.
      const other = await mfaToken(h.app, e.username)
      // A TOTP code is not a recovery code, nor is one made up in the right format.
      for (const code of [totpAt(e.secret, h.clock.now), 'abcde-fghjk']) {
        const res = await recoveryGrant(h.app, other, code)
        expectStatus(res, 400)
        expect(res.json()).toEqual(INVALID_RECOVERY_CODE)
      }

      const missing: [Record<string, string>, string][] = [
        [{ grant_type: OTP_GRANT, otp: '123456' }, "Missing parameter 'mfa_token'"],
        [{ grant_type: OTP_GRANT, mfa_token: token }, "Missing parameter 'otp'"],
        [{ grant_type: RECOVERY_GRANT, recovery_code: e.recoveryCodes[0] as string }, "Missing parameter 'mfa_token'"],
        [{ grant_type: RECOVERY_GRANT, mfa_token: token }, "Missing parameter 'recovery_code'"],
        // otp belongs to the otp grant: sent to the recovery grant it is no recovery code.
        [{ grant_type: RECOVERY_GRANT, mfa_token: token, otp: '123456' }, "Missing parameter 'recovery_code'"],
      ]
      for (const [fields, description] of missing) {
        const r = await postToken(h.app, fields)
        expectStatus(r, 400)
        expect(r.json()).toEqual(oauthError('invalid_request', description))
      }

      // After all that the token still works with the right code (3 wrong codes are under its 5).
      await expectTokens(h.app, await otpGrant(h.app, token, totpAt(e.secret, h.clock.now)), e.id)
    })
  })

  describe('TOTP codes', () => {
    it('accepts a code of the previous or the next period, not older, and each step only once', async () => {
      const h = await open()
      const e = await enrolled(h)
      // The code that confirmed the enrolment cannot log in: its step counts as used.
      const confirmStepCode = totpAt(e.secret, h.clock.now - PERIOD_MS)
      const replayed = await otpGrant(h.app, await mfaToken(h.app, e.username), confirmStepCode)
      expectStatus(replayed, 400)
      expect(replayed.json()).toEqual(INVALID_OTP)

      // Far from the enrolment, so that only the window decides.
      h.tick(10)
      const now = h.clock.now
      const tooOld = await otpGrant(h.app, await mfaToken(h.app, e.username), totpAt(e.secret, now - 2 * PERIOD_MS))
      expectStatus(tooOld, 400)
      expect(tooOld.json()).toEqual(INVALID_OTP)

      const previous = totpAt(e.secret, now - PERIOD_MS)
      await expectTokens(h.app, await otpGrant(h.app, await mfaToken(h.app, e.username), previous), e.id)
      // The same code again, with a new mfa_token: refused.
      const again = await otpGrant(h.app, await mfaToken(h.app, e.username), previous)
      expectStatus(again, 400)
      expect(again.json()).toEqual(INVALID_OTP)

      const next = totpAt(e.secret, now + PERIOD_MS)
      await expectTokens(h.app, await otpGrant(h.app, await mfaToken(h.app, e.username), next), e.id)
      // The current code is inside the window but of an older step than the one just used: refused.
      const older = await otpGrant(h.app, await mfaToken(h.app, e.username), totpAt(e.secret, now))
      expectStatus(older, 400)
      expect(older.json()).toEqual(INVALID_OTP)
      // Two periods on, a new code works again.
      h.tick(2)
      await loginWithCode(h, e)
    })

    it('lets one of two concurrent requests with the same code through', async () => {
      const h = await open()
      const e = await enrolled(h)
      const code = totpAt(e.secret, h.clock.now)
      const tokens = await Promise.all([mfaToken(h.app, e.username), mfaToken(h.app, e.username)])
      const results = await Promise.all(tokens.map((t) => otpGrant(h.app, t, code)))
      expect(results.map((r) => r.statusCode).sort()).toEqual([200, 400])
      expect(results.find((r) => r.statusCode === 400)?.json()).toEqual(INVALID_OTP)
    })
  })

  describe('the mfa_token', () => {
    it('works once: a second use, even with a new right code, is invalid_grant', async () => {
      const h = await open()
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      await expectTokens(h.app, await otpGrant(h.app, token, totpAt(e.secret, h.clock.now)), e.id)
      h.tick()
      const again = await otpGrant(h.app, token, totpAt(e.secret, h.clock.now))
      expectStatus(again, 400)
      expect(again.json()).toEqual(INVALID_MFA_TOKEN)
      // The code was good: a fresh mfa_token takes it.
      await expectTokens(
        h.app,
        await otpGrant(h.app, await mfaToken(h.app, e.username), totpAt(e.secret, h.clock.now)),
        e.id,
      )
    })

    it('is refused when garbage, unknown or another kind of token, and is no access token itself', async () => {
      const h = await open()
      const e = await enrolled(h)
      const code = totpAt(e.secret, h.clock.now)
      // An access token of the account (valid: /users/me takes it), a token signed with another key, garbage.
      expectStatus(await getMe(h.app, `Bearer ${e.token}`), 200)
      for (const bad of ['garbage', 'a.b.c', e.token, forgeToken(h.app, e.id, { secret: randomBytes(32) })]) {
        for (const res of [
          await otpGrant(h.app, bad, code),
          await recoveryGrant(h.app, bad, e.recoveryCodes[0] as string),
        ]) {
          expectStatus(res, 400)
          expect(res.json()).toEqual(INVALID_MFA_TOKEN)
        }
      }
      // The other way round: the mfa_token opens nothing that needs an access token.
      const token = await mfaToken(h.app, e.username)
      const me = await getMe(h.app, `Bearer ${token}`)
      expectStatus(me, 401)
      expect(me.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
      // And none of the refusals spent the code or the recovery code.
      await expectTokens(h.app, await otpGrant(h.app, token, code), e.id)
      expect((await mfaStatus(h.app, e.token)).json().recovery_codes_left).toBe(10)
    })

    it('is refused once expired, even signed with the right key (a forged one that is not expired works)', async () => {
      const h = await open()
      const e = await enrolled(h)
      // The factor a real mfa_token names (its enrolment time), so that the forged ones differ from
      // a real one only where each says.
      const fct = decodeClaims(await mfaToken(h.app, e.username)).fct as number
      // The shape of the server's own mfa_token (header typ, audience, claims), by hand.
      const mfaShape = (iat: number) =>
        forgeToken(h.app, e.id, {
          header: { typ: 'mfa+jwt' },
          claims: { aud: `${ISSUER}#mfa`, scope: 'user', ver: 0, fct, sid: undefined, iat, exp: iat + 300 },
        })
      // Expired well past the clock skew.
      const expired = await otpGrant(h.app, mfaShape(nowSeconds() - 600), totpAt(e.secret, h.clock.now))
      expectStatus(expired, 400)
      expect(expired.json()).toEqual(INVALID_MFA_TOKEN)
      // Fresh, but of an account that does not exist, or of an older token generation (ver) of this one.
      for (const forged of [
        forgeToken(h.app, randomUUID(), {
          header: { typ: 'mfa+jwt' },
          claims: { aud: `${ISSUER}#mfa`, scope: 'user', ver: 0, fct, sid: undefined },
        }),
        forgeToken(h.app, e.id, {
          header: { typ: 'mfa+jwt' },
          claims: { aud: `${ISSUER}#mfa`, scope: 'user', ver: 1, fct, sid: undefined },
        }),
        // Of another enrolment of this account.
        forgeToken(h.app, e.id, {
          header: { typ: 'mfa+jwt' },
          claims: { aud: `${ISSUER}#mfa`, scope: 'user', ver: 0, fct: fct - 1, sid: undefined },
        }),
      ]) {
        const res = await otpGrant(h.app, forged, totpAt(e.secret, h.clock.now))
        expectStatus(res, 400)
        expect(res.json()).toEqual(INVALID_MFA_TOKEN)
      }
      // The control: the same recipe, fresh and right, is taken, so each refusal above was for its one change.
      await expectTokens(h.app, await otpGrant(h.app, mfaShape(nowSeconds()), totpAt(e.secret, h.clock.now)), e.id)
    })

    it('dies after 5 wrong codes: the 6th attempt is refused even with the right code', async () => {
      const h = await open()
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      for (let i = 0; i < 5; i++) {
        const res = await otpGrant(h.app, token, wrongCodeAt(e.secret, h.clock.now))
        expectStatus(res, 400)
        expect(res.json()).toEqual(INVALID_OTP)
      }
      const right = totpAt(e.secret, h.clock.now)
      const dead = await otpGrant(h.app, token, right)
      expectStatus(dead, 400)
      expect(dead.json()).toEqual(INVALID_MFA_TOKEN)
      // The same code with a fresh token: it was right, and the account is not locked (limit 20).
      await expectTokens(h.app, await otpGrant(h.app, await mfaToken(h.app, e.username), right), e.id)
    })

    it('takes no more than 5 wrong codes even when they arrive at once', async () => {
      const h = await open()
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      const wrong = wrongCodeAt(e.secret, h.clock.now)
      const results = await Promise.all(Array.from({ length: 10 }, () => otpGrant(h.app, token, wrong)))
      const bodies = results.map((r) => r.json())
      // Each try is reserved before its code is checked: 5 are checked, the other 5 find the token dead.
      expect(bodies.filter((b) => b.error_description === INVALID_OTP.error_description)).toHaveLength(5)
      expect(bodies.filter((b) => b.error_description === INVALID_MFA_TOKEN.error_description)).toHaveLength(5)
      expect((await otpGrant(h.app, token, totpAt(e.secret, h.clock.now))).json()).toEqual(INVALID_MFA_TOKEN)
    })

    it('is voided by a password change after it was issued', async () => {
      const h = await open()
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      const changed = await authed(h.app, 'POST', '/users/me/password', e.token, {
        current_password: TEST_PASSWORD,
        new_password: NEW_PASSWORD,
      })
      expectStatus(changed, 204)
      const res = await otpGrant(h.app, token, totpAt(e.secret, h.clock.now))
      expectStatus(res, 400)
      expect(res.json()).toEqual(INVALID_MFA_TOKEN)
      // The new password leads to a token that works with that same code.
      await expectTokens(
        h.app,
        await otpGrant(h.app, await mfaToken(h.app, e.username, NEW_PASSWORD), totpAt(e.secret, h.clock.now)),
        e.id,
      )
    })

    it('is voided when an administrator disables the account', async () => {
      const h = await open()
      const admin = await adminToken(h.app)
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      const patched = await authed(h.app, 'PATCH', `/users/${e.id}`, admin, { disabled: true })
      expectStatus(patched, 200)
      expect(patched.json()).toMatchObject({ id: e.id, disabled: true, mfa_enabled: true })
      const res = await otpGrant(h.app, token, totpAt(e.secret, h.clock.now))
      expectStatus(res, 400)
      expect(res.json()).toEqual(INVALID_MFA_TOKEN)
      // Re-enabled, the token (issued before) still does not come back to life with a recovery code either.
      expectStatus(await authed(h.app, 'PATCH', `/users/${e.id}`, admin, { disabled: false }), 200)
      const later = await recoveryGrant(h.app, token, e.recoveryCodes[0] as string)
      expect(later.statusCode).toBe(400)
      expect(later.json()).toEqual(INVALID_MFA_TOKEN)
    })
  })

  describe('lockout', () => {
    it('counts wrong codes toward LOGIN_MAX_FAILURES across mfa_tokens; a right password does not reset the count', async () => {
      const h = await open({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
      const e = await enrolled(h)
      const wrong = () => wrongCodeAt(e.secret, h.clock.now)

      const first = await mfaToken(h.app, e.username)
      for (let i = 0; i < 2; i++) expect((await otpGrant(h.app, first, wrong())).json()).toEqual(INVALID_OTP)
      // A right password between the wrong codes: it yields a new mfa_token but leaves the count at 2.
      const second = await mfaToken(h.app, e.username)
      const third = await otpGrant(h.app, second, wrong())
      expectStatus(third, 400)
      expect(third.json()).toEqual(INVALID_OTP)

      // Three wrong codes: locked, for the right code as for the password step.
      for (const res of [
        await otpGrant(h.app, second, totpAt(e.secret, h.clock.now)),
        await postToken(h.app, { username: e.username, password: TEST_PASSWORD }),
      ]) {
        expectStatus(res, 429)
        expect(res.json()).toEqual(LOCKED)
        expect(res.headers['retry-after']).toBe('30')
      }
    })

    it('ends the run of failures on a right code', async () => {
      const h = await open({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      for (let i = 0; i < 2; i++)
        expect((await otpGrant(h.app, token, wrongCodeAt(e.secret, h.clock.now))).json()).toEqual(INVALID_OTP)
      await expectTokens(h.app, await otpGrant(h.app, token, totpAt(e.secret, h.clock.now)), e.id)
      // Two more wrong codes would have locked a run of 2; after the success they do not.
      const next = await mfaToken(h.app, e.username)
      for (let i = 0; i < 2; i++)
        expect((await otpGrant(h.app, next, wrongCodeAt(e.secret, h.clock.now))).json()).toEqual(INVALID_OTP)
      h.tick()
      await expectTokens(h.app, await otpGrant(h.app, next, totpAt(e.secret, h.clock.now)), e.id)
    })
  })

  describe('guessing through the MFA routes', () => {
    const LOCKED_JSON = { detail: 'Too many failed login attempts; try again later' }
    const limits = { LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' }

    it('counts wrong codes at confirm toward the lockout: a stolen access token cannot guess its way into a pending enrolment', async () => {
      const h = await open(limits)
      const acc = await newAccount(h.app)
      const { secret } = (await enrol(h.app, acc.token)).json<{ secret: string }>()
      for (let i = 0; i < 3; i++) {
        const res = await confirm(h.app, acc.token, wrongCodeAt(secret, h.clock.now))
        expectStatus(res, 400)
        expect(res.json()).toEqual(INVALID_CODE)
      }
      const locked = await confirm(h.app, acc.token, totpAt(secret, h.clock.now))
      expectStatus(locked, 429)
      expect(locked.json()).toEqual(LOCKED_JSON)
      expect((await mfaStatus(h.app, acc.token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })
    })

    it('lets a pending enrolment expire after 15 minutes', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      const { secret } = (await enrol(h.app, acc.token)).json<{ secret: string }>()
      h.tick(31)
      const res = await confirm(h.app, acc.token, totpAt(secret, h.clock.now))
      expectStatus(res, 409)
      expect(res.json()).toEqual({ detail: 'No multi-factor enrolment is pending' })
    })

    it('counts a wrong code with the right password at DELETE /users/me/mfa as a failed login', async () => {
      const h = await open(limits)
      const e = await enrolled(h)
      for (let i = 0; i < 3; i++)
        expectStatus(await disableMfa(h.app, e.token, wrongCodeAt(e.secret, h.clock.now)), 400)
      const locked = await disableMfa(h.app, e.token, totpAt(e.secret, h.clock.now))
      expectStatus(locked, 429)
      expect((await mfaStatus(h.app, e.token)).json().totp).toBe(true)
    })

    it('does not let a right password at the MFA routes reset the count of wrong codes from /token', async () => {
      const h = await open(limits)
      const e = await enrolled(h)
      const token = await mfaToken(h.app, e.username)
      for (let i = 0; i < 2; i++) expectStatus(await otpGrant(h.app, token, wrongCodeAt(e.secret, h.clock.now)), 400)
      // The right password alone (an enrolment refused because MFA is on, a password check with a
      // wrong code): neither ends the run of failures.
      expectStatus(await enrol(h.app, e.token), 409)
      expectStatus(await regenerate(h.app, e.token, wrongCodeAt(e.secret, h.clock.now)), 400)
      const locked = await otpGrant(h.app, token, totpAt(e.secret, h.clock.now))
      expectStatus(locked, 429)
    })

    it('refuses an mfa_token issued before MFA was turned off and on again', async () => {
      const h = await open()
      const e = await enrolled(h)
      const stale = await mfaToken(h.app, e.username)
      expectStatus(await disableMfa(h.app, e.token, e.recoveryCodes[0] as string), 204)
      const again = await enrolled(h, e)
      const res = await otpGrant(h.app, stale, totpAt(again.secret, h.clock.now))
      expectStatus(res, 400)
      expect(res.json()).toEqual(INVALID_MFA_TOKEN)
      await expectTokens(
        h.app,
        await otpGrant(h.app, await mfaToken(h.app, e.username), totpAt(again.secret, h.clock.now)),
        e.id,
      )
    })
  })

  describe('recovery codes and disabling', () => {
    it('regenerates the recovery codes with the password and a TOTP code; the old ones stop working', async () => {
      const h = await open()
      const e = await enrolled(h)
      const wrongCode = await regenerate(h.app, e.token, wrongCodeAt(e.secret, h.clock.now))
      expectStatus(wrongCode, 400)
      expect(wrongCode.json()).toEqual(INVALID_CODE)
      const wrongPassword = await regenerate(h.app, e.token, totpAt(e.secret, h.clock.now), WRONG_PASSWORD)
      expectStatus(wrongPassword, 400)
      expect(wrongPassword.json()).toEqual(PASSWORD_INCORRECT)
      // A recovery code is not what this takes: a current TOTP code only.
      expectStatus(await regenerate(h.app, e.token, e.recoveryCodes[0] as string), 400)

      const res = await regenerate(h.app, e.token, totpAt(e.secret, h.clock.now))
      expectStatus(res, 200)
      h.tick()
      const fresh: string[] = res.json().recovery_codes
      expect(fresh).toHaveLength(10)
      for (const code of fresh) expect(code).toMatch(RECOVERY_CODE)
      expect(new Set(fresh).size).toBe(10)
      expect(fresh.filter((c) => e.recoveryCodes.includes(c))).toEqual([])

      const old = await recoveryGrant(h.app, await mfaToken(h.app, e.username), e.recoveryCodes[1] as string)
      expectStatus(old, 400)
      expect(old.json()).toEqual(INVALID_RECOVERY_CODE)
      await expectTokens(h.app, await recoveryGrant(h.app, await mfaToken(h.app, e.username), fresh[0] as string), e.id)
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: true, recovery_codes_left: 9 })
    })

    it('answers 409 to regenerating or disabling when MFA is not active', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      const regen = await regenerate(h.app, acc.token, '123456')
      expectStatus(regen, 409)
      expect(regen.json()).toEqual(NOT_ACTIVE)
      const off = await disableMfa(h.app, acc.token, '123456')
      expectStatus(off, 409)
      expect(off.json()).toEqual(NOT_ACTIVE)
      // Pending is not active either.
      await enrol(h.app, acc.token)
      expectStatus(await disableMfa(h.app, acc.token, '123456'), 409)
    })

    it('turns MFA off with the password and a TOTP code; a wrong code or password leaves it on', async () => {
      const h = await open()
      const e = await enrolled(h)
      const wrong = await disableMfa(h.app, e.token, wrongCodeAt(e.secret, h.clock.now))
      expectStatus(wrong, 400)
      expect(wrong.json()).toEqual(INVALID_CODE)
      const wrongPassword = await disableMfa(h.app, e.token, totpAt(e.secret, h.clock.now), WRONG_PASSWORD)
      expectStatus(wrongPassword, 400)
      expect(wrongPassword.json()).toEqual(PASSWORD_INCORRECT)
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: true, recovery_codes_left: 10 })
      const pending = await mfaToken(h.app, e.username)

      const off = await disableMfa(h.app, e.token, totpAt(e.secret, h.clock.now))
      expectStatus(off, 204)
      expect(off.body).toBe('')
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })
      await login(h.app, e.username)
      // An mfa_token issued while MFA was on has nothing left to check a code against.
      h.tick()
      const stale = await otpGrant(h.app, pending, totpAt(e.secret, h.clock.now))
      expectStatus(stale, 400)
      expect(stale.json()).toEqual(INVALID_MFA_TOKEN)
    })

    it('turns MFA off with a recovery code (as typed: upper case)', async () => {
      const h = await open()
      const e = await enrolled(h)
      expectStatus(await disableMfa(h.app, e.token, (e.recoveryCodes[4] as string).toUpperCase()), 204)
      expect((await mfaStatus(h.app, e.token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })
      await login(h.app, e.username)
      // And it can be enrolled again, with a new secret.
      const again = await enrolled(h, e)
      expect(again.secret).not.toBe(e.secret)
      await loginWithCode(h, again)
    })
  })

  describe("an administrator's reset", () => {
    it('needs the admin scope; 404 for an unknown user', async () => {
      const h = await open()
      const admin = await adminToken(h.app)
      const e = await enrolled(h)
      const forbidden = await authed(h.app, 'DELETE', `/users/${e.id}/mfa`, e.token)
      expectStatus(forbidden, 403)
      expect(forbidden.json()).toEqual({ detail: 'Insufficient scope' })
      expect((await mfaStatus(h.app, e.token)).json().totp).toBe(true)

      const unknown = await authed(h.app, 'DELETE', `/users/${randomUUID()}/mfa`, admin)
      expectStatus(unknown, 404)
      expect(unknown.json()).toEqual({ detail: 'User not found' })
      // Not a user id at all: the id is validated like every admin route's.
      expectStatus(await authed(h.app, 'DELETE', '/users/not-a-uuid/mfa', admin), 422)
      // Nothing changed for the user.
      await mfaToken(h.app, e.username)
    })

    it("turns the user's MFA off, ends their sessions, is audited, and shows in mfa_enabled", async () => {
      const h = await open()
      const admin = await adminToken(h.app)
      const e = await enrolled(h)
      const session = await loginWithCode(h, e)

      const view = await authed(h.app, 'GET', `/users/${e.id}`, admin)
      expect(view.json()).toMatchObject({ id: e.id, mfa_enabled: true })
      const list = await authed(h.app, 'GET', `/users?username_prefix=${e.username}`, admin)
      expect(list.json().items).toEqual([expect.objectContaining({ id: e.id, mfa_enabled: true })])

      const res = await authed(h.app, 'DELETE', `/users/${e.id}/mfa`, admin)
      expectStatus(res, 204)
      expect(res.body).toBe('')
      const adminId = (await getMe(h.app, `Bearer ${admin}`)).json().id
      expect(await auditOf(h, res, 'admin_mfa_reset')).toMatchObject({ targetId: e.id, hadMfa: true, by: adminId })

      // Whoever has the lost device may have had the sessions: they all ended.
      const refreshed = await refresh(h.app, session.refresh_token)
      expectStatus(refreshed, 400)
      expect(refreshed.json()).toEqual(oauthError('invalid_grant', 'Invalid refresh token'))
      for (const token of [session.access_token, e.token]) expectStatus(await getMe(h.app, `Bearer ${token}`), 401)

      // The password alone logs in again.
      const { access_token } = await login(h.app, e.username)
      expect((await mfaStatus(h.app, access_token)).json()).toEqual({ totp: false, recovery_codes_left: 0 })
      expect((await authed(h.app, 'GET', `/users/${e.id}`, admin)).json().mfa_enabled).toBe(false)
      const after = await authed(h.app, 'GET', `/users?username_prefix=${e.username}`, admin)
      expect(after.json().items).toEqual([expect.objectContaining({ id: e.id, mfa_enabled: false })])
    })

    it('leaves a user without MFA and their sessions as they were (204)', async () => {
      const h = await open()
      const admin = await adminToken(h.app)
      const acc = await newAccount(h.app)
      const res = await authed(h.app, 'DELETE', `/users/${acc.id}/mfa`, admin)
      expectStatus(res, 204)
      expect(await auditOf(h, res, 'admin_mfa_reset')).toMatchObject({ targetId: acc.id, hadMfa: false })
      expectStatus(await getMe(h.app, `Bearer ${acc.token}`), 200)
    })
  })
}

const memoryApps: FastifyInstance[] = []
afterEach(async () => {
  await Promise.allSettled(memoryApps.splice(0).map((app) => app.close()))
})

describe('MFA on the memory store', () => {
  mfaFlows(opener(() => ({}), memoryApps))
})

describeWith(['postgres', 'redis'], 'MFA on PostgreSQL with Redis', () => {
  let db: TestSchema
  const prefix = redisPrefix()
  const apps: FastifyInstance[] = []
  const open = opener(() => ({ STORE: 'postgres', DATABASE_URL: db.url, REDIS_URL, REDIS_PREFIX: prefix }), apps)

  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterEach(async () => {
    await Promise.allSettled(apps.splice(0).map((app) => app.close()))
  })
  afterAll(async () => {
    await deleteRedisKeys(prefix)
    await db?.drop()
  })

  mfaFlows(open)

  describe('two instances on one database and one Redis', () => {
    it('refuses on instance B a code already accepted on instance A', async () => {
      const clock = newClock()
      const a = await open({}, clock)
      const b = await open({}, clock)
      const e = await enrolled(a)
      const code = totpAt(e.secret, clock.now)
      await expectTokens(a.app, await otpGrant(a.app, await mfaToken(a.app, e.username), code), e.id)

      const onB = await mfaToken(b.app, e.username)
      const replayed = await otpGrant(b.app, onB, code)
      expectStatus(replayed, 400)
      expect(replayed.json()).toEqual(INVALID_OTP)
      // B takes the next code, with that same mfa_token (one wrong try is under its 5).
      b.tick()
      await expectTokens(b.app, await otpGrant(b.app, onB, totpAt(e.secret, clock.now)), e.id)
    })

    it('refuses on instance B an mfa_token spent on instance A', async () => {
      const clock = newClock()
      const a = await open({}, clock)
      const b = await open({}, clock)
      const e = await enrolled(a)
      const token = await mfaToken(a.app, e.username)
      await expectTokens(a.app, await otpGrant(a.app, token, totpAt(e.secret, clock.now)), e.id)
      a.tick()
      // A fresh code: only the token can be the reason for the refusal.
      const code = totpAt(e.secret, clock.now)
      const spent = await otpGrant(b.app, token, code)
      expectStatus(spent, 400)
      expect(spent.json()).toEqual(INVALID_MFA_TOKEN)
      await expectTokens(b.app, await otpGrant(b.app, await mfaToken(b.app, e.username), code), e.id)
    })

    it('counts wrong codes on both instances toward one lockout', async () => {
      const clock = newClock()
      const limits = { LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' }
      const a = await open(limits, clock)
      const b = await open(limits, clock)
      const e = await enrolled(a)
      const wrong = () => wrongCodeAt(e.secret, clock.now)
      const onA = await mfaToken(a.app, e.username)
      expect((await otpGrant(a.app, onA, wrong())).json()).toEqual(INVALID_OTP)
      const onB = await mfaToken(b.app, e.username)
      expect((await otpGrant(b.app, onB, wrong())).json()).toEqual(INVALID_OTP)
      expect((await otpGrant(a.app, onA, wrong())).json()).toEqual(INVALID_OTP)
      const locked = await otpGrant(b.app, onB, totpAt(e.secret, clock.now))
      expectStatus(locked, 429)
      expect(locked.json()).toEqual(LOCKED)
    })
  })

  describe('at rest', () => {
    it('stores neither the TOTP secret nor any recovery code as such', async () => {
      const h = await open()
      const acc = await newAccount(h.app)
      const { secret } = (await enrol(h.app, acc.token)).json()
      const raw = Buffer.from(Secret.fromBase32(secret).bytes)
      // Every readable form of the secret: as handed out, as typed, and its bytes in hex and base64.
      const forms = [
        secret,
        secret.toLowerCase(),
        raw.toString('hex'),
        raw.toString('base64'),
        raw.toString('base64url'),
      ]

      const pending = await db.pool.query('SELECT secret, key_id, active FROM mfa_totp WHERE user_id = $1', [acc.id])
      expect(pending.rows).toEqual([{ secret: expect.any(String), key_id: expect.any(String), active: false }])
      for (const form of forms) expect(pending.rows[0].secret).not.toContain(form)

      const codes: string[] = (await confirm(h.app, acc.token, totpAt(secret, h.clock.now))).json().recovery_codes
      const active = await db.pool.query('SELECT secret, active FROM mfa_totp WHERE user_id = $1', [acc.id])
      expect(active.rows[0].active).toBe(true)
      for (const form of forms) expect(active.rows[0].secret).not.toContain(form)

      const { rows } = await db.pool.query('SELECT code_hash FROM mfa_recovery_codes WHERE user_id = $1', [acc.id])
      expect(rows).toHaveLength(10)
      const stored = rows.map((r) => r.code_hash as string)
      expect(new Set(stored).size).toBe(10)
      for (const code of codes)
        for (const form of [code, code.replace('-', ''), code.toUpperCase()])
          for (const hash of stored) expect(hash).not.toContain(form)

      // Spending a code deletes exactly one row.
      h.tick()
      await expectTokens(
        h.app,
        await recoveryGrant(h.app, await mfaToken(h.app, acc.username), codes[0] as string),
        acc.id,
      )
      const left = await db.pool.query('SELECT count(*)::int AS n FROM mfa_recovery_codes WHERE user_id = $1', [acc.id])
      expect(left.rows[0].n).toBe(9)
    })
  })
})

// --- Settings -----------------------------------------------------------------------------------

describeWith('postgres', 'MFA on PostgreSQL without Redis: two instances', () => {
  // Without Redis each instance keeps its own counters (an mfa_token's uses and wrong codes), as
  // README says; what must still hold across instances is that a code works once, which the
  // database guarantees (a conditional UPDATE of the last step used).
  let db: TestSchema
  const apps: FastifyInstance[] = []
  const open = opener(() => ({ STORE: 'postgres', DATABASE_URL: db.url }), apps)

  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterEach(async () => {
    await Promise.allSettled(apps.splice(0).map((app) => app.close()))
  })
  afterAll(async () => {
    await db?.drop()
  })

  it('refuses on instance B a code already accepted on instance A', async () => {
    const clock = newClock()
    const a = await open({}, clock)
    const b = await open({}, clock)
    const e = await enrolled(a)
    const code = totpAt(e.secret, clock.now)
    await expectTokens(a.app, await otpGrant(a.app, await mfaToken(a.app, e.username), code), e.id)
    const replayed = await otpGrant(b.app, await mfaToken(b.app, e.username), code)
    expectStatus(replayed, 400)
    expect(replayed.json()).toEqual(INVALID_OTP)
  })
})

describe('MFA settings', () => {
  const open = opener(() => ({}), memoryApps)

  it('puts MFA_ISSUER in the otpauth URI instead of AUTH_REALM', async () => {
    const h = await open({ MFA_ISSUER: 'Acme Corp' })
    const acc = await newAccount(h.app)
    const uri = new URL((await enrol(h.app, acc.token)).json().otpauth_uri)
    expect(decodeURIComponent(uri.pathname)).toBe(`/Acme Corp:${acc.username}`)
    expect(uri.searchParams.get('issuer')).toBe('Acme Corp')
  })

  it('is off with an asymmetric JWT algorithm and no MFA_ENCRYPTION_KEY: no MFA routes, no MFA grants', async () => {
    const h = await open({ JWT_ALGORITHM: 'EdDSA' })
    const acc = await newAccount(h.app)
    const enrolment = await enrol(h.app, acc.token)
    expectStatus(enrolment, 404)
    // No different from a route that never existed.
    expect(enrolment.json()).toEqual((await authed(h.app, 'POST', '/users/me/no-such-route', acc.token, {})).json())
    expectStatus(await mfaStatus(h.app, acc.token), 404)
    const grant = await otpGrant(h.app, 'whatever', '123456')
    expectStatus(grant, 400)
    expect(grant.json()).toEqual(oauthError('unsupported_grant_type', 'grant_type must be password or refresh_token'))
    // The admin view still says mfa_enabled, false.
    const admin = await adminToken(h.app)
    expect((await authed(h.app, 'GET', `/users/${acc.id}`, admin)).json().mfa_enabled).toBe(false)
  })

  it('works with an asymmetric JWT algorithm once MFA_ENCRYPTION_KEY is set', async () => {
    const h = await open({ JWT_ALGORITHM: 'EdDSA', MFA_ENCRYPTION_KEY: randomBytes(32).toString('hex') })
    const e = await enrolled(h)
    const token = await mfaToken(h.app, e.username)
    // Signed like every token of this server, with the EdDSA key.
    expect(decodeHeader(token)).toMatchObject({ alg: 'EdDSA', typ: 'mfa+jwt' })
    await expectTokens(h.app, await otpGrant(h.app, token, totpAt(e.secret, h.clock.now)), e.id)
  })
})

describe('MFA and a password reset', () => {
  let smtp: TestSmtpServer
  beforeAll(async () => {
    smtp = await startSmtpServer()
  })
  // After the top-level afterEach has closed the app: nothing is left to deliver.
  afterAll(async () => {
    await smtp?.close()
  })

  const postJson = (app: FastifyInstance, url: string, body: unknown) =>
    app.inject({
      method: 'POST',
      url,
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify(body),
    })

  it('keeps MFA on after the password is reset by e-mail link', async () => {
    const open = opener(
      () => ({
        SMTP_URL: smtp.url,
        MAIL_FROM: 'Auth <auth@example.com>',
        PUBLIC_URL: 'https://auth.example.com',
        MAIL_RETRY_DELAY_MS: '20',
      }),
      memoryApps,
    )
    const h = await open()
    const email = `${uniqueUsername('mfa').toLowerCase()}@example.com`
    const e = await enrolled(h, await newAccount(h.app, { email }))

    expectStatus(await postJson(h.app, '/password/forgot', { email }), 202)
    const mail = await smtp.waitForMessage((m) => m.rcptTo.includes(email) && m.subject === 'Reset your password')
    expectStatus(await postJson(h.app, '/password/reset', { token: tokenIn(mail), new_password: NEW_PASSWORD }), 204)

    // The new password is only the first factor: the code is still asked for, and still works.
    const token = await mfaToken(h.app, e.username, NEW_PASSWORD)
    const tokens = await expectTokens(h.app, await otpGrant(h.app, token, totpAt(e.secret, h.clock.now)), e.id)
    expect((await mfaStatus(h.app, tokens.access_token)).json()).toEqual({ totp: true, recovery_codes_left: 10 })
  })
})
