// The API documentation: /openapi.json (OpenAPI 3.1 generated from the routes' zod schemas) and
// Swagger UI at /docs, whose "Authorize" logs in through /token. Registered only when DOCS_ENABLED
// (off by default in production: the API inventory is for developers, OWASP API9).
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

async function docsPlugin(app: FastifyInstance): Promise<void> {
  // Imported only when the docs are served: less to load at start.
  const [{ default: swagger }, { default: swaggerUi }, { jsonSchemaTransform }] = await Promise.all([
    import('@fastify/swagger'),
    import('@fastify/swagger-ui'),
    import('fastify-type-provider-zod'),
  ])
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Fastify auth API',
        description:
          'Registration, the OAuth2 password and refresh-token grants, JWT bearer tokens, revocation and account administration. "Authorize" logs in through /token.',
        version: '0.1.0',
      },
      // No `servers`: Swagger UI then calls the origin it was loaded from, whatever host, port or
      // proxy path the server is reached through.
      components: {
        securitySchemes: {
          OAuth2PasswordBearer: {
            type: 'oauth2',
            flows: {
              password: {
                tokenUrl: '/token',
                refreshUrl: '/token',
                scopes: { user: 'Your own account', admin: 'Manage every account' },
              },
            },
          },
        },
      },
    },
    transform: jsonSchemaTransform,
  })
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}

export default fp(docsPlugin, { name: 'docs', fastify: '5.x' })
