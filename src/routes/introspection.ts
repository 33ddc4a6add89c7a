// POST /introspect: token introspection (RFC 7662) for the resource servers of
// INTROSPECTION_CLIENTS, authenticated with HTTP Basic (client_secret_basic). Registered only when
// that list is not empty. The rules of what is active live in services/introspection.ts; here are
// the client's credentials, the form, the request cap per client and the audit line.
import type { FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod'
import { z } from 'zod'
import type { Config } from '../config.js'
import { InvalidClientError, OAuthError } from '../errors.js'
import { OAuthErrorBody } from '../schemas.js'
import type { IntrospectionService } from '../services/introspection.js'
import { tooManyRequests } from './auth.js'
import { emptyForm, formChecks, requireMediaType } from './hooks.js'
import { oauthResponses, RETRY_AFTER } from './responses.js'

const FIELDS = ['token', 'token_type_hint'] as const

const IntrospectForm = z.object({
  token: z.string().optional().describe('the token to introspect: an access token or a refresh token (required)'),
  token_type_hint: z
    .string()
    .optional()
    .describe('`access_token` or `refresh_token`: which kind to look for first; the other is looked for too'),
})

const Inactive = z
  .object({ active: z.literal(false) })
  .describe('Not active: unknown, malformed, expired, revoked, or not a token this endpoint answers for')
const ActiveAccess = z
  .object({
    active: z.literal(true),
    token_type: z.literal('Bearer'),
    scope: z.string().describe('space-separated'),
    sub: z.string().describe("the user's id"),
    username: z.string(),
    iss: z.string(),
    aud: z.string(),
    exp: z.number().int().describe('seconds since the epoch'),
    iat: z.number().int().describe('seconds since the epoch'),
    jti: z.string(),
    sid: z.string().describe('the session the token belongs to'),
  })
  .describe('An active access token: its claims, and the username of its account')
const ActiveRefresh = z
  .object({
    active: z.literal(true),
    token_type: z.literal('refresh_token'),
    scope: z.string().describe('what a refresh with it would grant now, space-separated'),
    sub: z.string().describe("the user's id"),
    username: z.string(),
    iss: z.string(),
    exp: z.number().int().describe('seconds since the epoch: when this token stops working'),
    sid: z.string().describe('the session the token belongs to'),
  })
  .describe('An active refresh token (opaque: the metadata comes from its session)')
const IntrospectionResponse = z.union([Inactive, ActiveAccess, ActiveRefresh])

const CHALLENGE = {
  type: 'string',
  description: 'RFC 7617 Basic challenge: `Basic realm="…"` (AUTH_REALM).',
} as const

export const introspectionRoutes: FastifyPluginAsyncZod<{
  config: Config
  introspection: IntrospectionService
}> = async (app, { config, introspection }) => {
  const realm = config.realm
  /** The id of the client each request authenticated as: the key of its request cap and its audit line. */
  const clientOf = new WeakMap<FastifyRequest, string>()

  /**
   * onRequest: the client's HTTP Basic credentials (RFC 7617), checked before anything else, so
   * that a caller without them learns nothing more (not even whether its form would be accepted)
   * and its body is never parsed.
   */
  async function authenticateClient(request: FastifyRequest): Promise<void> {
    const { id, secret } = basicCredentials(request, realm)
    if (!(await introspection.authenticateClient(id, secret, request.ip))) throw new InvalidClientError(realm)
    clientOf.set(request, id)
  }

  app.post(
    '/introspect',
    {
      onRequest: [authenticateClient, requireMediaType('application/x-www-form-urlencoded', { noBodyAs: emptyForm })],
      // RFC 6749 §3.2, as at /token and /revoke: an empty parameter is omitted, a repeated one refused.
      preValidation: formChecks(FIELDS),
      config: {
        oauthErrors: true,
        // Per client, never per address: resource servers sit behind few addresses, and each has
        // its own budget. Runs after authenticateClient (route hooks first), so the key is known.
        rateLimit: {
          max: config.introspection.perMinute,
          timeWindow: 60_000,
          keyGenerator: (request: FastifyRequest) => `introspect:${clientOf.get(request)}`,
          errorResponseBuilder: tooManyRequests,
        },
      },
      schema: {
        summary: 'Introspect a token (RFC 7662)',
        operationId: 'introspect',
        description:
          'For resource servers listed in INTROSPECTION_CLIENTS, authenticated with HTTP Basic: the client id and secret, each form-urlencoded, joined by `:` and base64-encoded (RFC 6749 §2.3.1). Active means what the server itself would do with the token now: an access token that GET /users/me would take (not expired, not revoked by logout, /revoke, a password change, a disabled or deleted account), or a refresh token that a refresh would take. Anything else answers exactly `{"active":false}`. Answers are never cached (`no-store`). Errors have exactly error, error_description and detail.',
        tags: ['auth'],
        security: [{ IntrospectionClient: [] }],
        consumes: ['application/x-www-form-urlencoded'],
        body: IntrospectForm,
        response: oauthResponses(
          {
            200: [
              IntrospectionResponse,
              '`{"active":false}` alone for a token that is not active; for an active one, its metadata (RFC 7662 §2.2), `token_type` `Bearer` (access token) or `refresh_token`.',
            ],
            400: [OAuthErrorBody, '`invalid_request`: no `token`, or a parameter repeated or not a string.'],
            401: [
              OAuthErrorBody,
              '`invalid_client`: no Basic credentials, credentials that cannot be read, or an unknown client id or wrong secret (one answer for both).',
              { 'WWW-Authenticate': CHALLENGE },
            ],
            429: [
              OAuthErrorBody,
              '`temporarily_unavailable`: this client is over INTROSPECTION_RATE_LIMIT_PER_MINUTE requests this minute.',
              { 'Retry-After': RETRY_AFTER },
            ],
          },
          'form-body',
          'store',
        ),
      },
    },
    async (request) => {
      const { token, token_type_hint } = request.body
      if (token === undefined) throw new OAuthError('invalid_request', "Missing parameter 'token'")
      const { response, tokenType } = await introspection.introspect(token, token_type_hint)
      // Never the token: only who asked, and what it was found to be.
      app.audit.info({
        event: 'introspection',
        clientId: clientOf.get(request),
        active: response.active,
        tokenType,
        ip: request.ip,
        reqId: request.id,
      })
      return response
    },
  )
}

const MISSING = 'Client authentication required: HTTP Basic with the client id and secret'
const MALFORMED = 'Malformed Basic credentials'
// RFC 7617 §2: token68 (RFC 9110 §11.2), here base64 in its standard alphabet with padding.
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
const utf8 = new TextDecoder('utf-8', { fatal: true })

/**
 * The client id and secret of an `Authorization: Basic` header (RFC 7617 §2), each decoded from
 * application/x-www-form-urlencoded as RFC 6749 §2.3.1 has clients encode them (`+` is a space,
 * `%XX` a byte; a secret with a `+` in it is sent as `%2B`). No header, or another scheme: "client
 * authentication required"; anything that does not decode (not base64, not UTF-8, no `:`, a bad
 * escape, two Authorization headers): "malformed". Both InvalidClientError (401, Basic challenge).
 */
function basicCredentials(request: FastifyRequest, realm: string): { id: string; secret: string } {
  const header = request.headers.authorization
  if (header === undefined || header === '') throw new InvalidClientError(realm, MISSING)
  const space = header.indexOf(' ')
  const scheme = (space === -1 ? header : header.slice(0, space)).toLowerCase()
  if (scheme !== 'basic') throw new InvalidClientError(realm, MISSING)
  // Node keeps only the first of two Authorization headers; a proxy may use the last. Refuse both.
  let headers = 0
  for (let i = 0; i < request.raw.rawHeaders.length; i += 2)
    if ((request.raw.rawHeaders[i] as string).toLowerCase() === 'authorization') headers++
  const encoded = space === -1 ? '' : header.slice(space + 1).trimStart()
  if (headers > 1 || encoded === '' || !BASE64.test(encoded)) throw new InvalidClientError(realm, MALFORMED)
  let decoded: string
  try {
    decoded = utf8.decode(Buffer.from(encoded, 'base64'))
  } catch {
    throw new InvalidClientError(realm, MALFORMED)
  }
  const colon = decoded.indexOf(':')
  if (colon === -1) throw new InvalidClientError(realm, MALFORMED)
  try {
    return { id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) }
  } catch {
    throw new InvalidClientError(realm, MALFORMED)
  }
}

/** application/x-www-form-urlencoded decoding of one value; throws URIError on a bad escape or bytes not UTF-8. */
function formDecode(value: string): string {
  return decodeURIComponent(value.replaceAll('+', ' '))
}
