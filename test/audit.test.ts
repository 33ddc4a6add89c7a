// The audit log's outcome of a login that could not be checked: a login the server shed (503,
// hash gate full) or one whose store was unreachable (503) is `unavailable`, never `failure`,
// which would read as a wrong password in a review of the log.
import type { FastifyInstance } from 'fastify'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import { lineCollector, postToken, register, TEST_PASSWORD, testConfig, uniqueUsername } from './helpers.js'
import { recordStatuses } from './statuses.js'

describe('audit outcomes of logins that were not checked', () => {
  let app: FastifyInstance | undefined
  afterEach(async () => {
    await app?.close()
    app = undefined
  })

  it('records a shed login (503) as unavailable and a wrong password as failure', async () => {
    const audit = lineCollector()
    // One hash at a time and no queue: of concurrent logins, those that find the slot taken are shed.
    app = recordStatuses(
      await buildApp(testConfig({ HASH_CONCURRENCY: '1', HASH_QUEUE_MAX: '0', BCRYPT_ROUNDS: '8' }), {
        audit: pino(audit.stream),
      }),
    )
    const username = uniqueUsername()
    expect((await register(app, { username, password: TEST_PASSWORD })).statusCode).toBe(201)

    const answers = await Promise.all(
      Array.from({ length: 6 }, () => postToken(app as FastifyInstance, { username, password: 'not-the-Password-1' })),
    )
    const statuses = answers.map((res) => res.statusCode)
    expect(statuses).toContain(503)
    const outcomes = audit
      .records()
      .filter((r) => r.event === 'login')
      .map((r) => r.outcome)
    expect(outcomes.filter((o) => o === 'unavailable')).toHaveLength(statuses.filter((s) => s === 503).length)
    expect(outcomes.filter((o) => o === 'failure')).toHaveLength(statuses.filter((s) => s === 400).length)
  })

  it('records a login whose database is unreachable as unavailable', async () => {
    const audit = lineCollector()
    app = recordStatuses(
      await buildApp(testConfig({ STORE: 'postgres', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test' }), {
        audit: pino(audit.stream),
      }),
    )
    const username = uniqueUsername()
    const res = await postToken(app, { username, password: TEST_PASSWORD })
    expect(res.statusCode).toBe(503)
    expect(audit.records().filter((r) => r.event === 'login')).toEqual([
      expect.objectContaining({ event: 'login', outcome: 'unavailable', username }),
    ])
  })
})
