// The second factor over HTTP: enrolment, status, recovery codes and disabling for the account's
// owner (Bearer; every change asks for the current password again), and the administrator's reset.
// The rules are in services/mfa.ts; the login's second step is at /token (routes/auth.ts).
// Registered only when MFA is on: without a key to seal secrets with, none of these routes exists.
import type { FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import {
  Detail,
  MfaConfirmBody,
  MfaDisableBody,
  MfaEnrolBody,
  MfaEnrolment,
  MfaRegenerateBody,
  MfaStatusBody,
  NoContent,
  RecoveryCodes,
  UserIdParams,
  ValidationErrorBody,
} from '../schemas.js'
import type { MfaService } from '../services/mfa.js'
import { ADMIN_SECURITY, BEARER_SECURITY, requireMediaType } from './hooks.js'
import { type ResponseSpec, responses } from './responses.js'

export const mfaRoutes: FastifyPluginAsyncZod<{ mfa: MfaService }> = async (app, { mfa }) => {
  const owner = [app.authenticate, requireMediaType('application/json')]
  const wrongPassword: ResponseSpec = [Detail, 'The current password is wrong ("Password is incorrect").']
  const wrongCode: ResponseSpec = [Detail, 'The code is wrong, already used or malformed ("Invalid code").']
  /** The answers of a change that takes the password and a code, as one attempt of the login throttle. */
  const passwordAndCode = (success: ResponseSpec, status = 200) =>
    responses(
      {
        [status]: success,
        400: [Detail, 'The password is wrong ("Password is incorrect") or the code is ("Invalid code").'],
        409: [Detail, 'MFA is not active on this account.'],
      },
      'bearer',
      'json-body',
      'throttled',
      'hashing',
      'store',
    )
  const auth = (request: FastifyRequest) => request.auth as NonNullable<FastifyRequest['auth']>

  app.get(
    '/users/me/mfa',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'Your second factor: is it on, how many recovery codes are left',
        operationId: 'getMfaStatus',
        tags: ['mfa'],
        security: BEARER_SECURITY,
        response: responses({ 200: [MfaStatusBody, 'The state of your second factor.'] }, 'bearer', 'store'),
      },
    },
    async (request) => {
      const status = await mfa.status(auth(request).record.id)
      return { totp: status.totp, recovery_codes_left: status.recoveryCodesLeft }
    },
  )

  app.post(
    '/users/me/mfa/totp',
    {
      onRequest: owner,
      schema: {
        summary: 'Start enrolling an authenticator app (TOTP)',
        operationId: 'enrolTotp',
        description:
          'Needs the current password. Returns a new secret, as base32, as an otpauth:// URI and as an SVG QR code. MFA is not active until POST /users/me/mfa/totp/confirm; calling this again replaces the pending secret.',
        tags: ['mfa'],
        security: BEARER_SECURITY,
        body: MfaEnrolBody,
        response: responses(
          {
            200: [MfaEnrolment, 'The new secret, pending confirmation.'],
            400: wrongPassword,
            409: [Detail, 'MFA is already active: turn it off first.'],
          },
          'bearer',
          'json-body',
          'throttled',
          'hashing',
          'store',
        ),
      },
    },
    async (request) => {
      const enrolment = await mfa.enrol(auth(request).record, request.body.password, request.ip)
      return { secret: enrolment.secret, otpauth_uri: enrolment.otpauthUri, qr_svg: enrolment.qrSvg }
    },
  )

  app.post(
    '/users/me/mfa/totp/confirm',
    {
      onRequest: owner,
      schema: {
        summary: 'Confirm the enrolment with a code: MFA is on',
        operationId: 'confirmTotp',
        description:
          'The code the app shows for the pending secret, within 15 minutes of the enrolment. A wrong code is a failed login of the account (429 once it is locked). From now on, a password grant answers 403 `mfa_required` and needs a code. The ten recovery codes are in this answer only.',
        tags: ['mfa'],
        security: BEARER_SECURITY,
        body: MfaConfirmBody,
        response: responses(
          {
            200: [RecoveryCodes, 'MFA is active; the recovery codes, shown this once.'],
            400: wrongCode,
            409: [
              Detail,
              'No enrolment is pending: none was started, it is older than 15 minutes, or MFA is already active.',
            ],
          },
          'bearer',
          'json-body',
          // Each wrong code is a failed login of the account: 429 once it is locked.
          'throttled',
          'store',
        ),
      },
    },
    async (request) => {
      return { recovery_codes: await mfa.confirm(auth(request).record, request.body.code, request.ip) }
    },
  )

  app.post(
    '/users/me/mfa/recovery-codes',
    {
      onRequest: owner,
      schema: {
        summary: 'Replace your recovery codes',
        operationId: 'regenerateRecoveryCodes',
        description: 'Needs the current password and a current TOTP code. The old codes stop working.',
        tags: ['mfa'],
        security: BEARER_SECURITY,
        body: MfaRegenerateBody,
        response: passwordAndCode([RecoveryCodes, 'The new recovery codes, shown this once.']),
      },
    },
    async (request) => {
      const { password, code } = request.body
      return { recovery_codes: await mfa.regenerateRecoveryCodes(auth(request).record, password, code, request.ip) }
    },
  )

  app.delete(
    '/users/me/mfa',
    {
      onRequest: owner,
      schema: {
        summary: 'Turn your second factor off',
        operationId: 'disableMfa',
        description:
          'Needs the current password and a TOTP code or a recovery code. Password grants no longer ask for a code.',
        tags: ['mfa'],
        security: BEARER_SECURITY,
        body: MfaDisableBody,
        response: passwordAndCode([NoContent, 'MFA is off; the secret and the recovery codes are gone.'], 204),
      },
    },
    async (request, reply) => {
      const { password, code } = request.body
      await mfa.disable(auth(request).record, password, code, request.ip)
      return reply.code(204).send(null)
    },
  )

  app.delete(
    '/users/:id/mfa',
    {
      onRequest: app.requireScope('admin'),
      schema: {
        summary: "Turn a user's second factor off (admin)",
        operationId: 'resetUserMfa',
        description:
          'For a user who lost both the device and the recovery codes. When MFA was on, every session and token of the user ends too.',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: responses(
          {
            204: [NoContent, "The user's MFA is off (or was)."],
            404: [Detail, 'No user has this id ("User not found").'],
            422: [ValidationErrorBody, '`id` is not a user id (a UUID).'],
          },
          'admin',
          'no-body',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { hadMfa } = await mfa.adminReset(request.params.id)
      app.audit.warn({
        event: 'admin_mfa_reset',
        targetId: request.params.id,
        hadMfa,
        by: request.auth?.record.id,
        reqId: request.id,
      })
      return reply.code(204).send(null)
    },
  )
}
