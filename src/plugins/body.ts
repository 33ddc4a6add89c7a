// Request bodies: the only two parsers, JSON and forms (application/x-www-form-urlencoded). Every
// other media type gets 415; `text/plain`, Fastify's other built-in parser, is removed. Both parsers
// read the body as bytes (within bodyLimit, as Fastify's own do) and refuse, never repair, text that
// is not UTF-8:
//   - a Content-Type whose charset is not UTF-8 (`; charset=latin1`, `utf-16`): 415;
//   - bytes that are not well-formed UTF-8 (invalid bytes, overlong forms such as C0 AF, encoded
//     surrogates such as ED A0 80, truncated sequences, code points past U+10FFFF): 400;
//   - in a form, %XX escapes that decode to such bytes (`%FF%FE%C0`): 400;
//   - in JSON, \uXXXX escapes that leave an unpaired surrogate (`"\ud800"`): 400.
// Why: Buffer#toString turns every invalid sequence into U+FFFD, so different passwords became the
// same text (a password registered as FF FE C0 logged in as 80 81 82), and fast-querystring keeps an
// escape it cannot decode as literal text. On /token and /revoke these are `invalid_request`.
import { parse as parseQueryString } from 'fast-querystring'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { parse as secureJsonParse } from 'secure-json-parse'
import { BadRequestError, BodyNotUtf8Error, UnsupportedCharsetError } from '../errors.js'

// The WHATWG TextDecoder built into Node (a web standard, maintained with the runtime: no
// dependency to trust). `fatal` makes it throw on any ill-formed sequence instead of substituting
// U+FFFD. `ignoreBOM` keeps a leading BOM in the text, as Buffer#toString did: secure-json-parse
// skips it in JSON, and in a form it stays part of the first name (as with @fastify/formbody).
// One instance serves every request: a decode() without `stream` starts from a fresh state.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function decodeUtf8(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes)
  } catch {
    throw new BodyNotUtf8Error()
  }
}

// `charset=` in a Content-Type parameter (RFC 9110 §8.3.1; names are case-insensitive, the value a
// token or a quoted-string). Looser than Fastify's own parameter grammar on purpose (spaces around
// `=` are allowed here): a charset Fastify would ignore must not slip past this check.
const CHARSET_PARAM = /;\s*charset\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)/gi
// `utf8` is a WHATWG label of UTF-8 too.
const UTF8_LABELS = new Set(['utf-8', 'utf8'])

/** 415 unless every charset parameter of the Content-Type names UTF-8 (none at all is UTF-8). */
function requireUtf8Charset(request: FastifyRequest): void {
  const header = request.headers['content-type']
  if (header === undefined || !header.includes(';')) return
  for (const [, raw = ''] of header.matchAll(CHARSET_PARAM)) {
    const value = raw.trim()
    const label = value.startsWith('"') ? value.slice(1, -1).replace(/\\(.)/g, '$1') : value
    if (!UTF8_LABELS.has(label.trim().toLowerCase())) throw new UnsupportedCharsetError()
  }
}

const hexValue = (byte: number): number =>
  byte >= 0x30 && byte <= 0x39
    ? byte - 0x30
    : (byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x66
      ? (byte | 0x20) - 0x57
      : -1

/**
 * 400 unless the body, with each %XX escape replaced by the byte it stands for, is well-formed
 * UTF-8. Checking the whole body at once is the same as checking each name and value: `&`, `=`
 * and `+` are ASCII bytes, which never occur inside a multi-byte sequence. A `%` not followed by
 * two hex digits is no escape and stays a `%`, as fast-querystring keeps it.
 */
function requireUtf8Escapes(body: Buffer): void {
  if (!body.includes(0x25)) return
  const bytes = Buffer.allocUnsafe(body.length)
  let length = 0
  for (let i = 0; i < body.length; i++) {
    const byte = body[i] as number
    if (byte === 0x25 && i + 2 < body.length) {
      const high = hexValue(body[i + 1] as number)
      const low = hexValue(body[i + 2] as number)
      if (high >= 0 && low >= 0) {
        bytes[length++] = high * 16 + low
        i += 2
        continue
      }
    }
    bytes[length++] = byte
  }
  decodeUtf8(bytes.subarray(0, length))
}

// A \u escape of a surrogate (D800-DFFF) somewhere in the text: only then is the parsed value walked.
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/
// With the u flag, a surrogate pair is one code point, so this matches unpaired surrogates only.
const LONE_SURROGATE = /\p{Cs}/u

/** Whether any string (name or value) in a parsed JSON value holds an unpaired surrogate. */
function hasLoneSurrogate(value: unknown): boolean {
  // Iterative: a body within bodyLimit can nest thousands deep.
  const pending: unknown[] = [value]
  while (pending.length > 0) {
    const next = pending.pop()
    if (typeof next === 'string') {
      if (LONE_SURROGATE.test(next)) return true
    } else if (typeof next === 'object' && next !== null) {
      for (const [name, item] of Object.entries(next)) {
        if (LONE_SURROGATE.test(name)) return true
        pending.push(item)
      }
    }
  }
  return false
}

async function bodyPlugin(app: FastifyInstance): Promise<void> {
  // The poisoning settings given to Fastify (app.ts) apply to our JSON parser as to its own.
  const { onProtoPoisoning = 'error', onConstructorPoisoning = 'error' } = app.initialConfig
  const poisoning = { protoAction: onProtoPoisoning, constructorAction: onConstructorPoisoning }

  function parseJson(request: FastifyRequest, body: Buffer): unknown {
    requireUtf8Charset(request)
    if (body.length === 0) throw new BadRequestError('Request body is empty')
    const text = decodeUtf8(body)
    let value: unknown
    try {
      // secure-json-parse is what Fastify's own JSON parser uses: JSON.parse, then 400 for a
      // __proto__ key or a constructor.prototype path (docs/security.md, Prototype poisoning).
      value = secureJsonParse(text, null, poisoning)
    } catch {
      // A syntax error, a poisoning attempt, or a nesting deep enough to overflow the stack.
      throw new BadRequestError('Request body is not valid JSON')
    }
    if (SURROGATE_ESCAPE.test(text) && hasLoneSurrogate(value))
      throw new BodyNotUtf8Error('Request body is not valid Unicode: a \\u escape is an unpaired surrogate')
    return value
  }

  function parseForm(request: FastifyRequest, body: Buffer): unknown {
    requireUtf8Charset(request)
    const text = decodeUtf8(body)
    requireUtf8Escapes(body)
    // What @fastify/formbody did: fast-querystring, a repeated name becomes an array (formChecks in
    // routes/auth.ts refuses those), a null-prototype object.
    return parseQueryString(text)
  }

  app.removeContentTypeParser(['application/json', 'text/plain'])
  for (const [type, parse] of [
    ['application/json', parseJson],
    ['application/x-www-form-urlencoded', parseForm],
  ] as const) {
    // No bodyLimit here: Fastify applies the server's (or the route's) limit to the bytes read.
    app.addContentTypeParser(type, { parseAs: 'buffer' }, (request, body, done) => {
      let value: unknown
      try {
        value = parse(request, body as Buffer)
      } catch (err) {
        done(err as Error, undefined)
        return
      }
      done(null, value)
    })
  }
}

export default fp(bodyPlugin, { name: 'body-parsers', fastify: '5.x' })
