// loadConfig: defaults, parsing of empty and boolean variables, and the refusals that stop a boot.
// Errors name the variable and never echo its value.
import { describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import { JWT_SECRET_PLACEHOLDER, loadConfig } from '../src/config.js'
import { ConfigError } from '../src/errors.js'
import { type Env, TEST_SECRET } from './helpers.js'

const PRODUCTION = { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET }

/** The ConfigError loadConfig throws for `env`; fails the test if it does not throw one. */
function configError(env: Env): ConfigError {
  try {
    loadConfig(env)
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError)
    return err as ConfigError
  }
  throw new Error('expected loadConfig to throw')
}

describe('loadConfig: defaults', () => {
  it('starts from documented defaults with no variables at all', () => {
    const config = loadConfig({})

    expect(config.env).toBe('development')
    expect(config.port).toBe(8000)
    expect(config.host).toBe('127.0.0.1')
    expect(config.logLevel).toBe('info')
    expect(config.jwt.algorithm).toBe('HS256')
    expect(config.jwt.issuer).toBe('fastify-auth-server')
    expect(config.jwt.audience).toBe('fastify-auth-api')
    expect(config.jwt.accessTokenTtlSeconds).toBe(30 * 60)
    expect(config.jwt.clockSkewSeconds).toBe(5)
    expect(config.realm).toBe('fastify-auth-api')
    expect(config.password.bcryptRounds).toBe(12)
    expect(config.password.minLength).toBe(8)
    expect(config.trustProxy).toBe(false)
    expect(config.docsEnabled).toBe(true)
    expect(config.bodyLimit).toBe(16 * 1024)
    expect(config.requestTimeoutMs).toBeGreaterThan(0)
  })

  it('generates a random 256-bit secret in development when JWT_SECRET is unset, and says so', () => {
    const a = loadConfig({})
    const b = loadConfig({})

    expect(a.jwt.secretGenerated).toBe(true)
    expect(Buffer.from(a.jwt.secret, 'base64url').length).toBeGreaterThanOrEqual(32)
    expect(a.jwt.secret).not.toBe(b.jwt.secret)
    expect(a.jwt.kid).not.toBe(b.jwt.kid)
  })

  it('uses JWT_SECRET when given and derives a kid that does not reveal it', () => {
    const config = loadConfig({ JWT_SECRET: TEST_SECRET })

    expect(config.jwt.secretGenerated).toBe(false)
    expect(config.jwt.secret).toBe(TEST_SECRET)
    expect(config.jwt.kid).toEqual(expect.any(String))
    expect(config.jwt.kid.length).toBeGreaterThan(0)
    expect(TEST_SECRET).not.toContain(config.jwt.kid)
    expect(loadConfig({ JWT_SECRET: TEST_SECRET }).jwt.kid).toBe(config.jwt.kid)
  })

  it('returns a frozen config', () => {
    const config = loadConfig({ JWT_SECRET: TEST_SECRET })
    expect(Object.isFrozen(config)).toBe(true)
    expect(Object.isFrozen(config.jwt)).toBe(true)
  })

  it('reads each documented variable', () => {
    const config = loadConfig({
      NODE_ENV: 'test',
      PORT: '9001',
      HOST: '0.0.0.0',
      LOG_LEVEL: 'debug',
      JWT_SECRET: TEST_SECRET,
      JWT_ISSUER: 'issuer-x',
      JWT_AUDIENCE: 'audience-y',
      ACCESS_TOKEN_EXPIRE_MINUTES: '15',
      BCRYPT_ROUNDS: '4',
      PASSWORD_MIN_LENGTH: '12',
      TRUST_PROXY: '10.0.0.1, 192.168.0.0/16',
      DOCS_ENABLED: 'false',
    })

    expect(config.env).toBe('test')
    expect(config.port).toBe(9001)
    expect(config.host).toBe('0.0.0.0')
    expect(config.logLevel).toBe('debug')
    expect(config.jwt.issuer).toBe('issuer-x')
    expect(config.jwt.audience).toBe('audience-y')
    expect(config.jwt.accessTokenTtlSeconds).toBe(900)
    expect(config.password.bcryptRounds).toBe(4)
    expect(config.password.minLength).toBe(12)
    expect(config.trustProxy).toEqual(['10.0.0.1', '192.168.0.0/16'])
    expect(config.docsEnabled).toBe(false)
  })

  it('logs at warn by default in production', () => {
    expect(loadConfig(PRODUCTION).logLevel).toBe('warn')
  })
})

describe('loadConfig: parsing', () => {
  it('treats PORT= (empty) as unset, not as port 0', () => {
    expect(loadConfig({ PORT: '' }).port).toBe(8000)
  })

  it('treats other empty variables as unset', () => {
    const config = loadConfig({ HOST: '', BCRYPT_ROUNDS: '', DOCS_ENABLED: '', TRUST_PROXY: '', NODE_ENV: '' })
    expect(config.host).toBe('127.0.0.1')
    expect(config.password.bcryptRounds).toBe(12)
    expect(config.docsEnabled).toBe(true)
    expect(config.trustProxy).toBe(false)
    expect(config.env).toBe('development')
  })

  it.each([
    ['false', false],
    ['0', false],
    ['no', false],
    ['true', true],
    ['1', true],
  ])('parses DOCS_ENABLED=%s as %s', (value, expected) => {
    expect(loadConfig({ DOCS_ENABLED: value }).docsEnabled).toBe(expected)
  })

  it.each([
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['BCRYPT_ROUNDS', '3'],
    ['BCRYPT_ROUNDS', '16'],
    ['ACCESS_TOKEN_EXPIRE_MINUTES', '0'],
    ['NODE_ENV', 'staging'],
    ['DOCS_ENABLED', 'maybe'],
    ['LOG_LEVEL', 'loud'],
  ])('refuses %s=%s, naming the variable', (name, value) => {
    const err = configError({ [name]: value })
    expect(err.message).toContain(name)
    expect(err.problems.some((p) => p.startsWith(`${name}:`))).toBe(true)
  })

  it('lists every bad variable in one error', () => {
    const err = configError({ PORT: 'abc', BCRYPT_ROUNDS: '99' })
    expect(err.message).toContain('PORT')
    expect(err.message).toContain('BCRYPT_ROUNDS')
  })
})

describe('loadConfig: secrets and production', () => {
  it('refuses production without JWT_SECRET, naming JWT_SECRET', () => {
    const err = configError({ NODE_ENV: 'production' })
    expect(err.message).toContain('JWT_SECRET')
  })

  it('refuses a JWT_SECRET shorter than 32 bytes in production without echoing it', () => {
    const secret = 'short-secret-value-17'
    const err = configError({ NODE_ENV: 'production', JWT_SECRET: secret })
    expect(err.message).toContain('JWT_SECRET')
    expect(err.message).not.toContain(secret)
  })

  it('refuses the .env.example placeholder in production without echoing it', () => {
    const err = configError({ NODE_ENV: 'production', JWT_SECRET: JWT_SECRET_PLACEHOLDER })
    expect(err.message).toContain('JWT_SECRET')
    expect(err.message).not.toContain(JWT_SECRET_PLACEHOLDER)
  })

  it('accepts a 32-byte random secret in production', () => {
    const config = loadConfig(PRODUCTION)
    expect(config.env).toBe('production')
    expect(config.jwt.secretGenerated).toBe(false)
  })

  it.each([
    ['empty', ''],
    ['whitespace only', '   '],
  ])('refuses an %s JWT_SECRET even in development', (_label, secret) => {
    const err = configError({ NODE_ENV: 'development', JWT_SECRET: secret })
    expect(err.message).toContain('JWT_SECRET')
  })

  it('refuses an empty JWT_SECRET in test mode too', () => {
    expect(configError({ NODE_ENV: 'test', JWT_SECRET: '' }).message).toContain('JWT_SECRET')
  })

  it('refuses BCRYPT_ROUNDS=9 in production', () => {
    const err = configError({ ...PRODUCTION, BCRYPT_ROUNDS: '9' })
    expect(err.message).toContain('BCRYPT_ROUNDS')
  })

  it('accepts BCRYPT_ROUNDS=10 in production and 4 in development', () => {
    expect(loadConfig({ ...PRODUCTION, BCRYPT_ROUNDS: '10' }).password.bcryptRounds).toBe(10)
    expect(loadConfig({ BCRYPT_ROUNDS: '4' }).password.bcryptRounds).toBe(4)
  })

  it.each(['true', '2', '*', 'not-an-ip', ':::', '1.2.3.4/33', '::1/129', '10.0.0.1, :::', '0x7f000001', 'fe80::/abc'])(
    'refuses TRUST_PROXY=%s, naming the variable',
    (value) => {
      const err = configError({ TRUST_PROXY: value })
      expect(err.problems).toEqual([expect.stringMatching(/^TRUST_PROXY: /)])
    },
  )

  it.each([
    ['::1', ['::1']],
    ['loopback, 10.0.0.0/8', ['loopback', '10.0.0.0/8']],
    ['fe80::/10,::ffff:192.0.2.1', ['fe80::/10', '::ffff:192.0.2.1']],
  ])('accepts TRUST_PROXY=%s', (value, expected) => {
    expect(loadConfig({ TRUST_PROXY: value }).trustProxy).toEqual(expected)
  })

  it('builds an app for every TRUST_PROXY that config accepts (Fastify compiles the same list)', async () => {
    const app = await buildApp(loadConfig({ TRUST_PROXY: 'loopback, fe80::/10, 10.0.0.0/8, ::ffff:192.0.2.1' }))
    await app.ready()
    const res = await app.inject({ method: 'GET', url: '/healthz', headers: { 'x-forwarded-for': '203.0.113.9' } })
    expect(res.statusCode).toBe(200)
    await app.close()
  })

  it('never puts a secret value in the error message, whatever else is wrong', () => {
    const secret = 'tiny-Secret-Value'
    for (const env of [
      { NODE_ENV: 'production', JWT_SECRET: secret },
      { NODE_ENV: 'production', JWT_SECRET: secret, BCRYPT_ROUNDS: '9' },
      { NODE_ENV: 'production', JWT_SECRET: secret, PORT: secret },
    ]) {
      const err = configError(env)
      expect(err.message).not.toContain(secret)
      expect(err.problems.join('\n')).not.toContain(secret)
    }
  })

  it('never echoes a bad value of any variable', () => {
    const sentinel = 'sentinel-9f3b2'
    const err = configError({
      NODE_ENV: sentinel,
      PORT: sentinel,
      LOG_LEVEL: sentinel,
      DOCS_ENABLED: sentinel,
      TRUST_PROXY: sentinel,
      BCRYPT_ROUNDS: sentinel,
    })
    expect(err.message).not.toContain(sentinel)
  })
})

describe('DOCS_ENABLED default', () => {
  it('serves the docs by default in development and not in production', () => {
    expect(loadConfig({}).docsEnabled).toBe(true)
    expect(loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'p'.repeat(40), BCRYPT_ROUNDS: '12' }).docsEnabled).toBe(
      false,
    )
    expect(
      loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'p'.repeat(40), BCRYPT_ROUNDS: '12', DOCS_ENABLED: 'true' })
        .docsEnabled,
    ).toBe(true)
  })
})
