// ServiceSupervisor with real processes: small Python services (tests/fixtures/services) that
// sleep to play a model load and then print a marker, serve /health, accept TCP, or crash.
import { spawn, spawnSync } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { createServer, Server } from 'node:net'
import { join, resolve } from 'node:path'
import { GpuArbiter, ServiceConfig, ServiceEvent, ServicesConfig, ServiceSupervisor, Telemetry, TelemetrySample, loadConfig } from '../gpu-sidecar'
import { of, supervise } from './services-support'
import { alive, oneGpuSample, procStat as stat, sleep, tempDir, waitFor } from './support'

const ROOT = resolve(__dirname, '..')
const FIXTURES = join(__dirname, 'fixtures', 'services')
const SERVICE = join(FIXTURES, 'service.py')
const READY_LINE = { logLine: { pattern: '\\[SERVICE_READY\\]' } }

/** A service.py service; `extra` are its flags (`--load-ms`, `--port`, ...). */
function py(name: string, mode: string, extra: Array<string | number> = [], rest: Partial<ServiceConfig> = {}): ServiceConfig {
  return {
    name,
    command: 'python3',
    args: [SERVICE, '--mode', mode, '--name', name, ...extra.map(String)],
    readiness: READY_LINE,
    stopTimeoutMs: 2000,
    ...rest,
  }
}


function indexOf(events: ServiceEvent[], check: (e: ServiceEvent) => boolean): number {
  const i = events.findIndex(check)
  if (i < 0) throw new Error('no such event')
  return i
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  await new Promise((r) => server.close(r))
  return port
}

function allPids(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number)
}

/** Unreaped children of this process. */
function zombieChildren(): number[] {
  return allPids().filter((pid) => {
    const fields = stat(pid)
    return fields !== null && fields[0] === 'Z' && Number(fields[1]) === process.pid
  })
}

/** Live processes in process group `pgid`. */
function groupMembers(pgid: number): number[] {
  return allPids().filter((pid) => {
    const fields = stat(pid)
    return fields !== null && fields[0] !== 'Z' && Number(fields[2]) === pgid
  })
}

describe('runtime', () => {
  // Linux shows thread names in /proc; elsewhere there is nothing to read them from.
  const linux = process.platform === 'linux' ? test : test.skip
  linux("the supervisor's work runs on the addon's named runtime (gpu-sidecar-rt), not napi's default", async () => {
    const { supervisor } = supervise({ services: [] })
    await supervisor.startAll()
    const names = readdirSync('/proc/self/task').map((t) => readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim())
    expect(names).toContain('gpu-sidecar-rt')
    expect(names.filter((n) => n.startsWith('tokio-runtime'))).toEqual([])
  })
})

describe('readiness', () => {
  test('logLine: ready only once the pattern is printed', async () => {
    const { supervisor, events } = supervise({ services: [py('asr', 'log', ['--load-ms', 300])] })
    const [outcome] = await supervisor.startAll()
    expect(outcome).toMatchObject({ service: 'asr', status: 'ready' })
    const marker = indexOf(events, (e) => e.type === 'log' && e.line.includes('[SERVICE_READY]'))
    const ready = indexOf(events, (e) => e.type === 'ready')
    expect(ready).toBeGreaterThan(marker)
    expect(events.map((e) => e.type).slice(0, 2)).toEqual(['starting', 'spawned'])
    const loading = of(events, 'asr', 'log')[0]
    expect(loading).toMatchObject({ stream: 'stdout', line: 'asr: loading model (300 ms)' })
    expect(supervisor.status('asr')).toMatchObject({ state: 'ready', pid: of(events, 'asr', 'spawned')[0].pid })
  })

  test('http: a {"status":"not_ready"} body is not ready; the same URL answering "ok" is', async () => {
    const port = await freePort()
    const { supervisor, events } = supervise({
      services: [
        py('nmt', 'http', ['--port', port, '--bind-early', '--load-ms', 700], {
          port,
          probeIntervalMs: 50,
          readiness: { http: { url: `http://127.0.0.1:${port}/health`, expectStatus: 200, jsonField: 'status', jsonValue: 'ok' } },
        }),
      ],
    })
    const [outcome] = await supervisor.startAll()
    expect(outcome).toMatchObject({ status: 'ready' })
    const failures = of(events, 'nmt', 'probe-failed').map((e) => e.reason)
    expect(failures.some((r) => r.includes('not_ready'))).toBe(true)
    const loaded = indexOf(events, (e) => e.type === 'log' && e.line.startsWith('READY_AT'))
    const ready = indexOf(events, (e) => e.type === 'ready')
    expect(ready).toBeGreaterThan(loaded)
    const lastNotReady = events.map((e) => e.type === 'probe-failed' && e.reason.includes('not_ready')).lastIndexOf(true)
    expect(lastNotReady).toBeLessThan(ready)
  })

  test('tcp: ready once the port accepts connections', async () => {
    const port = await freePort()
    const { supervisor, events } = supervise({
      services: [py('tts', 'tcp', ['--port', port, '--load-ms', 400], { port, probeIntervalMs: 50, readiness: { tcp: {} } })],
    })
    const [outcome] = await supervisor.startAll()
    expect(outcome).toMatchObject({ status: 'ready' })
    expect(of(events, 'tts', 'probe-failed').length).toBeGreaterThan(0)
    expect(indexOf(events, (e) => e.type === 'ready')).toBeGreaterThan(indexOf(events, (e) => e.type === 'log' && e.line.startsWith('READY_AT')))
  })

  test('none: ready as soon as it is spawned', async () => {
    const { supervisor, events } = supervise({ services: [py('plain', 'never', [], { readiness: { none: {} } })] })
    expect(await supervisor.startAll()).toEqual([{ service: 'plain', status: 'ready', timeToReadyMs: expect.any(Number) }])
    expect(events.map((e) => e.type).slice(0, 3)).toEqual(['starting', 'spawned', 'ready'])
  })
})

describe('failures', () => {
  test('readiness timeout: stopped and failed with READINESS_TIMEOUT, never ready; dependents blocked, independent ones start', async () => {
    const { supervisor, events } = supervise({
      services: [
        py('slow', 'never', [], { readinessTimeoutMs: 800 }),
        py('dependent', 'log', [], { dependsOn: ['slow'] }),
        py('independent', 'log'),
      ],
    })
    const outcomes = await supervisor.startAll()
    expect(outcomes).toEqual([
      { service: 'slow', status: 'failed', error: { code: 'READINESS_TIMEOUT', message: expect.stringContaining('not ready after 800 ms') }, lastLines: expect.any(Array) },
      { service: 'dependent', status: 'blocked', dependency: 'slow' },
      { service: 'independent', status: 'ready', timeToReadyMs: expect.any(Number) },
    ])
    expect(of(events, 'slow', 'ready')).toEqual([])
    expect(of(events, 'slow', 'readiness-timeout')).toEqual([expect.objectContaining({ timeoutMs: 800 })])
    expect(of(events, 'dependent', 'blocked')).toEqual([expect.objectContaining({ dependency: 'slow' })])
    expect(of(events, 'dependent', 'spawned')).toEqual([])
    const pid = of(events, 'slow', 'spawned')[0].pid
    expect(alive(pid)).toBe(false)
    expect(supervisor.status('slow')).toMatchObject({ state: 'failed', pid: null, error: { code: 'READINESS_TIMEOUT' } })
    expect(supervisor.status('dependent')).toMatchObject({ state: 'blocked', blockedBy: 'slow' })
  })

  test('a process that exits during startup fails at once with its exit code and last lines', async () => {
    const { supervisor, events } = supervise({ services: [py('asr', 'crash', ['--exit-code', 7, '--load-ms', 100], { readinessTimeoutMs: 30000 })] })
    const started = Date.now()
    const outcome = await supervisor.start('asr')
    expect(Date.now() - started).toBeLessThan(10000) // well before the 30 s readiness timeout
    expect(outcome).toMatchObject({ service: 'asr', status: 'failed', error: { code: 'SERVICE_EXITED' } })
    if (outcome.status !== 'failed') throw new Error('unreachable')
    expect(outcome.error.message).toContain('exit code 7')
    expect(outcome.error.message).toContain('during startup')
    expect(outcome.lastLines).toEqual(expect.arrayContaining(['asr: loading weights', 'asr: CUDA error: out of memory']))
    expect(of(events, 'asr', 'exited')).toEqual([expect.objectContaining({ exitCode: 7, signal: null })])
    expect(of(events, 'asr', 'log').find((e) => e.line.includes('CUDA error'))).toMatchObject({ stream: 'stderr' })
  })

  test('restarts follow the policy with exponential backoff up to maxBackoffMs, then failed', async () => {
    const { supervisor, events } = supervise({
      services: [py('flaky', 'crash', ['--exit-code', 2], { restart: { policy: 'on-failure', maxRestarts: 3, backoffMs: 200, maxBackoffMs: 500, jitter: 0 } })],
    })
    const [outcome] = await supervisor.startAll()
    expect(outcome).toMatchObject({ status: 'failed', error: { code: 'SERVICE_EXITED', message: expect.stringContaining('after 3 restarts') } })
    const restarting = of(events, 'flaky', 'restarting')
    expect(restarting.map((e) => [e.attempt, e.delayMs])).toEqual([
      [1, 200],
      [2, 400],
      [3, 500],
    ])
    const starts = of(events, 'flaky', 'starting')
    expect(starts.map((e) => e.attempt)).toEqual([0, 1, 2, 3])
    // The pause between a restart's announcement and its start is the delay, in order of magnitude.
    restarting.forEach((r, i) => {
      const gap = starts[i + 1].at - r.at
      expect(gap).toBeGreaterThanOrEqual(r.delayMs - 5)
      expect(gap).toBeLessThan(r.delayMs * 2 + 300)
    })
    expect(of(events, 'flaky', 'exited')).toHaveLength(4)
    expect(of(events, 'flaky', 'failed')).toHaveLength(1)
    expect(supervisor.status('flaky')).toMatchObject({ state: 'failed', restarts: 3 })
  })

  test('dependencies start first, then config order; a failed dependency blocks its whole chain', async () => {
    const { supervisor, events } = supervise({
      services: [
        py('web', 'log', [], { dependsOn: ['db', 'cache'] }),
        py('db', 'log'),
        py('cache', 'log', [], { dependsOn: ['db'] }),
        py('solo', 'log'),
        py('base', 'crash'),
        py('mid', 'log', [], { dependsOn: ['base'] }),
        py('top', 'log', [], { dependsOn: ['mid'] }),
      ],
    })
    const outcomes = await supervisor.startAll()
    expect(outcomes.map((o) => [o.service, o.status])).toEqual([
      ['db', 'ready'],
      ['cache', 'ready'],
      ['web', 'ready'],
      ['solo', 'ready'],
      ['base', 'failed'],
      ['mid', 'blocked'],
      ['top', 'blocked'],
    ])
    expect(events.filter((e) => e.type === 'spawned').map((e) => e.service)).toEqual(['db', 'cache', 'web', 'solo', 'base'])
    // One load at a time (the default): each starts after the previous one was ready.
    for (const [before, after] of [['db', 'cache'], ['cache', 'web'], ['web', 'solo']]) {
      expect(indexOf(events, (e) => e.service === after && e.type === 'starting')).toBeGreaterThan(indexOf(events, (e) => e.service === before && e.type === 'ready'))
    }
    expect(outcomes[5]).toEqual({ service: 'mid', status: 'blocked', dependency: 'base' })
    expect(outcomes[6]).toEqual({ service: 'top', status: 'blocked', dependency: 'mid' })
  })

  test('a dependency cycle is INVALID_CONFIG naming it, from the constructor and from loadConfig', () => {
    const services = [py('x', 'log'), py('a', 'log', [], { dependsOn: ['b'] }), py('b', 'log', [], { dependsOn: ['a'] })]
    expect(() => new ServiceSupervisor({ services })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: 'services: dependency cycle: a -> b -> a' }),
    )
    const path = join(tempDir(), 'electron-node-config.json')
    writeFileSync(path, JSON.stringify({ gpuArbiter: {}, services: { services } }))
    expect(() => loadConfig(path)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: 'services: dependency cycle: a -> b -> a' }))
  })

  test('a bad field is INVALID_CONFIG with its JSON path; loadConfig output feeds the constructor', async () => {
    expect(() => new ServiceSupervisor({ services: [{ name: 'a', command: 'x', readiness: { http: { url: 'https://x/health' } } }] })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(/^services\.services\[0\]\.readiness\.http\.url: /) }),
    )
    expect(() => new ServiceSupervisor({ maxConcurrentStarts: 0, services: [] })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(/^services\.maxConcurrentStarts: /) }),
    )
    const path = join(tempDir(), 'electron-node-config.json')
    writeFileSync(path, JSON.stringify({ services: { services: [py('fromfile', 'log')] } }))
    const { supervisor } = supervise(loadConfig(path).services!)
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ service: 'fromfile', status: 'ready' })])
  })

  test('a taken port fails at once with PORT_IN_USE naming the pid that holds it', async () => {
    const holder: Server = createServer()
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r))
    const port = (holder.address() as { port: number }).port
    try {
      const { supervisor, events } = supervise({ services: [py('asr', 'log', [], { port })] })
      const [outcome] = await supervisor.startAll()
      expect(outcome).toMatchObject({ status: 'failed', error: { code: 'PORT_IN_USE' } })
      if (outcome.status !== 'failed') throw new Error('unreachable')
      expect(outcome.error.message).toContain(`port ${port} is already in use by pid ${process.pid}`)
      expect(of(events, 'asr', 'spawned')).toEqual([])
    } finally {
      await new Promise((r) => holder.close(r))
    }
  })

  test('unknown names reject with UNKNOWN_SERVICE; a closed supervisor rejects starts with CLOSED', async () => {
    const { supervisor } = supervise({ services: [py('asr', 'log')] })
    await expect(supervisor.start('nope')).rejects.toMatchObject({ code: 'UNKNOWN_SERVICE' })
    await expect(supervisor.stop('nope')).rejects.toMatchObject({ code: 'UNKNOWN_SERVICE' })
    expect(() => supervisor.status('nope')).toThrow(expect.objectContaining({ code: 'UNKNOWN_SERVICE' }))
    await supervisor.close()
    await expect(supervisor.startAll()).rejects.toMatchObject({ code: 'CLOSED', message: 'the service supervisor is closed' })
    await expect(supervisor.start('asr')).rejects.toMatchObject({ code: 'CLOSED' })
  })
})

describe('scheduling', () => {
  test('maxConcurrentStarts bounds how many services load at once (from event timestamps)', async () => {
    const names = ['s1', 's2', 's3', 's4', 's5']
    const { supervisor, events } = supervise({ maxConcurrentStarts: 2, services: names.map((n) => py(n, 'log', ['--load-ms', 400])) })
    const outcomes = await supervisor.startAll()
    expect(outcomes.every((o) => o.status === 'ready')).toBe(true)
    const loads = names.map((n) => [of(events, n, 'starting')[0].at, of(events, n, 'ready')[0].at])
    const loadingAt = (t: number) => loads.filter(([from, to]) => from <= t && t < to).length
    const peak = Math.max(...loads.map(([from]) => loadingAt(from)))
    expect(peak).toBe(2)
  })

  test('restart(name) stops and starts one service; stop leaves dependents alone', async () => {
    const { supervisor, events } = supervise({ services: [py('db', 'log'), py('api', 'log', [], { dependsOn: ['db'] })] })
    await supervisor.startAll()
    const first = supervisor.status('db').pid!
    expect(await supervisor.restart('db')).toMatchObject({ service: 'db', status: 'ready' })
    const second = supervisor.status('db').pid!
    expect(second).not.toBe(first)
    expect(alive(first)).toBe(false)
    expect(supervisor.status('api').state).toBe('ready')
    await supervisor.stopAll()
    expect(supervisor.statuses().map((s) => [s.name, s.state])).toEqual([
      ['db', 'stopped'],
      ['api', 'stopped'],
    ])
    // Dependents stop before what they depend on.
    const stopped = events.filter((e) => e.type === 'stopped').map((e) => e.service)
    expect(stopped.slice(-2)).toEqual(['api', 'db'])
  })
})

describe('gpuStartupLease', () => {
  test('GPU services hold an arbiter lease on their GPU while they load: one load at a time per GPU', async () => {
    const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'], maxConcurrentLeases: 1 })
    const { supervisor, events } = supervise({
      gpuStartupLease: true,
      maxConcurrentStarts: 3,
      services: [
        py('asr', 'log', ['--load-ms', 300], { gpu: { key: 'gpu:0' } }),
        py('tts', 'log', ['--load-ms', 300], { gpu: { key: 'gpu:0' } }),
        py('cpu', 'log', ['--load-ms', 300]),
      ],
    })
    supervisor.attachArbiter(arbiter)
    const leases: Array<{ type: string; at: number; job: string }> = []
    arbiter.onEvent((e) => {
      if (e.type === 'acquired' || e.type === 'released') leases.push({ type: e.type, at: e.at, job: e.trace?.jobId ?? '' })
    })
    const outcomes = await supervisor.startAll()
    expect(outcomes.map((o) => o.status)).toEqual(['ready', 'ready', 'ready'])
    // Three start slots, but one lease on gpu:0: the GPU services load one after the other (in
    // whichever order their lease requests reached the arbiter), the CPU one beside them.
    const spawnedAt = (name: string) => indexOf(events, (e) => e.service === name && e.type === 'spawned')
    const readyAt = (name: string) => indexOf(events, (e) => e.service === name && e.type === 'ready')
    const [first, second] = spawnedAt('asr') < spawnedAt('tts') ? ['asr', 'tts'] : ['tts', 'asr']
    expect(spawnedAt(second)).toBeGreaterThan(readyAt(first))
    expect(spawnedAt('cpu')).toBeLessThan(readyAt(first))
    await waitFor(() => leases.length === 4, 2000, 'both leases to be released')
    expect(leases.map((l) => `${l.type} ${l.job}`)).toEqual([`acquired ${first}`, `released ${first}`, `acquired ${second}`, `released ${second}`])
    // Each lease covers its service's load: from before its spawn to its ready.
    for (const [i, name] of [[0, first], [2, second]] as const) {
      expect(leases[i].at).toBeLessThanOrEqual(of(events, name, 'spawned')[0].at + 1)
      expect(leases[i + 1].at).toBeGreaterThanOrEqual(of(events, name, 'ready')[0].at - 1)
    }
    await waitFor(() => arbiter.snapshot('gpu:0')!.activeLeases.length === 0, 2000, 'the leases to be released')
    const stats = arbiter.snapshot('gpu:0')!.tasks.find((t) => t.taskType === 'SERVICE_STARTUP')
    expect(stats).toMatchObject({ acquired: 2 })
    arbiter.close()
  })

  test('a lease the arbiter does not grant fails that start with GPU_LEASE_NOT_GRANTED', async () => {
    const arbiter = new GpuArbiter({ gpuKeys: ['gpu:1'] })
    const { supervisor, events } = supervise({ gpuStartupLease: true, services: [py('asr', 'log', [], { gpu: { key: 'gpu:0' } }), py('cpu', 'log')] })
    supervisor.attachArbiter(arbiter)
    const outcomes = await supervisor.startAll()
    expect(outcomes[0]).toMatchObject({ service: 'asr', status: 'failed', error: { code: 'GPU_LEASE_NOT_GRANTED', message: expect.stringContaining('asr: startup lease not granted') } })
    expect(outcomes[1]).toMatchObject({ service: 'cpu', status: 'ready' })
    expect(of(events, 'asr', 'spawned')).toEqual([])
    arbiter.close()
  })
})

describe('events', () => {
  test('unsubscribing and close: no listener is called afterwards', async () => {
    const supervisor = new ServiceSupervisor({ services: [py('a', 'log'), py('b', 'log')] })
    const seen: ServiceEvent[] = []
    const unsubscribe = supervisor.onEvent((e) => seen.push(e))
    const other: ServiceEvent[] = []
    supervisor.onEvent((e) => other.push(e))
    await supervisor.start('a')
    await sleep(20)
    unsubscribe()
    const count = seen.length
    await supervisor.start('b')
    await sleep(20)
    expect(seen.length).toBe(count)
    expect(other.some((e) => e.service === 'b' && e.type === 'ready')).toBe(true)
    const beforeClose = other.length
    const closing = supervisor.close()
    await closing
    await sleep(50)
    expect(other.length).toBe(beforeClose) // the stops happened, but no 'stopped' reached a listener
    expect(supervisor.statuses().every((s) => s.state === 'stopped')).toBe(true)
    expect(() => supervisor.onEvent(() => {})).toThrow(expect.objectContaining({ code: 'CLOSED' }))
  })
})

// ---- telemetry: the VRAM gate on replayed samples, labels on live ones ----

const t0 = 1_790_000_000_000

/** One recorded sample with one GPU (`gpu:0`, 80 GB). */
function sampleLine(at: number, freeMb: number, processes: Array<{ pid: number; usedMb: number; service: string | null }> = []): string {
  return JSON.stringify(oneGpuSample({ at, freeMb, processes }))
}

/** A Telemetry replaying `lines` (real time unless `replaySpeed` says otherwise), once its first sample is in. */
async function replayed(lines: string[], replaySpeed = 1) {
  const path = join(tempDir(), 'vram.jsonl')
  writeFileSync(path, lines.join('\n') + '\n')
  const telemetry = new Telemetry({ replay: path, replaySpeed })
  await new Promise<void>((r) => {
    const off = telemetry.onSample(() => {
      off()
      r()
    })
  })
  return telemetry
}

describe('VRAM gate', () => {
  const telemetries: Telemetry[] = []
  afterEach(() => {
    for (const t of telemetries.splice(0)) t.close()
  })

  test('a GPU service waits for free memory (vram-wait), then starts', async () => {
    // Free memory rises 2 GB -> 4 GB -> 8 GB, one sample every 400 ms.
    const telemetry = await replayed([sampleLine(t0, 2000), sampleLine(t0 + 400, 4000), sampleLine(t0 + 800, 8000)])
    telemetries.push(telemetry)
    const { supervisor, events } = supervise({
      vramHeadroomMb: 512,
      services: [py('asr', 'log', [], { gpu: { key: 'gpu:0', vramMb: 5000 }, probeIntervalMs: 20 })],
    })
    supervisor.attachTelemetry(telemetry)
    const [outcome] = await supervisor.startAll()
    expect(outcome).toMatchObject({ status: 'ready' })
    const [wait] = of(events, 'asr', 'vram-wait')
    expect(wait).toMatchObject({ gpuKey: 'gpu:0', neededMb: 5512 })
    expect(wait.freeMb).toBeLessThan(5512)
    const spawned = of(events, 'asr', 'spawned')[0]
    expect(spawned.at).toBeGreaterThan(wait.at)
    // It spawned only once the 8 GB sample was played (two intervals of 400 ms after the first).
    expect(spawned.at - wait.at).toBeGreaterThanOrEqual(300)
    expect(of(events, 'asr', 'vram-gate-off')).toEqual([])
  })

  test('not enough memory within vramTimeoutMs: failed with VRAM_TIMEOUT, never spawned', async () => {
    const telemetry = await replayed([sampleLine(t0, 1000), sampleLine(t0 + 5000, 1500)])
    telemetries.push(telemetry)
    const { supervisor, events } = supervise({
      vramTimeoutMs: 600,
      services: [py('tts', 'log', [], { gpu: { key: 'gpu:0', vramMb: 4000 }, probeIntervalMs: 50 }), py('cpu', 'log')],
    })
    supervisor.attachTelemetry(telemetry)
    const outcomes = await supervisor.startAll()
    expect(outcomes[0]).toMatchObject({ service: 'tts', status: 'failed', error: { code: 'VRAM_TIMEOUT', message: expect.stringContaining('gpu:0 had 1000 MB free') } })
    expect(outcomes[1]).toMatchObject({ service: 'cpu', status: 'ready' })
    expect(of(events, 'tts', 'vram-wait')).toHaveLength(1)
    expect(of(events, 'tts', 'spawned')).toEqual([])
  })

  test('no telemetry attached (or detached): the gate is off and says so', async () => {
    const { supervisor, events } = supervise({ services: [py('asr', 'log', [], { gpu: { key: 'gpu:0', vramMb: 5000 } })] })
    const telemetry = await replayed([sampleLine(t0, 1000)])
    const detach = supervisor.attachTelemetry(telemetry)
    detach()
    telemetry.close()
    expect(() => supervisor.attachTelemetry(telemetry)).toThrow(expect.objectContaining({ code: 'CLOSED' }))
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
    expect(of(events, 'asr', 'vram-wait')).toEqual([])
    expect(of(events, 'asr', 'vram-gate-off')).toEqual([expect.objectContaining({ gpuKey: 'gpu:0', reason: expect.stringContaining('no VRAM telemetry') })])
  })

  test('live telemetry without NVML: gate off, and the service pid is labelled in host.processes', async () => {
    const telemetry = new Telemetry({ intervalMs: 100 })
    telemetries.push(telemetry)
    const samples: TelemetrySample[] = []
    telemetry.onSample((s) => samples.push(s))
    await waitFor(() => samples.length > 0, 5000, 'a first sample')
    const { supervisor, events } = supervise({ services: [py('asr', 'log', [], { gpu: { key: 'gpu:0', vramMb: 5000 } })] })
    supervisor.attachTelemetry(telemetry)
    await supervisor.startAll()
    const pid = supervisor.status('asr').pid!
    if (samples[0].nvml.available) return // a machine with a GPU: the gate is on; tests/gpu covers it
    expect(of(events, 'asr', 'vram-gate-off')).toHaveLength(1)
    const labelled = await waitFor(() => samples.find((s) => s.host.processes.some((p) => p.pid === pid)), 3000, 'the service in host.processes')
    expect(labelled.host.processes).toContainEqual(expect.objectContaining({ pid, label: 'asr' }))
    await supervisor.stop('asr')
    expect(telemetry.unregisterProcess(pid)).toBe(false) // already unregistered when it stopped
  })

  test('the learned profile (stateFile) gates and predicts a second run', async () => {
    const stateFile = join(tempDir(), 'services-state.json')
    // Run 1: no vramMb, so the gate is off; the replayed per-process figures say it took 3000 MB.
    const first = await replayed([sampleLine(t0, 60000, [{ pid: 1, usedMb: 3000, service: 'learner' }])])
    telemetries.push(first)
    const run1 = supervise({ stateFile, services: [py('learner', 'log', ['--load-ms', 300], { gpu: { key: 'gpu:0' }, probeIntervalMs: 20 })] })
    run1.supervisor.attachTelemetry(first)
    expect(await run1.supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
    expect(of(run1.events, 'learner', 'vram-gate-off')[0].reason).toContain('no vramMb')
    await run1.supervisor.close()
    const saved = JSON.parse(readFileSync(stateFile, 'utf8'))
    // peakRssMb: the host memory its process tree took (the host-memory gate's need).
    expect(saved.services.learner).toEqual({ timeToReadyMs: expect.any(Number), peakVramMb: 3000, peakVramMethod: 'process', peakRssMb: expect.any(Number) })

    // Run 2: a new supervisor reads it back: the gate waits for 3000 + 512 MB.
    const second = await replayed([sampleLine(t0, 1000), sampleLine(t0 + 400, 20000)])
    telemetries.push(second)
    const run2 = supervise({ stateFile, services: [py('learner', 'log', [], { gpu: { key: 'gpu:0' }, probeIntervalMs: 20 })] })
    run2.supervisor.attachTelemetry(second)
    expect(run2.supervisor.status('learner').learned).toEqual({ timeToReadyMs: saved.services.learner.timeToReadyMs, peakVramMb: 3000, peakVramMethod: 'process', peakRssMb: saved.services.learner.peakRssMb })
    expect(await run2.supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
    expect(of(run2.events, 'learner', 'starting')[0].expectedReadyMs).toBe(saved.services.learner.timeToReadyMs)
    expect(of(run2.events, 'learner', 'vram-wait')).toEqual([expect.objectContaining({ neededMb: 3512, freeMb: 1000 })])
  })
})

describe('processes', () => {
  test('100 start/stop cycles leave no zombie and no stray process', async () => {
    // python3 -S (no site import) keeps each cycle short; the readiness check is still a real log line.
    const program = "import time; print('[SERVICE_READY]', flush=True); time.sleep(60)"
    const { supervisor, events } = supervise({
      services: [{ name: 'cycled', command: 'python3', args: ['-S', '-c', program], readiness: READY_LINE, stopTimeoutMs: 1000 }],
    })
    for (let i = 0; i < 100; i++) {
      expect(await supervisor.start('cycled')).toMatchObject({ status: 'ready' })
      await supervisor.stop('cycled')
    }
    await sleep(20)
    const pids = events.filter((e) => e.type === 'spawned').map((e) => (e as { pid: number }).pid)
    expect(new Set(pids).size).toBe(100)
    expect(pids.filter((pid) => stat(pid) !== null)).toEqual([]) // gone and reaped
    expect(pids.flatMap(groupMembers)).toEqual([])
    expect(zombieChildren()).toEqual([])
    expect(of(events, 'cycled', 'stopped')).toHaveLength(100)
  }, 60000)

  test('a service that forked a grandchild loses both on stop', async () => {
    const { supervisor, events } = supervise({
      services: [{ name: 'forker', command: 'python3', args: [join(FIXTURES, 'forker.py')], readiness: READY_LINE, stopTimeoutMs: 2000 }],
    })
    await supervisor.startAll()
    const pid = supervisor.status('forker').pid!
    const line = await waitFor(() => events.find((e) => e.type === 'log' && e.line.startsWith('GRANDCHILD ')), 2000, 'the grandchild pid')
    const grandchild = Number((line as { line: string }).line.split(' ')[1])
    expect(alive(grandchild)).toBe(true)
    expect(stat(grandchild)![2]).toBe(String(pid)) // it is in the service's process group
    await supervisor.stop('forker')
    expect(alive(pid)).toBe(false)
    await waitFor(() => !alive(grandchild), 2000, 'the grandchild to die')
    expect(groupMembers(pid)).toEqual([])
    expect(zombieChildren()).toEqual([])
  })

  test('a node process holding a supervisor is SIGKILLed: its services are gone within a second', async () => {
    const host = spawn(process.execPath, [join(FIXTURES, 'host.js'), ROOT], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    host.stdout!.on('data', (d) => (out += d))
    const line = await waitFor(() => out.split('\n').find((l) => l.startsWith('PIDS ')), 15000, 'the host to start its services')
    const { pids, grandchildren, outcomes } = JSON.parse(line.slice(5)) as { pids: number[]; grandchildren: number[]; outcomes: Array<{ status: string }> }
    try {
      expect(outcomes.map((o) => o.status)).toEqual(['ready', 'ready'])
      expect(pids).toHaveLength(2)
      expect(grandchildren).toHaveLength(1)
      expect([...pids, ...grandchildren].every(alive)).toBe(true)
      const exited = new Promise((r) => host.on('exit', r))
      const killedAt = Date.now()
      host.kill('SIGKILL')
      await exited
      // The services die by their death signal; the grandchild by the watchdog killing its group.
      await waitFor(() => [...pids, ...grandchildren].every((pid) => !alive(pid)), 1000, 'the services and the grandchild to die with their host')
      expect(Date.now() - killedAt).toBeLessThanOrEqual(1000)
    } finally {
      // Only if the assertions failed: leave nothing behind for the next tests, nor a host
      // process that keeps Jest from exiting.
      host.kill('SIGKILL')
      for (const pid of [...pids, ...grandchildren]) if (alive(pid)) process.kill(pid, 'SIGKILL')
    }
  })

  test('events alone do not keep Node alive; a pending promise does; exit takes the services along', () => {
    const script = `
      const { ServiceSupervisor } = require(${JSON.stringify(join(ROOT, 'gpu-sidecar.js'))})
      const s = new ServiceSupervisor({ services: [{ name: 'a', command: 'python3', args: [${JSON.stringify(SERVICE)}, '--load-ms', '300'], readiness: { logLine: { pattern: 'SERVICE_READY' } } }] })
      s.onEvent(() => {})
      s.startAll().then((o) => console.log('RESOLVED ' + JSON.stringify({ status: o[0].status, pid: s.status('a').pid })))
    `
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 15000 })
    expect(run.status).toBe(0) // it exited by itself, with the service still running
    const line = run.stdout.split('\n').find((l) => l.startsWith('RESOLVED '))!
    const { status, pid } = JSON.parse(line.slice(9))
    expect(status).toBe('ready')
    return waitFor(() => !alive(pid), 1000, 'the service to die with its host')
  })

  test('a garbage-collected supervisor leaves no children, and says so on stderr', () => {
    const script = `
      const { ServiceSupervisor } = require(${JSON.stringify(join(ROOT, 'gpu-sidecar.js'))})
      const fs = require('node:fs')
      const alive = (pid) => { try { return fs.readFileSync('/proc/' + pid + '/stat', 'utf8').split(') ')[1][0] !== 'Z' } catch { return false } }
      ;(async () => {
        let s = new ServiceSupervisor({ services: [{ name: 'a', command: 'python3', args: [${JSON.stringify(SERVICE)}], readiness: { logLine: { pattern: 'SERVICE_READY' } } }] })
        await s.startAll()
        const pid = s.status('a').pid
        s = null
        for (let i = 0; i < 50 && alive(pid); i++) { global.gc(); await new Promise((r) => setTimeout(r, 20)) }
        console.log('RESULT ' + JSON.stringify({ pid, alive: alive(pid) }))
      })()
    `
    const run = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 15000 })
    const line = run.stdout.split('\n').find((l) => l.startsWith('RESULT '))
    expect(line).toBeDefined()
    expect(JSON.parse(line!.slice(7))).toMatchObject({ alive: false })
    expect(run.stderr).toMatch(/warn: a ServiceSupervisor was dropped without close\(\).*"services":"a"/)
  })
})
