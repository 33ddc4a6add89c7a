// Roles and the scopes they allow. Scopes are case-sensitive and space-separated (RFC 6749 §3.3).
import { OAuthError } from '../errors.js'
import type { Role } from '../store/users.js'

export const SCOPES = ['user', 'admin'] as const
export type Scope = (typeof SCOPES)[number]

const SCOPES_BY_ROLE: Record<Role, readonly Scope[]> = {
  user: ['user'],
  admin: ['user', 'admin'],
}

/** Every scope the roles allow, in a stable order. */
export function allowedScopes(roles: readonly Role[]): Scope[] {
  const allowed = new Set(roles.flatMap((r) => SCOPES_BY_ROLE[r] ?? []))
  return SCOPES.filter((s) => allowed.has(s))
}

/**
 * The longest `scope` parameter we read (characters). Every scope we know fits many times over;
 * a longer one is refused with invalid_scope rather than parsed (and never signed into a token).
 */
export const MAX_SCOPE_PARAMETER = 256

/**
 * The scope-tokens of a `scope` parameter (RFC 6749 §3.3: space-delimited, case-sensitive), as a
 * set: repeats collapse. Throws invalid_scope when the parameter is longer than MAX_SCOPE_PARAMETER.
 */
function requestedScopes(requested: string): Set<string> {
  if (requested.length > MAX_SCOPE_PARAMETER)
    throw new OAuthError('invalid_scope', `scope must be at most ${MAX_SCOPE_PARAMETER} characters`)
  return new Set(requested.split(' ').filter(Boolean))
}

/**
 * The scope to grant at login. Nothing requested → all the roles allow. Requested scopes the roles
 * don't allow are dropped (the response's `scope` says what was granted); invalid_scope only when
 * nothing is left, so that a client asking for more than it may have still logs in with what it
 * may (RFC 6749 §3.3 lets the server grant less than requested). Each scope is listed once, in
 * the fixed order of SCOPES.
 */
export function grantScope(roles: readonly Role[], requested: string | undefined): string {
  const allowed = allowedScopes(roles)
  if (requested === undefined) return allowed.join(' ')
  const wanted = requestedScopes(requested)
  const granted = allowed.filter((s) => wanted.has(s))
  if (granted.length === 0) throw new OAuthError('invalid_scope', 'None of the requested scopes can be granted')
  return granted.join(' ')
}

/**
 * The scope of a refresh (RFC 6749 §6): what the session was granted, within what the roles allow
 * today; a requested scope may only narrow it (invalid_scope otherwise). Each scope once, in the
 * fixed order of SCOPES.
 */
export function refreshScope(sessionScope: string, roles: readonly Role[], requested: string | undefined): string {
  const granted = new Set(sessionScope.split(' '))
  const scopes = allowedScopes(roles).filter((s) => granted.has(s))
  let result: readonly Scope[] = scopes
  if (requested !== undefined) {
    const wanted = requestedScopes(requested)
    if ([...wanted].some((s) => !scopes.includes(s as Scope)))
      throw new OAuthError('invalid_scope', 'The requested scope exceeds the scope granted')
    result = scopes.filter((s) => wanted.has(s))
  }
  if (result.length === 0) throw new OAuthError('invalid_scope', 'No scope left to grant')
  return result.join(' ')
}
