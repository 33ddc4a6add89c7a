// The layers of src/, checked by `npm run lint:layers` (part of `npm test`, so CI fails on a
// forbidden import). An import may only point down this list, or within its own layer:
//
//   entry points   src/server.ts, src/cli/        start processes
//   wiring         src/app.ts                     builds the app from everything below
//   HTTP edge      src/routes/, src/plugins/      requests, replies, hooks, error bodies
//   rules          src/services/                  what the server does, independent of HTTP
//   mechanisms     src/store/, src/security/,     storage; hashing, signing and verification;
//                  src/mail/                      mail delivery and the messages
//   foundations    src/config.ts, src/errors.ts, src/schemas.ts, src/keys.ts, src/logging.ts,
//                  src/metrics.ts (metric definitions: every layer below the HTTP edge counts)
//
// Skipping a layer is allowed (a route may use a store type); pointing up never is.
const ENTRY = '^src/(server\\.ts|cli/)'
const WIRING = '^src/app\\.ts$'
const HTTP = '^src/(routes|plugins)/'
const RULES = '^src/services/'
const MECHANISMS = '^src/(store|security|mail)/'
const FOUNDATIONS = '^src/(config|errors|schemas|keys|logging|metrics)\\.ts$'

/** A rule: files matching `from` must not import files matching any of `to`. */
const forbid = (name, comment, from, to) => ({
  name,
  comment,
  severity: 'error',
  from: { path: from },
  to: { path: to.join('|') },
})

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    forbid('wiring-imports-entry', 'app.ts is imported by entry points, never the reverse', WIRING, [ENTRY]),
    forbid('http-imports-up', 'routes and plugins must not import the app or an entry point', HTTP, [WIRING, ENTRY]),
    forbid('rules-import-up', 'services hold the rules: no HTTP, no app wiring', RULES, [HTTP, WIRING, ENTRY]),
    forbid('mechanisms-import-up', 'stores, security primitives and mail know nothing of services or HTTP', MECHANISMS, [
      RULES,
      HTTP,
      WIRING,
      ENTRY,
    ]),
    forbid('foundations-import-up', 'config, errors, schemas, keys, logging and metrics import only each other', FOUNDATIONS, [
      MECHANISMS,
      RULES,
      HTTP,
      WIRING,
      ENTRY,
    ]),
    {
      name: 'no-circular',
      comment: 'a cycle makes the load order, and therefore the layers, ambiguous',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'every import must resolve (a typo or a missing dependency)',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
}
