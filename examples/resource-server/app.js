// The notes service: GET /notes for the owner of a valid access token with scope `user`, and an
// unprotected GET /healthz for probes. Which verifier checks the token (verifiers.js) is chosen by
// the caller; the answers are the same in both modes (RFC 6750 §3 for the challenges).
import Fastify from 'fastify'
import { InvalidTokenError, UnavailableError } from './verifiers.js'

/** The `realm` of our challenges: this service's own, not the auth server's. */
export const REALM = 'notes'
/** The scope GET /notes needs: the auth server grants it to every user. */
export const REQUIRED_SCOPE = 'user'
/**
 * The longest token taken: the auth server's are well under 1 KB. A longer one is refused before
 * it is parsed, or, in introspection mode, sent on to the auth server.
 */
const MAX_TOKEN_LENGTH = 4096
/** RFC 6750 §2.1: `Bearer` (any case), one space, a b64token. */
const BEARER = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/i

const Note = {
  type: 'object',
  properties: { id: { type: 'integer' }, text: { type: 'string' } },
  required: ['id', 'text'],
}
const NotesResponse = {
  type: 'object',
  properties: {
    owner: { type: 'string' },
    username: { type: 'string' },
    notes: { type: 'array', items: Note },
  },
  required: ['owner', 'notes'],
}
const Detail = { type: 'object', properties: { detail: { type: 'string' } }, required: ['detail'] }

/**
 * A stand-in for a real database: what matters here is that the list is chosen by the token's
 * `sub`, the user's id, never by anything the client sends alongside it.
 * @param {string} owner
 */
function notesOf(owner) {
  return [
    { id: 1, text: `Only a token of user ${owner} opens this list.` },
    { id: 2, text: 'Log out, then ask again: introspection mode refuses at once, jwks mode at expiry.' },
  ]
}

/**
 * @param {{ verifier: import('./verifiers.js').Verifier,
 *   logger?: import('fastify').FastifyServerOptions['logger'] }} options
 */
export function buildApp({ verifier, logger = false }) {
  const app = Fastify({ logger })
  // Declared up front, so that every request object has the same shape (Fastify's advice).
  app.decorateRequest('principal', null)

  /**
   * 401 with a challenge. No error code when the request had no credentials at all (RFC 6750 §3.1:
   * the client may not even know this route needs them), invalid_token when it had some and they
   * are not good: the client should get a new token, not retry this one.
   * @param {import('fastify').FastifyReply} reply
   * @param {boolean} presented
   */
  const unauthorized = (reply, presented) =>
    reply
      .code(401)
      .header('www-authenticate', `Bearer realm="${REALM}"${presented ? ', error="invalid_token"' : ''}`)
      .send({ detail: presented ? 'Could not validate credentials' : 'Not authenticated' })

  app.get(
    '/notes',
    {
      schema: { response: { 200: NotesResponse, 401: Detail, 403: Detail, 503: Detail } },
      async onRequest(request, reply) {
        const header = request.headers.authorization
        // A header in another scheme (Basic) is no bearer token: answered as if absent.
        if (header === undefined || !/^Bearer(\s|$)/i.test(header)) return unauthorized(reply, false)
        const match = header.length <= MAX_TOKEN_LENGTH + 7 ? BEARER.exec(header) : null
        if (!match) return unauthorized(reply, true)
        try {
          request.principal = await verifier.verify(/** @type {string} */ (match[1]))
        } catch (err) {
          if (err instanceof InvalidTokenError) {
            request.log.info({ reason: err.message }, 'token refused')
            return unauthorized(reply, true)
          }
          if (err instanceof UnavailableError) {
            request.log.error({ err }, 'cannot check the token')
            return reply
              .code(503)
              .header('retry-after', '5')
              .send({ detail: 'The token cannot be checked right now; try again shortly' })
          }
          throw err
        }
        if (!request.principal.scopes.includes(REQUIRED_SCOPE)) {
          return reply
            .code(403)
            .header(
              'www-authenticate',
              `Bearer realm="${REALM}", error="insufficient_scope", scope="${REQUIRED_SCOPE}"`,
            )
            .send({ detail: `Not enough permissions: this route needs the scope ${REQUIRED_SCOPE}` })
        }
      },
    },
    async (request) => {
      const { sub, username } = /** @type {import('./verifiers.js').Principal} */ (request.principal)
      return { owner: sub, ...(username !== undefined ? { username } : {}), notes: notesOf(sub) }
    },
  )

  app.get('/healthz', async () => ({ status: 'ok', mode: verifier.mode }))

  return app
}
