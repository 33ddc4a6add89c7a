// The process entry point: the only reader of process.env. Loads config, builds, listens, and
// shuts down gracefully on SIGTERM/SIGINT (in-flight requests finish, then exit 0). A boot that
// fails prints one line per cause on stderr and exits 1 (failBoot).
import { existsSync, readFileSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { type Config, JWT_SECRET_PLACEHOLDER, loadConfig } from './config.js'
import { bootFailureLines } from './errors.js'
import {
  auditLogger,
  listenUrl,
  loggerOptions,
  prettyStream,
  redact,
  secretValues,
  startupLine,
  startupLogger,
} from './logging.js'
import { describeMailMode } from './mail/mailer.js'
import { preloadCommonPasswords } from './security/policy.js'

/**
 * Ends a boot that cannot go on: one line per cause on stderr, each naming what to change, never a
 * stack trace (LOG_LEVEL=debug or trace adds it, for a bug) and never a secret; then exit 1.
 */
function failBoot(err: unknown, config?: Config): never {
  const secrets = secretValues(process.env)
  const listen = config && { host: config.host, port: config.port }
  for (const line of bootFailureLines(err, listen)) process.stderr.write(`cannot start: ${redact(line, secrets)}\n`)
  const level = config?.logLevel ?? process.env.LOG_LEVEL
  if ((level === 'debug' || level === 'trace') && err instanceof Error && err.stack)
    process.stderr.write(`${redact(err.stack, secrets)}\n`)
  process.exit(1)
}

/** package.json's version, for the start-up line. */
function packageVersion(): string {
  try {
    return String(JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version)
  } catch {
    return 'unknown'
  }
}

if (existsSync('.env')) process.loadEnvFile('.env')

let config: Config
try {
  config = loadConfig(process.env)
} catch (err) {
  failBoot(err)
}

let app: FastifyInstance
try {
  // Human-readable lines in a developer's terminal; JSON anywhere else (logging.ts, prettyStream).
  const pretty = await prettyStream(config, process.stdout.isTTY === true)
  app = await buildApp(config, {
    logger: loggerOptions(config, pretty),
    ...(pretty ? { audit: auditLogger(config, pretty) } : {}),
  })
  // Apart from listen(), so that onReady's failures (ADMIN_USERNAME) are not taken for HOST or PORT.
  await app.ready()
} catch (err) {
  failBoot(err, config)
}

// close-with-grace calls process.exit as soon as this resolves, so no timer, socket or pool can hold
// the process after 'closed'. What can: work on libuv's thread pool (bcrypt), which exit waits for;
// app.close() starts none (services stop their background work when closing begins).
closeWithGrace({ delay: config.requestTimeoutMs + 1000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
  app.log.info('closed')
})

try {
  await app.listen({ port: config.port, host: config.host })
} catch (err) {
  failBoot(err, config)
}
// What runs and where, whatever LOG_LEVEL says (but silent): the real port when PORT=0.
const metrics = app.metricsAddress ? `http://${app.metricsAddress.host}:${app.metricsAddress.port}/metrics` : null
const startup = startupLine(config, { version: packageVersion(), url: listenUrl(app.server.address()), metrics })
startupLogger(app.log, config)?.info(startup.fields, startup.msg)
// Mail off (production without SMTP_URL) disables features: said at warn, which production logs.
if (config.mail.mode === 'off') app.log.warn(describeMailMode(config.mail))
// The warnings after it, so that a terminal's first lines show where the API and its docs are.
if (config.jwt.keys.ephemeral) {
  app.log.warn(
    `JWT_PRIVATE_KEY_FILE is not set: using an ${config.jwt.algorithm} key pair generated for this process. Tokens stop working at restart.`,
  )
} else if (config.jwt.algorithm === 'HS256' && config.jwt.secret === JWT_SECRET_PLACEHOLDER) {
  app.log.warn('JWT_SECRET is the public .env.example placeholder: anyone can forge tokens. Production refuses it.')
} else if (config.jwt.algorithm === 'HS256' && config.jwt.secretGenerated) {
  app.log.warn(
    'JWT_SECRET is not set: using a random secret generated for this process. Tokens stop working at restart. Set JWT_SECRET for anything but local development.',
  )
}
if (config.env === 'production' && config.storage.kind === 'memory')
  app.log.warn(
    'STORE=memory in production: users and sessions live in this process only and are lost at restart; set STORE=postgres',
  )
// Warm up what the first registration needs, once the server is already answering.
setImmediate(preloadCommonPasswords)
