// GET /.well-known/oauth-authorization-server: authorization server metadata (RFC 8414), so that
// clients and resource servers find our endpoints, grants and keys from one well-known URL.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { Config } from '../config.js'
import { MFA_OTP_GRANT, MFA_RECOVERY_CODE_GRANT } from '../services/mfa.js'
import { SCOPES } from '../services/scopes.js'
import { PUBLIC_SECURITY } from './hooks.js'
import { responses } from './responses.js'

export const DISCOVERY_PATH = '/.well-known/oauth-authorization-server'

const url = () => z.string().describe('an absolute URL')

const Metadata = z.object({
  issuer: z.string().describe('exactly the `iss` of our tokens (JWT_ISSUER)'),
  token_endpoint: url(),
  revocation_endpoint: url().describe('RFC 7009'),
  introspection_endpoint: url().optional().describe('RFC 7662; only when INTROSPECTION_CLIENTS is set'),
  jwks_uri: url().describe('the public signing keys (empty for HS256)'),
  grant_types_supported: z.array(z.string()),
  scopes_supported: z.array(z.string()),
  response_types_supported: z.array(z.string()).describe('none: there is no authorization endpoint'),
  token_endpoint_auth_methods_supported: z.array(z.string()).describe('`none`: /token takes no client authentication'),
  revocation_endpoint_auth_methods_supported: z.array(z.string()),
  introspection_endpoint_auth_methods_supported: z
    .array(z.string())
    .optional()
    .describe('`client_secret_basic`; only when INTROSPECTION_CLIENTS is set'),
  user_registration_endpoint: url().describe(
    'not standard: POST /register, where users sign up (RFC 7591 `registration_endpoint` is for clients, which this server does not register)',
  ),
  password_reset_endpoint: url().optional().describe('not standard: POST /password/forgot; only when mail is on'),
})
type Metadata = z.infer<typeof Metadata>

export const discoveryRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  // Production without PUBLIC_URL: no route at all (404). The only other base for absolute URLs is
  // the request's Host (and X-Forwarded-* behind TRUST_PROXY), which the client chooses; an answer
  // built from it and marked cacheable would let one request with a forged Host put its endpoints
  // in a shared cache for everyone after (web cache poisoning). Development and test take the
  // request's origin, so that `npm run dev` works on whatever host and port it is reached through.
  if (config.env === 'production' && !config.mail.publicUrlSet) return

  const introspection = config.introspection.clients.length > 0
  const grants = ['password', 'refresh_token', ...(app.mfa ? [MFA_OTP_GRANT, MFA_RECOVERY_CODE_GRANT] : [])]
  const metadata = (base: string): Metadata => ({
    issuer: config.jwt.issuer,
    token_endpoint: `${base}/token`,
    revocation_endpoint: `${base}/revoke`,
    ...(introspection ? { introspection_endpoint: `${base}/introspect` } : {}),
    jwks_uri: `${base}/.well-known/jwks.json`,
    grant_types_supported: grants,
    scopes_supported: [...SCOPES],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['none'],
    revocation_endpoint_auth_methods_supported: ['none'],
    ...(introspection ? { introspection_endpoint_auth_methods_supported: ['client_secret_basic'] } : {}),
    user_registration_endpoint: `${base}/register`,
    ...(config.mail.mode !== 'off' ? { password_reset_endpoint: `${base}/password/forgot` } : {}),
  })
  // Built once when PUBLIC_URL is set: it never changes.
  const fixed = config.mail.publicUrlSet ? metadata(config.mail.publicUrl) : undefined

  app.get(
    DISCOVERY_PATH,
    {
      schema: {
        summary: 'Authorization server metadata (RFC 8414)',
        operationId: 'getAuthorizationServerMetadata',
        description:
          'Absolute URLs on PUBLIC_URL; without it (development and test only) on the origin of the request. In production without PUBLIC_URL this route does not exist (404): an answer built from the Host header must not be cacheable. `issuer` is JWT_ISSUER exactly, the `iss` of our access tokens.',
        tags: ['meta'],
        security: PUBLIC_SECURITY,
        response: responses({
          200: [
            Metadata,
            'The metadata: our endpoints, grant types, scopes and client authentication methods.',
            {
              'Cache-Control': {
                type: 'string',
                description:
                  '`public, max-age=3600` with PUBLIC_URL (it changes only when the settings do); `no-store` when built from the request (development and test without PUBLIC_URL).',
              },
            },
          ],
        }),
      },
    },
    async (request, reply) => {
      // Cacheable only when built on PUBLIC_URL: a document built from the Host header (development)
      // must not be kept by a shared cache, or one forged request would serve its URLs to everyone.
      reply.header('cache-control', fixed ? 'public, max-age=3600' : 'no-store')
      // request.host: the Host header, or X-Forwarded-Host from a proxy of TRUST_PROXY.
      return fixed ?? metadata(request.host ? `${request.protocol}://${request.host}` : config.mail.publicUrl)
    },
  )
}
