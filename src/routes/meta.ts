// GET / (welcome) and GET /healthz (liveness: the process is up and serving).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { Config } from '../config.js'
import { publicJwks } from '../keys.js'
import { Jwks } from '../schemas.js'
import { PUBLIC_SECURITY } from './hooks.js'
import { responses } from './responses.js'

const READINESS_TIMEOUT_MS = 1_000

export const metaRoutes: FastifyPluginAsyncZod<{
  config: Config
  checks: Record<string, () => Promise<void>>
}> = async (app, { config, checks }) => {
  app.get(
    '/',
    {
      schema: {
        summary: 'Welcome',
        operationId: 'welcome',
        tags: ['meta'],
        security: PUBLIC_SECURITY,
        response: responses({
          200: [
            z.object({ message: z.string(), docs: z.string().nullable() }),
            'A welcome message, and the path of Swagger UI (null when DOCS_ENABLED is off).',
          ],
        }),
      },
    },
    async () => ({
      message: 'Welcome to the Fastify auth API: POST /register, POST /token, GET /users/me',
      docs: config.docsEnabled ? '/docs' : null,
    }),
  )

  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness probe',
        operationId: 'health',
        tags: ['meta'],
        security: PUBLIC_SECURITY,
        response: responses({ 200: [z.object({ status: z.literal('ok') }), 'The process is up and serving.'] }),
      },
    },
    async () => ({ status: 'ok' as const }),
  )

  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Readiness probe',
        operationId: 'ready',
        description: 'Each dependency (postgres, redis) must answer within 1 s; 503 names the one that does not.',
        tags: ['meta'],
        security: PUBLIC_SECURITY,
        response: responses({
          200: [
            z.object({ status: z.literal('ok'), checks: z.record(z.string(), z.string()) }),
            'Every dependency answered: `checks` maps each to `ok`.',
          ],
          503: [
            z.object({ detail: z.string(), checks: z.record(z.string(), z.string()) }),
            'A dependency did not answer within 1 s: `detail` names it, `checks` marks it `unreachable`.',
          ],
        }),
      },
    },
    async (_request, reply) => {
      const names = Object.keys(checks)
      const results = await Promise.all(names.map((name) => withTimeout((checks[name] as () => Promise<void>)())))
      const status = Object.fromEntries(names.map((name, i) => [name, results[i] ? 'ok' : 'unreachable']))
      const down = names.filter((_, i) => !results[i])
      if (down.length > 0) {
        reply.code(503)
        return { detail: `Not ready: ${down.join(', ')} unreachable`, checks: status }
      }
      return { status: 'ok' as const, checks: status }
    },
  )

  // Public keys only (an empty list for HS256): a resource server verifies our tokens with these.
  const jwks = publicJwks(config.jwt.keys)
  app.get(
    '/.well-known/jwks.json',
    {
      schema: {
        summary: 'The public signing keys (JWK Set)',
        operationId: 'getJwks',
        description: 'Empty for HS256. During a rotation it also lists the previous keys (JWT_PREVIOUS_KEYS).',
        tags: ['meta'],
        security: PUBLIC_SECURITY,
        response: responses({
          200: [
            Jwks,
            'The public keys that verify our access tokens (none for HS256).',
            {
              'Cache-Control': {
                type: 'string',
                description:
                  '`public, max-age=300`: the keys change rarely, and a rotation keeps the previous ones listed.',
              },
            },
          ],
        }),
      },
    },
    async (_request, reply) => {
      reply.header('cache-control', 'public, max-age=300')
      return jwks
    },
  )
}

/** True when the check resolves within the readiness timeout. */
async function withTimeout(check: Promise<void>): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), READINESS_TIMEOUT_MS)
  })
  try {
    return await Promise.race([
      check.then(
        () => true,
        () => false,
      ),
      timeout,
    ])
  } finally {
    clearTimeout(timer)
  }
}
