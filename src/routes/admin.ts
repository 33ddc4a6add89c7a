// Admin endpoints: list, read, change and delete users. Every route needs the `admin` scope
// (403 insufficient_scope otherwise, RFC 6750 §3.1). Responses never hold a hash.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import {
  Detail,
  NoContent,
  UserAdminView,
  UserIdParams,
  UserList,
  UserListQuery,
  UserPatchBody,
  ValidationErrorBody,
} from '../schemas.js'
import { ADMIN_SECURITY, requireMediaType } from './hooks.js'
import { toAdminView } from './views.js'

/**
 * An account by id. `me` is never an id: /users/me is the caller's own account (routes/users.ts),
 * so a method it does not have (PATCH /users/me) answers 405 with Allow instead of reaching this
 * admin route and its 403.
 */
const USER_PATH = '/users/:id(^(?!me$)[^/]+$)'

export const adminRoutes: FastifyPluginAsyncZod = async (app) => {
  const admin = app.requireScope('admin')
  const errors = { 401: Detail, 403: Detail, 422: ValidationErrorBody }

  app.get(
    '/users',
    {
      onRequest: admin,
      schema: {
        summary: 'List users (admin)',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        querystring: UserListQuery,
        response: { 200: UserList, ...errors },
      },
    },
    async (request) => {
      const { limit, offset, username_prefix } = request.query
      const { items, total } = await app.users.list({ limit, offset, usernamePrefix: username_prefix })
      return { items: items.map(toAdminView), total, limit, offset }
    },
  )

  app.get(
    USER_PATH,
    {
      onRequest: admin,
      schema: {
        summary: 'Read a user (admin)',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: { 200: UserAdminView, 404: Detail, ...errors },
      },
    },
    async (request) => toAdminView(await app.users.get(request.params.id)),
  )

  app.patch(
    USER_PATH,
    {
      onRequest: [admin, requireMediaType('application/json')],
      schema: {
        summary: 'Disable/enable a user or set their roles (admin)',
        description:
          "Either change ends the user's current access tokens; disabling also ends their sessions. 409 when the change would leave no enabled administrator (the last admin removing its own admin role or disabling itself); nothing is changed then.",
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        body: UserPatchBody,
        response: { 200: UserAdminView, 404: Detail, 409: Detail, 415: Detail, ...errors },
      },
    },
    async (request) => {
      const user = await app.users.patch(request.params.id, request.body)
      app.audit.info({
        event: 'admin_patch',
        targetId: user.id,
        by: request.auth?.record.id,
        changes: request.body,
        reqId: request.id,
      })
      return toAdminView(user)
    },
  )

  app.delete(
    USER_PATH,
    {
      onRequest: admin,
      schema: {
        summary: 'Delete a user (admin)',
        description:
          'The account and all its tokens are gone. 409 when it is the last enabled administrator; nothing is deleted then.',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: { 204: NoContent, 404: Detail, 409: Detail, ...errors },
      },
    },
    async (request, reply) => {
      await app.users.delete(request.params.id)
      app.audit.info({
        event: 'admin_delete',
        targetId: request.params.id,
        by: request.auth?.record.id,
        reqId: request.id,
      })
      return reply.code(204).send(null)
    },
  )
}
