// @ts-check
// Remakes the bench's HTML report from a saved results file, without running anything:
//
//   node bench/html-report.mjs                                bench/results.json -> bench/report.html
//   node bench/html-report.mjs bench/results.local.json /tmp/report.html
//
// `npm run bench` writes the report itself at the end of a run (bench/lib/report.mjs, finish); this
// is for a results file from elsewhere, or after a change to the charts (bench/lib/html.mjs).
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { renderReport } from './lib/html.mjs'

const benchDir = path.dirname(fileURLToPath(import.meta.url))
const [from = path.join(benchDir, 'results.json'), to = path.join(benchDir, 'report.html')] = process.argv.slice(2)
writeFileSync(to, renderReport(JSON.parse(readFileSync(from, 'utf8'))))
process.stderr.write(
  `${path.relative(process.cwd(), to) || to} written from ${path.relative(process.cwd(), from) || from}\n`,
)
