// The messages this server sends, in English: plain text plus a simple HTML version of the same
// words. Each names the account's username, so that someone with several accounts knows which one
// is meant. A token appears only inside its link, never on its own: the link is what the reader
// needs, and a token on a line of its own invites copying it somewhere else.
// Every value put into the HTML is escaped; subjects are fixed strings (no user data in a header).

/** What a message is: the log names it, never its content. */
export type MessageKind = 'password_reset' | 'email_verification' | 'email_changed' | 'password_changed'

/** One message, ready for Mailer.send. */
export interface MailMessage {
  readonly kind: MessageKind
  /** The recipient's address (one mailbox). */
  readonly to: string
  readonly subject: string
  readonly text: string
  readonly html: string
  /**
   * The link the message carries (reset, verification), token included; absent from notices.
   * In log mode (development) the Mailer writes it to the log; in SMTP mode it is never logged.
   */
  readonly link?: string
}

export interface LinkMessageInput {
  /** The recipient's address. */
  to: string
  /** The account's username, as stored. */
  username: string
  /** The whole link, token included (config.mail.resetUrl(token) / verifyUrl(token)). */
  link: string
  /** How long the link works, in minutes (shown as minutes or hours). */
  ttlMinutes: number
}

/** A password-reset message: the link and how long it works. */
export function passwordResetMessage({ to, username, link, ttlMinutes }: LinkMessageInput): MailMessage {
  return linkMessage({
    kind: 'password_reset',
    to,
    username,
    link,
    subject: 'Reset your password',
    intro:
      'Someone (we hope you) asked to reset the password of your account. To choose a new password, open this link:',
    validity: `This link works for ${duration(ttlMinutes)} and only once.`,
    ignore: 'If you did not ask for this, ignore this message: your password stays as it is.',
  })
}

/** An e-mail verification message, sent to the address being verified: the link and its lifetime. */
export function emailVerificationMessage({ to, username, link, ttlMinutes }: LinkMessageInput): MailMessage {
  return linkMessage({
    kind: 'email_verification',
    to,
    username,
    link,
    subject: 'Verify your e-mail address',
    intro: 'To confirm that this address belongs to your account, open this link:',
    validity: `This link works for ${duration(ttlMinutes)}.`,
    ignore: 'If you did not add this address to an account, ignore this message.',
  })
}

/** The shape both link messages share: a greeting, why, the link (a button in HTML), its lifetime, what to do if unasked. */
function linkMessage(m: {
  kind: MailMessage['kind']
  to: string
  username: string
  link: string
  subject: string
  intro: string
  validity: string
  ignore: string
}): MailMessage {
  return {
    kind: m.kind,
    to: m.to,
    subject: m.subject,
    link: m.link,
    text: lines(`Hello ${m.username},`, '', m.intro, '', m.link, '', m.validity, m.ignore),
    html: page(
      `<p>Hello ${escapeHtml(m.username)},</p>`,
      `<p>${escapeHtml(m.intro)}</p>`,
      linkParagraph(m.link, m.subject),
      `<p>${escapeHtml(m.validity)}<br>${escapeHtml(m.ignore)}</p>`,
    ),
  }
}

export interface EmailChangedInput {
  /** The old address: the one that stops receiving this account's mail. */
  to: string
  username: string
  /** The new address; the message shows it masked (`n***@example.com`). */
  newEmail: string
}

/**
 * The notice sent to the old address when an account's address changes. No link: if the change was
 * not the owner's, a link in a message they did not expect is exactly what they should not follow.
 * The new address is masked: enough for the owner to recognise it, not a full address disclosed to
 * whoever reads the old mailbox.
 */
export function emailChangedMessage({ to, username, newEmail }: EmailChangedInput): MailMessage {
  const what = `The e-mail address of your account was changed to ${maskAddress(newEmail)}. This address will receive no more messages about the account.`
  const notYou = 'If you did not make this change, reset your password from the sign-in page and contact us.'
  return {
    kind: 'email_changed',
    to,
    subject: 'Your e-mail address was changed',
    text: lines(`Hello ${username},`, '', what, '', notYou),
    html: page(`<p>Hello ${escapeHtml(username)},</p>`, `<p>${escapeHtml(what)}</p>`, `<p>${escapeHtml(notYou)}</p>`),
  }
}

export interface NoticeInput {
  to: string
  username: string
}

/** The notice that an account's password was changed (or reset). No link, as above. */
export function passwordChangedMessage({ to, username }: NoticeInput): MailMessage {
  const what = 'The password of your account was changed, and every session signed in before the change has ended.'
  const notYou = 'If you did not make this change, reset your password from the sign-in page and contact us.'
  return {
    kind: 'password_changed',
    to,
    subject: 'Your password was changed',
    text: lines(`Hello ${username},`, '', what, '', notYou),
    html: page(`<p>Hello ${escapeHtml(username)},</p>`, `<p>${escapeHtml(what)}</p>`, `<p>${escapeHtml(notYou)}</p>`),
  }
}

/**
 * `alice@example.com` → `a***@example.com`: the first character of the local part, then `***`, then
 * the domain. For log lines and notices, where the domain helps and the whole address would
 * disclose too much. Something without an `@` becomes `***`.
 */
export function maskAddress(address: string): string {
  const at = address.lastIndexOf('@')
  if (at < 1) return '***'
  // The first code point, not the first UTF-16 unit: a local part may start with an astral character.
  const first = String.fromCodePoint(address.codePointAt(0) as number)
  return `${first}***${address.slice(at)}`
}

/** Text safe in HTML element content and in double-quoted attribute values. */
export function escapeHtml(value: string): string {
  return value
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;')
}

const lines = (...parts: string[]) => `${parts.join('\n')}\n`

const page = (...paragraphs: string[]) =>
  `<!doctype html>\n<html lang="en"><body>\n${paragraphs.join('\n')}\n</body></html>\n`

/** A button-like link, and the address in full below it for clients that hide link targets. */
const linkParagraph = (link: string, label: string) =>
  `<p><a href="${escapeHtml(link)}">${escapeHtml(label)}</a></p>\n<p>${escapeHtml(link)}</p>`

/** 30 → "30 minutes", 60 → "1 hour", 90 → "90 minutes", 1440 → "24 hours". */
function duration(minutes: number): string {
  if (minutes >= 60 && minutes % 60 === 0) return minutes === 60 ? '1 hour' : `${minutes / 60} hours`
  return minutes === 1 ? '1 minute' : `${minutes} minutes`
}
