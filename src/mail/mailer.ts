// Mail delivery, off the request path. send() only enqueues and returns: a slow or failing SMTP
// server never changes a response's status, body or timing. Delivery runs in the background through
// one nodemailer SMTP transport, with short timeouts and retries with exponential back-off.
//
// What the log gets, by mode:
// - smtp: the kind of message, the recipient masked (a***@example.com), the attempt and the reason of
//   a failure. Never the link, the token, the body or the whole address.
// - log (development and test, no SMTP_URL): each message as one readable line with the recipient,
//   the subject and the link, token included. On purpose: without a mail server, the log is how a
//   developer following the README with curl gets the link to copy. Production never runs in this
//   mode (no SMTP_URL there means `off`).
// - off (production, no SMTP_URL): nothing is sent; the flows that need mail are disabled.
import type { FastifyBaseLogger } from 'fastify'
import type { Transporter } from 'nodemailer'
import type { MailConfig } from '../config.js'
import { type MailMessage, maskAddress } from './messages.js'

/** Messages the queue holds at most (waiting, in a back-off, or in flight); beyond it, new ones are dropped. */
export const MAIL_QUEUE_MAX = 1000
/** Deliveries in flight at once; each opens its own SMTP connection. */
const CONCURRENCY = 2
/** How long close() waits for aborted deliveries to let go of their sockets, in ms. */
const CLOSE_WAIT_MS = 1000

interface Job {
  readonly message: MailMessage
  /** Delivery attempts made so far. */
  attempts: number
}

export interface MailerOptions {
  /** Messages the queue holds at most; MAIL_QUEUE_MAX by default. */
  queueMax?: number
}

/**
 * The one way to send mail. Built once (createServices), closed with the app. send() never throws
 * and never waits; whether a message got through is only in the log.
 */
export class Mailer {
  readonly mode: MailConfig['mode']
  readonly #config: MailConfig
  readonly #log: FastifyBaseLogger
  readonly #queueMax: number
  /**
   * The SMTP transport, made on the first delivery: nodemailer is imported only then (about 80 ms
   * of module loading that a server with mail off, or one that has sent nothing yet, never pays).
   */
  #transport: Promise<Transporter> | undefined
  /** Jobs waiting for a delivery slot, oldest first. */
  readonly #ready: Job[] = []
  /** Jobs waiting out a back-off, by their timer. */
  readonly #backingOff = new Map<NodeJS.Timeout, Job>()
  /** Deliveries in flight, each with the controller that aborts it. */
  readonly #inFlight = new Map<Promise<void>, AbortController>()
  #closed = false
  #pumpScheduled = false

  constructor(config: MailConfig, log: FastifyBaseLogger, options: MailerOptions = {}) {
    this.mode = config.mode
    this.#config = config
    this.#log = log
    this.#queueMax = options.queueMax ?? MAIL_QUEUE_MAX
  }

  #transportOnce(): Promise<Transporter> {
    const config = this.#config
    // One transport, one connection per message: account mail is a trickle, and a connection that
    // is not kept open cannot go stale between messages. nodemailer upgrades an smtp:// connection
    // with STARTTLS whenever the server offers it; smtps:// is TLS from the first byte.
    this.#transport ??= import('nodemailer').then(({ default: nodemailer }) => {
      const transport = nodemailer.createTransport(
        {
          url: config.smtpUrl,
          connectionTimeout: config.timeoutMs,
          greetingTimeout: config.timeoutMs,
          socketTimeout: config.timeoutMs,
          dnsTimeout: config.timeoutMs,
          // Our messages are built from strings only: no attachment may read a file or a URL.
          disableFileAccess: true,
          disableUrlAccess: true,
          logger: false,
        },
        { from: config.from },
      )
      // nodemailer raises transport-level errors as events (none expected with password logins);
      // one without a listener would crash the process.
      transport.on('error', (err: Error) => this.#log.warn({ reason: scrub(err.message) }, 'mail transport error'))
      return transport
    })
    return this.#transport
  }

  /** Messages not yet delivered: waiting, backing off or in flight. */
  get pending(): number {
    return this.#ready.length + this.#backingOff.size + this.#inFlight.size
  }

  /**
   * Queues `message` for delivery and returns at once; never throws, never awaits the SMTP server.
   * In `log` mode the message is written to the log instead (link included, see the file header);
   * in `off` mode, after close(), or with MAIL_QUEUE_MAX messages already queued, it is dropped
   * with a log line.
   */
  send(message: MailMessage): void {
    const { kind, to, subject, link } = message
    if (this.#closed) {
      this.#log.warn({ mail: kind, to: maskAddress(to) }, 'mailer closed: message dropped')
      return
    }
    if (this.mode === 'off') {
      this.#log.warn({ mail: kind, to: maskAddress(to) }, 'mail is off (SMTP_URL is not set): message dropped')
      return
    }
    if (this.mode === 'log') {
      // The link, token included, is logged on purpose: development only (file header).
      this.#log.info(
        { mail: kind, to, subject, ...(link === undefined ? {} : { link }) },
        `mail not sent (no SMTP_URL): "${subject}" to ${to}${link === undefined ? '' : ` ${link}`}`,
      )
      return
    }
    if (this.pending >= this.#queueMax) {
      this.#log.error({ mail: kind, to: maskAddress(to) }, `mail queue full (${this.#queueMax}): message dropped`)
      return
    }
    this.#ready.push({ message, attempts: 0 })
    // Even opening the connection waits for the next turn of the event loop: the request that
    // called send() pays for one array push, nothing of nodemailer.
    if (!this.#pumpScheduled) {
      this.#pumpScheduled = true
      setImmediate(() => {
        this.#pumpScheduled = false
        this.#pump()
      })
    }
  }

  /**
   * Stops the mailer: back-offs are cancelled, deliveries in flight are aborted and their
   * connections closed, and what was not delivered is dropped with one log line. Resolves once the
   * aborted deliveries have let go (at most about a second); later send() calls drop their message.
   */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const dropped = this.pending
    for (const timer of this.#backingOff.keys()) clearTimeout(timer)
    this.#backingOff.clear()
    this.#ready.length = 0
    for (const controller of this.#inFlight.values()) controller.abort()
    if (dropped > 0) this.#log.warn({ dropped }, `mailer closing: ${dropped} message(s) not delivered, dropped`)
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.allSettled(this.#inFlight.keys()),
      new Promise((resolve) => {
        timer = setTimeout(resolve, CLOSE_WAIT_MS)
      }),
    ])
    clearTimeout(timer)
    await this.#transport?.then((transport) => transport.close()).catch(() => {})
  }

  #pump(): void {
    while (!this.#closed && this.#inFlight.size < CONCURRENCY) {
      const job = this.#ready.shift()
      if (!job) return
      this.#deliver(job)
    }
  }

  #deliver(job: Job): void {
    const { to, subject, text, html } = job.message
    const controller = new AbortController()
    job.attempts += 1
    const delivery: Promise<void> = this.#transportOnce()
      .then((transport) => transport.sendMail({ to, subject, text, html, signal: controller.signal }))
      .then(
        () => this.#delivered(job),
        (err: unknown) => this.#failed(job, err),
      )
      .finally(() => {
        this.#inFlight.delete(delivery)
        this.#pump()
      })
    this.#inFlight.set(delivery, controller)
  }

  #delivered(job: Job): void {
    this.#log.info(
      { mail: job.message.kind, to: maskAddress(job.message.to), attempts: job.attempts },
      'mail delivered',
    )
  }

  /**
   * One failed attempt: retried after retryDelayMs × 2^(attempts − 1) while retries remain and the
   * failure may pass (a 4xx reply, a timeout, a refused connection); a 5xx reply is final. Each
   * failure is one log line with the masked recipient and the reason, the token and body never.
   */
  #failed(job: Job, err: unknown): void {
    if (this.#closed) return // aborted by close(), which has logged the drop
    const { message, attempts } = job
    const failure = describeFailure(err)
    const fields = { mail: message.kind, to: maskAddress(message.to), attempt: attempts, ...failure }
    const permanent = failure.responseCode !== undefined && failure.responseCode >= 500
    if (permanent || attempts > this.#config.retries) {
      this.#log.error(
        fields,
        permanent
          ? 'mail refused by the SMTP server (5xx, not retried): message dropped'
          : `mail delivery failed ${attempts} time(s): message dropped`,
      )
      return
    }
    const delayMs = this.#config.retryDelayMs * 2 ** (attempts - 1)
    this.#log.warn({ ...fields, retryInMs: delayMs }, `mail delivery failed: retrying in ${delayMs} ms`)
    const timer = setTimeout(() => {
      this.#backingOff.delete(timer)
      this.#ready.push(job)
      this.#pump()
    }, delayMs)
    // A back-off alone must not keep a process alive that has nothing else to do.
    timer.unref()
    this.#backingOff.set(timer, job)
  }
}

/**
 * One line saying how mail goes out, for the start-up log: the mode, and for `smtp` the scheme,
 * host and port of SMTP_URL, never its credentials. Log it at warn for `off` (features are
 * disabled), at info otherwise.
 */
export function describeMailMode(config: Pick<MailConfig, 'mode' | 'smtpUrl'>): string {
  switch (config.mode) {
    case 'smtp': {
      const url = new URL(config.smtpUrl as string)
      return `mail: sent through ${url.protocol}//${url.host}`
    }
    case 'log':
      return 'mail: SMTP_URL is not set, so messages are written to this log instead of sent, links and their tokens included (development only)'
    case 'off':
      return 'mail: off (SMTP_URL is not set in production); password reset and e-mail verification are disabled'
  }
}

/**
 * What a log line may say about a failure: nodemailer's error code (ETIMEDOUT, ECONNECTION,
 * EENVELOPE, EAUTH…), the SMTP reply code, and the message with every address in it masked (a
 * server's reply often quotes the recipient), cut to 200 characters. Never the error object itself:
 * its `command` and `response` fields carry the envelope.
 */
function describeFailure(err: unknown): { code?: string; responseCode?: number; reason: string } {
  const e = (err ?? {}) as { code?: unknown; responseCode?: unknown; message?: unknown }
  return {
    ...(typeof e.code === 'string' ? { code: e.code } : {}),
    ...(typeof e.responseCode === 'number' ? { responseCode: e.responseCode } : {}),
    reason: scrub(typeof e.message === 'string' ? e.message : String(err)),
  }
}

const ADDRESS = /[^\s<>"'(),;:[\]]+@[^\s<>"'(),;:[\]]+/g

function scrub(text: string): string {
  return text.replace(ADDRESS, (address) => maskAddress(address)).slice(0, 200)
}
