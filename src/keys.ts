// Signing keys: the current key (signs and verifies) and previous keys (verify only, during a
// rotation), each with a `kid`, plus the public JWKS. Keys come only from configuration: a token's
// header never chooses key material (jwk/jku/x5u are ignored; kid only selects among ours).
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { KeyConfigError } from './errors.js'

export type JwtAlgorithm = 'HS256' | 'EdDSA' | 'ES256' | 'RS256'

export interface SigningKey {
  readonly kid: string
  readonly alg: JwtAlgorithm
  /** HS256: the secret. Asymmetric: the private key PEM (absent for a previous, verify-only key). */
  readonly privateKey?: string
  /** HS256: the secret. Asymmetric: the public key PEM. */
  readonly verifyKey: string
  /** The public JWK for /.well-known/jwks.json (asymmetric keys only). */
  readonly jwk?: PublicJwk
}

export interface PublicJwk {
  kty: string
  kid: string
  alg: JwtAlgorithm
  use: 'sig'
  crv?: string
  x?: string
  y?: string
  n?: string
  e?: string
}

export interface KeyRing {
  readonly current: SigningKey
  readonly previous: readonly SigningKey[]
  /** True when the current asymmetric key pair was generated for this process (development). */
  readonly ephemeral: boolean
}

/** Builds the HS256 key for a secret. The kid is a truncated hash: it reveals nothing usable. */
export function hmacKey(secret: string): SigningKey {
  const kid = createHash('sha256').update('kid:').update(secret).digest('base64url').slice(0, 16)
  return { kid, alg: 'HS256', privateKey: secret, verifyKey: secret }
}

const KEY_TYPES: Record<Exclude<JwtAlgorithm, 'HS256'>, (k: KeyObject) => boolean> = {
  EdDSA: (k) => k.asymmetricKeyType === 'ed25519',
  ES256: (k) => k.asymmetricKeyType === 'ec' && k.asymmetricKeyDetails?.namedCurve === 'prime256v1',
  RS256: (k) => k.asymmetricKeyType === 'rsa' && (k.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048,
}

/** The algorithm a public key is for, or undefined when we do not support its type. */
function algorithmOf(key: KeyObject): Exclude<JwtAlgorithm, 'HS256'> | undefined {
  return (Object.keys(KEY_TYPES) as Exclude<JwtAlgorithm, 'HS256'>[]).find((alg) => KEY_TYPES[alg](key))
}

/** An asymmetric key from its public key (and private key, for the current one). */
export function asymmetricKey(alg: Exclude<JwtAlgorithm, 'HS256'>, pub: KeyObject, priv?: KeyObject): SigningKey {
  const exported = pub.export({ format: 'jwk' }) as Record<string, string>
  // RFC 7638 thumbprint: the required members, in lexicographic order, hashed.
  const required =
    exported.kty === 'RSA' ? ['e', 'kty', 'n'] : exported.kty === 'EC' ? ['crv', 'kty', 'x', 'y'] : ['crv', 'kty', 'x']
  const canonical = JSON.stringify(Object.fromEntries(required.map((m) => [m, exported[m]])))
  const kid = createHash('sha256').update(canonical).digest('base64url')
  const jwk: PublicJwk = { kty: exported.kty as string, kid, alg, use: 'sig' }
  for (const m of ['crv', 'x', 'y', 'n', 'e'] as const) if (exported[m]) jwk[m] = exported[m]
  return {
    kid,
    alg,
    privateKey: priv?.export({ format: 'pem', type: 'pkcs8' }) as string | undefined,
    verifyKey: pub.export({ format: 'pem', type: 'spki' }) as string,
    jwk,
  }
}

function generate(alg: Exclude<JwtAlgorithm, 'HS256'>): { publicKey: KeyObject; privateKey: KeyObject } {
  if (alg === 'EdDSA') return generateKeyPairSync('ed25519')
  if (alg === 'ES256') return generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  return generateKeyPairSync('rsa', { modulusLength: 2048 })
}

const READ_FAILURES: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'a part of the path is not a directory',
}

/** The file's text, or a KeyConfigError naming the variable, the path (never a secret) and why. */
function readPem(path: string, variable: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    const code = String((err as { code?: unknown }).code ?? 'error')
    throw new KeyConfigError(`${variable}: cannot read ${path} (${READ_FAILURES[code] ?? code})`)
  }
}

/** What secretStrengthProblem asks of a secret in production: the estimate of secretEntropyBits. */
export const MIN_SECRET_ENTROPY_BITS = 128

/**
 * A simple estimate of a secret's entropy: the Shannon entropy of its own character frequencies,
 * in bits per character, times its length in characters. It cannot tell a random string from a
 * clever pattern, but it does see what a hand-typed placeholder looks like: one character repeated
 * (42 × `a`: 0 bits), a short pattern repeated (`ab` × 21: 42 bits), a small alphabet. The output
 * of a generator of 32 random bytes estimates at 180 bits or more (hex, base64, base64url: the
 * lowest of a million draws each), far above MIN_SECRET_ENTROPY_BITS (docs/security.md, Secret strength).
 */
export function secretEntropyBits(secret: string): number {
  const chars = [...secret]
  const counts = new Map<string, number>()
  for (const c of chars) counts.set(c, (counts.get(c) ?? 0) + 1)
  let bitsPerChar = 0
  for (const n of counts.values()) bitsPerChar -= (n / chars.length) * Math.log2(n / chars.length)
  return bitsPerChar * chars.length
}

/**
 * Why `secret` is too weak to sign HS256 tokens in production, or undefined: at least 32 bytes
 * (RFC 7518 §3.2: a key as long as the hash), and an entropy estimate of at least
 * MIN_SECRET_ENTROPY_BITS. The reason never quotes the secret.
 */
export function secretStrengthProblem(secret: string): string | undefined {
  if (Buffer.byteLength(secret, 'utf8') < 32) return 'must be at least 32 bytes in production'
  if (secretEntropyBits(secret) < MIN_SECRET_ENTROPY_BITS)
    return `is too repetitive to be random (estimated under ${MIN_SECRET_ENTROPY_BITS} bits of entropy); in production use 32 random bytes, e.g. \`openssl rand -base64 32\``
  return undefined
}

export interface KeyRingOptions {
  algorithm: JwtAlgorithm
  secret: string
  privateKeyFile?: string
  publicKeyFile?: string
  previousKeys?: string
  production: boolean
}

/**
 * Loads the ring. Errors name the variable, never a value. JWT_PREVIOUS_KEYS is a comma-separated
 * list: an entry starting with `/` or `.` is the path of a PEM public key (its algorithm follows
 * from the key type), any other entry is a previous HS256 secret.
 */
export function loadKeyRing(o: KeyRingOptions): KeyRing {
  let current: SigningKey
  let ephemeral = false
  if (o.algorithm === 'HS256') {
    // Refused rather than ignored: whoever set a key file meant to sign with it, and HS256 would
    // quietly sign with JWT_SECRET instead, behind an empty JWKS.
    const files = [
      ...(o.privateKeyFile ? ['JWT_PRIVATE_KEY_FILE'] : []),
      ...(o.publicKeyFile ? ['JWT_PUBLIC_KEY_FILE'] : []),
    ]
    if (files.length > 0)
      throw new KeyConfigError(
        `${files.join(', ')}: set, but JWT_ALGORITHM is HS256, which signs with JWT_SECRET and uses no key file; set JWT_ALGORITHM to the key's algorithm (EdDSA, ES256 or RS256), or unset ${files.length > 1 ? 'them' : 'it'}`,
      )
    current = hmacKey(o.secret)
  } else if (o.publicKeyFile && !o.privateKeyFile) {
    throw new KeyConfigError(
      'JWT_PUBLIC_KEY_FILE: set without JWT_PRIVATE_KEY_FILE; the public key is only checked against the private key, so set both or neither',
    )
  } else if (o.privateKeyFile) {
    let priv: KeyObject
    try {
      priv = createPrivateKey(readPem(o.privateKeyFile, 'JWT_PRIVATE_KEY_FILE'))
    } catch (err) {
      if (err instanceof KeyConfigError) throw err
      throw new KeyConfigError('JWT_PRIVATE_KEY_FILE: not a PEM private key')
    }
    const pub = createPublicKey(priv)
    if (!KEY_TYPES[o.algorithm](pub))
      throw new KeyConfigError(
        `JWT_PRIVATE_KEY_FILE: not a key for ${o.algorithm} (EdDSA: Ed25519, ES256: P-256, RS256: RSA ≥ 2048 bits)`,
      )
    if (o.publicKeyFile) {
      let given: KeyObject
      try {
        given = createPublicKey(readPem(o.publicKeyFile, 'JWT_PUBLIC_KEY_FILE'))
      } catch (err) {
        if (err instanceof KeyConfigError) throw err
        throw new KeyConfigError('JWT_PUBLIC_KEY_FILE: not a PEM public key')
      }
      if (!given.equals(pub)) throw new KeyConfigError('JWT_PUBLIC_KEY_FILE: does not match JWT_PRIVATE_KEY_FILE')
    }
    current = asymmetricKey(o.algorithm, pub, priv)
  } else if (o.production) {
    throw new KeyConfigError(`JWT_PRIVATE_KEY_FILE: is required in production with JWT_ALGORITHM=${o.algorithm}`)
  } else {
    const pair = generate(o.algorithm)
    current = asymmetricKey(o.algorithm, pair.publicKey, pair.privateKey)
    ephemeral = true
  }

  const previous: SigningKey[] = []
  for (const entry of (o.previousKeys ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean)) {
    if (entry.startsWith('/') || entry.startsWith('.')) {
      let pub: KeyObject
      try {
        pub = createPublicKey(readPem(entry, 'JWT_PREVIOUS_KEYS'))
      } catch (err) {
        if (err instanceof KeyConfigError) throw err
        throw new KeyConfigError('JWT_PREVIOUS_KEYS: an entry is not a PEM public key file')
      }
      const alg = algorithmOf(pub)
      if (!alg) throw new KeyConfigError('JWT_PREVIOUS_KEYS: an entry is a key of an unsupported type')
      previous.push(asymmetricKey(alg, pub))
    } else {
      // A previous secret still verifies tokens: a weak one lets anyone forge them, as a weak current one would.
      const problem = o.production ? secretStrengthProblem(entry) : undefined
      if (problem) throw new KeyConfigError(`JWT_PREVIOUS_KEYS: a previous HS256 secret ${problem}`)
      // A previous key verifies only: drop the signing half.
      const { privateKey: _unused, ...verifyOnly } = hmacKey(entry)
      previous.push(verifyOnly)
    }
  }
  const unique = previous.filter((k, i) => k.kid !== current.kid && previous.findIndex((p) => p.kid === k.kid) === i)
  return { current, previous: unique, ephemeral }
}

/** The public JWK Set: asymmetric public keys only; never a secret or a private member. */
export function publicJwks(ring: KeyRing): { keys: PublicJwk[] } {
  return { keys: [ring.current, ...ring.previous].flatMap((k) => (k.jwk ? [k.jwk] : [])) }
}

/**
 * MFA_ENCRYPTION_KEY as 32 bytes: 64 hex digits, or base64 / base64url (padding optional).
 * Undefined for anything else.
 */
export function parseMfaKey(value: string): Buffer | undefined {
  if (/^[0-9a-fA-F]{64}$/.test(value)) return Buffer.from(value, 'hex')
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(value)) {
    const key = Buffer.from(value.replace(/=$/, ''), 'base64url')
    // Buffer's decoder accepts both alphabets; a string mixing them is no one's key.
    if (key.length === 32 && !(/[+/]/.test(value) && /[-_]/.test(value))) return key
  }
  return undefined
}
