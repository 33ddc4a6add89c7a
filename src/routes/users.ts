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
import { toPublic } from './views.js'

export const userRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get(
    '/users/me',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'The current user',
        tags: ['users'],
        security: BEARER_SECURITY,
        response: { 200: UserPublic, 401: Detail },
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
        description:
          'Needs the current password. Every refresh token and every access token issued before the change stops working, this one included.',
        tags: ['users'],
        security: BEARER_SECURITY,
        body: PasswordChangeBody,
        response: { 204: NoContent, 400: Detail, 401: Detail, 415: Detail, 422: ValidationErrorBody, 429: Detail },
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
        description:
          'Needs your password. The account and all its tokens are gone; the username becomes free. 409 when you are the last enabled administrator; nothing is deleted then.',
        tags: ['users'],
        security: BEARER_SECURITY,
        body: PasswordConfirmBody,
        response: {
          204: NoContent,
          400: Detail,
          401: Detail,
          409: Detail,
          415: Detail,
          422: ValidationErrorBody,
          429: Detail,
        },
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
