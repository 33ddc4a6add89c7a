// @ts-check
// The floor: a bare Fastify app answering GET /users/me with the same JSON shape as the real
// server ({id, username, email, email_verified, created_at}), with no authentication, no plugins, no response
// schema and the logger off. What the real route costs beyond this is what the server adds: token
// verification, the user lookup, security headers, hooks and response serialisation.
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'

const port = Number(process.env.PORT ?? 8001)
const host = process.env.HOST ?? '127.0.0.1'

// A stored record, turned into the public view on every request (as the real route does).
const record = { id: randomUUID(), username: 'floor_user', email: null, emailVerified: false, createdAt: new Date() }

const app = Fastify({ logger: false })
app.get('/users/me', async () => ({
  id: record.id,
  username: record.username,
  email: record.email,
  email_verified: record.emailVerified,
  created_at: record.createdAt.toISOString(),
}))
app.get('/healthz', async () => ({ status: 'ok' }))

await app.listen({ port, host })
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    app.close().then(() => process.exit(0))
  })
}
