// A stand-in for one of the node's Python model services, so the demo needs only Node: it "loads
// its model" for --load-ms, then answers GET /health with {"status":"ok"} on --port (or, without a
// port, prints [SERVICE_READY]), and exits cleanly on SIGTERM as a well-behaved service does.
import { createServer } from 'node:http'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { name: { type: 'string' }, port: { type: 'string' }, 'load-ms': { type: 'string', default: '1000' } } })
const name = values.name ?? 'model'
const loadMs = Number(values['load-ms'])
console.log(`[${name}] loading model (${loadMs} ms)`)
for (let done = 25; done <= 100; done += 25) {
  await new Promise((r) => setTimeout(r, loadMs / 4))
  console.log(`[${name}] weights ${done}%`)
}
if (values.port) {
  createServer((req, res) => {
    res.writeHead(req.url === '/health' ? 200 : 404, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ status: 'ok', service: name }))
  }).listen(Number(values.port), '127.0.0.1', () => console.log(`[${name}] listening on ${values.port}`))
} else {
  console.log(`[${name}] [SERVICE_READY]`)
  setInterval(() => {}, 1 << 30) // serve forever, like a worker reading a queue
}
process.on('SIGTERM', () => {
  console.log(`[${name}] SIGTERM: unloading`)
  process.exit(0)
})
