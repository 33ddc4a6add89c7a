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
  makeRegisterBody,
  NoContent,
  OAuthErrorBody,
  RevokeForm,
  TokenForm,
  TokenResponse,
  UserPublic,
} from '../schemas.js'
import { grantScope } from '../services/scopes.js'
import { normaliseUsername } from '../store/users.js'
import { BEARER_SECURITY, emptyForm, PUBLIC_SECURITY, requireMediaType } from './hooks.js'
import { oauthResponses, responses } from './responses.js'
import { toPublic } from './views.js'

const TOKEN_FIELDS = ['grant_type', 'username', 'password', 'scope', 'refresh_token', 'client_id', 'client_secret']
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
        if (grant !== undefined && grant !== 'password' && grant !== 'refresh_token')
          throw new OAuthError('unsupported_grant_type', 'grant_type must be password or refresh_token')
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
          // Refreshes cost no bcrypt and carry 256-bit tokens: not counted against anyone.
          allowList: (request: FastifyRequest) =>
            (request.body as { grant_type?: string }).grant_type === 'refresh_token',
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
          'RFC 6749 §4.3 and §6. Password grant: username, password, optional scope. Refresh grant: refresh_token, optional scope (narrowing only). Errors have exactly error, error_description and detail. The form must be UTF-8, raw and once %XX-decoded (400 invalid_request otherwise, never repaired); a charset other than utf-8 is 415. No body and no Content-Type is an empty form.',
        tags: ['auth'],
        security: PUBLIC_SECURITY,
        consumes: ['application/x-www-form-urlencoded'],
        body: TokenForm,
        response: oauthResponses(
          {
            200: [TokenResponse, 'A new access token and a new refresh token (a refresh spends the one sent).'],
            400: [
              OAuthErrorBody,
              '`invalid_request` (a parameter missing, repeated or not a string), `invalid_grant` (wrong credentials; an unknown, spent, expired or revoked refresh token), `unsupported_grant_type`, or `invalid_scope`.',
            ],
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
          const issued = await app.sessions.refresh(body.refresh_token, body.scope)
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
      const { username, password } = body
      if (username === undefined) throw new OAuthError('invalid_request', "Missing parameter 'username'")
      if (password === undefined) throw new OAuthError('invalid_request', "Missing parameter 'password'")
      const logged = username.slice(0, 64)
      let user: Awaited<ReturnType<typeof app.users.login>>
      try {
        user = await app.users.login(username, password, request.ip)
      } catch (err) {
        metrics.logins.inc({ outcome: loginOutcome(err) })
        app.audit.info({ event: 'login', outcome: failureOutcome(err), username: logged, ...audit })
        throw err
      }
      let issued: Awaited<ReturnType<typeof app.sessions.start>>
      try {
        issued = await app.sessions.start(user, grantScope(user.roles, body.scope))
      } catch (err) {
        // The password was right but no tokens came of it: a scope the roles do not allow, a store down.
        metrics.logins.inc({ outcome: loginOutcome(err) })
        throw err
      }
      metrics.logins.inc({ outcome: 'success' })
      app.audit.info({ event: 'login', outcome: 'success', username: user.username, userId: user.id, ...audit })
      return tokenResponse(issued)
    },
  )

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

function tokenResponse(issued: { accessToken: string; refreshToken: string; expiresIn: number; scope: string }) {
  return {
    access_token: issued.accessToken,
    token_type: 'bearer' as const,
    expires_in: issued.expiresIn,
    refresh_token: issued.refreshToken,
    scope: issued.scope,
  }
}

/**
 * preValidation for the OAuth form endpoints: RFC 6749 §3.2 says a parameter sent without a value
 * is omitted, and that no parameter may appear twice (the form parser turns a repeated one into an
 * array). `extra` runs next, so that e.g. an unsupported grant_type is reported first.
 */
function formChecks(fields: string[], extra?: (body: Record<string, unknown>) => void) {
  return async function checkForm(request: FastifyRequest): Promise<void> {
    const body = request.body as Record<string, unknown>
    for (const field of fields) {
      if (body[field] === '') delete body[field]
      if (Array.isArray(body[field])) throw new OAuthError('invalid_request', `Parameter '${field}' is repeated`)
    }
    extra?.(body)
  }
}
