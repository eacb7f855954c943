// Helpers for the after-ready service suites: a supervisor whose events are collected and which
// is closed after each test, the after_ready.py fixture, free ports and process liveness.
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { ServiceConfig, ServiceEvent, ServicesConfig, ServiceSupervisor } from '../gpu-sidecar'

export const AFTER_READY = join(__dirname, 'fixtures', 'services', 'after_ready.py')
export const READY_LINE = { logLine: { pattern: '\\[SERVICE_READY\\]' } }

/** An after_ready.py service in `mode` with `flags`. */
export function py(name: string, mode: string, flags: Array<string | number> = [], rest: Partial<ServiceConfig> = {}): ServiceConfig {
  return {
    name,
    command: 'python3',
    args: [AFTER_READY, '--mode', mode, ...flags.map(String)],
    readiness: READY_LINE,
    stopTimeoutMs: 1000,
    ...rest,
  }
}

const open: ServiceSupervisor[] = []

export function supervise(config: ServicesConfig) {
  const supervisor = new ServiceSupervisor(config)
  open.push(supervisor)
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  return { supervisor, events }
}

afterEach(async () => {
  for (const s of open.splice(0)) await s.close()
})

export function of<T extends ServiceEvent['type']>(events: ServiceEvent[], service: string, type: T) {
  return events.filter((e): e is Extract<ServiceEvent, { type: T }> => e.service === service && e.type === type)
}

export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  await new Promise((r) => server.close(r))
  return port
}

export { alive } from './support'
