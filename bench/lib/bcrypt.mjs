// @ts-check
// bcrypt at the servers' cost, timed in the bench process: the bound that logins and registrations
// are held against (cases 2, 3 and 8).
import { randomBytes } from 'node:crypto'
import bcrypt from 'bcrypt'
import { CORES, S } from './settings.mjs'

/**
 * `count` hashes one after the other: the ms each took.
 * @param {number} count
 */
export async function hashTimes(count) {
  const times = []
  for (let i = 0; i < count; i++) {
    const t0 = performance.now()
    await bcrypt.hash(`bench-${i}-${randomBytes(6).toString('hex')}`, S.bcryptRounds)
    times.push(performance.now() - t0)
  }
  return times
}

/** `CORES` hashes at once, the way the server runs them: hashes per second, the bound in practice. */
export async function parallelHashRate() {
  const t0 = performance.now()
  await Promise.all(Array.from({ length: CORES }, (_, i) => bcrypt.hash(`bench-p${i}`, S.bcryptRounds)))
  return CORES / ((performance.now() - t0) / 1000)
}
