// The example's settings, all from the environment, checked once at start. Like the auth server, a
// problem names the variable and never echoes its value (INTROSPECTION_CLIENT_SECRET is a secret).

/**
 * @typedef {'jwks' | 'introspection'} Mode
 * @typedef {object} Config
 * @property {Mode} mode
 * @property {string} host
 * @property {number} port
 * @property {string} authServerUrl  without a trailing slash
 * @property {string | undefined} issuer  EXPECTED_ISSUER; undefined: discovered at start (server.js)
 * @property {string} audience
 * @property {{ clientId: string, clientSecret: string } | undefined} introspectionClient
 * @property {string} logLevel
 */

export const MODES = /** @type {const} */ (['jwks', 'introspection'])
export const DEFAULT_AUTH_SERVER_URL = 'http://127.0.0.1:8000'
/** The auth server's own defaults (JWT_ISSUER, JWT_AUDIENCE): what it signs when not told otherwise. */
export const DEFAULT_ISSUER = 'fastify-auth-server'
export const DEFAULT_AUDIENCE = 'fastify-auth-api'
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

export class ConfigError extends Error {
  /** @param {string[]} problems  one line each, naming the variable */
  constructor(problems) {
    super(problems.join('; '))
    this.problems = problems
  }
}

/**
 * Reads and checks the settings; throws a ConfigError listing every problem at once.
 * @param {Record<string, string | undefined>} env
 * @returns {Config}
 */
export function loadConfig(env) {
  /** @type {string[]} */
  const problems = []
  // An empty variable counts as unset, as in the auth server: that is what `VAR=` means to its writer.
  /** @param {string} name */
  const get = (name) => (env[name] === undefined || env[name] === '' ? undefined : env[name])

  const mode = get('MODE') ?? 'jwks'
  if (!MODES.includes(/** @type {Mode} */ (mode))) problems.push(`MODE: must be ${MODES.join(' or ')}`)

  const port = get('PORT') ?? '8001'
  if (!/^[0-9]+$/.test(port) || Number(port) > 65535) problems.push('PORT: must be a whole number from 0 to 65535')

  const authServerUrl = (get('AUTH_SERVER_URL') ?? DEFAULT_AUTH_SERVER_URL).replace(/\/+$/, '')
  if (!isBaseUrl(authServerUrl))
    problems.push('AUTH_SERVER_URL: must be an http:// or https:// URL without credentials, query or fragment')

  const clientId = get('INTROSPECTION_CLIENT_ID')
  const clientSecret = get('INTROSPECTION_CLIENT_SECRET')
  if (mode === 'introspection') {
    if (!clientId) problems.push('INTROSPECTION_CLIENT_ID: is required with MODE=introspection')
    if (!clientSecret) problems.push('INTROSPECTION_CLIENT_SECRET: is required with MODE=introspection')
  }

  const logLevel = get('LOG_LEVEL') ?? 'info'
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL: must be one of ${LOG_LEVELS.join(', ')}`)

  if (problems.length > 0) throw new ConfigError(problems)
  return {
    mode: /** @type {Mode} */ (mode),
    host: get('HOST') ?? '127.0.0.1',
    port: Number(port),
    authServerUrl,
    issuer: get('EXPECTED_ISSUER'),
    audience: get('EXPECTED_AUDIENCE') ?? DEFAULT_AUDIENCE,
    introspectionClient: mode === 'introspection' && clientId && clientSecret ? { clientId, clientSecret } : undefined,
    logLevel,
  }
}

/**
 * `path` under the auth server's base URL, keeping a base path (`https://example.com/auth`), which
 * `new URL('/x', base)` would drop.
 * @param {string} base  without a trailing slash
 * @param {string} path  without a leading slash
 */
export function endpoint(base, path) {
  return new URL(`${base}/${path}`)
}

/** @param {string} value */
function isBaseUrl(value) {
  try {
    const url = new URL(value)
    return (
      (url.protocol === 'http:' || url.protocol === 'https:') &&
      !url.username &&
      !url.password &&
      !value.includes('?') &&
      !value.includes('#')
    )
  } catch {
    return false
  }
}

/**
 * True when the URL leaves this machine in clear text: the introspection client secret and the
 * tokens would cross the network readable, and the JWKS could be swapped on the way.
 * @param {string} value
 */
export function isPlainHttpToAnotherHost(value) {
  const url = new URL(value)
  return url.protocol === 'http:' && !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)
}
