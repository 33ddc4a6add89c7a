// @ts-check
// Medians, percentiles, and the summary of an autocannon run.

/**
 * @typedef {{
 *   rps: number, ok: number, total: number, durationSeconds: number,
 *   latencyMs: { p50: number, p99: number, max: number },
 *   non2xx: number, errors: number, timeouts: number, statuses: Record<string, number>,
 * }} Summary
 */

/**
 * The median of the finite numbers in `values`; NaN when there are none (printed as n/a, saved as
 * null).
 * @param {readonly unknown[]} values
 * @returns {number}
 */
export function median(values) {
  /** @type {number[]} */
  const v = []
  for (const x of values) if (typeof x === 'number' && Number.isFinite(x)) v.push(x)
  v.sort((a, b) => a - b)
  if (v.length === 0) return Number.NaN
  const mid = Math.floor(v.length / 2)
  const upper = v[mid] ?? Number.NaN
  return v.length % 2 ? upper : ((v[mid - 1] ?? Number.NaN) + upper) / 2
}

/**
 * The `q` quantile (0 to 1) of sorted values, nearest rank; null when there are none.
 * @param {readonly number[]} sorted
 * @param {number} q
 * @returns {number | null}
 */
export function percentile(sorted, q) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? null
}

/**
 * The figures kept of an autocannon run: successful requests per second, latency, failures.
 * @template {object} E
 * @param {import('autocannon').Result} result
 * @param {E} extra  more fields, added at the end
 * @returns {Summary & E}
 */
export function summarise(result, extra) {
  const ok = result['2xx']
  /** @type {Record<string, number>} */
  const statuses = {}
  for (const [code, { count }] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = Number(count)
  return {
    rps: ok / result.duration,
    ok,
    total: result.requests.total,
    durationSeconds: result.duration,
    latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    statuses,
    ...extra,
  }
}

/**
 * Run by run, the req/s of `list` over those of `base` (runs paired by index).
 * @param {readonly { rps: number }[]} list
 * @param {readonly { rps: number }[]} base
 */
export const rpsRatios = (list, base) => list.map((x, i) => x.rps / (base[i]?.rps ?? Number.NaN))
