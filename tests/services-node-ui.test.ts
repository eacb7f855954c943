// What the node's boot and UI need from ServiceSupervisor (issue 19 §3, §5): starting the services
// its user switched on, a stop that shows at once, when a service started and how it last ended,
// and a hook that gives each spawn its extra environment. Real child processes (node -e scripts).
import { ServiceConfig, ServiceEvent } from '../gpu-sidecar'
import { of, supervise } from './services-support'
import { waitFor } from './support'

const READY = { logLine: { pattern: '\\[SERVICE_READY\\]' } }

/** A node service: prints its MODEL_DIR and LEVEL, says ready after `loadMs`, then idles. */
function nodeService(name: string, rest: Partial<ServiceConfig> = {}, loadMs = 50, onTerm = 'process.exit(0)'): ServiceConfig {
  const script =
    `process.on('SIGTERM', () => { ${onTerm} });` +
    "console.log('ENV', process.env.MODEL_DIR ?? '-', process.env.LEVEL ?? '-');" +
    `setTimeout(() => console.log('[SERVICE_READY]'), ${loadMs}); setInterval(() => {}, 1000)`
  return { name, command: process.execPath, args: ['-e', script], readiness: READY, stopTimeoutMs: 5000, ...rest }
}

function envLines(events: ServiceEvent[], service: string): string[] {
  return of(events, service, 'log').map((e) => e.line).filter((l) => l.startsWith('ENV '))
}

describe('startAll({ only })', () => {
  test("starts the chosen services and what they depend on, in start order, one load at a time; the rest stay idle", async () => {
    const { supervisor, events } = supervise({
      maxConcurrentStarts: 1,
      services: [
        nodeService('asr', { dependsOn: ['vad'] }, 150),
        nodeService('vad', {}, 150),
        nodeService('nmt', {}, 150),
        nodeService('tts', {}, 150),
      ],
    })
    // The node's preference map, as its config holds it.
    const prefs: Record<string, boolean> = { asr: true, nmt: false, tts: true }
    const outcomes = await supervisor.startAll({ only: Object.keys(prefs).filter((id) => prefs[id]) })
    expect(outcomes.map((o) => [o.service, o.status])).toEqual([['vad', 'ready'], ['asr', 'ready'], ['tts', 'ready']])
    expect(supervisor.status('nmt').state).toBe('idle')
    expect(of(events, 'nmt', 'starting')).toEqual([])
    // One load at a time: each starts only after the one before it is ready.
    const at = (service: string, type: 'starting' | 'ready') => of(events, service, type)[0].at
    expect(at('asr', 'starting')).toBeGreaterThanOrEqual(at('vad', 'ready'))
    expect(at('tts', 'starting')).toBeGreaterThanOrEqual(at('asr', 'ready'))
  })

  test('an unknown name rejects with UNKNOWN_SERVICE naming it, and nothing starts; a bad argument throws INVALID_ARGUMENT', async () => {
    const { supervisor, events } = supervise({ services: [nodeService('asr')] })
    await expect(supervisor.startAll({ only: ['asr', 'ocr'] })).rejects.toMatchObject({
      code: 'UNKNOWN_SERVICE',
      message: 'options.only[1]: no service named "ocr"',
    })
    expect(() => supervisor.startAll({ only: 'asr' } as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('options.only') }))
    expect(supervisor.status('asr').state).toBe('idle')
    expect(of(events, 'asr', 'spawned')).toEqual([])
  })
})

describe('what the UI shows', () => {
  test("a stop shows at once: 'stopping' in the same turn and a stopping event, until the process is gone", async () => {
    // Takes 600 ms to exit after SIGTERM, as a model service unloading would.
    const { supervisor, events } = supervise({ services: [nodeService('asr', {}, 50, 'setTimeout(() => process.exit(0), 600)')] })
    await supervisor.startAll()
    const running = supervisor.status('asr')
    expect(running.state).toBe('ready')
    expect(running.startedAt).toBe(of(events, 'asr', 'spawned')[0].at)
    expect(running.lastExit).toBeNull()
    const stopping = supervisor.stop('asr')
    expect(supervisor.status('asr').state).toBe('stopping')
    await waitFor(() => of(events, 'asr', 'stopping').length === 1, 2000, 'the stopping event')
    expect(supervisor.status('asr').state).toBe('stopping')
    await stopping
    const stopped = supervisor.status('asr')
    expect(stopped.state).toBe('stopped')
    expect(stopped.startedAt).toBeNull()
    expect(stopped.lastExit).toEqual({ code: 0, signal: null, at: expect.any(Number) })
    expect(stopped.lastExit!.at - of(events, 'asr', 'stopping')[0].at).toBeGreaterThanOrEqual(500)
    expect(events.findIndex((e) => e.type === 'stopping')).toBeLessThan(events.findIndex((e) => e.type === 'stopped'))
  })

  test('lastExit keeps how a crash ended (code) and how a killed one ended (signal)', async () => {
    const crash: ServiceConfig = {
      name: 'crash',
      command: process.execPath,
      args: ['-e', "console.log('[SERVICE_READY]'); setTimeout(() => process.exit(3), 100)"],
      readiness: READY,
      restart: { policy: 'no' },
    }
    const stubborn = nodeService('stubborn', { stopTimeoutMs: 300 }, 10, '/* ignores SIGTERM */')
    const { supervisor } = supervise({ services: [crash, stubborn] })
    await supervisor.startAll()
    await waitFor(() => supervisor.status('crash').state === 'failed', 5000, 'the crash')
    expect(supervisor.status('crash').lastExit).toEqual({ code: 3, signal: null, at: expect.any(Number) })
    await supervisor.stop('stubborn')
    expect(supervisor.status('stubborn').lastExit).toMatchObject({ code: null, signal: 'SIGKILL' })
  })
})

describe('beforeSpawn', () => {
  test('gives each spawn, restarts included, the environment it answers (a promise too); it wins over the config env', async () => {
    const crashOnce: ServiceConfig = {
      ...nodeService('asr', { env: { MODEL_DIR: '/from/config', LEVEL: 'config' }, restart: { policy: 'on-failure', backoffMs: 50 } }),
    }
    // The first run exits 1 once ready; the restart stays up.
    crashOnce.args = ['-e', "console.log('ENV', process.env.MODEL_DIR, process.env.LEVEL); console.log('[SERVICE_READY]'); if (process.env.MODEL_DIR.endsWith('/0')) setTimeout(() => process.exit(1), 100); setInterval(() => {}, 1000)"]
    const { supervisor, events } = supervise({ services: [crashOnce, nodeService('tts')] })
    const asked: Array<[string, number]> = []
    supervisor.beforeSpawn(async (service, attempt) => {
      asked.push([service, attempt])
      await new Promise((r) => setTimeout(r, 20))
      return service === 'asr' ? { MODEL_DIR: `/models/asr/${attempt}` } : undefined
    })
    await supervisor.startAll()
    await waitFor(() => envLines(events, 'asr').length === 2 && supervisor.status('asr').state === 'ready', 10000, 'the restart')
    expect(envLines(events, 'asr')).toEqual(['ENV /models/asr/0 config', 'ENV /models/asr/1 config'])
    expect(envLines(events, 'tts')).toEqual(['ENV - -'])
    expect(asked).toEqual(expect.arrayContaining([['asr', 0], ['asr', 1], ['tts', 0]]))
    // Removed: the next start spawns with the config's env only.
    supervisor.beforeSpawn(null)
    await supervisor.restart('tts')
    expect(envLines(events, 'tts')).toEqual(['ENV - -', 'ENV - -'])
  })

  test('a hook that throws, rejects or answers junk fails that start with SPAWN_FAILED saying so; nothing is spawned', async () => {
    const services = [nodeService('a'), nodeService('b'), nodeService('c'), nodeService('d')]
    const { supervisor, events } = supervise({ services })
    supervisor.beforeSpawn((service) => {
      if (service === 'a') throw new Error('no model folder for a')
      if (service === 'b') return Promise.reject(new Error('disk gone'))
      // A promise's value is read as any argument is: NaN is refused, with its path.
      if (service === 'd') return Promise.resolve({ MODEL_DIR: NaN }) as never
      return { MODEL_DIR: { nested: true } } as never
    })
    const outcomes = await supervisor.startAll()
    expect(outcomes.map((o) => (o.status === 'failed' ? [o.service, o.error.code, o.error.message] : o.status))).toEqual([
      ['a', 'SPAWN_FAILED', 'a: the beforeSpawn hook threw: no model folder for a'],
      ['b', 'SPAWN_FAILED', 'b: the beforeSpawn hook rejected: disk gone'],
      ['c', 'SPAWN_FAILED', 'c: the beforeSpawn hook answered env.MODEL_DIR: expected a string, got an object'],
      ['d', 'SPAWN_FAILED', 'd: the beforeSpawn hook answered env.MODEL_DIR: expected a finite number, got NaN'],
    ])
    expect(events.filter((e) => e.type === 'spawned')).toEqual([])
    expect(() => supervisor.beforeSpawn('yes' as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })
})

describe('setServices', () => {
  test('adds, removes and changes services while the others run: their pids do not change, nothing new starts', async () => {
    const { supervisor, events } = supervise({ services: [nodeService('asr'), nodeService('nmt'), nodeService('tts')] })
    await supervisor.startAll()
    const pids = Object.fromEntries(supervisor.statuses().map((s) => [s.name, s.pid]))
    const update = await supervisor.setServices([
      nodeService('asr', { env: { LEVEL: 'changed' } }),
      nodeService('tts'),
      nodeService('semantic'),
    ])
    expect(update).toEqual({ added: ['semantic'], changed: ['asr'], removed: ['nmt'] })
    expect(supervisor.statuses().map((s) => [s.name, s.state, s.pid])).toEqual([
      ['asr', 'ready', pids.asr],
      ['tts', 'ready', pids.tts],
      ['semantic', 'idle', null],
    ])
    expect(() => supervisor.status('nmt')).toThrow(expect.objectContaining({ code: 'UNKNOWN_SERVICE' }))
    expect(events.filter((e) => ['added', 'changed', 'removed'].includes(e.type)).map((e) => [e.type, e.service])).toEqual([
      ['changed', 'asr'],
      ['added', 'semantic'],
      ['removed', 'nmt'],
    ])
    expect(of(events, 'nmt', 'stopped')).toHaveLength(1)
    // The change is in effect at the next start.
    await supervisor.restart('asr')
    expect(envLines(events, 'asr')).toEqual(['ENV - -', 'ENV - changed'])
  })

  test('an invalid list changes nothing and rejects with INVALID_CONFIG and its JSON path', async () => {
    const { supervisor } = supervise({ services: [nodeService('asr')] })
    await expect(supervisor.setServices([nodeService('asr'), { ...nodeService('x'), command: '' }])).rejects.toMatchObject({
      code: 'INVALID_CONFIG',
      message: 'services[1].command: expected a non-empty string',
    })
    await expect(supervisor.setServices([{ ...nodeService('b'), dependsOn: ['ghost'] }])).rejects.toMatchObject({
      code: 'INVALID_CONFIG',
      message: 'services[0].dependsOn[0]: unknown service "ghost"',
    })
    expect(supervisor.statuses().map((s) => s.name)).toEqual(['asr'])
  })
})
