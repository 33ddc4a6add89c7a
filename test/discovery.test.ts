// Authorization server metadata (RFC 8414) over HTTP: GET /.well-known/oauth-authorization-server.
// Its fields and their absolute URLs (on PUBLIC_URL, or in development and test on the request's
// origin), the issuer equal to the `iss` of our tokens, what depends on the settings (the MFA
// grants, introspection, the password reset), the public caching, and no route in production
// without PUBLIC_URL (an answer built from the Host header must not be cacheable).
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  buildTestApp,
  decodeClaims,
  type Env,
  FORM,
  type JsonBody,
  listen,
  readJson,
  registerAndLogin,
  TEST_PASSWORD,
  TEST_SECRET,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const PATH = '/.well-known/oauth-authorization-server'
const MFA_GRANTS = ['http://auth0.com/oauth/grant-type/mfa-otp', 'http://auth0.com/oauth/grant-type/mfa-recovery-code']
const CLIENTS = 'resource-api:kT4vQ9xLm2Rz7WcN5pJh8YbD3sFg6AeU1oVi0nXq'
/** What production needs besides the settings under test (BCRYPT_ROUNDS: helpers' 4 is refused there). */
const PRODUCTION: Env = { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET, BCRYPT_ROUNDS: '10' }

/** The whole document for `base`, with the keys of every optional part. */
function expected(
  base: string,
  { mfa = true, introspection = false, mail = true, issuer = 'fastify-auth-server' } = {},
) {
  return {
    issuer,
    token_endpoint: `${base}/token`,
    revocation_endpoint: `${base}/revoke`,
    ...(introspection ? { introspection_endpoint: `${base}/introspect` } : {}),
    jwks_uri: `${base}/.well-known/jwks.json`,
    grant_types_supported: ['password', 'refresh_token', ...(mfa ? MFA_GRANTS : [])],
    scopes_supported: ['user', 'admin'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['none'],
    revocation_endpoint_auth_methods_supported: ['none'],
    ...(introspection ? { introspection_endpoint_auth_methods_supported: ['client_secret_basic'] } : {}),
    user_registration_endpoint: `${base}/register`,
    ...(mail ? { password_reset_endpoint: `${base}/password/forgot` } : {}),
  }
}

function edKeyFile(): string {
  const dir = mkdtempSync(join(tmpdir(), 'discovery-'))
  const file = join(dir, 'private.pem')
  writeFileSync(file, generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }) as string)
  return file
}

const apps: FastifyInstance[] = []
afterEach(async () => {
  await Promise.allSettled(apps.splice(0).map((app) => app.close()))
})

async function open(env: Env = {}): Promise<FastifyInstance> {
  const app = await buildTestApp(env)
  apps.push(app)
  return app
}

/** Cacheable for an hour when built on PUBLIC_URL; never when built from the request's Host. */
const CACHEABLE = 'public, max-age=3600'

async function metadata(
  app: FastifyInstance,
  headers: Record<string, string> = {},
  cache = app.config.mail.publicUrlSet ? CACHEABLE : 'no-store',
): Promise<JsonBody> {
  const res = await app.inject({ method: 'GET', url: PATH, headers })
  expect(res.statusCode, res.body).toBe(200)
  expect(res.headers['cache-control']).toBe(cache)
  expect(res.headers.pragma).toBeUndefined()
  expect(res.headers['content-type']).toBe('application/json; charset=utf-8')
  return res.json()
}

describe('GET /.well-known/oauth-authorization-server', () => {
  it('answers every field on PUBLIC_URL, whatever Host the request names, cacheable for an hour', async () => {
    const app = await open({ PUBLIC_URL: 'https://auth.example.com/base/' })
    for (const host of ['auth.example.com', 'evil.example', '127.0.0.1:8000']) {
      expect(await metadata(app, { host })).toEqual(expected('https://auth.example.com/base'))
    }
  })

  it('takes the origin of the request without PUBLIC_URL (development and test), never cacheable then, and its URLs work', async () => {
    const dev = await open({ NODE_ENV: 'development' })
    // no-store: a shared cache must not keep a document built from a Host header someone forged.
    expect(await metadata(dev, { host: 'localhost:5173' })).toEqual(expected('http://localhost:5173'))

    const app = await open()
    const base = await listen(app)
    const res = await fetch(`${base}${PATH}`)
    expect(res.status).toBe(200)
    expect(res.headers.get('cache-control')).toBe('no-store')
    const body = await readJson(res)
    expect(body).toEqual(expected(base))
    // A client that knows only this document registers, logs in and finds the keys.
    const username = uniqueUsername('disco')
    const registered = await fetch(body.user_registration_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password: TEST_PASSWORD }),
    })
    expect(registered.status).toBe(201)
    const token = await fetch(body.token_endpoint, {
      method: 'POST',
      headers: { 'content-type': FORM },
      body: new URLSearchParams({ grant_type: 'password', username, password: TEST_PASSWORD }).toString(),
    })
    expect(token.status).toBe(200)
    const { access_token } = await readJson(token)
    expect(decodeClaims(access_token).iss).toBe(body.issuer)
    expect((await fetch(body.jwks_uri)).status).toBe(200)
  })

  it('follows X-Forwarded-Proto and X-Forwarded-Host only from a proxy of TRUST_PROXY', async () => {
    const app = await open({ TRUST_PROXY: '127.0.0.1' })
    const forwarded = { host: 'internal:8000', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.example.org' }
    expect(await metadata(app, forwarded)).toEqual(expected('https://api.example.org'))
    const untrusted = await open()
    expect(await metadata(untrusted, forwarded)).toEqual(expected('http://internal:8000'))
  })

  it('names as issuer exactly the iss of the access tokens it issues (JWT_ISSUER)', async () => {
    for (const issuer of [undefined, 'https://auth.example.com', 'urn:example:auth']) {
      const app = await open(issuer === undefined ? {} : { JWT_ISSUER: issuer })
      const { token } = await registerAndLogin(app)
      const body = await metadata(app)
      expect(body.issuer).toBe(decodeClaims(token).iss)
      expect(body.issuer).toBe(issuer ?? 'fastify-auth-server')
    }
  })

  it('lists the MFA grants only when MFA is on', async () => {
    const hs256 = await open()
    expect(hs256.mfa).toBeDefined()
    expect((await metadata(hs256)).grant_types_supported).toEqual(['password', 'refresh_token', ...MFA_GRANTS])
    // EdDSA without MFA_ENCRYPTION_KEY: nothing can seal TOTP secrets, so MFA is off.
    const eddsa = await open({ JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: edKeyFile() })
    expect(eddsa.mfa).toBeUndefined()
    expect(await metadata(eddsa, { host: 'a.test' })).toEqual(expected('http://a.test', { mfa: false }))
  })

  it('lists introspection only with INTROSPECTION_CLIENTS', async () => {
    const on = await open({ INTROSPECTION_CLIENTS: CLIENTS })
    expect(await metadata(on, { host: 'a.test' })).toEqual(expected('http://a.test', { introspection: true }))
    const off = await open()
    const body = await metadata(off, { host: 'a.test' })
    expect(body).not.toHaveProperty('introspection_endpoint')
    expect(body).not.toHaveProperty('introspection_endpoint_auth_methods_supported')
  })

  it('does not exist in production without PUBLIC_URL (404), and does with it, without the password reset when mail is off', async () => {
    const bare = await open(PRODUCTION)
    const res = await bare.inject({ method: 'GET', url: PATH, headers: { host: 'evil.example' } })
    expect(res.statusCode).toBe(404)
    expect(res.json()).toEqual({ detail: 'Not Found' })
    expect(res.headers['cache-control']).toBe('no-store')

    // PUBLIC_URL without SMTP_URL: mail is off in production, so no password reset.
    const app = await open({
      ...PRODUCTION,
      PUBLIC_URL: 'https://auth.example.com',
      INTROSPECTION_CLIENTS: `${CLIENTS}Z`,
    })
    expect(await metadata(app, { host: 'evil.example' })).toEqual(
      expected('https://auth.example.com', { mail: false, introspection: true }),
    )
  })

  it('is documented, with its Cache-Control; HEAD answers like GET and other methods 405', async () => {
    const app = await open({ PUBLIC_URL: 'https://auth.example.com' })
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
    const op = doc.paths[PATH].get
    expect(op.responses['200'].headers['Cache-Control'].description).toMatch(/public, max-age=3600/)
    const head = await app.inject({ method: 'HEAD', url: PATH })
    expect(head.statusCode).toBe(200)
    expect(head.headers['cache-control']).toBe('public, max-age=3600')
    const post = await app.inject({ method: 'POST', url: PATH })
    expect(post.statusCode).toBe(405)
  })
})

describeWith(['postgres', 'redis'], 'GET /.well-known/oauth-authorization-server on PostgreSQL with Redis', () => {
  let db: TestSchema
  const prefix = redisPrefix()

  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterAll(async () => {
    await deleteRedisKeys(prefix)
    await db?.drop()
  })

  it('answers the same document, and its issuer is the iss of the tokens issued there', async () => {
    const app = await open({
      STORE: 'postgres',
      DATABASE_URL: db.url,
      REDIS_URL,
      REDIS_PREFIX: prefix,
      PUBLIC_URL: 'https://auth.example.com',
    })
    const { token } = await registerAndLogin(app)
    const body = await metadata(app)
    expect(body).toEqual(expected('https://auth.example.com'))
    expect(body.issuer).toBe(decodeClaims(token).iss)
  })
})
