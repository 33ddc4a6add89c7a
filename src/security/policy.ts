// The password policy for new passwords (registration, password change): NIST SP 800-63B-4 and
// ASVS 6.2: a minimum length in code points, no composition rules, no truncation, and a block list.
import { createRequire } from 'node:module'
import { BCRYPT_MAX_BYTES, utf8Length } from './password.js'

// The ~49,000 most common passwords, from a maintained package (zxcvbn-ts). Loaded on first use
// (synchronously, through require, since zod refinements are synchronous), or earlier by
// preloadCommonPasswords() once the server listens: either way it costs nothing at cold start.
let common: Set<string> | undefined
function commonPasswords(): Set<string> {
  if (!common) {
    const { dictionary } = createRequire(import.meta.url)('@zxcvbn-ts/language-common') as {
      dictionary: Record<string, string[]>
    }
    common = new Set((dictionary['passwords-common'] ?? []).map((p) => p.toLowerCase()))
    if (common.size < 10_000) throw new Error('the common-password list did not load')
  }
  return common
}

export function preloadCommonPasswords(): void {
  commonPasswords()
}

/** What a new password must not equal (case-insensitively): the account's own details. */
export interface AccountDetails {
  username?: string
  email?: string | null
}

/**
 * The problems with `password` (already prepared: see preparePassword) as a new password for the
 * account; empty when it is fine. Lengths count the prepared form: code points for the minimum,
 * UTF-8 bytes for bcrypt's 72-byte maximum.
 */
export function passwordProblems(password: string, account: AccountDetails, minLength: number): string[] {
  const problems: string[] = []
  if ([...password].length < minLength) problems.push(`must be at least ${minLength} characters`)
  if (utf8Length(password) > BCRYPT_MAX_BYTES)
    problems.push(
      `must be at most ${BCRYPT_MAX_BYTES} bytes in UTF-8 (bcrypt ignores every byte past 72, so longer passwords are refused rather than truncated)`,
    )
  const lower = password.toLowerCase()
  if (account.username !== undefined && lower === account.username.toLowerCase())
    problems.push('must not be the same as the username')
  if (account.email) {
    const email = account.email.toLowerCase()
    const at = email.lastIndexOf('@')
    if (lower === email || (at > 0 && lower === email.slice(0, at)))
      problems.push('must not be the same as the e-mail address or its local part')
  }
  if (commonPasswords().has(lower)) problems.push('is too common; choose a less guessable password')
  return problems
}
