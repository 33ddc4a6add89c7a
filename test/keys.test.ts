// Signing keys: asymmetric algorithms, the JWKS, a separate resource server verifying our tokens
// with `jose` from nothing but the JWKS URL, and key rotation with JWT_PREVIOUS_KEYS.
import { createHmac, generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose'
import { afterEach, describe, expect, it } from 'vitest'
import { ConfigError } from '../src/errors.js'
import { MemorySessionStore } from '../src/store/sessions.js'
import { MemoryUserStore } from '../src/store/users.js'
import { buildTestApp, CHALLENGE_INVALID, getMe, listen, registerAndLogin, testConfig } from './helpers.js'

const apps: FastifyInstance[] = []
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()))
})

async function app(env: Record<string, string>, deps = {}) {
  const a = await buildTestApp(env, deps)
  apps.push(a)
  return a
}

function keyFiles(type: 'ed25519' | 'ec' | 'rsa') {
  const dir = mkdtempSync(join(tmpdir(), 'keys-'))
  const pair =
    type === 'ed25519'
      ? generateKeyPairSync('ed25519')
      : type === 'ec'
        ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
        : generateKeyPairSync('rsa', { modulusLength: 2048 })
  const priv = join(dir, 'private.pem')
  const pub = join(dir, 'public.pem')
  writeFileSync(priv, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string)
  writeFileSync(pub, pair.publicKey.export({ format: 'pem', type: 'spki' }) as string)
  return { priv, pub, publicPem: pair.publicKey.export({ format: 'pem', type: 'spki' }) as string }
}

describe.each([
  ['EdDSA', 'ed25519'],
  ['ES256', 'ec'],
  ['RS256', 'rsa'],
] as const)('JWT_ALGORITHM=%s', (alg, type) => {
  it('issues tokens that a separate resource server verifies with jose from the JWKS URL alone', async () => {
    const files = keyFiles(type)
    const server = await app({ JWT_ALGORITHM: alg, JWT_PRIVATE_KEY_FILE: files.priv, JWT_PUBLIC_KEY_FILE: files.pub })
    const base = await listen(server)
    const { token, user } = await registerAndLogin(server)

    // The resource server knows only the JWKS URL, the issuer and the audience.
    const jwks = createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`))
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer: 'fastify-auth-server',
      audience: 'fastify-auth-api',
      typ: 'at+jwt',
      algorithms: [alg],
    })
    expect(payload.sub).toBe(user.id)
    expect(protectedHeader.kid).toBe(server.config.jwt.kid)

    const res = await getMe(server, `Bearer ${token}`)
    expect(res.statusCode).toBe(200)
  })

  it('publishes only public members in the JWKS', async () => {
    const files = keyFiles(type)
    const server = await app({ JWT_ALGORITHM: alg, JWT_PRIVATE_KEY_FILE: files.priv })
    const res = await server.inject({ method: 'GET', url: '/.well-known/jwks.json' })
    expect(res.statusCode).toBe(200)
    const { keys } = res.json<{ keys: Record<string, string>[] }>()
    expect(keys).toHaveLength(1)
    expect(keys[0]).toMatchObject({ kid: server.config.jwt.kid, alg, use: 'sig' })
    for (const privateMember of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'])
      expect(keys[0]).not.toHaveProperty(privateMember)
  })

  it('refuses an HS256 token signed with the public key text as the HMAC secret (algorithm confusion)', async () => {
    const files = keyFiles(type)
    const server = await app({ JWT_ALGORITHM: alg, JWT_PRIVATE_KEY_FILE: files.priv })
    const { token } = await registerAndLogin(server)
    const [, payload] = token.split('.')
    for (const secret of [files.publicPem, `\n${files.publicPem}`, `\u200b${files.publicPem}`]) {
      const header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: server.config.jwt.kid })).toString(
        'base64url',
      )
      const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url')
      const res = await getMe(server, `Bearer ${header}.${payload}.${signature}`)
      expect(res.statusCode).toBe(401)
      expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
    }
  })
})

describe('development and production key handling', () => {
  it('generates an ephemeral key pair in development when no key file is given', async () => {
    const server = await app({ JWT_ALGORITHM: 'EdDSA' })
    expect(server.config.jwt.keys.ephemeral).toBe(true)
    const { token } = await registerAndLogin(server)
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'EdDSA', typ: 'at+jwt', kid: server.config.jwt.kid })
  })

  it('refuses to start in production without the private key file, naming the variable', () => {
    expect(() => testConfig({ NODE_ENV: 'production', BCRYPT_ROUNDS: '12', JWT_ALGORITHM: 'ES256' })).toThrowError(
      /JWT_PRIVATE_KEY_FILE/,
    )
    expect(() => testConfig({ NODE_ENV: 'production', BCRYPT_ROUNDS: '12', JWT_ALGORITHM: 'ES256' })).toThrowError(
      ConfigError,
    )
  })

  it('refuses a key of the wrong type for the algorithm', () => {
    const files = keyFiles('rsa')
    expect(() => testConfig({ JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: files.priv })).toThrowError(
      /JWT_PRIVATE_KEY_FILE: not a key for EdDSA/,
    )
  })

  it('publishes an empty JWKS for HS256 (never the secret)', async () => {
    const server = await app({})
    const res = await server.inject({ method: 'GET', url: '/.well-known/jwks.json' })
    expect(res.json()).toEqual({ keys: [] })
    expect(res.body).not.toContain(server.config.jwt.secret)
  })
})

describe('key rotation', () => {
  it('keeps verifying tokens of a previous asymmetric key and signs new ones with the current key', async () => {
    const store = new MemoryUserStore()
    const sessions = new MemorySessionStore()
    const oldKey = keyFiles('ed25519')
    const newKey = keyFiles('ed25519')
    const before = await app(
      { JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: oldKey.priv },
      { stores: { users: store, sessions } },
    )
    const { token: oldToken, username, password } = await registerAndLogin(before)

    const after = await app(
      { JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: newKey.priv, JWT_PREVIOUS_KEYS: oldKey.pub },
      { stores: { users: store, sessions } },
    )
    expect((await getMe(after, `Bearer ${oldToken}`)).statusCode).toBe(200)

    const login = await after.inject({
      method: 'POST',
      url: '/token',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      payload: new URLSearchParams({ username, password }).toString(),
    })
    const newToken = login.json<{ access_token: string }>().access_token
    expect(decodeProtectedHeader(newToken).kid).toBe(after.config.jwt.kid)
    expect(after.config.jwt.kid).not.toBe(before.config.jwt.kid)

    const jwks = (await after.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json<{
      keys: { kid: string }[]
    }>()
    expect(jwks.keys.map((k) => k.kid)).toEqual([after.config.jwt.kid, before.config.jwt.kid])

    // Once the old key leaves JWT_PREVIOUS_KEYS, its tokens stop working.
    const later = await app(
      { JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: newKey.priv },
      { stores: { users: store, sessions } },
    )
    const res = await getMe(later, `Bearer ${oldToken}`)
    expect(res.statusCode).toBe(401)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
  })

  it('keeps verifying tokens of a previous HS256 secret', async () => {
    const store = new MemoryUserStore()
    const sessions = new MemorySessionStore()
    const oldSecret = 'old-secret-old-secret-old-secret-0123456789'
    const before = await app({ JWT_SECRET: oldSecret }, { stores: { users: store, sessions } })
    const { token } = await registerAndLogin(before)
    const after = await app({ JWT_PREVIOUS_KEYS: oldSecret }, { stores: { users: store, sessions } })
    expect((await getMe(after, `Bearer ${token}`)).statusCode).toBe(200)
    const without = await app({}, { stores: { users: store, sessions } })
    expect((await getMe(without, `Bearer ${token}`)).statusCode).toBe(401)
  })
})
