// The API documentation: /openapi.json (OpenAPI 3.1 generated from the routes' zod schemas) and
// Swagger UI at /docs, whose "Authorize" logs in through /token. Registered only when DOCS_ENABLED
// (off by default in production: the API inventory is for developers, OWASP API9).
import { createHash } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { responseDocs } from '../routes/responses.js'

/**
 * The one inline style Swagger UI needs: the <style> element of the logo SVG in its top bar.
 * staticCSP allows no inline style, so Chromium blocked it (the logo lost its colours, and the
 * console logged a CSP error); its hash allows exactly this element and nothing else. A Swagger UI
 * upgrade that changes it makes test/browser.test.ts fail with the new hash in the CSP error.
 */
const SWAGGER_LOGO_STYLE = '.logo_small_svg__cls-2{fill:#fff}.logo_small_svg__cls-3{fill:#85ea2d}'
const LOGO_STYLE_SOURCE = `'sha256-${createHash('sha256').update(SWAGGER_LOGO_STYLE).digest('base64')}'`

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
        description: [
          'Registration, the OAuth2 password and refresh-token grants, JWT bearer tokens, revocation and account administration. "Authorize" logs in through /token.',
          'Every operation lists each status it can answer. Error bodies are JSON with `detail`; at /token and /revoke they have exactly `error`, `error_description` and `detail` (RFC 6749 §5.2).',
          'Answered before any operation is chosen, so listed here only: 404 `{"detail":"Not Found"}` for an unknown path (`/users/me/` included), 400 for a URL whose escapes are not UTF-8, 414 for a path segment too long, 431, 408 or 400 (then the connection closes) for a request the HTTP parser refuses, and 503 with Fastify\'s own body while the server shuts down.',
        ].join('\n\n'),
        version: '0.1.0',
        // As package.json and LICENSE.
        license: { name: 'MIT', identifier: 'MIT' },
      },
      // A relative server: the API is wherever this document was fetched from, so Swagger UI calls
      // the origin it was loaded from, whatever host or port the server is reached through (OpenAPI's
      // default when `servers` is absent; listed because linters and client generators want it).
      servers: [{ url: '/', description: 'The origin this document was fetched from' }],
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
          // POST /introspect exists only with INTROSPECTION_CLIENTS, and so does its scheme.
          ...(app.config.introspection.clients.length > 0
            ? {
                IntrospectionClient: {
                  type: 'http',
                  scheme: 'basic',
                  description:
                    'A resource server of INTROSPECTION_CLIENTS: its client id and secret, each form-urlencoded (RFC 6749 §2.3.1).',
                },
              }
            : {}),
        },
      },
    },
    // The routes' zod schemas become JSON Schemas; then each response gets the description and the
    // headers that routes/responses.ts keeps for it (@fastify/swagger reads both from there).
    transform: (route) => {
      const transformed = jsonSchemaTransform(route)
      const docs = responseDocs(route.schema?.response)
      const response = (transformed.schema as { response?: Record<string, Record<string, unknown>> }).response
      for (const [status, { description, headers }] of Object.entries(docs ?? {})) {
        const target = response?.[status]
        if (target) Object.assign(target, { 'x-response-description': description, headers })
      }
      return transformed
    },
  })
  // The UI loads the document from /openapi.json, and its top bar shows that URL (@fastify/swagger-ui
  // forces `url` to its own /docs/json, so the definition is given through `urls`).
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    // Swagger UI's CSP replaces ours on its pages (its onSend hook runs after the one in headers.ts).
    staticCSP: true,
    transformStaticCSP: (csp) => csp.replace("style-src 'self'", `style-src 'self' ${LOGO_STYLE_SOURCE}`),
    uiConfig: { urls: [{ url: '/openapi.json', name: '/openapi.json' }] },
  })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}

export default fp(docsPlugin, { name: 'docs', fastify: '5.x' })
