// The process entry point: the only reader of process.env. Loads config, builds, listens, and
// shuts down gracefully on SIGTERM/SIGINT (in-flight requests finish, then exit 0).
import { existsSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { JWT_SECRET_PLACEHOLDER, loadConfig } from './config.js'
import { ConfigError } from './errors.js'
import { loggerOptions } from './logging.js'
import { preloadCommonPasswords } from './security/policy.js'

if (existsSync('.env')) process.loadEnvFile('.env')

let config: ReturnType<typeof loadConfig>
try {
  config = loadConfig(process.env)
} catch (err) {
  if (!(err instanceof ConfigError)) throw err
  process.stderr.write(`${err.message}\n`)
  process.exit(1)
}

const app = await buildApp(config, { logger: loggerOptions(config) })

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

closeWithGrace({ delay: config.requestTimeoutMs + 1000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
})

try {
  await app.listen({ port: config.port, host: config.host })
} catch (err) {
  app.log.error({ err }, 'could not listen')
  process.exit(1)
}
// Warm up what the first registration needs, once the server is already answering.
setImmediate(preloadCommonPasswords)
