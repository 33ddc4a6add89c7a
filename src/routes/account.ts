// Account recovery and verified e-mail over HTTP: POST /password/forgot, POST /password/reset,
// POST /email/verify, POST /users/me/email/verify and POST /users/me/email. The rules are in
// services/recovery.ts. Registered only when mail can be sent: in production without SMTP_URL
// (config.mail.mode 'off') none of these routes exists (404, and absent from the OpenAPI document).
import type { FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import type { Config } from '../config.js'
import {
  Detail,
  EmailChangeBody,
  ForgotPasswordBody,
  NoContent,
  ResetPasswordBody,
  ValidationErrorBody,
  VerifyEmailBody,
} from '../schemas.js'
import type { RecoveryService, RequestContext } from '../services/recovery.js'
import { tooManyRequests } from './auth.js'
import { BEARER_SECURITY, PUBLIC_SECURITY, requireMediaType } from './hooks.js'
import { type ResponseSpec, responses } from './responses.js'

/** The one answer of /password/forgot, whatever happens after it. */
const FORGOT_ANSWER = { detail: 'If an account matches, a reset link has been sent' } as const

const INVALID_TOKEN =
  'The token is unknown, expired, already used, meant for the other flow, of a disabled account, or older than the account\'s last password change ("Invalid or expired token"); nothing changed.'

const context = (request: FastifyRequest): RequestContext => ({ ip: request.ip, reqId: request.id })

export const accountRoutes: FastifyPluginAsyncZod<{ config: Config; recovery: RecoveryService }> = async (
  app,
  { config, recovery },
) => {
  if (!recovery.enabled) return

  const { maxPerAddress, windowSeconds } = config.recovery
  // The per-address cap of the routes that send a link (429 with Retry-After). The per-account
  // limit is the service's, and silent, so that no 429 says anything about an account.
  const perAddress = {
    rateLimit: { max: maxPerAddress, timeWindow: windowSeconds * 1000, errorResponseBuilder: tooManyRequests },
  }
  const failedAttempts: ResponseSpec = [
    Detail,
    'Too many invalid tokens or failed logins from this address (they share one limit): refused for a while.',
    { 'Retry-After': { type: 'integer', minimum: 1, description: 'Seconds to wait before trying again.' } },
  ]
  const invalidToken: ResponseSpec = [Detail, INVALID_TOKEN]

  app.post(
    '/password/forgot',
    {
      onRequest: requireMediaType('application/json'),
      config: perAddress,
      schema: {
        summary: 'Ask for a password-reset link',
        operationId: 'requestPasswordReset',
        description: `The account by \`email\` or \`username\`, exactly one. Always the same 202, with the same body and headers, at once: whether an account matches, has an address, or is disabled is never told, and the lookup itself happens after the answer. When an enabled account with an address matches, a link that works once, for ${config.recovery.resetTtlSeconds / 60} minutes, goes to its address; a new link ends the one before. At most RECOVERY_MAX_PER_ACCOUNT links an account per window: past it, nothing is sent and the answer is the same.`,
        tags: ['account'],
        security: PUBLIC_SECURITY,
        body: ForgotPasswordBody,
        response: responses(
          { 202: [Detail, 'Accepted: "If an account matches, a reset link has been sent", in every case.'] },
          'json-body',
          'rate-limited',
        ),
      },
    },
    async (request, reply) => {
      recovery.requestPasswordReset(request.body, context(request))
      return reply.code(202).send(FORGOT_ANSWER)
    },
  )

  app.post(
    '/password/reset',
    {
      onRequest: requireMediaType('application/json'),
      schema: {
        summary: 'Set a new password with a reset link',
        operationId: 'resetPassword',
        description:
          'The `token` of the link, and the new password, which follows every rule of a new password. Afterwards every session, refresh token and access token of the account has ended, its failed-login counters are cleared, its address is verified if the link went to it, and a notice goes to the address. Invalid tokens count against the address like failed logins.',
        tags: ['account'],
        security: PUBLIC_SECURITY,
        body: ResetPasswordBody,
        response: responses(
          {
            204: [NoContent, 'The password is replaced; every earlier session and token of the account has ended.'],
            400: invalidToken,
            422: [ValidationErrorBody, '`new_password` breaks the password rules; the token stays usable.'],
            429: failedAttempts,
          },
          'json-body',
          'hashing',
          'store',
        ),
      },
    },
    async (request, reply) => {
      await recovery.resetPassword(request.body.token, request.body.new_password, context(request))
      return reply.code(204).send(null)
    },
  )

  app.post(
    '/email/verify',
    {
      onRequest: requireMediaType('application/json'),
      schema: {
        summary: 'Verify an e-mail address with its link',
        operationId: 'verifyEmail',
        description:
          "The `token` of a verification link. The address it was sent to becomes the account's verified address: the current one, or the new one of a change (the old address then gets a notice). Invalid tokens count against the address like failed logins.",
        tags: ['account'],
        security: PUBLIC_SECURITY,
        body: VerifyEmailBody,
        response: responses(
          {
            204: [NoContent, 'Verified: `email_verified` is true, and for a change `email` is the new address.'],
            400: invalidToken,
            409: [
              Detail,
              'For a change: another account has taken the address since the link was sent ("Email already registered"); the token stays usable.',
            ],
            429: failedAttempts,
          },
          'json-body',
          'store',
        ),
      },
    },
    async (request, reply) => {
      await recovery.verifyEmail(request.body.token, context(request))
      return reply.code(204).send(null)
    },
  )

  app.post(
    '/users/me/email/verify',
    {
      onRequest: app.authenticate,
      config: perAddress,
      schema: {
        summary: 'Send a new verification link to your address',
        operationId: 'resendEmailVerification',
        description: `No body. A new link, working for ${config.recovery.verifyTtlSeconds / 3600} hours, goes to the account's current address; it ends the one before. At most RECOVERY_MAX_PER_ACCOUNT links an account per window, changes of address included: past it, nothing is sent and the answer is the same.`,
        tags: ['account'],
        security: BEARER_SECURITY,
        response: responses(
          {
            202: [Detail, 'Accepted: the link is on its way ("Verification requested: check your mailbox").'],
            400: [
              Detail,
              'The account has no address ("The account has no e-mail address"), or it is verified already ("The e-mail address is already verified").',
            ],
          },
          'bearer',
          'no-body',
          'rate-limited',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { record } = request.auth as NonNullable<typeof request.auth>
      await recovery.resendVerification(record, context(request))
      return reply.code(202).send({ detail: 'Verification requested: check your mailbox' })
    },
  )

  app.post(
    '/users/me/email',
    {
      onRequest: [app.authenticate, requireMediaType('application/json')],
      config: perAddress,
      schema: {
        summary: 'Change your e-mail address',
        operationId: 'changeEmail',
        description:
          'Needs the current password. Nothing changes yet: a verification link goes to `new_email`, and the address changes (verified) when it is followed at POST /email/verify; the old address is then told. Counts against the same per-account limit as POST /users/me/email/verify.',
        tags: ['account'],
        security: BEARER_SECURITY,
        body: EmailChangeBody,
        response: responses(
          {
            202: [
              Detail,
              'Accepted: the link is on its way to the new address ("Change requested: confirm it with the link sent to the new address").',
            ],
            400: [
              Detail,
              'The password is wrong ("Password is incorrect"), or `new_email` is the current address ("This is already the account\'s e-mail address").',
            ],
            409: [Detail, 'Another account has this address, in any case ("Email already registered").'],
          },
          'bearer',
          'json-body',
          'rate-limited',
          'throttled',
          'hashing',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { record } = request.auth as NonNullable<typeof request.auth>
      const { password, new_email } = request.body
      await recovery.requestEmailChange(record, password, new_email, context(request))
      return reply.code(202).send({ detail: 'Change requested: confirm it with the link sent to the new address' })
    },
  )
}
