// The cryptography of the second factor: TOTP (RFC 6238) through the otpauth library, the
// encryption of TOTP secrets at rest (AES-256-GCM), and recovery codes (generated here, stored only
// as keyed hashes). No HTTP and no storage here: services/mfa.ts puts it together.
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { Secret, TOTP } from 'otpauth'
import type { SealedSecret } from '../store/mfa.js'

/** RFC 6238 parameters every authenticator app supports (and the only ones Google Authenticator reads). */
export const TOTP_PERIOD_SECONDS = 30
export const TOTP_DIGITS = 6
const TOTP_ALGORITHM = 'SHA1'
/** Codes of the previous and the next period are accepted too (RFC 6238 §5.2: clock drift). */
const TOTP_WINDOW = 1
/** 160 bits: the secret size RFC 4226 §4 recommends for HMAC-SHA1. */
const SECRET_BYTES = 20

/** How many recovery codes one enrolment (or regeneration) hands out. */
export const RECOVERY_CODE_COUNT = 10
/**
 * Crockford's base32 alphabet: no i, l, o or u, so that a code read off paper cannot be mistyped
 * into another. 10 characters of 32 = 50 bits per code.
 */
const CODE_ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz'
const CODE_LENGTH = 10

/** A new random TOTP secret, base32 (RFC 4648 §6) as authenticator apps take it: 160 bits. */
export function newTotpSecret(): string {
  return new Secret({ size: SECRET_BYTES }).base32
}

function totp(secretBase32: string, issuer = '', label = ''): TOTP {
  return new TOTP({
    issuer,
    label,
    algorithm: TOTP_ALGORITHM,
    digits: TOTP_DIGITS,
    period: TOTP_PERIOD_SECONDS,
    secret: Secret.fromBase32(secretBase32),
  })
}

/**
 * The `otpauth://totp/<issuer>:<username>?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30` URI
 * that authenticator apps import (the Key Uri Format of Google Authenticator, which they all read).
 */
export function otpauthUri(secretBase32: string, issuer: string, username: string): string {
  return totp(secretBase32, issuer, username).toString()
}

/** The URI as an SVG QR code (the qrcode library, loaded on first use: most requests never draw one). */
export async function qrSvg(uri: string): Promise<string> {
  const { default: QRCode } = await import('qrcode')
  return QRCode.toString(uri, { type: 'svg', errorCorrectionLevel: 'M', margin: 2 })
}

/**
 * The RFC 6238 time step T of the code `code` for this secret at `nowMs` (milliseconds since the
 * epoch), within ±1 period; undefined when it matches none (or is not 6 digits). The caller must
 * still make sure that step is newer than the last one used (MfaStore.useStep): that is what makes
 * a code single-use.
 */
export function totpStep(secretBase32: string, code: string, nowMs: number): number | undefined {
  if (!/^[0-9]{6}$/.test(code)) return undefined
  const delta = totp(secretBase32).validate({ token: code, timestamp: nowMs, window: TOTP_WINDOW })
  return delta === null ? undefined : TOTP.counter({ period: TOTP_PERIOD_SECONDS, timestamp: nowMs }) + delta
}

/** Ten new recovery codes, `xxxxx-xxxxx`, each 50 random bits. Shown once; stored as hashes. */
export function newRecoveryCodes(): string[] {
  const codes: string[] = []
  for (let n = 0; n < RECOVERY_CODE_COUNT; n++) {
    // 5 bits per character from one random byte each: 256 is a multiple of 32, so no bias.
    const chars = [...randomBytes(CODE_LENGTH)].map((b) => CODE_ALPHABET[b & 31])
    codes.push(`${chars.slice(0, 5).join('')}-${chars.slice(5).join('')}`)
  }
  return codes
}

/**
 * A recovery code as typed, in its one comparable form: case, spaces and hyphens ignored, and the
 * letters Crockford's base32 reads as digits (i, l → 1; o → 0) mapped. Undefined when what is left
 * is not 10 characters of the alphabet.
 */
export function normaliseRecoveryCode(input: string): string | undefined {
  const code = input.toLowerCase().replace(/[\s-]/g, '').replace(/[il]/g, '1').replace(/o/g, '0')
  if (code.length !== CODE_LENGTH) return undefined
  for (const c of code) if (!CODE_ALPHABET.includes(c)) return undefined
  return code
}

/** One MFA encryption key: 32 bytes and an id derived from it. */
interface MfaKey {
  readonly id: string
  /** AES-256-GCM key for secrets. */
  readonly encryption: Buffer
  /** HMAC-SHA256 key for recovery-code hashes (a separate key: one key, one use). */
  readonly hashing: Buffer
}

/**
 * Where the MFA key material comes from (config.mfa): MFA_ENCRYPTION_KEY (32 bytes), or failing
 * that the HS256 JWT secrets (current first, then previous ones), each turned into a key of its
 * own by HKDF with this module's label. Empty: MFA is off.
 */
export type MfaKeyMaterial = readonly Buffer[]

/**
 * Encrypts TOTP secrets at rest and hashes recovery codes, under a ring of keys: the first seals
 * and hashes, all of them open (by the key id stored beside each secret and code hash), so that a
 * key can be rotated without locking anyone out.
 *
 * Secrets are sealed with AES-256-GCM (NIST SP 800-38D), a random 96-bit IV each, and the account id
 * as additional data: a sealed secret copied onto another account's row does not open. Recovery
 * codes are stored as HMAC-SHA256(key, account id ‖ code): 50 bits would fall to an offline
 * search of a plain hash, not to one under a key the database never sees.
 */
export class MfaCipher {
  readonly #keys: readonly MfaKey[]

  /** `material`: the keys, current first (see MfaKeyMaterial); at least one. */
  constructor(material: MfaKeyMaterial) {
    if (material.length === 0) throw new Error('MfaCipher needs at least one key')
    this.#keys = material.map((ikm) => ({
      id: createHash('sha256').update('mfa-key-id').update(ikm).digest('base64url').slice(0, 12),
      encryption: Buffer.from(hkdfSync('sha256', ikm, Buffer.alloc(0), 'fastify-auth-server mfa secret v1', 32)),
      hashing: Buffer.from(hkdfSync('sha256', ikm, Buffer.alloc(0), 'fastify-auth-server recovery code v1', 32)),
    }))
  }

  /** Seals a TOTP secret for `userId` under the current key. */
  seal(userId: string, secret: string): SealedSecret {
    const key = this.#keys[0] as MfaKey
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', key.encryption, iv)
    cipher.setAAD(Buffer.from(userId, 'utf8'))
    const body = Buffer.concat([cipher.update(secret, 'utf8'), cipher.final()])
    return { keyId: key.id, ciphertext: Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url') }
  }

  /**
   * The secret sealed for `userId`; undefined when it cannot be opened: its key is not in the ring
   * (rotated out), or the ciphertext was altered or belongs to another account.
   */
  open(userId: string, sealed: SealedSecret): string | undefined {
    const key = this.#keys.find((k) => k.id === sealed.keyId)
    if (!key) return undefined
    const raw = Buffer.from(sealed.ciphertext, 'base64url')
    if (raw.length < 12 + 16 + 1) return undefined
    try {
      const decipher = createDecipheriv('aes-256-gcm', key.encryption, raw.subarray(0, 12))
      decipher.setAAD(Buffer.from(userId, 'utf8'))
      decipher.setAuthTag(raw.subarray(raw.length - 16))
      return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]).toString('utf8')
    } catch {
      return undefined
    }
  }

  /** The stored form of a (normalised) recovery code under the current key: `keyId:hmac`. */
  hashCode(userId: string, code: string): string {
    return this.#hash(this.#keys[0] as MfaKey, userId, code)
  }

  /** The stored forms this code could have, one per key of the ring (the current key first). */
  candidateHashes(userId: string, code: string): string[] {
    return this.#keys.map((key) => this.#hash(key, userId, code))
  }

  #hash(key: MfaKey, userId: string, code: string): string {
    const mac = createHmac('sha256', key.hashing).update(userId).update('\0').update(code).digest('base64url')
    return `${key.id}:${mac}`
  }
}
