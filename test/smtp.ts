// A real SMTP server for tests (smtp-server, in this process, on an ephemeral 127.0.0.1 port), which
// keeps every message it accepts, parsed just enough to read: envelope, From/To/Subject, and the
// text/plain and text/html parts. It can also misbehave: refuse the first N messages with 451, or
// accept connections and never answer. Plus helpers to pull the link and its token out of a message.
import type { AddressInfo } from 'node:net'
import { SMTPServer, type SMTPServerDataStream } from 'smtp-server'
import { vi } from 'vitest'

export interface ReceivedMessage {
  /** The envelope: MAIL FROM and RCPT TO, as the client sent them. */
  mailFrom: string
  rcptTo: string[]
  /** Top-level headers, names lower-cased, folded lines joined, encoded words decoded. */
  headers: Record<string, string>
  from: string
  to: string
  subject: string
  /** The decoded text/plain part ('' if none). */
  text: string
  /** The decoded text/html part ('' if none). */
  html: string
  /** The message as received, CRLFs included. */
  raw: string
}

export interface SmtpServerOptions {
  /** Refuse this many messages, the first ones, before accepting any (451, try again later, by default). */
  failFirst?: number
  /** Where the refusal comes: to RCPT TO (default) or after the message's DATA. */
  failAt?: 'rcpt' | 'data'
  /** The refusal's reply code: 451 by default (temporary); 550 for a permanent one. */
  failCode?: number
  /** Accept every connection and never answer it: no greeting, as a hung server. */
  stall?: boolean
}

export interface TestSmtpServer {
  /** smtp://127.0.0.1:<port>, for SMTP_URL. */
  readonly url: string
  readonly port: number
  /** The messages accepted so far, in order. */
  readonly messages: ReceivedMessage[]
  /** Connections accepted so far: one per delivery attempt, since the Mailer does not pool. */
  readonly connections: number
  /** Messages refused so far. */
  readonly refused: number
  /** The first accepted message matching `predicate` (any, by default), waiting up to `timeoutMs`. */
  waitForMessage(predicate?: (message: ReceivedMessage) => boolean, timeoutMs?: number): Promise<ReceivedMessage>
  /** Stops listening and drops every open connection (stalled ones included). */
  close(): Promise<void>
}

/** A refusal, with the recipient in the reply text as real servers often put it. */
function refusal(code: number, detail: string): Error {
  return Object.assign(new Error(`${detail}: ${code < 500 ? 'greylisted, try again later' : 'refused'}`), {
    responseCode: code,
  })
}

/** Starts the server; the caller closes it. */
export async function startSmtpServer(options: SmtpServerOptions = {}): Promise<TestSmtpServer> {
  const messages: ReceivedMessage[] = []
  let connections = 0
  let refused = 0
  let toRefuse = options.failFirst ?? 0
  const failAt = options.failAt ?? 'rcpt'
  const failCode = options.failCode ?? 451

  const server = new SMTPServer({
    secure: false,
    disabledCommands: ['STARTTLS'],
    authOptional: true,
    disableReverseLookup: true,
    logger: false,
    // On close, connections still open (a stalled one) are dropped after this many ms.
    closeTimeout: 50,
    onConnect(_session, callback) {
      connections += 1
      // Never calling back means never sending the 220 greeting.
      if (!options.stall) callback()
    },
    onRcptTo(address, _session, callback) {
      if (failAt === 'rcpt' && toRefuse > 0) {
        toRefuse -= 1
        refused += 1
        callback(refusal(failCode, `<${address.address}>`))
        return
      }
      callback()
    },
    onData(stream: SMTPServerDataStream, session, callback) {
      const chunks: Buffer[] = []
      stream.on('data', (chunk: Buffer) => chunks.push(chunk))
      stream.on('end', () => {
        if (failAt === 'data' && toRefuse > 0) {
          toRefuse -= 1
          refused += 1
          callback(refusal(failCode, 'message'))
          return
        }
        const raw = Buffer.concat(chunks).toString('utf8')
        const mailFrom = session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address
        messages.push(
          parseMessage(
            raw,
            mailFrom,
            session.envelope.rcptTo.map((r) => r.address),
          ),
        )
        callback()
      })
    },
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  server.on('error', () => {}) // a client dropping its connection mid-way is not a test failure
  const { port } = server.server.address() as AddressInfo

  return {
    url: `smtp://127.0.0.1:${port}`,
    port,
    messages,
    get connections() {
      return connections
    },
    get refused() {
      return refused
    },
    async waitForMessage(predicate = () => true, timeoutMs = 5000) {
      return vi.waitFor(
        () => {
          const found = messages.find(predicate)
          if (!found) throw new Error(`no matching message among the ${messages.length} received`)
          return found
        },
        { timeout: timeoutMs, interval: 10 },
      )
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

// --- Parsing: enough MIME for what nodemailer writes ------------------------------------------------

/** Splits a MIME entity into its headers (lower-cased names, unfolded) and its body. */
function splitEntity(entity: string): { headers: Record<string, string>; body: string } {
  const end = entity.indexOf('\r\n\r\n')
  const head = end === -1 ? entity : entity.slice(0, end)
  const body = end === -1 ? '' : entity.slice(end + 4)
  const headers: Record<string, string> = {}
  for (const line of head.replace(/\r\n[ \t]+/g, ' ').split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = decodeWords(line.slice(colon + 1).trim())
  }
  return { headers, body }
}

/** RFC 2047 encoded words (=?utf-8?Q?…?= and =?utf-8?B?…?=), as nodemailer writes non-ASCII headers. */
function decodeWords(value: string): string {
  return value
    .replace(/\?=\s+=\?/g, '?==?')
    .replace(/=\?([^?]+)\?([QqBb])\?([^?]*)\?=/g, (_m, _charset: string, encoding: string, text: string) =>
      encoding.toUpperCase() === 'B'
        ? Buffer.from(text, 'base64').toString('utf8')
        : decodeQuotedPrintable(text.replaceAll('_', ' ')),
    )
}

function decodeQuotedPrintable(text: string): string {
  const bytes: number[] = []
  const input = text.replace(/=\r?\n/g, '')
  for (let i = 0; i < input.length; i++) {
    const hex = input.slice(i + 1, i + 3)
    if (input[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16))
      i += 2
    } else {
      bytes.push(...Buffer.from(input[i] as string, 'utf8'))
    }
  }
  return Buffer.from(bytes).toString('utf8')
}

function decodeBody(body: string, transferEncoding = '7bit'): string {
  switch (transferEncoding.toLowerCase()) {
    case 'base64':
      return Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8')
    case 'quoted-printable':
      return decodeQuotedPrintable(body)
    default:
      return body
  }
}

/** The text/plain and text/html leaves of an entity, multipart or not. */
function collectParts(entity: string, found: { text: string; html: string }): void {
  const { headers, body } = splitEntity(entity)
  const type = (headers['content-type'] ?? 'text/plain').toLowerCase()
  if (type.startsWith('multipart/')) {
    const boundary = /boundary="?([^";]+)"?/i.exec(headers['content-type'] ?? '')?.[1]
    if (!boundary) return
    const parts = body.split(`--${boundary}`).slice(1)
    for (const part of parts) {
      if (part.startsWith('--')) break
      collectParts(part.replace(/^\r\n/, '').replace(/\r\n$/, ''), found)
    }
    return
  }
  const decoded = decodeBody(body, headers['content-transfer-encoding']).replaceAll('\r\n', '\n')
  if (type.startsWith('text/plain') && found.text === '') found.text = decoded
  else if (type.startsWith('text/html') && found.html === '') found.html = decoded
}

/** Parses a raw message as nodemailer writes it (headers, then one part or multipart/alternative). */
export function parseMessage(raw: string, mailFrom: string, rcptTo: string[]): ReceivedMessage {
  const { headers } = splitEntity(raw)
  const parts = { text: '', html: '' }
  collectParts(raw, parts)
  return {
    mailFrom,
    rcptTo,
    headers,
    from: headers.from ?? '',
    to: headers.to ?? '',
    subject: headers.subject ?? '',
    ...parts,
    raw,
  }
}

// --- Links and tokens -------------------------------------------------------------------------------

/** Every http(s) URL in `text`, in order (a plain-text message puts each on its own line). */
export function linksIn(text: string): string[] {
  return text.match(/https?:\/\/[^\s"'<>]+/g) ?? []
}

/** The one link in a message's text part; fails if there is none or more than one. */
export function linkIn(message: Pick<ReceivedMessage, 'text'>): string {
  const links = linksIn(message.text)
  if (links.length !== 1) throw new Error(`expected one link in the message, found ${links.length}`)
  return links[0] as string
}

/** The `token` query parameter of `link` (or another parameter); fails if it is absent. */
export function tokenFromLink(link: string, param = 'token'): string {
  const token = new URL(link).searchParams.get(param)
  if (token === null) throw new Error(`no ${param} parameter in the link`)
  return token
}

/** The token carried by the one link of a message. */
export function tokenIn(message: Pick<ReceivedMessage, 'text'>): string {
  return tokenFromLink(linkIn(message))
}
