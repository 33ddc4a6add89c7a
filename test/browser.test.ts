// What a browser does with our answers, in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): a page on one origin calls the API on another through CORS (register, token,
// /users/me), a page on an origin not listed is blocked, and Swagger UI at /docs loads its spec
// without a single CSP violation. Without Chromium these tests are skipped with a notice, except
// under CI=true, where they fail: CI must run them.
import { existsSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildTestApp, listen, TEST_PASSWORD, uniqueUsername } from './helpers.js'

// playwright-core's type declarations need TypeScript's DOM library, which the tests' tsconfig
// leaves out on purpose (it would retype fetch, Headers and Buffer bodies in every test file). So
// it is loaded untyped, and the few calls used here are typed below. Code passed to page.evaluate
// runs in the page; it uses only what Node's types also declare (fetch, URLSearchParams), and
// strings where it needs the DOM.
interface Locator {
  first(): Locator
  waitFor(options: { timeout: number }): Promise<void>
  allTextContents(): Promise<string[]>
  count(): Promise<number>
  inputValue(): Promise<string>
  textContent(): Promise<string | null>
}
interface Page {
  goto(url: string): Promise<{ headers(): Record<string, string> } | null>
  on(event: 'console', listener: (message: { type(): string; text(): string }) => void): void
  on(event: 'pageerror', listener: (error: Error) => void): void
  on(event: 'response', listener: (response: { url(): string; status(): number }) => void): void
  addInitScript(script: string): Promise<void>
  evaluate<R>(expression: string): Promise<R>
  evaluate<R, A>(fn: (arg: A) => Promise<R>, arg: A): Promise<R>
  locator(selector: string, options?: { hasText: string }): Locator
  close(): Promise<void>
}
interface Browser {
  newPage(): Promise<Page>
  close(): Promise<void>
}
const { chromium } = createRequire(import.meta.url)('playwright-core') as {
  chromium: { launch(options: { executablePath: string; args: string[] }): Promise<Browser> }
}

const CHROMIUM = '/usr/bin/chromium'
const available = existsSync(CHROMIUM)
const required = process.env.CI === 'true'
if (!available && !required)
  console.warn(`browser tests skipped: ${CHROMIUM} not found (apt-get install -y chromium); with CI=true they fail`)

/**
 * Launches Chromium headless. playwright gives every launch a fresh, temporary user-data-dir (and
 * removes it on close), so no profile, cache or preflight cache survives from one run to the next.
 */
async function launch(): Promise<Browser> {
  if (!available) throw new Error(`${CHROMIUM} not found: install it (apt-get install -y chromium)`)
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}

/** A tiny web server for a front end's page: one empty HTML page at every path. */
async function pageServer(): Promise<{ server: Server; origin: string }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
    res.end('<!doctype html><html><head><title>front end</title></head><body></body></html>')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
}

/** Everything the page reports: console messages, uncaught errors, CSP violations. */
function watch(page: Page): { console: string[]; errors: string[]; csp: () => Promise<string[]> } {
  const seen = { console: [] as string[], errors: [] as string[] }
  page.on('console', (message) => seen.console.push(`${message.type()}: ${message.text()}`))
  page.on('pageerror', (error) => seen.errors.push(String(error)))
  return {
    ...seen,
    csp: () => page.evaluate<string[]>('window.__csp ?? []'),
  }
}

/** Page script: records every securitypolicyviolation event of the document into window.__csp. */
const RECORD_CSP_VIOLATIONS = `
  window.__csp = []
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__csp.push(e.violatedDirective + ' blocked ' + e.blockedURI + ' at ' + e.sourceFile + ':' + e.lineNumber)
  })`

// Under CI=true a missing Chromium is a failed test (counted in CI's summary line), and the suite
// runs anyway, so that launch() fails it with the reason too.
if (required)
  it('finds Chromium (CI=true requires the browser tests)', () => {
    expect(available, `${CHROMIUM} not found: .ci/run installs it (apt-get install -y chromium)`).toBe(true)
  })

describe.skipIf(!available && !required)('in headless Chromium', () => {
  let browser: Browser
  beforeAll(async () => {
    browser = await launch()
  }, 60_000)
  afterAll(async () => {
    await browser?.close()
  })

  describe('a front end on another origin (CORS)', () => {
    let app: FastifyInstance
    let api: string
    let allowed: { server: Server; origin: string }
    let other: { server: Server; origin: string }
    beforeAll(async () => {
      allowed = await pageServer()
      other = await pageServer()
      // Three origins: same host, different ports (a port is part of the origin).
      app = await buildTestApp({ CORS_ORIGINS: allowed.origin })
      api = await listen(app)
    })
    afterAll(async () => {
      await app?.close()
      allowed?.server.close()
      other?.server.close()
    })

    it('registers, logs in (form) and reads /users/me (Bearer) from the allowed origin', async () => {
      const page = await browser.newPage()
      try {
        await page.goto(`${allowed.origin}/`)
        const username = uniqueUsername('browser')
        const result = await page.evaluate(
          async ({ api, username, password }) => {
            const reg = await fetch(`${api}/register`, {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body: JSON.stringify({ username, password }),
            })
            const login = await fetch(`${api}/token`, {
              method: 'POST',
              body: new URLSearchParams({ username, password }),
            })
            const tokens = (await login.json()) as { access_token: string; token_type: string }
            const me = await fetch(`${api}/users/me`, { headers: { authorization: `Bearer ${tokens.access_token}` } })
            const anonymous = await fetch(`${api}/users/me`)
            // no-cors: what an <img> or <script> would do. CORP same-origin blocks it (CORS requests are exempt).
            const embedded = await fetch(`${api}/healthz`, { mode: 'no-cors' }).then(
              () => 'loaded',
              (err: Error) => err.name,
            )
            return {
              statuses: [reg.status, login.status, me.status, anonymous.status],
              registered: (await reg.json()) as { id: string; username: string },
              tokenType: tokens.token_type,
              me: await me.json(),
              requestId: me.headers.get('x-request-id'),
              challenge: anonymous.headers.get('www-authenticate'),
              anonymous: await anonymous.json(),
              embedded,
            }
          },
          { api, username, password: TEST_PASSWORD },
        )

        expect(result.statuses).toEqual([201, 200, 200, 401])
        expect(result.registered).toMatchObject({ username })
        expect(result.tokenType).toBe('bearer')
        expect(result.me).toMatchObject({ username, id: result.registered.id })
        // Exposed headers are readable by the page; without Access-Control-Expose-Headers they would be null.
        expect(result.requestId).toMatch(/^[0-9a-f-]{36}$/)
        expect(result.challenge).toBe('Bearer realm="fastify-auth-api"')
        expect(result.anonymous).toEqual({ detail: 'Not authenticated' })
        expect(result.embedded).toBe('TypeError')
      } finally {
        await page.close()
      }
    })

    it('blocks a page on an origin that is not listed: the fetch fails with a CORS error', async () => {
      const page = await browser.newPage()
      const seen = watch(page)
      try {
        await page.goto(`${other.origin}/`)
        const outcomes = await page.evaluate(async (api) => {
          const attempt = (init?: RequestInit) =>
            fetch(`${api}/users/me`, init).then(
              (res) => `status ${res.status}`,
              (err: Error) => `${err.name}: ${err.message}`,
            )
          // A simple request (no preflight) and one that needs a preflight (Authorization).
          return [await attempt(), await attempt({ headers: { authorization: 'Bearer x' } })]
        }, api)

        expect(outcomes).toEqual(['TypeError: Failed to fetch', 'TypeError: Failed to fetch'])
        const blocked = seen.console.filter((m) => /blocked by CORS policy/.test(m))
        expect(blocked).toEqual([
          expect.stringMatching(/No 'Access-Control-Allow-Origin' header/),
          expect.stringMatching(/preflight request.*No 'Access-Control-Allow-Origin' header/),
        ])
      } finally {
        await page.close()
      }
    })
  })

  describe('Swagger UI at /docs', () => {
    let app: FastifyInstance
    let base: string
    beforeAll(async () => {
      app = await buildTestApp({ NODE_ENV: 'development' })
      base = await listen(app)
    })
    afterAll(async () => {
      await app?.close()
    })

    it('loads the spec and lists the operations, with no CSP violation and no error', async () => {
      const page = await browser.newPage()
      await page.addInitScript(RECORD_CSP_VIOLATIONS)
      const seen = watch(page)
      const documents: string[] = []
      page.on('response', (res) => {
        if (/\/(openapi\.json|docs\/json)$/.test(res.url()) && res.status() === 200) documents.push(res.url())
      })
      try {
        const response = await page.goto(`${base}/docs`)
        // Swagger UI's CSP wins over ours (default-src 'none' would block its own scripts).
        expect(response?.headers()['content-security-policy']).toMatch(/script-src 'self'/)
        await page.locator('.opblock-summary-path', { hasText: '/users/me' }).first().waitFor({ timeout: 15_000 })

        const paths = await page.locator('.opblock-summary-path').allTextContents()
        expect(paths).toEqual(expect.arrayContaining(['/register', '/token', '/users/me']))
        // The top bar names the document the page loaded (a URL field, or a list of definitions).
        expect(documents).toHaveLength(1)
        const document = new URL(documents[0] as string).pathname
        const field = page.locator('.topbar .download-url-input')
        const shown = (await field.count()) > 0 ? await field.inputValue() : await page.locator('.topbar').textContent()
        expect(shown).toContain(document)
        // The console message first: it names the hash a blocked inline element would need.
        expect(seen.console.filter((m) => /^error:|Content Security Policy/i.test(m))).toEqual([])
        expect(await seen.csp()).toEqual([])
        expect(seen.errors).toEqual([])
      } finally {
        await page.close()
      }
    })
  })
})
