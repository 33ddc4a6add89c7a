// loadConfig: defaults, parsing of empty and boolean variables, and the refusals that stop a boot.
// Errors name the variable and never echo its value.
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import { JWT_SECRET_PLACEHOLDER, loadConfig } from '../src/config.js'
import { ConfigError } from '../src/errors.js'
import { MIN_SECRET_ENTROPY_BITS, secretEntropyBits } from '../src/keys.js'
import { type Env, TEST_SECRET } from './helpers.js'
import { recordStatuses } from './statuses.js'

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
    const app = recordStatuses(
      await buildApp(loadConfig({ TRUST_PROXY: 'loopback, fe80::/10, 10.0.0.0/8, ::ffff:192.0.2.1' })),
    )
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
    expect(loadConfig({ ...PRODUCTION, BCRYPT_ROUNDS: '12' }).docsEnabled).toBe(false)
    expect(loadConfig({ ...PRODUCTION, BCRYPT_ROUNDS: '12', DOCS_ENABLED: 'true' }).docsEnabled).toBe(true)
  })
})

describe('loadConfig: values that look right but are not', () => {
  it.each(['8000 ', ' 8000', '1e3', '0x1F', '+80', '80.0', '8_000'])(
    'refuses PORT=%j: decimal digits only, naming the rule',
    (value) => {
      expect(configError({ PORT: value }).problems).toEqual([
        'PORT: must be a whole number in decimal digits (no spaces, sign, decimal point or exponent)',
      ])
    },
  )

  it('still reads plain digits, leading zeros included', () => {
    expect(loadConfig({ PORT: '08080', HASH_CONCURRENCY: '3' })).toMatchObject({
      port: 8080,
      password: { hashConcurrency: 3 },
    })
  })

  it.each(['JWT_ISSUER', 'JWT_AUDIENCE', 'HOST'])('refuses a whitespace-only %s as blank', (name) => {
    expect(configError({ [name]: '   ' }).problems).toEqual([`${name}: must not be blank (only spaces)`])
  })

  it.each(['a"b', 'a\\b'])('refuses AUTH_REALM=%j naming the refused characters', (value) => {
    expect(configError({ AUTH_REALM: value }).problems).toEqual([
      'AUTH_REALM: must not contain " or \\ (they would end or escape the quoted realm in WWW-Authenticate)',
    ])
  })

  it('refuses a non-ASCII AUTH_REALM with one problem, not two', () => {
    expect(configError({ AUTH_REALM: 'réalm"' }).problems).toEqual([
      'AUTH_REALM: must be 1 to 64 printable ASCII characters',
    ])
  })

  it('reports one problem as exactly one line, with no header', () => {
    const err = configError({ PORT: 'abc' })
    expect(err.problems).toHaveLength(1)
    expect(err.message).toBe(err.problems[0])
    expect(err.message).not.toContain('\n')
  })
})

describe('loadConfig: secret strength in production', () => {
  it.each([
    ['42 × a', 'a'.repeat(42)],
    ['ab × 21', 'ab'.repeat(21)],
    ['abc × 14', 'abc'.repeat(14)],
  ])('refuses a long JWT_SECRET with almost no entropy (%s), without echoing it', (_label, secret) => {
    const err = configError({ NODE_ENV: 'production', JWT_SECRET: secret })
    expect(err.problems).toEqual([expect.stringMatching(/^JWT_SECRET: is too repetitive to be random/)])
    expect(err.message).not.toContain(secret)
  })

  it('estimates entropy as documented: Shannon entropy of the characters × length', () => {
    expect(secretEntropyBits('a'.repeat(42))).toBe(0)
    expect(secretEntropyBits('ab'.repeat(21))).toBe(42)
    expect(secretEntropyBits(TEST_SECRET)).toBeGreaterThanOrEqual(MIN_SECRET_ENTROPY_BITS)
  })

  it("accepts the tests' secret and `openssl rand -base64 32` / `-hex 32`-style secrets", () => {
    expect(loadConfig(PRODUCTION).env).toBe('production')
    for (let i = 0; i < 200; i++) {
      for (const secret of [randomBytes(32).toString('base64'), randomBytes(32).toString('hex')]) {
        expect(loadConfig({ NODE_ENV: 'production', JWT_SECRET: secret }).jwt.secret).toBe(secret)
      }
    }
  })

  it('leaves development alone: a repetitive secret is a production refusal only', () => {
    expect(loadConfig({ JWT_SECRET: 'a'.repeat(42) }).jwt.secretGenerated).toBe(false)
  })

  it('applies the same rule to a previous HS256 secret in JWT_PREVIOUS_KEYS', () => {
    const err = configError({ ...PRODUCTION, JWT_PREVIOUS_KEYS: 'b'.repeat(40) })
    expect(err.problems).toEqual([
      expect.stringMatching(/^JWT_PREVIOUS_KEYS: a previous HS256 secret is too repetitive/),
    ])
    expect(err.message).not.toContain('b'.repeat(40))
  })
})

describe('loadConfig: key files', () => {
  function ed25519Files() {
    const dir = mkdtempSync(join(tmpdir(), 'config-keys-'))
    const pair = generateKeyPairSync('ed25519')
    const priv = join(dir, 'private.pem')
    const pub = join(dir, 'public.pem')
    writeFileSync(priv, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string)
    writeFileSync(pub, pair.publicKey.export({ format: 'pem', type: 'spki' }) as string)
    return { dir, priv, pub }
  }

  it('does not demand JWT_SECRET in production when a key file signs (EdDSA)', () => {
    const files = ed25519Files()
    const config = loadConfig({
      NODE_ENV: 'production',
      JWT_ALGORITHM: 'EdDSA',
      JWT_PRIVATE_KEY_FILE: files.priv,
      JWT_PUBLIC_KEY_FILE: files.pub,
    })
    expect(config.jwt.algorithm).toBe('EdDSA')
    expect(config.jwt.keys.ephemeral).toBe(false)
  })

  it('still demands JWT_SECRET in production with HS256, naming the algorithm', () => {
    expect(configError({ NODE_ENV: 'production' }).problems).toEqual([
      'JWT_SECRET: is required in production with JWT_ALGORITHM=HS256',
    ])
  })

  it('names the variable, the path and the reason when a key file is missing or not a file', () => {
    const files = ed25519Files()
    const missing = join(files.dir, 'missing.pem')
    expect(configError({ JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: missing }).problems).toEqual([
      `JWT_PRIVATE_KEY_FILE: cannot read ${missing} (no such file)`,
    ])
    expect(
      configError({ JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: files.priv, JWT_PUBLIC_KEY_FILE: files.dir })
        .problems,
    ).toEqual([`JWT_PUBLIC_KEY_FILE: cannot read ${files.dir} (is a directory)`])
  })

  it('refuses key files with HS256 (they would be ignored), naming each variable set', () => {
    const files = ed25519Files()
    expect(configError({ JWT_PRIVATE_KEY_FILE: files.priv }).problems).toEqual([
      expect.stringMatching(/^JWT_PRIVATE_KEY_FILE: set, but JWT_ALGORITHM is HS256/),
    ])
    expect(configError({ JWT_PRIVATE_KEY_FILE: files.priv, JWT_PUBLIC_KEY_FILE: files.pub }).problems).toEqual([
      expect.stringMatching(/^JWT_PRIVATE_KEY_FILE, JWT_PUBLIC_KEY_FILE: set, but JWT_ALGORITHM is HS256/),
    ])
  })

  it('refuses JWT_PUBLIC_KEY_FILE without JWT_PRIVATE_KEY_FILE instead of ignoring it', () => {
    const files = ed25519Files()
    expect(configError({ JWT_ALGORITHM: 'EdDSA', JWT_PUBLIC_KEY_FILE: files.pub }).problems).toEqual([
      expect.stringMatching(/^JWT_PUBLIC_KEY_FILE: set without JWT_PRIVATE_KEY_FILE/),
    ])
  })
})

describe('loadConfig: the MFA key', () => {
  const hex = randomBytes(32).toString('hex')

  it('derives the key from the HS256 JWT secret by default, the previous HS256 secrets after it', () => {
    const config = loadConfig({
      JWT_SECRET: TEST_SECRET,
      JWT_PREVIOUS_KEYS: 'gy4XUUQg-_YLKkPAGUyrn4sJwHf3UW1let_oMVwjaLc',
    })
    expect(config.mfa.keySource).toBe('JWT_SECRET')
    expect(config.mfa.keys).toEqual([
      Buffer.from(TEST_SECRET).toString('hex'),
      Buffer.from('gy4XUUQg-_YLKkPAGUyrn4sJwHf3UW1let_oMVwjaLc').toString('hex'),
    ])
    expect(config.mfa.issuer).toBe('fastify-auth-api')
  })

  it('takes MFA_ENCRYPTION_KEY as 64 hex digits or as base64 / base64url of 32 bytes, alone', () => {
    const key = Buffer.from(hex, 'hex')
    for (const value of [hex, hex.toUpperCase(), key.toString('base64'), key.toString('base64url')]) {
      const config = loadConfig({ JWT_SECRET: TEST_SECRET, MFA_ENCRYPTION_KEY: value })
      expect(config.mfa.keySource).toBe('MFA_ENCRYPTION_KEY')
      expect(config.mfa.keys).toEqual([hex])
    }
  })

  it.each([
    ['31 bytes of hex', randomBytes(31).toString('hex')],
    ['33 bytes of base64', randomBytes(33).toString('base64')],
    ['a passphrase', 'correct horse battery staple correct horse'],
    ['hex with a space', ` ${randomBytes(32).toString('hex')}`],
  ])('refuses an MFA_ENCRYPTION_KEY that is %s, naming the variable and not the value', (_, value) => {
    const err = configError({ JWT_SECRET: TEST_SECRET, MFA_ENCRYPTION_KEY: value })
    expect(err.problems).toEqual(['MFA_ENCRYPTION_KEY: must be 32 bytes, as 64 hex digits or base64'])
    expect(err.message).not.toContain(value.trim())
  })

  it('turns MFA off with an asymmetric algorithm and no MFA_ENCRYPTION_KEY, and on with one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'config-mfa-'))
    const pair = generateKeyPairSync('ed25519')
    const priv = join(dir, 'private.pem')
    writeFileSync(priv, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string)
    const env = { JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: priv }
    expect(loadConfig(env).mfa).toEqual({ keySource: 'off', keys: [], issuer: 'fastify-auth-api' })
    expect(loadConfig({ ...env, MFA_ENCRYPTION_KEY: hex, MFA_ISSUER: 'Example Corp' }).mfa).toEqual({
      keySource: 'MFA_ENCRYPTION_KEY',
      keys: [hex],
      issuer: 'Example Corp',
    })
  })
})
