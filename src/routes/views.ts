// What a client sees of a user: the public view (the tutorial's fields) and the admin view. Built
// at the HTTP edge from the stored record; the response schemas then drop anything undeclared.
import type { UserAdminView, UserPublic } from '../schemas.js'
import type { UserRecord } from '../store/users.js'

export function toPublic(user: UserRecord): UserPublic {
  return {
    id: user.id,
    username: user.username,
    email: user.email,
    email_verified: user.emailVerified,
    created_at: user.createdAt.toISOString(),
  }
}

/** `mfaEnabled`: whether the user's second factor is active (false when MFA is off on this server). */
export function toAdminView(user: UserRecord, mfaEnabled: boolean): UserAdminView {
  return { ...toPublic(user), roles: [...user.roles], disabled: user.disabled, mfa_enabled: mfaEnabled }
}
