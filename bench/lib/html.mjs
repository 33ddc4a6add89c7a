// @ts-check
// The bench's report as a page: the results of a run (the object saved in bench/results.json) as
// one self-contained HTML file, its charts inline SVG drawn here by hand. No script, no stylesheet,
// font or library to fetch: it opens from disk, in any browser or in a code host's file view, and
// is committed with results.json. Charts: throughput against the floor and against the bcrypt
// bound (bars, with the ratio and its target), latency percentiles per case (log scale), the login
// storm second by second, cold starts, memory per user; then the whole table.
//
// Only the results are read (nothing of the machine it is rendered on), so the same results give
// the same bytes. Every figure a partial or older run lacks is left out, with a line saying so.

/**
 * @typedef {{ p50: number, p99: number, max: number }} Latency
 * @typedef {{ rps: number, latencyMs: Latency }} Run
 * @typedef {{ usersMeOffsetMs: number, token: { offered: number[], ok: number[], shed: number[],
 *   other: number[] }, usersMe: { ok: number[], other: number[], p50: (number | null)[],
 *   p99: (number | null)[], max: (number | null)[] } }} StormTimeline
 * @typedef {{ label: string, value: number | null | undefined, runs?: (number | null | undefined)[],
 *   color: string, note?: string }} Bar
 * @typedef {{ name: string, color: string, points: [number, number | null][], dash?: boolean }} Series
 */

// ---------------------------------------------------------------------------------------------
// Text

/** @param {unknown} value */
const esc = (value) =>
  String(value).replace(
    /[&<>"']/g,
    (c) =>
      /** @type {Record<string, string>} */ ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[
        c
      ] ?? c,
  )

/**
 * A number with thousands separators and `digits` decimals; n/a when there is none.
 * @param {number | null | undefined} n
 */
const fmt = (n, digits = 0) =>
  typeof n !== 'number' || !Number.isFinite(n)
    ? 'n/a'
    : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })

/**
 * Milliseconds, with as many decimals as small values need.
 * @param {number | null | undefined} ms
 */
const fmtMs = (ms) => (typeof ms !== 'number' ? 'n/a' : fmt(ms, ms < 10 ? 1 : 0))

/**
 * The median of the numbers in `values`, or null.
 * @param {readonly (number | null | undefined)[]} values
 */
function median(values) {
  const v = /** @type {number[]} */ (values.filter((x) => typeof x === 'number' && Number.isFinite(x))).sort(
    (a, b) => a - b,
  )
  if (v.length === 0) return null
  const mid = Math.floor(v.length / 2)
  return v.length % 2 ? (v[mid] ?? null) : ((v[mid - 1] ?? 0) + (v[mid] ?? 0)) / 2
}

// ---------------------------------------------------------------------------------------------
// SVG

const COLORS = {
  server: '#2563eb',
  floor: '#9ca3af',
  bound: '#9ca3af',
  pg: '#7c3aed',
  pgNoCache: '#c4b5fd',
  p50: '#93c5fd',
  p99: '#2563eb',
  max: '#1e3a8a',
  ok: '#16a34a',
  shed: '#f59e0b',
  other: '#dc2626',
  offered: '#6b7280',
  target: '#dc2626',
  grid: '#e5e7eb',
  axis: '#6b7280',
}

let chartCount = 0

/**
 * An <svg> with a title (read by screen readers, shown as the figure's heading).
 * @param {number} width
 * @param {number} height
 * @param {string} title
 * @param {string[]} body  SVG elements
 */
function svg(width, height, title, body) {
  const id = `chart-${++chartCount}`
  return [
    `<svg role="img" aria-labelledby="${id}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<title id="${id}">${esc(title)}</title>`,
    ...body,
    '</svg>',
  ].join('\n')
}

/**
 * @param {number} x
 * @param {number} y
 * @param {string} content
 * @param {{ anchor?: 'start' | 'middle' | 'end', cls?: string, fill?: string }} [options]
 */
const text = (x, y, content, { anchor = 'start', cls = '', fill } = {}) =>
  `<text x="${r(x)}" y="${r(y)}" text-anchor="${anchor}"${cls ? ` class="${cls}"` : ''}${fill ? ` fill="${fill}"` : ''}>${esc(content)}</text>`

/**
 * @param {number} x1
 * @param {number} y1
 * @param {number} x2
 * @param {number} y2
 * @param {string} color
 */
const line = (x1, y1, x2, y2, color, dash = false, width = 1) =>
  `<line x1="${r(x1)}" y1="${r(y1)}" x2="${r(x2)}" y2="${r(y2)}" stroke="${color}" stroke-width="${width}"${dash ? ' stroke-dasharray="5 4"' : ''}/>`

/**
 * @param {number} x
 * @param {number} y
 * @param {number} w
 * @param {number} h
 * @param {string} color
 */
const rect = (x, y, w, h, color) =>
  `<rect x="${r(x)}" y="${r(y)}" width="${r(Math.max(0, w))}" height="${r(h)}" fill="${color}"/>`

/** @param {number} n  rounded to 0.1 px: shorter files, the same picture */
const r = (n) => Math.round(n * 10) / 10

/**
 * Round ticks from 0 to at least `max`: about `count` of them, at 1, 2 or 5 times a power of ten.
 * @param {number} max
 */
function ticks(max, count = 5) {
  if (!(max > 0)) return [0, 1]
  const raw = max / count
  const power = 10 ** Math.floor(Math.log10(raw))
  const step = ([1, 2, 5, 10].find((m) => m * power >= raw) ?? 10) * power
  const list = []
  for (let t = 0; t < max + step * 0.999; t += step) list.push(Number(t.toPrecision(12)))
  return list
}

/**
 * Powers of ten covering [min, max], for a log scale.
 * @param {number} min
 * @param {number} max
 */
function logTicks(min, max) {
  const list = []
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) list.push(10 ** e)
  return list
}

/**
 * A legend: a swatch and a name per entry, in a row from (x, y).
 * @param {number} x
 * @param {number} y
 * @param {{ name: string, color: string, dash?: boolean }[]} entries
 */
function legend(x, y, entries) {
  const out = []
  let at = x
  for (const { name, color, dash } of entries) {
    out.push(dash ? line(at, y - 4, at + 16, y - 4, color, true, 2) : rect(at, y - 9, 12, 10, color))
    out.push(text(at + (dash ? 20 : 16), y, name, { cls: 'small' }))
    at += (dash ? 26 : 22) + name.length * 6.2
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Charts

/**
 * Horizontal bars from zero, one per row, each with its value (and runs as dots) and a note.
 * @param {string} title
 * @param {string} unit
 * @param {Bar[]} bars
 * @param {{ value: number, label: string, color?: string }[]} [marks]  vertical reference lines (a
 *   target: red unless `color` says otherwise), their labels one above the other
 */
function barChart(title, unit, bars, marks = []) {
  const shown = bars.filter((b) => typeof b.value === 'number' && Number.isFinite(b.value))
  if (shown.length === 0) return ''
  const left = 200
  const plot = 420
  const rowH = 30
  const top = 14 + 13 * Math.max(0, marks.length - 1)
  const height = top + shown.length * rowH + 34
  const width = 960
  const runsOf = (/** @type {Bar} */ b) => /** @type {number[]} */ ((b.runs ?? []).filter((v) => typeof v === 'number'))
  const max = Math.max(...shown.flatMap((b) => [b.value ?? 0, ...runsOf(b)]), ...marks.map((m) => m.value))
  const axis = ticks(max * 1.05)
  const axisMax = axis.at(-1) ?? 1
  const x = (/** @type {number} */ v) => left + (v / axisMax) * plot
  const out = []
  for (const t of axis) {
    out.push(line(x(t), top - 4, x(t), top + shown.length * rowH, COLORS.grid))
    out.push(text(x(t), top + shown.length * rowH + 16, fmt(t), { anchor: 'middle', cls: 'small' }))
  }
  out.push(text(left + plot, top + shown.length * rowH + 30, unit, { anchor: 'end', cls: 'small' }))
  shown.forEach((b, i) => {
    const y = top + i * rowH
    const value = b.value ?? 0
    out.push(text(left - 8, y + 19, b.label, { anchor: 'end' }))
    out.push(rect(left, y + 6, x(value) - left, rowH - 12, b.color))
    for (const run of runsOf(b)) out.push(`<circle cx="${r(x(run))}" cy="${y + rowH / 2}" r="2.5" class="run"/>`)
    // Right of the bar and of its runs' dots.
    const end = x(Math.max(value, ...runsOf(b)))
    out.push(text(end + 7, y + 19, fmt(b.value, value < 100 ? 2 : 0), { cls: 'value' }))
    if (b.note) out.push(text(left + plot + 80, y + 19, b.note, { cls: 'small' }))
  })
  marks.forEach((m, i) => {
    const color = m.color ?? COLORS.target
    const labelY = 12 + 13 * i
    out.push(line(x(m.value), labelY + 2, x(m.value), top + shown.length * rowH, color, true, 1.5))
    out.push(text(x(m.value) + 3, labelY, m.label, { cls: 'small', fill: color }))
  })
  return figure(svg(width, height, title, out), title)
}

/**
 * p50, p99 and max per row, on a log scale (from under a millisecond to seconds in one chart).
 * @param {string} title
 * @param {{ label: string, latency: Latency | null | undefined }[]} rows
 */
function latencyChart(title, rows) {
  const shown = /** @type {{ label: string, latency: Latency }[]} */ (rows.filter((row) => row.latency))
  if (shown.length === 0) return ''
  const left = 230
  const plot = 520
  const rowH = 34
  const top = 30
  const height = top + shown.length * rowH + 30
  const width = left + plot + 210
  const values = shown.flatMap(({ latency }) => [latency.p50, latency.p99, latency.max]).filter((v) => v > 0)
  // A decade under the smallest value, so that its bar is not of zero length.
  const axis = logTicks(Math.min(1, ...values) * 0.9, Math.max(10, ...values))
  const lo = Math.log10(axis[0] ?? 1)
  const hi = Math.log10(axis.at(-1) ?? 10)
  const x = (/** @type {number} */ v) => left + ((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * plot
  const out = legend(left, 14, [
    { name: 'p50', color: COLORS.p50 },
    { name: 'p99', color: COLORS.p99 },
    { name: 'max', color: COLORS.max },
  ])
  for (const t of axis) {
    out.push(line(x(t), top - 4, x(t), top + shown.length * rowH, COLORS.grid))
    out.push(
      text(x(t), top + shown.length * rowH + 16, `${fmt(t, t < 1 ? 1 : 0)} ms`, { anchor: 'middle', cls: 'small' }),
    )
  }
  shown.forEach(({ label, latency }, i) => {
    const y = top + i * rowH
    out.push(text(left - 8, y + 21, label, { anchor: 'end' }))
    ;[
      ['p50', latency.p50, COLORS.p50],
      ['p99', latency.p99, COLORS.p99],
      ['max', latency.max, COLORS.max],
    ].forEach(([, v, color], j) => {
      // At least a sliver: a p50 of 0 (under autocannon's 1 ms resolution) is still a bar.
      out.push(rect(left, y + 6 + j * 8, Math.max(2, x(Number(v)) - left), 7, String(color)))
    })
    out.push(
      text(left + plot + 12, y + 21, `${fmtMs(latency.p50)} / ${fmtMs(latency.p99)} / ${fmtMs(latency.max)} ms`, {
        cls: 'value',
      }),
    )
  })
  return figure(svg(width, height, title, out), title)
}

/**
 * A line chart of values over seconds: one panel of the storm's timeline.
 * @param {string} title
 * @param {Series[]} series
 * @param {{ seconds: number, unit: string, marks?: { value: number, label: string }[], height?: number }} options
 */
function timeChart(title, series, { seconds, unit, marks = [], height = 170 }) {
  const left = 70
  const plot = 760
  const top = 26
  const plotH = height - top - 30
  const width = left + plot + 130
  const values = series.flatMap((s) => s.points.map(([, v]) => v ?? 0))
  const axis = ticks(Math.max(1, ...values, ...marks.map((m) => m.value)) * 1.05, 4)
  const yMax = axis.at(-1) ?? 1
  const x = (/** @type {number} */ t) => left + (t / seconds) * plot
  const y = (/** @type {number} */ v) => top + plotH - (v / yMax) * plotH
  const out = legend(left, 14, series)
  for (const t of axis) {
    out.push(line(left, y(t), left + plot, y(t), COLORS.grid))
    out.push(text(left - 6, y(t) + 4, fmt(t), { anchor: 'end', cls: 'small' }))
  }
  for (let s = 0; s <= seconds; s++) {
    out.push(line(x(s), top + plotH, x(s), top + plotH + 4, COLORS.axis))
    out.push(text(x(s), top + plotH + 16, `${s}`, { anchor: 'middle', cls: 'small' }))
  }
  out.push(text(left + plot, top + plotH + 28, 's since the storm started', { anchor: 'end', cls: 'small' }))
  out.push(text(left - 6, top - 8, unit, { anchor: 'end', cls: 'small' }))
  for (const m of marks) {
    out.push(line(left, y(m.value), left + plot, y(m.value), COLORS.target, true, 1.5))
    out.push(text(left + plot + 6, y(m.value) + 4, m.label, { cls: 'small', fill: COLORS.target }))
  }
  for (const s of series) {
    // A gap where a second has no value (no response in it).
    /** @type {string[][]} */
    const runs = [[]]
    for (const [t, v] of s.points) {
      if (v === null) runs.push([])
      else runs.at(-1)?.push(`${r(x(t))},${r(y(v))}`)
    }
    for (const pts of runs.filter((p) => p.length > 0)) {
      out.push(
        `<polyline points="${pts.join(' ')}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ' stroke-dasharray="5 4"' : ''}/>`,
      )
      for (const p of pts) {
        const [cx, cy] = p.split(',')
        out.push(`<circle cx="${cx}" cy="${cy}" r="2.5" fill="${s.color}"/>`)
      }
    }
  }
  return svg(width, height, title, out)
}

/**
 * @param {string} chart  an <svg>, or '' (nothing to show)
 * @param {string} caption
 */
const figure = (chart, caption) =>
  chart ? `<figure>\n${chart}\n<figcaption>${esc(caption)}</figcaption>\n</figure>` : ''

// ---------------------------------------------------------------------------------------------
// Sections

/**
 * @param {number | null | undefined} ratio
 * @param {number} target
 * @param {string} of
 */
const ratioNote = (ratio, target, of) =>
  typeof ratio === 'number'
    ? `${fmt(ratio * 100, 1)}% of ${of} · target ≥ ${target}% · ${ratio * 100 >= target ? 'PASS' : 'FAIL'}`
    : ''

/** @param {Record<string, any>} cases */
function throughputSection(cases) {
  const out = []
  const c1 = cases.usersMe
  if (c1) {
    out.push(
      barChart(
        'Case 1, GET /users/me: the server against the floor (a bare Fastify app answering the same JSON)',
        'requests/s (dots: each run)',
        [
          {
            label: 'floor',
            value: c1.medians.floorRps,
            runs: c1.runs.floor.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.floor,
          },
          {
            label: 'server',
            value: c1.medians.realRps,
            runs: c1.runs.real.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.server,
            note: ratioNote(c1.medians.ratio, 70, 'the floor'),
          },
        ],
      ),
    )
  }
  if (cases.login || cases.register) {
    const bound = cases.login?.medians.bound ?? cases.register?.medians.bound
    out.push(
      barChart(
        'Cases 2 and 3, logins and registrations against the bcrypt bound (cores ÷ the time of one hash)',
        'per second (dots: each run)',
        [
          { label: 'bcrypt bound', value: bound, color: COLORS.bound },
          {
            label: 'POST /token (logins)',
            value: cases.login?.medians.loginRps,
            runs: cases.login?.runs.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.server,
            note: ratioNote(cases.login?.medians.ratio, 90, 'the bound'),
          },
          {
            label: 'POST /register',
            value: cases.register?.medians.registerRps,
            runs: cases.register?.runs.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.server,
            note: ratioNote(cases.register?.medians.ratio, 90, 'the bound'),
          },
        ],
      ),
    )
  }
  const c7 = cases.pgUsersMe
  if (c7) {
    out.push(
      barChart(
        'Case 7, GET /users/me on PostgreSQL against the in-memory store, in the same sitting',
        'requests/s (dots: each run)',
        [
          {
            label: 'in-memory',
            value: c7.medians.memoryRps,
            runs: c7.runs.memory.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.server,
          },
          {
            label: `postgres, user cache ${c7.medians.userCacheTtlMs ?? '?'} ms`,
            value: c7.medians.cachedRps,
            runs: c7.runs.cached.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.pg,
            note: ratioNote(c7.medians.cachedRatio, 50, 'in-memory'),
          },
          {
            label: 'postgres, no cache (info)',
            value: c7.medians.uncachedRps,
            runs: c7.runs.uncached.map((/** @type {Run} */ x) => x.rps),
            color: COLORS.pgNoCache,
            note:
              typeof c7.medians.uncachedRatio === 'number'
                ? `${fmt(c7.medians.uncachedRatio * 100, 1)}% of in-memory`
                : '',
          },
        ],
      ),
    )
  }
  const c8 = cases.pgLogin
  if (c8) {
    out.push(
      barChart('Case 8, POST /token on PostgreSQL against the bcrypt bound', 'logins/s (dots: each run)', [
        { label: 'bcrypt bound', value: c8.medians.bound, color: COLORS.bound },
        {
          label: 'POST /token, postgres',
          value: c8.medians.loginRps,
          runs: c8.runs.map((/** @type {Run} */ x) => x.rps),
          color: COLORS.pg,
          note: ratioNote(c8.medians.ratio, 90, 'the bound'),
        },
      ]),
    )
  }
  return section('Throughput', out)
}

/**
 * The median of each percentile over runs.
 * @param {Run[] | undefined} runs
 * @returns {Latency | null}
 */
function medianLatency(runs) {
  if (!runs || runs.length === 0) return null
  const pick = (/** @type {keyof Latency} */ k) => median(runs.map((x) => x.latencyMs?.[k])) ?? 0
  return { p50: pick('p50'), p99: pick('p99'), max: pick('max') }
}

/** @param {Record<string, any>} cases */
function latencySection(cases) {
  /** @type {{ p50: number | null, p99: number | null, max: number | null }[]} */
  const storm200 = (cases.loginStorm?.runs ?? []).map((/** @type {any} */ x) => x.token.latencyByStatus['200'] ?? {})
  const storm503 = (cases.loginStorm?.runs ?? []).map((/** @type {any} */ x) => x.token.latencyByStatus['503'] ?? {})
  /** @param {typeof storm200} list */
  const byStatus = (list) =>
    list.length === 0 || list.every((x) => typeof x.p50 !== 'number')
      ? null
      : {
          p50: median(list.map((x) => x.p50)) ?? 0,
          p99: median(list.map((x) => x.p99)) ?? 0,
          max: median(list.map((x) => x.max)) ?? 0,
        }
  const chart = latencyChart(
    'Latency per case: p50, p99 and max, each the median over the runs (log scale; autocannon counts whole milliseconds)',
    [
      { label: '1 /users/me, server', latency: medianLatency(cases.usersMe?.runs.real) },
      { label: '1 /users/me, floor', latency: medianLatency(cases.usersMe?.runs.floor) },
      { label: '2 POST /token', latency: medianLatency(cases.login?.runs) },
      { label: '3 POST /register', latency: medianLatency(cases.register?.runs) },
      {
        label: '4 /users/me in the storm',
        latency: medianLatency(cases.loginStorm?.runs.map((/** @type {any} */ x) => x.usersMe)),
      },
      { label: '4 /token 200 in the storm', latency: byStatus(storm200) },
      { label: '4 /token 503 in the storm', latency: byStatus(storm503) },
      { label: '7 /users/me, in-memory', latency: medianLatency(cases.pgUsersMe?.runs.memory) },
      { label: '7 /users/me, postgres', latency: medianLatency(cases.pgUsersMe?.runs.cached) },
      { label: '7 /users/me, no cache', latency: medianLatency(cases.pgUsersMe?.runs.uncached) },
      { label: '8 POST /token, postgres', latency: medianLatency(cases.pgLogin?.runs) },
    ],
  )
  return section('Latency', [chart])
}

/**
 * @param {Record<string, any>} cases
 * @param {Record<string, any>} settings
 */
function stormSection(cases, settings) {
  const c4 = cases.loginStorm
  if (!c4) return ''
  const out = [
    `<p>POST /token offered at ${fmt(c4.medians.offeredRate, 1)}/s (${settings.stormFactor ?? 4} × the ${fmt(c4.medians.capacity, 2)} logins/s of case 2), open loop, while autocannon drives GET /users/me on the same server. Second by second: what /users/me got, and what became of the logins (answered in that second; offered: sent in it).</p>`,
  ]
  const unloaded = cases.usersMe?.medians.realRps
  const duration = Number(settings.durationSeconds) || 5
  // One time axis for every run, so that their charts line up.
  const seconds = Math.max(
    duration + 1,
    ...c4.runs.map((/** @type {{ timeline?: StormTimeline }} */ run) => run.timeline?.token.offered.length ?? 0),
  )
  c4.runs.forEach((/** @type {{ timeline?: StormTimeline }} */ run, /** @type {number} */ i) => {
    const t = run.timeline
    const name = c4.runs.length > 1 ? `run ${i + 1}: ` : ''
    if (!t) {
      out.push(
        `<p>${esc(name)}no per-second figures in these results (recorded since they were added to the bench).</p>`,
      )
      return
    }
    const offset = t.usersMeOffsetMs / 1000
    // autocannon's last second is cut short by the end of the run: left out.
    const me = (/** @type {(number | null)[]} */ list) =>
      /** @type {[number, number | null][]} */ (list.slice(0, duration).map((v, s) => [offset + s + 0.5, v]))
    const marks = unloaded
      ? [
          { value: unloaded, label: 'unloaded (case 1)' },
          { value: unloaded * 0.4, label: '40% (target)' },
        ]
      : []
    const token = (/** @type {number[]} */ list) =>
      /** @type {[number, number | null][]} */ (list.map((v, s) => [s + 0.5, v]))
    out.push(
      '<figure>',
      timeChart(
        `${name}GET /users/me requests/s during the storm`,
        [{ name: '/users/me 2xx per second', color: COLORS.server, points: me(t.usersMe.ok) }],
        { seconds, unit: 'req/s', marks },
      ),
      timeChart(
        `${name}GET /users/me latency during the storm`,
        [
          { name: 'p50', color: COLORS.p50, points: me(t.usersMe.p50) },
          { name: 'p99', color: COLORS.p99, points: me(t.usersMe.p99) },
        ],
        { seconds, unit: 'ms', marks: [{ value: 50, label: 'p99 target' }] },
      ),
      timeChart(
        `${name}POST /token per second during the storm`,
        [
          { name: 'offered', color: COLORS.offered, points: token(t.token.offered), dash: true },
          { name: '200 (served)', color: COLORS.ok, points: token(t.token.ok) },
          { name: '503 (shed)', color: COLORS.shed, points: token(t.token.shed) },
          ...(t.token.other.some((v) => v > 0)
            ? [{ name: 'other', color: COLORS.other, points: token(t.token.other) }]
            : []),
        ],
        {
          seconds,
          unit: 'logins/s',
          marks: [{ value: c4.medians.capacity, label: 'capacity (case 2)' }],
        },
      ),
      `<figcaption>${esc(`${name}the login storm, second by second`)}</figcaption>`,
      '</figure>',
    )
  })
  return section('Login storm over time (case 4)', out)
}

/** @param {Record<string, any>} cases */
function startAndMemorySection(cases) {
  const out = []
  const c6 = cases.coldStart
  if (c6) {
    const target = c6.targetMs ?? 300
    out.push(
      barChart(
        'Case 6, cold start: from spawning node dist/server.js to its first 200 on /healthz, each start',
        'ms',
        c6.runsMs.map((/** @type {number} */ ms, /** @type {number} */ i) => ({
          label: `start ${i + 1}`,
          value: ms,
          color: COLORS.server,
        })),
        [
          { value: target, label: `target ${target} ms` },
          { value: c6.medianMs, label: `median ${fmt(c6.medianMs)} ms`, color: COLORS.axis },
        ],
      ),
    )
  }
  const c5 = cases.memory
  if (c5) {
    /** @type {Bar[]} */
    const bars = []
    for (const [users, m] of Object.entries(c5.medians ?? {})) {
      bars.push({ label: `${fmt(Number(users))} users, rss`, value: m.rssBytesPerUser, color: COLORS.server })
      bars.push({ label: `${fmt(Number(users))} users, heapUsed`, value: m.heapBytesPerUser, color: COLORS.p50 })
    }
    out.push(
      barChart('Case 5, memory per user of the in-memory store', 'bytes per user', bars, [
        { value: 512, label: 'rss target' },
      ]),
    )
  }
  return section('Cold start and memory', out)
}

/** @param {{ case: string, metric: string, value: string, runs: string, target: string, result: string }[] | undefined} rows */
function tableSection(rows) {
  if (!rows || rows.length === 0) return ''
  const head = ['case', 'metric', 'value (median)', 'runs', 'target', 'result']
  const body = rows.map(
    (row) =>
      `<tr><td>${esc(row.case)}</td><td>${esc(row.metric)}</td><td class="num">${esc(row.value)}</td><td>${esc(row.runs)}</td><td>${esc(row.target)}</td><td class="${row.result.toLowerCase().replace('/', '')}">${esc(row.result)}</td></tr>`,
  )
  return section('The table', [
    `<table>\n<thead><tr>${head.map((h) => `<th>${h}</th>`).join('')}</tr></thead>\n<tbody>\n${body.join('\n')}\n</tbody>\n</table>`,
  ])
}

/**
 * @param {string} title
 * @param {string[]} parts
 */
function section(title, parts) {
  const content = parts.filter(Boolean)
  return content.length === 0 ? '' : `<section>\n<h2>${esc(title)}</h2>\n${content.join('\n')}\n</section>`
}

const STYLE = `
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111827; margin: 24px auto; max-width: 1000px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
p.meta { color: #4b5563; margin-top: 0; }
figure { margin: 16px 0 24px; }
figcaption { color: #4b5563; font-size: 12px; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: #111827; }
svg text.small { font-size: 11px; fill: #4b5563; }
svg text.value { font-weight: 600; }
svg circle.run { fill: #111827; opacity: 0.6; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
th, td { border: 1px solid #e5e7eb; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f9fafb; }
td.num { white-space: nowrap; }
td.pass { color: #15803d; font-weight: 600; }
td.fail { color: #b91c1c; font-weight: 600; }
td.na { color: #6b7280; }
.warning { color: #b45309; }
`

/**
 * The report page of `results` (bench/results.json's object).
 * @param {Record<string, any>} results
 * @returns {string}
 */
export function renderReport(results) {
  chartCount = 0
  const machine = results.machine ?? {}
  const settings = results.settings ?? {}
  const cases = results.cases ?? {}
  const memory =
    typeof machine.totalMemoryBytes === 'number' ? `, ${fmt(machine.totalMemoryBytes / 2 ** 30, 1)} GiB` : ''
  const kind = settings.quick ? ' A smoke run (BENCH_QUICK): one short run per case, figures only indicative.' : ''
  const noisy = (results.table ?? []).filter(
    (/** @type {{ metric: string, value: string }} */ row) =>
      row.metric.startsWith("others' CPU") && Number(String(row.value).replace(/,/g, '')) >= 20,
  )
  const parts = [
    '<!doctype html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>fastify-auth-server bench, ${esc(String(machine.date ?? '').slice(0, 10))}</title>`,
    `<style>${STYLE}</style>`,
    '</head>',
    '<body>',
    '<h1>fastify-auth-server: <code>npm run bench</code></h1>',
    `<p class="meta">${esc(`${machine.cpuModel ?? '?'} × ${machine.cpuCount ?? '?'}${memory}, Node ${machine.node ?? '?'}, ${machine.date ?? ''}. ${settings.runs ?? '?'} run(s) per case, ${settings.durationSeconds ?? '?'} s each, ${settings.connections ?? '?'} connections; medians over the runs. Made from bench/results.json by bench/lib/html.mjs.${kind}`)}</p>`,
    noisy.length > 0
      ? `<p class="warning">${esc(`Other processes used the CPU during ${noisy.map((/** @type {{ case: string, value: string }} */ row) => `${row.case} (${row.value}% of a core)`).join(', ')}: those figures are skewed (the table's noise rows).`)}</p>`
      : '',
    results.error ? `<p class="warning">${esc(`The run crashed: ${String(results.error).split('\n')[0]}`)}</p>` : '',
    cases.postgres?.skipped ? `<p>${esc(`Cases 7-9 (PostgreSQL) skipped: ${cases.postgres.skipped}`)}</p>` : '',
    throughputSection(cases),
    latencySection(cases),
    stormSection(cases, settings),
    startAndMemorySection(cases),
    tableSection(results.table),
    '</body>',
    '</html>',
    '',
  ]
  return parts.filter((p) => p !== '').join('\n')
}
