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
 * The scope to grant at login. Nothing requested → all the roles allow. Requested scopes the roles
 * don't allow are dropped (the response's `scope` says what was granted); invalid_scope only when
 * nothing is left, so that a client asking for more than it may have still logs in with what it
 * may (RFC 6749 §3.3 lets the server grant less than requested).
 */
export function grantScope(roles: readonly Role[], requested: string | undefined): string {
  const allowed = allowedScopes(roles)
  if (requested === undefined) return allowed.join(' ')
  const wanted = new Set(requested.split(' ').filter(Boolean))
  const granted = allowed.filter((s) => wanted.has(s))
  if (granted.length === 0) throw new OAuthError('invalid_scope', 'None of the requested scopes can be granted')
  return granted.join(' ')
}
