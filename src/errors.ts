// The error catalogue: every error this server raises, each with its HTTP status (or, for the
// boot errors, none: they stop the process) and a stable internal code that log lines carry.
// Routes and services throw these classes and never write a status number themselves; the HTTP
// edge (plugins/errors.ts) turns them into the one JSON body: `{"detail"}`, plus RFC 6749 §5.2
// `error`/`error_description` on the OAuth endpoints, plus `errors` for validation failures.

/** Every API error code and its HTTP status. A code never changes meaning once released. */
export const ERROR_STATUS = {
  BAD_REQUEST: 400,
  BODY_NOT_UTF8: 400,
  OAUTH_ERROR: 400,
  REFRESH_TOKEN_REUSED: 400,
  PASSWORD_INCORRECT: 400,
  ONE_TIME_TOKEN_INVALID: 400,
  EMAIL_REQUEST_INVALID: 400,
  MFA_CODE_INVALID: 400,
  TOKEN_MISSING: 401,
  TOKEN_INVALID: 401,
  CLIENT_INVALID: 401,
  INSUFFICIENT_SCOPE: 403,
  MFA_REQUIRED: 403,
  NOT_FOUND: 404,
  ROUTE_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  USERNAME_TAKEN: 409,
  EMAIL_TAKEN: 409,
  LAST_ADMIN: 409,
  MFA_STATE_CONFLICT: 409,
  BODY_TOO_LARGE: 413,
  URI_TOO_LONG: 414,
  UNSUPPORTED_MEDIA_TYPE: 415,
  UNSUPPORTED_CHARSET: 415,
  VALIDATION_FAILED: 422,
  LOGIN_THROTTLED: 429,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  SERVER_BUSY: 503,
  STORE_UNAVAILABLE: 503,
} as const

export type ErrorCode = keyof typeof ERROR_STATUS

/** RFC 6749 §5.2 and RFC 7009 §2.2.1 error codes used at /token and /revoke. */
export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_grant'
  | 'unsupported_grant_type'
  | 'invalid_scope'
  | 'temporarily_unavailable'
  | 'unsupported_token_type'
  | 'server_error'
  | 'mfa_required'
  | 'invalid_client'

export interface FieldError {
  /** The field's path, dot-separated ('' for the body itself). */
  field: string
  message: string
}

/**
 * An answer to the client, not a bug: it carries no stack trace. Capturing one made each 401 cost
 * more than a whole successful request, and requests with bad tokens are exactly what an attacker
 * can send in bulk. `detail` is shown to the client; `code` goes to the logs.
 */
export class ApiError extends Error {
  readonly statusCode: number

  constructor(
    readonly code: ErrorCode,
    readonly detail: string,
    readonly headers: Readonly<Record<string, string>> = {},
    readonly oauthError?: OAuthErrorCode,
  ) {
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    super(detail)
    Error.stackTraceLimit = limit
    this.name = new.target.name
    this.statusCode = ERROR_STATUS[code]
  }
}

/** A request the server cannot read: malformed body, URL or Content-Length (400). */
export class BadRequestError extends ApiError {
  constructor(detail = 'Bad Request') {
    super('BAD_REQUEST', detail)
  }
}

/**
 * A body whose bytes are not well-formed UTF-8 (raw, or once a form's %XX escapes are decoded), or
 * a JSON body whose \u escapes leave an unpaired surrogate (400). Refused, never repaired: a lossy
 * decode turns different byte strings into the same U+FFFD text, so a password registered with one
 * would log in with another. `invalid_request` on /token and /revoke.
 */
export class BodyNotUtf8Error extends ApiError {
  constructor(detail = 'Request body is not valid UTF-8') {
    super('BODY_NOT_UTF8', detail)
  }
}

/** An RFC 6749 §5.2 error (400): the body has exactly error, error_description and detail. */
export class OAuthError extends ApiError {
  constructor(error: OAuthErrorCode, description: string) {
    super('OAUTH_ERROR', description, {}, error)
  }
}

export const INVALID_CREDENTIALS = 'Invalid credentials'
/** The one answer to every failed password grant, whatever failed (RFC 6749 §5.2 invalid_grant). */
export const invalidGrant = () => new OAuthError('invalid_grant', INVALID_CREDENTIALS)

/**
 * A spent refresh token came back (RFC 9700 §4.14.2): its whole family was revoked. Answers like
 * any invalid refresh token; the ids are for the audit log only.
 */
export class ReuseDetectedError extends ApiError {
  constructor(
    readonly familyId: string,
    readonly userId: string,
  ) {
    super('REFRESH_TOKEN_REUSED', 'Invalid refresh token', {}, 'invalid_grant')
  }
}

/**
 * The password grant of an account without a verified e-mail address while REQUIRE_VERIFIED_EMAIL
 * is on (invalid_grant). Only ever after the password was found right: a wrong one answers
 * invalidGrant() as always, so this answer tells nothing to someone without the password.
 */
export const emailNotVerified = () => new OAuthError('invalid_grant', 'Email address not verified')

/**
 * A password-reset or e-mail verification token that is unknown, expired, already used, of the
 * other purpose, or issued before the account's last password change (400). One answer for all
 * of these: which one it was would only help someone guessing.
 */
export class InvalidOneTimeTokenError extends ApiError {
  constructor() {
    super('ONE_TIME_TOKEN_INVALID', 'Invalid or expired token')
  }
}

/**
 * A request about the account's own e-mail address that cannot be done in its state (400): no
 * address to verify, an address already verified, a change to the address it already has.
 */
export class EmailRequestError extends ApiError {
  constructor(detail: string) {
    super('EMAIL_REQUEST_INVALID', detail)
  }
}

/**
 * The password grant of an account with a second factor: the password was right, and a code is
 * needed (403 `mfa_required`, the shape Auth0 answers a password grant with MFA with, so that
 * clients written for it work unchanged). The one /token error with a fourth key, `mfa_token`: the
 * token of the second step (services/mfa.ts). Only ever after the password was found right.
 */
export class MfaRequiredError extends ApiError {
  constructor(readonly mfaToken: string) {
    super('MFA_REQUIRED', 'Multi-factor authentication required', {}, 'mfa_required')
  }
}

/**
 * A second-factor code (TOTP or recovery code) that is wrong, already used or malformed, given to
 * confirm an MFA change (400). At /token a wrong code is `invalid_grant` instead.
 */
export class InvalidMfaCodeError extends ApiError {
  constructor(detail = 'Invalid code') {
    super('MFA_CODE_INVALID', detail)
  }
}

/**
 * An MFA change that the account's MFA state does not allow (409): enrolling while MFA is active,
 * confirming with no enrolment pending, changing or disabling MFA that is not active.
 */
export class MfaStateError extends ApiError {
  constructor(detail: string) {
    super('MFA_STATE_CONFLICT', detail)
  }
}

/** The current password given to confirm a change (password change, deletion) is wrong (400, not 401). */
export class PasswordIncorrectError extends ApiError {
  constructor() {
    super('PASSWORD_INCORRECT', 'Password is incorrect')
  }
}

/**
 * RFC 6750 §3.1: 401. No credentials at all (`missing`: the challenge carries no error code) or a
 * bearer token that is malformed, forged, expired, revoked or of a gone user (`invalid_token`).
 * The HTTP edge adds the `WWW-Authenticate` challenge with the configured realm.
 */
export class MissingTokenError extends ApiError {
  constructor() {
    super('TOKEN_MISSING', 'Not authenticated')
  }
}

export class InvalidTokenError extends ApiError {
  constructor() {
    super('TOKEN_INVALID', 'Could not validate credentials')
  }
}

/**
 * RFC 6749 §5.2 invalid_client (401): the client of an endpoint that authenticates clients (POST
 * /introspect) sent no credentials, credentials we cannot read, or ones we do not know. It carries
 * the HTTP Basic challenge of the scheme the client authenticates with (RFC 7617 §2), which §5.2
 * requires whenever the client tried the Authorization header. One detail for an unknown id and a
 * wrong secret alike: which one it was would only help someone guessing.
 */
export class InvalidClientError extends ApiError {
  constructor(realm: string, detail = 'Client authentication failed') {
    super('CLIENT_INVALID', detail, { 'www-authenticate': `Basic realm="${realm}"` }, 'invalid_client')
  }
}

/** RFC 6750 §3.1 insufficient_scope (403): a valid token without `scope`. */
export class InsufficientScopeError extends ApiError {
  constructor(readonly scope: string) {
    super('INSUFFICIENT_SCOPE', 'Insufficient scope')
  }
}

/** The resource does not exist (404), e.g. a user id. */
export class NotFoundError extends ApiError {
  constructor(what = 'User') {
    super('NOT_FOUND', `${what} not found`)
  }
}

export class RouteNotFoundError extends ApiError {
  constructor() {
    super('ROUTE_NOT_FOUND', 'Not Found')
  }
}

/** RFC 9110 §15.5.6: a known path with another method; `allow` lists the path's methods. */
export class MethodNotAllowedError extends ApiError {
  constructor(allow: readonly string[]) {
    super('METHOD_NOT_ALLOWED', 'Method Not Allowed', { allow: allow.join(', ') })
  }
}

export class UsernameTakenError extends ApiError {
  constructor() {
    super('USERNAME_TAKEN', 'Username already registered')
  }
}

/**
 * The e-mail address belongs to another account (409): compared in any case (store/users.ts,
 * emailKey). Raised at registration, when a change of address is asked for, and again when it is
 * confirmed, since the address may have been taken in between.
 */
export class EmailTakenError extends ApiError {
  constructor() {
    super('EMAIL_TAKEN', 'Email already registered')
  }
}

/**
 * An admin change that would leave no enabled account with the admin role (the last admin
 * demoting, disabling or deleting itself): refused with 409, and nothing is changed. Without it,
 * the only way back in would be the database or a restart with ADMIN_USERNAME.
 */
export class LastAdminError extends ApiError {
  constructor() {
    super('LAST_ADMIN', 'At least one enabled administrator must remain: this change would leave none')
  }
}

export class BodyTooLargeError extends ApiError {
  constructor() {
    super('BODY_TOO_LARGE', 'Request body too large')
  }
}

/** A path segment longer than the router takes (Fastify's maxParamLength): 414. */
export class UriTooLongError extends ApiError {
  constructor() {
    super('URI_TOO_LONG', 'URL too long')
  }
}

export class UnsupportedMediaTypeError extends ApiError {
  /** `expected`: the one media type the route accepts, named in the detail when known. */
  constructor(expected?: string) {
    super('UNSUPPORTED_MEDIA_TYPE', expected ? `Content-Type must be ${expected}` : 'Unsupported Media Type')
  }
}

/** A body declared in a charset other than UTF-8 (`; charset=latin1`): we decode UTF-8 only (415). */
export class UnsupportedCharsetError extends ApiError {
  constructor() {
    super('UNSUPPORTED_CHARSET', 'Content-Type charset must be utf-8')
  }
}

/** A body that parses but breaks the rules (422), listing every bad field. */
export class ValidationError extends ApiError {
  constructor(readonly errors: FieldError[]) {
    super('VALIDATION_FAILED', summarise(errors))
  }
}

/** The login throttle: the account is locked or the address is over its limit (429, Retry-After in seconds). */
export class TooManyAttemptsError extends ApiError {
  constructor(
    retryAfterSeconds: number,
    readonly reason: 'account' | 'address',
    /** Where the failures were not logins (bad one-time tokens), a detail that says so. */
    detail = 'Too many failed login attempts; try again later',
  ) {
    super('LOGIN_THROTTLED', detail, {
      'retry-after': String(retryAfterSeconds),
    })
  }
}

/** A request-rate cap (@fastify/rate-limit) was hit (429, Retry-After in seconds). */
export class TooManyRequestsError extends ApiError {
  constructor(retryAfterSeconds?: number, detail = 'Too many requests') {
    super('RATE_LIMITED', detail, retryAfterSeconds === undefined ? {} : { 'retry-after': String(retryAfterSeconds) })
  }
}

/** A bug or an unexpected failure: the client sees only this generic 500; the log has the cause. */
export class InternalError extends ApiError {
  constructor() {
    super('INTERNAL', 'Internal Server Error')
  }
}

/** The hash gate sheds work it cannot start in time (503 with Retry-After in seconds). */
export class ServerBusyError extends ApiError {
  constructor(retryAfterSeconds: number) {
    super('SERVER_BUSY', 'Server busy, try again shortly', { 'retry-after': String(retryAfterSeconds) })
  }
}

/** A dependency (database, cache) is unreachable: 503 quickly, never a hang or a 500. */
export class StoreUnavailableError extends ApiError {
  constructor(readonly dependency: string) {
    super('STORE_UNAVAILABLE', `Service temporarily unavailable: ${dependency} is not reachable`, {
      'retry-after': '5',
    })
  }
}

// --- Boot errors: no HTTP status; they stop the process with one message naming the variable.

/**
 * Invalid settings. Each problem names its variable, never its value (a value may be a secret),
 * and is printed as a line of its own (bootFailureLines); the message joins them.
 */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID'

  constructor(readonly problems: string[]) {
    super(problems.join('; '))
    this.name = 'ConfigError'
  }
}

/**
 * The PostgreSQL schema does not match the migrations this server ships: `behind` (a shipped
 * migration is not applied: `npm run migrate`, or MIGRATE_ON_START=true) or `ahead` (an applied
 * migration this server does not ship: a newer release migrated the database). Found at boot, it
 * stops the process; found on the first connection after a boot without the database, it is the
 * cause of the 503 that requests needing the database get (never a 500 from a missing table).
 */
export class SchemaError extends Error {
  readonly code = 'SCHEMA_MISMATCH'
  override name = 'SchemaError'

  constructor(
    message: string,
    readonly direction: 'behind' | 'ahead',
  ) {
    super(message)
  }
}

/**
 * A store that cannot be opened at boot in a way waiting would not fix, or that the settings need
 * at boot: MIGRATE_ON_START without a reachable database, a failed migration, a login PostgreSQL
 * refuses. The message starts with the variable to change.
 */
export class StoreSetupError extends Error {
  readonly code = 'STORE_SETUP_FAILED'
  override name = 'StoreSetupError'
}

/** A signing key that cannot be used (unreadable file, wrong type); collected into a ConfigError. */
export class KeyConfigError extends Error {
  readonly code = 'CONFIG_KEY_INVALID'
  override name = 'KeyConfigError'
}

/** ADMIN_USERNAME/ADMIN_PASSWORD cannot be applied at boot (a policy problem, or a name taken). */
export class AdminSetupError extends Error {
  readonly code = 'ADMIN_SETUP_FAILED'
  override name = 'AdminSetupError'
}

/** Where the server was asked to listen (HOST, PORT): the lines about listen errors name them. */
export interface ListenTarget {
  readonly host: string
  readonly port: number
}

/**
 * What a failed boot prints: one line per cause, each naming what to change (a variable, a
 * command), never a stack trace and never a value that could be a secret. The boot errors above
 * carry their line; listen errors are named after HOST or PORT; anything else (a bug) gets its
 * name and the first line of its message.
 */
export function bootFailureLines(err: unknown, listen?: ListenTarget): string[] {
  if (err instanceof ConfigError) return err.problems.map(firstLine)
  if (
    err instanceof KeyConfigError ||
    err instanceof AdminSetupError ||
    err instanceof SchemaError ||
    err instanceof StoreSetupError
  )
    return [firstLine(err.message)]
  if (err instanceof StoreUnavailableError) return [`${err.dependency} is not reachable, and the start needs it`]
  const listenLine = listen && listenFailure(err, listen)
  if (listenLine) return [listenLine]
  const error = err instanceof Error ? err : new Error(String(err))
  return [`${error.name}: ${firstLine(error.message)}`]
}

/** The line for an error of listen() (node:net, or the name lookup before it); undefined for others. */
function listenFailure(err: unknown, listen: ListenTarget): string | undefined {
  const { code, address, port } = (err ?? {}) as { code?: unknown; address?: unknown; port?: unknown }
  const at = `${typeof address === 'string' ? address : listen.host}:${typeof port === 'number' ? port : listen.port}`
  // Another listener of this process (not HOST:PORT) is named by its address only.
  const portVariable = port === undefined || port === listen.port ? 'PORT: ' : ''
  switch (code) {
    case 'EADDRINUSE':
      return `${portVariable}${at} is already in use by another process (EADDRINUSE)`
    case 'EACCES':
      return `${portVariable}no permission to listen on ${at} (EACCES; ports below 1024 need privileges)`
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
      return `HOST: ${listen.host} does not resolve to an address (${code}); use a name or address of this machine, e.g. 127.0.0.1 or 0.0.0.0`
    case 'EADDRNOTAVAIL':
      return `HOST: ${typeof address === 'string' ? address : listen.host} is not an address of this machine (EADDRNOTAVAIL)`
    default:
      return undefined
  }
}

const firstLine = (message: string): string => message.split('\n', 1)[0]?.trim() || '(no message)'

function summarise(errors: FieldError[]): string {
  const first = errors[0]
  if (!first) return 'Invalid request'
  const more = errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''
  return `${first.field === '' ? 'body' : first.field}: ${first.message}${more}`
}
