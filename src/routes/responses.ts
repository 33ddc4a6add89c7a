// Every answer a route can give, for its `schema.response`: the body schema of each status (the
// serialiser writes only what it declares), and for the OpenAPI document a description saying when
// it happens and the response headers. Routes name their own answers and pick the errors that
// apply from a small vocabulary; the status, body, description and headers of those live here,
// next to the plugins that produce them (plugins/errors.ts, auth.ts, body.ts, headers.ts).
//
//   response: responses({ 200: [UserPublic, 'The current user'] }, 'bearer', 'store')
//
// The map holds the body schemas themselves, shared by every route (Detail, OAuthErrorBody...), so
// what the serialiser builds from is exactly what the route declares, and one compiled serialiser
// serves them all (app.ts caches them per schema). The descriptions and headers ride along on the
// map under a symbol, which Fastify and the type provider do not see; plugins/docs.ts reads them
// with responseDocs() and puts them into the document.
import type { z } from 'zod'
import { Detail, OAuthErrorBody, ValidationErrorBody } from '../schemas.js'

/** A response header as OpenAPI documents it: a JSON Schema with a description. */
export interface HeaderDoc {
  type: 'string' | 'integer'
  description: string
  minimum?: number
}

/** One answer: its body schema, when it happens, and the headers it adds to those of every answer. */
export type ResponseSpec = readonly [schema: z.ZodType, description: string, headers?: Record<string, HeaderDoc>]

/**
 * The errors a route can raise, by cause:
 * - `bearer`: authenticate (plugins/auth.ts) refuses the token: 401.
 * - `admin`: requireScope('admin'): 401, and 403 for a token without the scope.
 * - `json-body`: the route takes JSON (routes/hooks.ts requireMediaType, plugins/body.ts): 400, 413, 415, 422.
 * - `form-body`: the route takes a form (/token, /revoke): 400, 413, 415.
 * - `no-body`: the route takes no body, but one that is sent is parsed all the same: 400, 413, 415.
 * - `rate-limited`: a request cap of @fastify/rate-limit (config.rateLimit on the route): 429.
 * - `throttled`: the password is checked, so the login throttle applies (services/throttle.ts): 429.
 * - `hashing`: bcrypt runs behind the hash gate (security/password.ts), which sheds load: 503.
 * - `store`: a store is read or written (PostgreSQL, Redis): 503 when it cannot be reached.
 * Every route also gets 405 (another method on its path) and 500.
 */
export type ErrorKind =
  | 'bearer'
  | 'admin'
  | 'json-body'
  | 'form-body'
  | 'no-body'
  | 'rate-limited'
  | 'throttled'
  | 'hashing'
  | 'store'

const REQUEST_ID: HeaderDoc = {
  type: 'string',
  description: 'The id of this request (a UUID): the server log lines about it carry the same id.',
}
const NO_STORE: HeaderDoc = {
  type: 'string',
  description: '`no-store` (with `Pragma: no-cache`): no answer of this API may be cached.',
}
const CHALLENGE: HeaderDoc = {
  type: 'string',
  description:
    'RFC 6750 §3 Bearer challenge: `Bearer realm="…"` when no token was sent (or another scheme), plus `error="invalid_token"` for a token that is refused.',
}
const SCOPE_CHALLENGE: HeaderDoc = {
  type: 'string',
  description: 'RFC 6750 §3 Bearer challenge: `Bearer realm="…", error="insufficient_scope", scope="admin"`.',
}
/** Retry-After, for a route's own 429 or 503. */
export const RETRY_AFTER: HeaderDoc = {
  type: 'integer',
  minimum: 1,
  description: 'Seconds to wait before trying again.',
}
const ALLOW: HeaderDoc = {
  type: 'string',
  description: 'The methods this path has, comma-separated (e.g. `GET, HEAD`).',
}

/** What every answer carries (plugins/headers.ts); a response may replace Cache-Control (JWKS). */
const EVERY_RESPONSE = { 'x-request-id': REQUEST_ID, 'Cache-Control': NO_STORE }

/** The errors of each kind, keyed by status. `body` is the route's error body (see errorBody in plugins/errors.ts). */
function kindResponses(kind: ErrorKind, body: z.ZodType): Record<number, ResponseSpec> {
  switch (kind) {
    case 'bearer':
      return {
        401: [
          Detail,
          'No access token ("Not authenticated"), or one that is malformed, forged, expired, revoked, or of a disabled or deleted account ("Could not validate credentials").',
          { 'WWW-Authenticate': CHALLENGE },
        ],
      }
    case 'admin':
      return {
        ...kindResponses('bearer', body),
        403: [Detail, 'A valid token without the `admin` scope.', { 'WWW-Authenticate': SCOPE_CHALLENGE }],
      }
    case 'json-body':
      return {
        400: [body, 'The body is empty, not valid JSON, or not valid UTF-8 (never repaired).'],
        413: [body, 'The body is larger than BODY_LIMIT_BYTES (16 KiB by default).'],
        415: [body, 'The Content-Type is not `application/json`, names a charset other than utf-8, or is missing.'],
        422: [ValidationErrorBody, 'The body breaks a rule: `errors` lists every field and its problem.'],
      }
    case 'form-body':
      return {
        400: [body, 'The form is not valid UTF-8, raw or once its %XX escapes are decoded (never repaired).'],
        413: [body, 'The body is larger than BODY_LIMIT_BYTES (16 KiB by default).'],
        415: [
          body,
          'The Content-Type is not `application/x-www-form-urlencoded` or names a charset other than utf-8 (a request with neither a body nor a Content-Type is an empty form).',
        ],
      }
    case 'no-body':
      return {
        400: [
          body,
          'This route takes no body, but one sent anyway is parsed: here, one that is not valid JSON or not valid UTF-8.',
        ],
        413: [body, 'This route takes no body; one was sent, larger than BODY_LIMIT_BYTES (16 KiB by default).'],
        415: [body, 'This route takes no body; one was sent with a media type other than JSON or a form.'],
      }
    case 'rate-limited':
      return {
        429: [
          body,
          'Over the request cap of this route: per client address, or per username at /token.',
          { 'Retry-After': RETRY_AFTER },
        ],
      }
    case 'throttled':
      return {
        429: [
          body,
          'Too many failed password attempts for this account or from this address: locked for a while.',
          { 'Retry-After': RETRY_AFTER },
        ],
      }
    case 'hashing':
      return {
        503: [body, 'Server busy: too many password hashes are waiting already.', { 'Retry-After': RETRY_AFTER }],
      }
    case 'store':
      return {
        503: [body, 'A store (PostgreSQL or Redis) cannot be reached.', { 'Retry-After': RETRY_AFTER }],
      }
  }
}

/** The answers of every route: the error handler's 500, and the not-found handler's 405 (always `{detail}`). */
function everyRoute(body: z.ZodType): Record<number, ResponseSpec> {
  return {
    405: [
      Detail,
      "Another method on this path (answered for the path, never by this operation's method): `Allow` lists the methods it has.",
      { Allow: ALLOW },
    ],
    500: [body, 'An unexpected failure: a generic body; the log has the cause under the request id.'],
  }
}

/** The OAuth `error` code the error handler gives a status it has no code of its own for (plugins/errors.ts). */
function oauthCode(status: number): string {
  return status === 429 || status === 503
    ? 'temporarily_unavailable'
    : status >= 500
      ? 'server_error'
      : 'invalid_request'
}

type Schemas<M> = { [K in keyof M]: M[K] extends readonly [infer S, ...unknown[]] ? S : never }

/** What the OpenAPI document says of one status of a route. */
export interface ResponseDoc {
  description: string
  headers: Record<string, HeaderDoc>
}

const DOCS = Symbol('response docs')

/** The descriptions and headers of a `schema.response` built here, by status; undefined for any other value. */
export function responseDocs(response: unknown): Readonly<Record<number, ResponseDoc>> | undefined {
  return typeof response === 'object' && response !== null
    ? (response as { [DOCS]?: Record<number, ResponseDoc> })[DOCS]
    : undefined
}

interface Options {
  /** The route answers errors with the RFC 6749 §5.2 body (config.oauthErrors: /token, /revoke). */
  oauth?: boolean
}

function build<const M extends Record<number, ResponseSpec>>(own: M, kinds: ErrorKind[], { oauth = false }: Options) {
  const body = oauth ? OAuthErrorBody : Detail
  const merged = new Map<number, { schema: z.ZodType; descriptions: string[]; headers: Record<string, HeaderDoc> }>()
  const add = (status: number, [schema, description, headers = {}]: ResponseSpec) => {
    const entry = merged.get(status)
    if (!entry) {
      merged.set(status, { schema, descriptions: [description], headers: { ...EVERY_RESPONSE, ...headers } })
      return
    }
    // Two causes of one status must share its body: the client reads one shape per status.
    if (entry.schema !== schema) throw new Error(`responses: two different bodies for status ${status}`)
    if (!entry.descriptions.includes(description)) entry.descriptions.push(description)
    Object.assign(entry.headers, headers)
  }
  for (const [status, spec] of Object.entries(own)) add(Number(status), spec as ResponseSpec)
  for (const kind of kinds)
    for (const [status, spec] of Object.entries(kindResponses(kind, body))) add(Number(status), spec)
  for (const [status, spec] of Object.entries(everyRoute(body)))
    if (!merged.has(Number(status))) add(Number(status), spec)

  const result: Record<number, z.ZodType> & { [DOCS]: Record<number, ResponseDoc> } = { [DOCS]: {} }
  for (const status of [...merged.keys()].sort((a, b) => a - b)) {
    const { schema, descriptions, headers } = merged.get(status) as NonNullable<ReturnType<typeof merged.get>>
    // One cause is a sentence; several are a list (OpenAPI descriptions are CommonMark).
    let description =
      descriptions.length === 1 ? (descriptions[0] as string) : descriptions.map((d) => `- ${d}`).join('\n')
    if (oauth && schema === OAuthErrorBody && !own[status as keyof M])
      description += `\n\n\`error\`: \`${oauthCode(status)}\`.`
    result[status] = schema
    result[DOCS][status] = { description, headers }
  }
  // Typed as the route's own answers: those are what its handler returns (the type provider checks
  // them); the errors are written by the error handler.
  return result as unknown as Schemas<M>
}

/** The `schema.response` of a route whose errors are `{detail}` (plus `errors` on 422). */
export function responses<const M extends Record<number, ResponseSpec>>(own: M, ...kinds: ErrorKind[]): Schemas<M> {
  return build(own, kinds, {})
}

/** The `schema.response` of an OAuth endpoint (/token, /revoke): errors are `{error, error_description, detail}`. */
export function oauthResponses<const M extends Record<number, ResponseSpec>>(
  own: M,
  ...kinds: ErrorKind[]
): Schemas<M> {
  return build(own, kinds, { oauth: true })
}
