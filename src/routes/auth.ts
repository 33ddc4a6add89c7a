// POST /register, POST /token (the OAuth2 password and refresh_token grants, RFC 6749 §4.3 and §6),
// POST /revoke (RFC 7009) and POST /logout.
import type { FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import type { Config } from '../config.js'
import {
  ApiError,
  OAuthError,
  ReuseDetectedError,
  ServerBusyError,
  StoreUnavailableError,
  TooManyAttemptsError,
  TooManyRequestsError,
} from '../errors.js'
import type { LoginOutcome, Metrics, RefreshOutcome } from '../metrics.js'
import {
  Detail,
  EmptyObject,
  MfaRequiredBody,
  makeRegisterBody,
  NoContent,
  OAuthErrorBody,
  RevokeForm,
  TokenForm,
  TokenResponse,
  UserPublic,
} from '../schemas.js'
import { MFA_OTP_GRANT, MFA_RECOVERY_CODE_GRANT } from '../services/mfa.js'
import { grantScope } from '../services/scopes.js'
import { normaliseUsername, type UserRecord } from '../store/users.js'
import { BEARER_SECURITY, emptyForm, formChecks, PUBLIC_SECURITY, requireMediaType } from './hooks.js'
import { oauthResponses, type ResponseSpec, responses } from './responses.js'
import { toPublic } from './views.js'

const TOKEN_FIELDS = [
  'grant_type',
  'username',
  'password',
  'scope',
  'refresh_token',
  'mfa_token',
  'otp',
  'recovery_code',
  'client_id',
  'client_secret',
]
const REVOKE_FIELDS = ['token', 'token_type_hint', 'client_id', 'client_secret']

/** The 429 of a @fastify/rate-limit cap (errorResponseBuilder): our body, with Retry-After in seconds. */
export function tooManyRequests(_request: FastifyRequest, context: { after: string; ttl: number }) {
  return new TooManyRequestsError(
    Math.max(1, Math.ceil(context.ttl / 1000)),
    `Too many requests; retry in ${context.after}`,
  )
}

export const authRoutes: FastifyPluginAsyncZod<{ config: Config; metrics: Metrics }> = async (
  app,
  { config, metrics },
) => {
  const { throttle } = config
  // The grants /token accepts: the MFA grants only when MFA is on.
  const mfaRequired: Record<number, ResponseSpec> = app.mfa
    ? {
        403: [
          MfaRequiredBody,
          'The password was right and the account has MFA on: `mfa_required`, with an `mfa_token` to send back with a code (grant types `http://auth0.com/oauth/grant-type/mfa-otp` or `…/mfa-recovery-code`). A wrong password answers 400 as always, so this tells nothing to someone without the password.',
        ],
      }
    : {}
  const grantTypes = ['password', 'refresh_token', ...(app.mfa ? [MFA_OTP_GRANT, MFA_RECOVERY_CODE_GRANT] : [])]

  app.post(
    '/register',
    {
      // No body and no Content-Type stays 415 here, unlike /token and /revoke: see hooks.ts.
      onRequest: requireMediaType('application/json'),
      config: {
        rateLimit: {
          max: throttle.registerMax,
          timeWindow: throttle.registerWindowSeconds * 1000,
          errorResponseBuilder: tooManyRequests,
        },
      },
      schema: {
        summary: 'Register a new user',
        operationId: 'register',
        description:
          'JSON in UTF-8: 400 for a body that is not valid JSON or not valid UTF-8 (never repaired), 415 for another media type, a charset other than utf-8, or no Content-Type. An account registered with an e-mail address is sent a link to verify it (`email_verified` is false until then; unless mail is off). With REQUIRE_VERIFIED_EMAIL, `email` is required.',
        tags: ['auth'],
        security: PUBLIC_SECURITY,
        body: makeRegisterBody(
          config.password.minLength,
          (password, account) => app.users.newPasswordProblems(password, account),
          { requireEmail: config.recovery.requireVerifiedEmail },
        ),
        response: responses(
          {
            201: [UserPublic, 'The account was created; never the password or its hash.'],
            409: [
              Detail,
              'The username is taken, in any case ("Username already registered"), or the e-mail address belongs to another account, in any case ("Email already registered").',
            ],
          },
          'json-body',
          'rate-limited',
          'hashing',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { username, email, password, hashed_password } = request.body
      const user = await app.users.register({
        username,
        email: email ?? null,
        password: (password ?? hashed_password) as string,
        passwordField: password === undefined ? 'hashed_password' : 'password',
      })
      reply.code(201)
      return toPublic(user)
    },
  )

  app.post(
    '/token',
    {
      onRequest: requireMediaType('application/x-www-form-urlencoded', { noBodyAs: emptyForm }),
      preValidation: formChecks(TOKEN_FIELDS, (body) => {
        const grant = body.grant_type
        if (grant !== undefined && !grantTypes.includes(grant as string))
          throw new OAuthError(
            'unsupported_grant_type',
            `grant_type must be ${grantTypes.join(', ').replace(/, ([^,]+)$/, ' or $1')}`,
          )
      }),
      config: {
        oauthErrors: true,
        // A flood guard per account in front of bcrypt (the lockout itself counts failures: see
        // services/throttle.ts). preHandler, because the key needs the parsed body.
        rateLimit: {
          hook: 'preHandler',
          max: throttle.loginPerMinute,
          timeWindow: 60_000,
          keyGenerator: (request: FastifyRequest) => {
            const { username } = request.body as { username?: string }
            return typeof username === 'string' ? `login:${normaliseUsername(username)}` : `ip:${request.ip}`
          },
          // Refreshes cost no bcrypt and carry 256-bit tokens: not counted against anyone. The MFA
          // grants have their own limits (5 codes per MFA token, the account lockout).
          allowList: (request: FastifyRequest) => {
            const grant = (request.body as { grant_type?: string }).grant_type
            return grant !== undefined && grant !== 'password'
          },
          // A login refused by this cap is a throttled login (refreshes never reach it).
          errorResponseBuilder: (request: FastifyRequest, context: { after: string; ttl: number }) => {
            metrics.logins.inc({ outcome: 'throttled' })
            return tooManyRequests(request, context)
          },
        },
      },
      schema: {
        summary: 'Log in (password grant) or refresh (refresh_token grant)',
        operationId: 'token',
        description:
          'RFC 6749 §4.3 and §6. Password grant: username, password, optional scope. Refresh grant: refresh_token, optional scope (narrowing only). MFA grants (the second step of a password grant of an account with MFA on, after its 403 `mfa_required`): mfa_token and otp, or mfa_token and recovery_code. Errors have exactly error, error_description and detail. The form must be UTF-8, raw and once %XX-decoded (400 invalid_request otherwise, never repaired); a charset other than utf-8 is 415. No body and no Content-Type is an empty form.',
        tags: ['auth'],
        security: PUBLIC_SECURITY,
        consumes: ['application/x-www-form-urlencoded'],
        body: TokenForm,
        response: oauthResponses(
          {
            200: [TokenResponse, 'A new access token and a new refresh token (a refresh spends the one sent).'],
            400: [
              OAuthErrorBody,
              '`invalid_request` (a parameter missing, repeated or not a string), `invalid_grant` (wrong credentials; an unknown, spent, expired or revoked refresh token; for the MFA grants, a wrong or used code, or an unknown, expired, spent or dead `mfa_token`), `unsupported_grant_type`, or `invalid_scope`.',
            ],
            ...mfaRequired,
          },
          'form-body',
          'rate-limited',
          'throttled',
          'hashing',
          'store',
        ),
      },
    },
    async (request) => {
      const body = request.body
      const audit = { ip: request.ip, reqId: request.id }
      if (body.grant_type === 'refresh_token') {
        if (body.refresh_token === undefined)
          throw new OAuthError('invalid_request', "Missing parameter 'refresh_token'")
        try {
          const issued = await app.sessions.refresh(body.refresh_token, body.scope, sessionClient(request))
          // grace_reissue: a spent refresh token came back within REFRESH_REUSE_GRACE_SECONDS (two
          // tabs, a retry) and got one more pair in its session; a second one revokes the session.
          if (issued.graceReissue)
            app.audit.info({
              event: 'refresh',
              outcome: 'grace_reissue',
              userId: issued.claims.sub,
              sessionId: issued.claims.sid,
              ...audit,
            })
          else app.audit.info({ event: 'refresh', outcome: 'success', userId: issued.claims.sub, ...audit })
          metrics.refreshes.inc({ outcome: issued.graceReissue ? 'grace_reissue' : 'success' })
          return tokenResponse(issued)
        } catch (err) {
          metrics.refreshes.inc({ outcome: refreshOutcome(err) })
          if (err instanceof ReuseDetectedError)
            app.audit.warn({
              event: 'refresh_reuse',
              outcome: 'family_revoked',
              userId: err.userId,
              sessionId: err.familyId,
              ...audit,
            })
          else app.audit.info({ event: 'refresh', outcome: failureOutcome(err), ...audit })
          throw err
        }
      }
      if (body.grant_type === MFA_OTP_GRANT || body.grant_type === MFA_RECOVERY_CODE_GRANT) {
        const mfa = app.mfa as NonNullable<typeof app.mfa>
        const otpGrant = body.grant_type === MFA_OTP_GRANT
        const code = otpGrant ? body.otp : body.recovery_code
        if (body.mfa_token === undefined) throw new OAuthError('invalid_request', "Missing parameter 'mfa_token'")
        if (code === undefined)
          throw new OAuthError('invalid_request', `Missing parameter '${otpGrant ? 'otp' : 'recovery_code'}'`)
        const method = otpGrant ? 'otp' : 'recovery_code'
        let verified: Awaited<ReturnType<typeof mfa.verifyGrant>>
        try {
          verified = await mfa.verifyGrant(
            body.mfa_token,
            otpGrant ? { otp: code } : { recoveryCode: code },
            request.ip,
          )
        } catch (err) {
          metrics.logins.inc({ outcome: loginOutcome(err) })
          app.audit.info({ event: 'login_mfa', method, outcome: failureOutcome(err), ...audit })
          throw err
        }
        const { user } = verified
        const issued = await issue(user, verified.scope, request)
        app.audit.info({
          event: 'login_mfa',
          method,
          outcome: 'success',
          username: user.username,
          userId: user.id,
          ...audit,
        })
        return tokenResponse(issued)
      }
      const { username, password } = body
      if (username === undefined) throw new OAuthError('invalid_request', "Missing parameter 'username'")
      if (password === undefined) throw new OAuthError('invalid_request', "Missing parameter 'password'")
      const logged = username.slice(0, 64)
      let login: Awaited<ReturnType<typeof app.users.login>>
      try {
        login = await app.users.login(username, password, request.ip)
      } catch (err) {
        metrics.logins.inc({ outcome: loginOutcome(err) })
        app.audit.info({ event: 'login', outcome: failureOutcome(err), username: logged, ...audit })
        throw err
      }
      const { user } = login
      if (login.mfaRequired) {
        let scope: string
        try {
          scope = grantScope(user.roles, body.scope)
        } catch (err) {
          metrics.logins.inc({ outcome: loginOutcome(err) })
          throw err
        }
        metrics.logins.inc({ outcome: 'mfa_required' })
        app.audit.info({ event: 'login', outcome: 'mfa_required', username: user.username, userId: user.id, ...audit })
        await (app.mfa as NonNullable<typeof app.mfa>).challenge(user, scope)
      }
      const issued = await issue(user, body.scope, request)
      app.audit.info({ event: 'login', outcome: 'success', username: user.username, userId: user.id, ...audit })
      return tokenResponse(issued)
    },
  )

  /** Starts a session for a user whose credentials were right; counts the login's outcome either way. */
  async function issue(user: UserRecord, requestedScope: string | undefined, request: FastifyRequest) {
    try {
      const issued = await app.sessions.start(user, grantScope(user.roles, requestedScope), sessionClient(request))
      metrics.logins.inc({ outcome: 'success' })
      return issued
    } catch (err) {
      // The credentials were right but no tokens came of it: a scope the roles do not allow, a store down.
      metrics.logins.inc({ outcome: loginOutcome(err) })
      throw err
    }
  }

  app.post(
    '/revoke',
    {
      onRequest: requireMediaType('application/x-www-form-urlencoded', { noBodyAs: emptyForm }),
      preValidation: formChecks(REVOKE_FIELDS),
      config: { oauthErrors: true },
      schema: {
        summary: 'Revoke a refresh token or an access token (RFC 7009)',
        operationId: 'revoke',
        description:
          'Answers 200 even for unknown or invalid tokens. Revoking a refresh token ends its whole session; revoking an access token also ends its session. No body and no Content-Type is an empty form (400 invalid_request, missing token); a form that is not UTF-8 is 400 invalid_request; a charset other than utf-8 is 415.',
        tags: ['auth'],
        security: PUBLIC_SECURITY,
        consumes: ['application/x-www-form-urlencoded'],
        body: RevokeForm,
        response: oauthResponses(
          {
            200: [EmptyObject, 'Revoked, or nothing to revoke (an unknown or invalid token): `{}` either way.'],
            400: [OAuthErrorBody, '`invalid_request`: no `token`, or a parameter repeated or not a string.'],
          },
          'form-body',
          'store',
        ),
      },
    },
    async (request) => {
      const { token, token_type_hint } = request.body
      if (token === undefined) throw new OAuthError('invalid_request', "Missing parameter 'token'")
      await app.sessions.revoke(token, token_type_hint)
      app.audit.info({ event: 'revoke', ip: request.ip, reqId: request.id })
      return {}
    },
  )

  app.post(
    '/logout',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'Log out: revoke this access token and its session',
        operationId: 'logout',
        description: "The user's other sessions keep working.",
        tags: ['auth'],
        security: BEARER_SECURITY,
        response: responses(
          { 204: [NoContent, 'Logged out: this token and its session have ended.'] },
          'bearer',
          'no-body',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const auth = request.auth as NonNullable<typeof request.auth>
      await app.sessions.logout(auth.claims)
      app.audit.info({ event: 'logout', userId: auth.record.id, ip: request.ip, reqId: request.id })
      return reply.code(204).send(null)
    },
  )
}

/**
 * How a grant that did not succeed is audited: `failure` only when the credentials were checked
 * and wrong (or the grant itself was refused); `throttled` when the lockout refused it before any
 * check; `unavailable` when the server shed it or a store could not be reached (nothing was
 * checked, so it says nothing about the credentials); `error` for anything unexpected.
 */
function failureOutcome(err: unknown): 'failure' | 'throttled' | 'unavailable' | 'error' {
  if (err instanceof TooManyAttemptsError) return 'throttled'
  if (err instanceof ServerBusyError || err instanceof StoreUnavailableError) return 'unavailable'
  return err instanceof ApiError ? 'failure' : 'error'
}

/**
 * The metrics outcome of a password grant that did not succeed (README, "Metrics"): finer than the
 * audit's. `locked`: the account is locked (consecutive failures); `throttled`: the per-address
 * failure limit (here) or the per-account request cap (its errorResponseBuilder above); `shed`: the
 * hash gate refused it; `unavailable`: a store could not be reached; `invalid`: any other refusal
 * we answered (invalid_grant, invalid_scope); `error`: a bug (500).
 */
function loginOutcome(err: unknown): LoginOutcome {
  if (err instanceof TooManyAttemptsError) return err.reason === 'account' ? 'locked' : 'throttled'
  if (err instanceof ServerBusyError) return 'shed'
  if (err instanceof StoreUnavailableError) return 'unavailable'
  return err instanceof ApiError ? 'invalid' : 'error'
}

/** The metrics outcome of a refresh that did not succeed: reuse is told apart from a plain invalid token. */
function refreshOutcome(err: unknown): RefreshOutcome {
  if (err instanceof ReuseDetectedError) return 'reuse_detected'
  if (err instanceof ServerBusyError || err instanceof StoreUnavailableError) return 'unavailable'
  return err instanceof ApiError ? 'invalid' : 'error'
}

/** Who asks for tokens, recorded on the session (GET /users/me/sessions); request.ip honours TRUST_PROXY. */
function sessionClient(request: FastifyRequest): { userAgent: string | undefined; ip: string } {
  return { userAgent: request.headers['user-agent'], ip: request.ip }
}

function tokenResponse(issued: { accessToken: string; refreshToken: string; expiresIn: number; scope: string }) {
  return {
    access_token: issued.accessToken,
    token_type: 'bearer' as const,
    expires_in: issued.expiresIn,
    refresh_token: issued.refreshToken,
    scope: issued.scope,
  }
}
