// @ts-check
// Maps the dist/ frames of a stack trace back to src/ (and node_modules/), through the source maps
// the build writes next to each file (scripts/build.mjs): for a trace already in a log, from a
// server that ran without --enable-source-maps (the default: it costs start time).
//
//   node scripts/map-stack.mjs < trace.txt        or   node scripts/map-stack.mjs trace.txt
//
// Every `<path>/dist/<file>.js:<line>:<column>` (a file: URL or a path) whose .map is found is
// replaced with the source's `<path>:<line>:<column>`; the rest of the text is printed as it is.
// The maps must be those of the build that wrote the trace: an older or newer dist/ maps to wrong lines.
import { existsSync, readFileSync } from 'node:fs'
import { SourceMap } from 'node:module'
import { dirname, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const FRAME = /((?:file:\/\/)?[^\s()]*\/dist\/[^\s():]+\.js):(\d+):(\d+)/g

/** @type {Map<string, SourceMap | undefined>} */
const maps = new Map()

/**
 * The source map of a dist/ file, or undefined when it has none.
 * @param {string} file  an absolute path
 */
function mapOf(file) {
  if (!maps.has(file)) {
    const path = `${file}.map`
    maps.set(file, existsSync(path) ? new SourceMap(JSON.parse(readFileSync(path, 'utf8'))) : undefined)
  }
  return maps.get(file)
}

/**
 * One frame's location mapped to its source, or the location as it was.
 * @param {string} whole  the matched text
 * @param {string} location  a file: URL or a path
 * @param {string} line  1-based
 * @param {string} column  1-based
 */
function mapFrame(whole, location, line, column) {
  const file = location.startsWith('file://') ? fileURLToPath(location) : location
  const entry = mapOf(file)?.findEntry(Number(line) - 1, Number(column) - 1)
  if (!entry || !('originalSource' in entry) || !entry.originalSource) return whole
  // Sources are relative to the map (../src/app.ts), or file: URLs.
  const source = entry.originalSource.startsWith('file://')
    ? fileURLToPath(entry.originalSource)
    : resolve(dirname(file), entry.originalSource)
  const shown = relative(ROOT, source).startsWith('..') ? source : relative(ROOT, source)
  return `${shown}:${entry.originalLine + 1}:${entry.originalColumn + 1}`
}

const input = process.argv[2] ? readFileSync(process.argv[2], 'utf8') : readFileSync(0, 'utf8')
process.stdout.write(input.replace(FRAME, mapFrame))
