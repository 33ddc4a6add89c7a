// The entry point: reads the settings, picks the verifier for MODE, checks it against the auth
// server once, listens, and closes cleanly on SIGINT/SIGTERM. A boot that cannot work prints one
// line per problem on stderr and exits 1.
import { buildApp } from './app.js'
import { ConfigError, DEFAULT_ISSUER, endpoint, isPlainHttpToAnotherHost, loadConfig } from './config.js'
import { describeFetchError, FatalError, introspectionVerifier, jwksVerifier } from './verifiers.js'

/**
 * @param {string[]} lines
 * @returns {never}
 */
function failBoot(lines) {
  for (const line of lines) process.stderr.write(`cannot start: ${line}\n`)
  process.exit(1)
}

/** @type {import('./config.js').Config} */
let config
try {
  config = loadConfig(process.env)
} catch (err) {
  if (!(err instanceof ConfigError)) throw err
  failBoot(err.problems)
}

/**
 * The issuer tokens must name: EXPECTED_ISSUER, else the `issuer` of the auth server's metadata
 * (RFC 8414) when it publishes some, else its default JWT_ISSUER. Read once: the issuer of a
 * running auth server does not change.
 * @param {import('./config.js').Config} c
 * @returns {Promise<{ issuer: string, source: string }>}
 */
async function resolveIssuer(c) {
  if (c.issuer) return { issuer: c.issuer, source: 'EXPECTED_ISSUER' }
  const url = endpoint(c.authServerUrl, '.well-known/oauth-authorization-server')
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3000), redirect: 'error' })
    const body = res.ok ? /** @type {{ issuer?: unknown }} */ (await res.json().catch(() => ({}))) : {}
    if (!res.ok) await res.body?.cancel()
    if (typeof body.issuer === 'string' && body.issuer !== '') return { issuer: body.issuer, source: String(url) }
    return { issuer: DEFAULT_ISSUER, source: `the default (${url} answered ${res.status} without an issuer)` }
  } catch (err) {
    return { issuer: DEFAULT_ISSUER, source: `the default (${url}: ${describeFetchError(err)})` }
  }
}

const { issuer, source } = await resolveIssuer(config)
const common = { authServerUrl: config.authServerUrl, issuer, audience: config.audience }
const verifier =
  config.mode === 'jwks'
    ? jwksVerifier(common)
    : introspectionVerifier({
        ...common,
        .../** @type {{ clientId: string, clientSecret: string }} */ (config.introspectionClient),
      })

const app = buildApp({ verifier, logger: { level: config.logLevel } })
app.log.info(
  { mode: config.mode, authServer: config.authServerUrl, issuer, issuerFrom: source, audience: config.audience },
  'settings',
)
if (isPlainHttpToAnotherHost(config.authServerUrl))
  app.log.warn(
    'AUTH_SERVER_URL is plain http to another machine: use https outside a private network (the keys, the tokens and the introspection secret cross it)',
  )

try {
  const warning = await verifier.preflight()
  if (warning) app.log.warn(warning)
} catch (err) {
  if (err instanceof FatalError) failBoot([err.message])
  throw err
}

for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM'])) {
  process.once(signal, async () => {
    app.log.info({ signal }, 'shutting down')
    await app.close()
    process.exit(0)
  })
}

try {
  // Fastify logs the address it listens on (the real port when PORT=0).
  await app.listen({ host: config.host, port: config.port })
} catch (err) {
  failBoot([`cannot listen on ${config.host}:${config.port}: ${/** @type {Error} */ (err).message}`])
}
