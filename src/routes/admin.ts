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
import type { UserRecord } from '../store/users.js'
import { ADMIN_SECURITY, requireMediaType } from './hooks.js'
import { type ResponseSpec, responses } from './responses.js'
import { toAdminView } from './views.js'

/**
 * An account by id. `me` is never an id: /users/me is the caller's own account (routes/users.ts),
 * so a method it does not have (PATCH /users/me) answers 405 with Allow instead of reaching this
 * admin route and its 403.
 */
const USER_PATH = '/users/:id(^(?!me$)[^/]+$)'

export const adminRoutes: FastifyPluginAsyncZod = async (app) => {
  const admin = app.requireScope('admin')
  /** The admin view of these users, with whether each one's MFA is active (one store read for all). */
  const views = async (users: readonly UserRecord[]) => {
    const withMfa = app.mfa ? await app.mfa.activeAmong(users.map((u) => u.id)) : new Set<string>()
    return users.map((user) => toAdminView(user, withMfa.has(user.id)))
  }
  const view = async (user: UserRecord) => (await views([user]))[0] as UserAdminView
  const badId: ResponseSpec = [ValidationErrorBody, '`id` is not a user id (a UUID).']
  const notFound: ResponseSpec = [Detail, 'No user has this id ("User not found").']

  app.get(
    '/users',
    {
      onRequest: admin,
      schema: {
        summary: 'List users (admin)',
        operationId: 'listUsers',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        querystring: UserListQuery,
        response: responses(
          {
            200: [UserList, 'One page of users, ordered by username; `total` counts every match.'],
            422: [ValidationErrorBody, '`limit`, `offset` or `username_prefix` is out of range.'],
          },
          'admin',
          'store',
        ),
      },
    },
    async (request) => {
      const { limit, offset, username_prefix } = request.query
      const { items, total } = await app.users.list({ limit, offset, usernamePrefix: username_prefix })
      return { items: await views(items), total, limit, offset }
    },
  )

  app.get(
    USER_PATH,
    {
      onRequest: admin,
      schema: {
        summary: 'Read a user (admin)',
        operationId: 'getUser',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: responses(
          { 200: [UserAdminView, 'The user, with roles and status.'], 404: notFound, 422: badId },
          'admin',
          'store',
        ),
      },
    },
    async (request) => view(await app.users.get(request.params.id)),
  )

  app.patch(
    USER_PATH,
    {
      onRequest: [admin, requireMediaType('application/json')],
      schema: {
        summary: 'Disable/enable a user or set their roles (admin)',
        operationId: 'updateUser',
        description:
          "Either change ends the user's current access tokens; disabling also ends their sessions. 409 when the change would leave no enabled administrator (the last admin removing its own admin role or disabling itself); nothing is changed then.",
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        body: UserPatchBody,
        response: responses(
          {
            200: [UserAdminView, 'The user as changed.'],
            404: notFound,
            409: [Detail, 'The change would leave no enabled administrator: nothing was changed.'],
            422: badId,
          },
          'admin',
          'json-body',
          'store',
        ),
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
      return view(user)
    },
  )

  app.delete(
    USER_PATH,
    {
      onRequest: admin,
      schema: {
        summary: 'Delete a user (admin)',
        operationId: 'deleteUser',
        description:
          'The account and all its tokens are gone. 409 when it is the last enabled administrator; nothing is deleted then.',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: responses(
          {
            204: [NoContent, 'Deleted, with all its tokens.'],
            404: notFound,
            409: [Detail, 'The user is the last enabled administrator: nothing was deleted.'],
            422: badId,
          },
          'admin',
          'no-body',
          'store',
        ),
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
