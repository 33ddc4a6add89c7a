// Sessions a user can see and end: GET and DELETE /users/me/sessions, DELETE
// /users/me/sessions/{id}; and for admins, GET and DELETE /users/{id}/sessions. A session is a login
// and the refreshes since (a refresh-token family, services/sessions.ts). Ending one ends its
// refresh tokens and every access token it issued, on every instance at once.
import type { FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import {
  Detail,
  NoContent,
  SessionIdParams,
  SessionList,
  type SessionView,
  UserIdParams,
  ValidationErrorBody,
} from '../schemas.js'
import type { SessionSummary } from '../services/sessions.js'
import { ADMIN_SECURITY, BEARER_SECURITY } from './hooks.js'
import { type ResponseSpec, responses } from './responses.js'

/**
 * An account's sessions by the account's id. `me` is never an id (as in routes/admin.ts): the
 * caller's own sessions are /users/me/sessions, so that a method it does not have answers 405
 * instead of reaching these admin routes and their 403.
 */
const USER_SESSIONS_PATH = '/users/:id(^(?!me$)[^/]+$)/sessions'

function toView(session: SessionSummary): SessionView {
  return {
    id: session.id,
    created_at: session.createdAt.toISOString(),
    last_used_at: session.lastUsedAt.toISOString(),
    expires_at: session.expiresAt.toISOString(),
    user_agent: session.userAgent,
    ip: session.ip,
    current: session.current,
  }
}

export const sessionRoutes: FastifyPluginAsyncZod = async (app) => {
  const admin = app.requireScope('admin')
  /** The caller, on a route behind app.authenticate (which sets it or answers 401). */
  const auth = (request: FastifyRequest) => request.auth as NonNullable<FastifyRequest['auth']>
  const listed: ResponseSpec = [
    SessionList,
    'The live sessions, newest first: not ended, within their lifetime, with a refresh token that still works.',
  ]
  const badUserId: ResponseSpec = [ValidationErrorBody, '`id` is not a user id (a UUID).']
  const unknownUser: ResponseSpec = [Detail, 'No user has this id ("User not found").']

  app.get(
    '/users/me/sessions',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'Your sessions',
        operationId: 'listMySessions',
        description:
          'Every place you are logged in: each login and the refreshes since is one session. `current` marks the one of the access token of this request.',
        tags: ['users'],
        security: BEARER_SECURITY,
        response: responses({ 200: listed }, 'bearer', 'store'),
      },
    },
    async (request) => {
      const { record, claims } = auth(request)
      return { items: (await app.sessions.list(record.id, claims.sid)).map(toView) }
    },
  )

  app.delete(
    '/users/me/sessions/:id',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'End one of your sessions',
        operationId: 'endMySession',
        description:
          'Its refresh token and every access token it issued stop working at once; your other sessions keep working. Ending the current session is logging out.',
        tags: ['users'],
        security: BEARER_SECURITY,
        params: SessionIdParams,
        response: responses(
          {
            204: [NoContent, 'Ended: its refresh token and its access tokens no longer work.'],
            404: [
              Detail,
              'Not one of your live sessions: unknown, already ended, expired, or another user\'s ("Session not found").',
            ],
            422: [ValidationErrorBody, '`id` is not a session id (a UUID).'],
          },
          'bearer',
          'no-body',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { record } = auth(request)
      await app.sessions.endSession(record.id, request.params.id)
      app.audit.info({
        event: 'session_end',
        userId: record.id,
        sessionId: request.params.id,
        ip: request.ip,
        reqId: request.id,
      })
      return reply.code(204).send(null)
    },
  )

  app.delete(
    '/users/me/sessions',
    {
      onRequest: app.authenticate,
      schema: {
        summary: 'End your other sessions',
        operationId: 'endMyOtherSessions',
        description:
          'Every session but the one of the access token of this request ends: their refresh tokens and access tokens stop working at once. This one keeps working.',
        tags: ['users'],
        security: BEARER_SECURITY,
        response: responses(
          { 204: [NoContent, 'Every other session has ended; this one goes on.'] },
          'bearer',
          'no-body',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const { record, claims } = auth(request)
      const count = await app.sessions.endOtherSessions(record.id, claims.sid)
      app.audit.info({
        event: 'sessions_end_others',
        userId: record.id,
        sessionId: claims.sid,
        count,
        ip: request.ip,
        reqId: request.id,
      })
      return reply.code(204).send(null)
    },
  )

  app.get(
    USER_SESSIONS_PATH,
    {
      onRequest: admin,
      schema: {
        summary: "A user's sessions (admin)",
        operationId: 'listUserSessions',
        description: 'As GET /users/me/sessions shows them to the user; `current` is always false.',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: responses({ 200: listed, 404: unknownUser, 422: badUserId }, 'admin', 'store'),
      },
    },
    async (request) => {
      const user = await app.users.get(request.params.id)
      return { items: (await app.sessions.list(user.id)).map(toView) }
    },
  )

  app.delete(
    USER_SESSIONS_PATH,
    {
      onRequest: admin,
      schema: {
        summary: "End all of a user's sessions (admin)",
        operationId: 'endUserSessions',
        description:
          'Every session of the user ends: their refresh tokens and access tokens stop working at once, on every instance. The account is untouched: the user can log in again.',
        tags: ['admin'],
        security: ADMIN_SECURITY,
        params: UserIdParams,
        response: responses(
          {
            204: [NoContent, 'Every session of the user has ended.'],
            404: unknownUser,
            422: badUserId,
          },
          'admin',
          'no-body',
          'store',
        ),
      },
    },
    async (request, reply) => {
      const user = await app.users.get(request.params.id)
      const count = await app.sessions.endSessionsOf(user.id)
      app.audit.info({
        event: 'admin_sessions_end',
        targetId: user.id,
        by: request.auth?.record.id,
        count,
        reqId: request.id,
      })
      return reply.code(204).send(null)
    },
  )
}
