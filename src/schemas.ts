// Wire schemas (zod): what each route accepts and returns. Field names follow the tutorial and
// OAuth2 (snake_case); inside TypeScript everything is camelCase, converted at the handler edge.
import { domainToASCII, domainToUnicode } from 'node:url'
// The single validator, not the whole of validator.js (which loads ~100 modules at start).
import isEmailModule from 'validator/lib/isEmail.js'
import { z } from 'zod'

export const USERNAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{2,31}$/

export const Username = z
  .string()
  .regex(USERNAME_PATTERN, 'must be 3-32 characters of A-Z a-z 0-9 . _ - and start with a letter or digit')
  .describe('3-32 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit; case-insensitive')

/**
 * An e-mail address as RFC 5321/5322 and IDNA allow for a mailbox: ASCII or internationalised
 * domains (Unicode or punycode), quoted or plus-tagged local parts. Checked by validator.js (a
 * maintained validator, rather than a regex of ours) and by node:url's UTS #46 processing of the
 * domain, which refuses what validator.js lets through (`xn--zz` is not valid punycode). Stored in
 * one form: the local part as sent (NFC), the domain lower-cased in its Unicode form, so that
 * `ivan@EXAMPLE.xn--p1ai` and `ivan@example.рф` are the same address.
 */
export const Email = z
  .string()
  .max(254, { message: 'must be at most 254 characters', abort: true })
  .refine(isEmailAddress, 'must be a valid email address')
  .transform(normaliseEmail)
  .describe(
    'optional; at most 254 characters; stored with its domain lower-cased (IDN in Unicode form); one account per address, compared in any case',
  )

function isEmailAddress(value: string): boolean {
  // No control characters anywhere, not even quoted: they end up in mail headers and logs.
  if (/\p{Cc}/u.test(value)) return false
  if (!isEmailModule.default(value, { allow_utf8_local_part: true, require_tld: true, allow_ip_domain: false }))
    return false
  // UTS #46 maps some dots (U+3002 and the like) to '.', which can leave an empty last label.
  const ascii = domainToASCII(value.slice(value.lastIndexOf('@') + 1))
  return ascii !== '' && !ascii.endsWith('.')
}

// RFC 5322 §3.2.3 dot-atom text, with the UTF-8 characters RFC 6532 allows.
const DOT_ATOM =
  /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\u{10FFFF}-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\u{10FFFF}-]+)*$/u

/**
 * The address in its one stored form (call on an address isEmailAddress accepted). The local part:
 * NFC, quoted-pairs reduced, and quotes dropped where they are not needed (`"alice"` is `alice`, the
 * same mailbox: RFC 5321 §4.1.2); its case is kept (RFC 5321 §2.4 leaves it to the receiving
 * server). The domain: lower-cased, Unicode form.
 */
export function normaliseEmail(value: string): string {
  const at = value.lastIndexOf('@')
  let local = value.slice(0, at).normalize('NFC')
  if (local.length >= 2 && local.startsWith('"') && local.endsWith('"')) {
    const content = local.slice(1, -1).replace(/\\(.)/gu, '$1')
    local = DOT_ATOM.test(content) ? content : `"${content.replace(/(["\\])/g, '\\$1')}"`
  }
  return `${local}@${domainToUnicode(domainToASCII(value.slice(at + 1)))}`
}

/**
 * POST /register. `hashed_password` is the tutorial's name for the same plaintext field; exactly one
 * of the two must be sent. Unknown fields are stripped (zod's default), never stored. The password
 * policy comes from UserService.newPasswordProblems (its one home), passed in by the route.
 */
export function makeRegisterBody(
  passwordMinLength: number,
  /** The password policy (UserService.newPasswordProblems), so that one 422 lists every field's problems. */
  passwordProblems: (password: string, account: { username: string; email?: string | null }) => string[],
  /**
   * REQUIRE_VERIFIED_EMAIL: `email` is required, since an account without an address could never
   * be verified, so never log in.
   */
  { requireEmail = false }: { requireEmail?: boolean } = {},
) {
  return z
    .object({
      username: Username,
      email: requireEmail
        ? Email.describe('required (REQUIRE_VERIFIED_EMAIL is on); at most 254 characters; unique in any case')
        : Email.nullish(),
      password: z
        .string()
        .optional()
        .describe(
          `prepared per RFC 8265 (NFC, non-ASCII spaces → U+0020, no control characters); then at least ${passwordMinLength} characters, at most 72 bytes in UTF-8; not the username, the e-mail address or its local part; not a common password`,
        ),
      hashed_password: z
        .string()
        .optional()
        .describe("the tutorial's name for `password` (it carries the plaintext password); send one of the two"),
    })
    .superRefine((body, ctx) => {
      if (body.password !== undefined && body.hashed_password !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['password'],
          message: 'send either password or hashed_password, not both',
        })
        return
      }
      const password = body.password ?? body.hashed_password
      if (password === undefined) {
        ctx.addIssue({ code: 'custom', path: ['password'], message: 'is required' })
        return
      }
      const field = body.password !== undefined ? 'password' : 'hashed_password'
      for (const message of passwordProblems(password, { username: body.username, email: body.email }))
        ctx.addIssue({ code: 'custom', path: [field], message })
    })
}
export type RegisterBody = z.infer<ReturnType<typeof makeRegisterBody>>

export const UserPublic = z.object({
  id: z.string().describe('immutable random id (UUID)'),
  username: z.string(),
  email: z.string().nullable(),
  email_verified: z
    .boolean()
    .describe('true once a link sent to `email` was followed (POST /email/verify); never set by a client'),
  created_at: z.string().describe('ISO-8601 UTC timestamp'),
})
export type UserPublic = z.infer<typeof UserPublic>

export const RoleName = z.enum(['user', 'admin'])

/** What the admin endpoints return: the public view plus roles and status. Never a hash. */
export const UserAdminView = UserPublic.extend({
  roles: z.array(RoleName),
  disabled: z.boolean(),
  mfa_enabled: z.boolean().describe('a second factor (TOTP) is active: password grants need a code'),
})
export type UserAdminView = z.infer<typeof UserAdminView>

export const UserList = z.object({
  items: z.array(UserAdminView),
  total: z.number().int(),
  limit: z.number().int(),
  offset: z.number().int(),
})

export const UserListQuery = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  offset: z.coerce.number().int().min(0).max(1_000_000_000).default(0),
  username_prefix: z
    .string()
    .max(32)
    .regex(/^[A-Za-z0-9._-]*$/, 'may contain only A-Z a-z 0-9 . _ -')
    .optional(),
})

export const UserIdParams = z.object({ id: z.uuid('must be a user id (UUID)') })

export const UserPatchBody = z
  .object({
    disabled: z.boolean().optional(),
    roles: z
      .array(RoleName)
      .min(1)
      .max(2)
      .refine((r) => new Set(r).size === r.length, 'must not repeat a role')
      .optional(),
  })
  .refine((b) => b.disabled !== undefined || b.roles !== undefined, 'send disabled and/or roles')

export const PasswordChangeBody = z.object({
  current_password: z.string().max(1024),
  new_password: z.string().max(1024).describe('follows the registration rules'),
})

export const PasswordConfirmBody = z.object({ password: z.string().max(1024) })

/** A password-reset or verification token as a client sends it back; its format is checked by the service. */
const OneTimeToken = z.string().max(1024).describe('the `token` parameter of the link in the message')

/**
 * POST /password/forgot: the account by its e-mail address or its username, exactly one. The
 * username is not held to the username rules here: one that cannot exist gets the same 202.
 */
export const ForgotPasswordBody = z
  .object({
    email: Email.optional().describe("the account's e-mail address (any case); send this or `username`"),
    username: z.string().max(256).optional().describe('the username (any case); send this or `email`'),
  })
  .superRefine((body, ctx) => {
    if ((body.email === undefined) === (body.username === undefined))
      ctx.addIssue({ code: 'custom', path: [], message: 'send exactly one of email and username' })
  })

export const ResetPasswordBody = z.object({
  token: OneTimeToken,
  new_password: z.string().max(1024).describe('follows the registration rules'),
})

export const VerifyEmailBody = z.object({ token: OneTimeToken })

export const EmailChangeBody = z.object({
  password: z.string().max(1024).describe('the current password'),
  new_email: Email.describe('the new address; it replaces the current one once the link sent to it is followed'),
})

/**
 * POST /token (RFC 6749 §4.3.2). Duplicate form fields arrive as arrays and fail `z.string()`, which
 * the error handler reports as invalid_request ("repeated"). Empty values were removed before this
 * schema runs (RFC 6749 §3.2: a parameter without a value is omitted).
 */
export const TokenForm = z.object({
  grant_type: z
    .string()
    .optional()
    .describe(
      '`password` (the default when omitted), `refresh_token`, or (when MFA is on) the second step of a password grant: `http://auth0.com/oauth/grant-type/mfa-otp` or `http://auth0.com/oauth/grant-type/mfa-recovery-code`',
    ),
  username: z.string().optional(),
  password: z.string().optional(),
  scope: z
    .string()
    .optional()
    .describe(
      'space-separated: `user`, `admin` (a set: repeats collapse); default: all your roles allow; at most 256 characters',
    ),
  refresh_token: z.string().optional().describe('for grant_type=refresh_token'),
  mfa_token: z.string().optional().describe('for the MFA grants: the `mfa_token` of the 403 `mfa_required` answer'),
  otp: z.string().optional().describe('for the mfa-otp grant: the 6-digit code of the authenticator app'),
  recovery_code: z.string().optional().describe('for the mfa-recovery-code grant: one of the recovery codes'),
  client_id: z.string().optional().describe('accepted and ignored'),
  client_secret: z.string().optional().describe('accepted and ignored'),
})
export type TokenForm = z.infer<typeof TokenForm>

export const TokenResponse = z.object({
  access_token: z.string(),
  token_type: z.literal('bearer'),
  expires_in: z.number().int().describe('seconds until the access token expires'),
  refresh_token: z.string().describe('opaque; single use: each refresh returns a new one'),
  scope: z.string().describe('the scopes granted, space-separated'),
})

export const RevokeForm = z.object({
  token: z.string().optional(),
  token_type_hint: z.string().optional().describe('`access_token` or `refresh_token`'),
  client_id: z.string().optional().describe('accepted and ignored'),
  client_secret: z.string().optional().describe('accepted and ignored'),
})

export const Jwks = z.object({
  keys: z.array(
    z.object({
      kty: z.string(),
      kid: z.string(),
      alg: z.string(),
      use: z.string(),
      crv: z.string().optional(),
      x: z.string().optional(),
      y: z.string().optional(),
      n: z.string().optional(),
      e: z.string().optional(),
    }),
  ),
})

export const Detail = z.object({ detail: z.string() })
export const ValidationErrorBody = z.object({
  detail: z.string(),
  errors: z.array(z.object({ field: z.string(), message: z.string() })),
})
export const OAuthErrorBody = z.object({
  error: z.string(),
  error_description: z.string(),
  detail: z.string(),
})

/** The 403 of a right password of an account with MFA: the OAuth error body plus the token of the second step. */
export const MfaRequiredBody = OAuthErrorBody.extend({
  mfa_token: z
    .string()
    .describe('send it back to /token with a code (grant types mfa-otp, mfa-recovery-code); single use, 5 minutes'),
})

/** A TOTP code as typed into a form: six digits (spaces around are not trimmed). */
const TotpCode = z.string().max(64).describe('the 6-digit code the authenticator app shows now')

export const MfaEnrolBody = z.object({ password: z.string().max(1024).describe('the current password') })
export const MfaConfirmBody = z.object({ code: TotpCode })
export const MfaRegenerateBody = z.object({
  password: z.string().max(1024).describe('the current password'),
  code: TotpCode,
})
export const MfaDisableBody = z.object({
  password: z.string().max(1024).describe('the current password'),
  code: z.string().max(64).describe('a current 6-digit TOTP code, or one of the recovery codes (which it spends)'),
})

export const MfaEnrolment = z.object({
  secret: z.string().describe('the TOTP secret, base32 (160 bits), for typing into an authenticator app'),
  otpauth_uri: z
    .string()
    .describe('otpauth://totp/<issuer>:<username>?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30'),
  qr_svg: z.string().describe('the same URI as an SVG QR code, for scanning'),
})
export const RecoveryCodes = z.object({
  recovery_codes: z
    .array(z.string())
    .describe('ten single-use codes, `xxxxx-xxxxx`; shown only this once: each logs in once without the app'),
})
export const MfaStatusBody = z.object({
  totp: z.boolean().describe('MFA is active: password grants need a code'),
  recovery_codes_left: z.number().int(),
})

/** 204 responses have no body. */
export const NoContent = z.null().describe('No content')
/** RFC 7009 §2.2: the body of a successful revocation carries nothing. */
export const EmptyObject = z.object({})

/** One of a user's live sessions (a login and the refreshes since): never a token. */
export const SessionView = z.object({
  id: z.string().describe('the session id (UUID): the `sid` claim of its access tokens'),
  created_at: z.string().describe('ISO-8601 UTC timestamp of the login that started it'),
  last_used_at: z.string().describe('ISO-8601 UTC timestamp of its latest login or refresh'),
  expires_at: z
    .string()
    .describe('ISO-8601 UTC timestamp: it ends then unless refreshed before (never past its absolute lifetime)'),
  user_agent: z
    .string()
    .nullable()
    .describe('the User-Agent of its latest login or refresh, cut to 256 characters; null when none was sent'),
  ip: z.string().nullable().describe('the client address of its latest login or refresh'),
  current: z.boolean().describe('true for the session of the access token of this request'),
})
export type SessionView = z.infer<typeof SessionView>

export const SessionList = z.object({
  items: z.array(SessionView).describe('newest first'),
})

/** A session id as the list shows it; a UUID is the same in any case (RFC 9562 §4), so it is lower-cased. */
export const SessionIdParams = z.object({
  id: z.uuid('must be a session id (UUID)').transform((id) => id.toLowerCase()),
})
