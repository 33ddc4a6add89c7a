// Types only, for editors and `tsc -p jsconfig.json`: what app.js adds to Fastify's request.
import 'fastify'
import type { Principal } from './verifiers.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by GET /notes's onRequest hook once the token is checked; null before. */
    principal: Principal | null
  }
}
