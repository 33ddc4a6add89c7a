// The current user's own account: GET /users/me, POST /users/me/password, DELETE /users/me.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import {
  Detail,
  NoContent,
  PasswordChangeBody,
  PasswordConfirmBody,
  UserPublic,
  ValidationErrorBody,
} from '../schemas.js'
import { BEARER_SECURITY, requireMediaType } from './hooks.js'
import { responses } from './responses.js'
import { toPublic } from './views.js'

export const userRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get(
    '/users/me',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'The current user',
        operationId: 'getCurrentUser',
        tags: ['users'],
        security: BEARER_SECURITY,
        response: responses({ 200: [UserPublic, 'The account the token was issued to.'] }, 'bearer', 'store'),
      },
    },
    async (request) => toPublic((request.auth as NonNullable<typeof request.auth>).record),
  )

  app.post(
    '/users/me/password',
    {
      // Authenticate first, then check the media type: an anonymous caller learns nothing more.
      onRequest: [app.authenticate, requireMediaType('application/json')],
      schema: {
        summary: 'Change your password',
        operationId: 'changePassword',
        description:
          'Needs the current password. Every refresh token and every access token issued before the change stops working, this one included.',
        tags: ['users'],
        security: BEARER_SECURITY,
        body: PasswordChangeBody,
        response: responses(
          {
            204: [NoContent, 'Changed: every earlier token of the account has ended, this one included.'],
            400: [Detail, 'The current password is wrong ("Password is incorrect").'],
            404: [Detail, 'The account was deleted while this request ran.'],
            422: [ValidationErrorBody, '`new_password` breaks the password rules.'],
          },
          'bearer',
          'json-body',
          'throttled',
          'hashing',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { record } = request.auth as NonNullable<typeof request.auth>
      const { current_password, new_password } = request.body
      await app.users.changePassword(record, current_password, new_password, request.ip)
      app.audit.info({ event: 'password_change', userId: record.id, ip: request.ip, reqId: request.id })
      return reply.code(204).send(null)
    },
  )

  app.delete(
    '/users/me',
    {
      onRequest: [app.authenticate, requireMediaType('application/json')],
      schema: {
        summary: 'Delete your account',
        operationId: 'deleteCurrentUser',
        description:
          'Needs your password. The account and all its tokens are gone; the username becomes free. 409 when you are the last enabled administrator; nothing is deleted then.',
        tags: ['users'],
        security: BEARER_SECURITY,
        body: PasswordConfirmBody,
        response: responses(
          {
            204: [NoContent, 'Deleted, with all its tokens; the username is free again.'],
            400: [Detail, 'The password is wrong ("Password is incorrect").'],
            404: [Detail, 'The account was deleted while this request ran.'],
            409: [Detail, 'You are the last enabled administrator: nothing was deleted.'],
          },
          'bearer',
          'json-body',
          'throttled',
          'hashing',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { record } = request.auth as NonNullable<typeof request.auth>
      await app.users.deleteSelf(record, request.body.password, request.ip)
      app.audit.info({ event: 'account_delete', userId: record.id, ip: request.ip, reqId: request.id })
      return reply.code(204).send(null)
    },
  )
}
