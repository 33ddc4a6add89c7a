// npm run create-admin -- --username NAME
// Creates (or promotes) an admin account in the persistent store. The password comes from the
// ADMIN_PASSWORD environment variable or from standard input, never from an argument (arguments
// show up in `ps` and in shell history). It runs the same code as ADMIN_USERNAME/ADMIN_PASSWORD at boot.
// At a terminal it asks for the password twice, without echo; from a pipe it reads all of stdin.
import { existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import { parseArgs } from 'node:util'
import { buildApp } from '../app.js'
import { loadConfig } from '../config.js'
import { ConfigError } from '../errors.js'

/**
 * At a terminal: one line at a time, twice, and the two must match. readline in terminal mode puts
 * the terminal in raw mode (so the terminal itself echoes nothing) and writes its own echo to
 * `output`, which discards everything: nothing typed is shown. Enter ends each line; Ctrl-C stops.
 */
async function readFromTerminal(): Promise<string> {
  const muted = new Writable({ write: (_chunk, _encoding, callback) => callback() })
  const rl = createInterface({ input: process.stdin, output: muted, terminal: true, historySize: 0 })
  rl.on('SIGINT', () => {
    process.stderr.write('\n')
    process.exit(130)
  })
  const lines = rl[Symbol.asyncIterator]()
  const ask = async (prompt: string): Promise<string> => {
    process.stderr.write(prompt)
    const { value, done } = await lines.next()
    process.stderr.write('\n')
    if (done) fail('no password: the input ended')
    // readline decodes what the terminal sent with U+FFFD for bytes that are not UTF-8: refused,
    // never repaired, as on stdin below.
    if (value.includes('\uFFFD')) fail('the password typed is not valid UTF-8')
    return value
  }
  try {
    const password = await ask('Password: ')
    if (!password) fail('no password')
    if ((await ask('Password again: ')) !== password) fail('the two passwords differ: nothing changed')
    return password
  } finally {
    rl.close()
  }
}

/** From a pipe or a file: all of stdin, less one trailing newline. */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  // Refused, never repaired: toString('utf8') would turn bytes that are not UTF-8 into U+FFFD, a
  // password other than the one piped in. The WHATWG decoder built into Node, fatal; a BOM is kept,
  // as toString kept it (docs/security.md, Text encodings).
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Buffer.concat(chunks))
  } catch {
    fail('the password on stdin is not valid UTF-8')
  }
  return text.replace(/\r?\n$/, '')
}

function fail(message: string): never {
  process.stderr.write(`create-admin: ${message}\n`)
  process.exit(1)
}

if (existsSync('.env')) process.loadEnvFile('.env')

let username: string | undefined
try {
  const { values } = parseArgs({ options: { username: { type: 'string' } }, strict: true })
  username = values.username
} catch {
  fail('usage: npm run create-admin -- --username NAME   (password from ADMIN_PASSWORD or stdin; never an argument)')
}
if (!username) fail('--username NAME is required')

const password = process.env.ADMIN_PASSWORD || (process.stdin.isTTY ? await readFromTerminal() : await readStdin())
if (!password) fail('no password: set ADMIN_PASSWORD or pipe it on stdin')

let config: ReturnType<typeof loadConfig>
try {
  config = loadConfig({ ...process.env, ADMIN_USERNAME: username, ADMIN_PASSWORD: password, DOCS_ENABLED: 'false' })
} catch (err) {
  fail(err instanceof ConfigError ? err.message : String(err))
}
if (config.storage.kind === 'memory') {
  fail(
    'STORE=memory keeps nothing after this command ends: set STORE=postgres and DATABASE_URL, or use ADMIN_USERNAME/ADMIN_PASSWORD when starting the server',
  )
}

try {
  // ready() runs the boot hook that creates or promotes ADMIN_USERNAME (services/users.ts ensureAdmin).
  const app = await buildApp(config)
  await app.ready()
  await app.close()
  process.stdout.write(`create-admin: ${username} is an admin\n`)
} catch (err) {
  fail(err instanceof Error ? err.message : String(err))
}
