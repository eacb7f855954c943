// GPU memory as a managed resource (issue 10): on-demand services started by a lease request,
// stopped after keepAliveMs; eviction (priority, then least recently used; never pinned or
// leased) with its recovery wait; the out-of-memory retry. Python fake services (standard
// library) play the models; a manual Telemetry plays the GPU, its free memory following the
// services' declared use.
import { join } from 'node:path'
import { GpuArbiter, GpuLeaseAcquired, ServiceConfig, ServiceEvent, ServicesConfig, ServiceSupervisor, Telemetry } from '../gpu-sidecar'
import { of, READY_LINE, supervise } from './services-support'
import { oneGpuSample, sleep, tempDir, waitFor } from './support'

const FIXTURES = join(__dirname, 'fixtures', 'services')
const SERVICE = join(FIXTURES, 'service.py')
const OOM = join(FIXTURES, 'oom.py')
const TOTAL_MB = 10_000

/** A model service: loads for `loadMs`, then prints its ready line. */
function model(name: string, vramMb: number, rest: Partial<ServiceConfig> = {}, loadMs = 100): ServiceConfig {
  return {
    name,
    command: 'python3',
    args: [SERVICE, '--mode', 'log', '--load-ms', String(loadMs)],
    readiness: READY_LINE,
    stopTimeoutMs: 1000,
    ...rest,
    gpu: { key: 'gpu:0', vramMb, ...(rest.gpu ?? {}) },
  }
}

/**
 * One GPU whose used memory is the declared `vramMb` of every service process alive on it, as a
 * manual Telemetry shows it: pushed at every spawn and exit, and every 50 ms. A stopped service's
 * memory comes back `releaseDelayMs` after its exit, as a driver takes a moment to free it.
 */
function gpuFollowing(supervisor: ServiceSupervisor, config: ServicesConfig, releaseDelayMs = 0) {
  const telemetry = new Telemetry({ source: 'manual' })
  const need = new Map((config.services ?? []).map((s) => [s.name, s.gpu?.vramMb ?? 0]))
  const holding = new Map<string, number>()
  // A release timer may come due after the test closed the telemetry (the supervisor's last
  // 'stopped' event arrives during shutdown): it must then do nothing, not throw into the next
  // suite that shares this Jest worker.
  const releases = new Set<NodeJS.Timeout>()
  let closed = false
  const push = () => {
    if (closed) return
    const used = [...holding.values()].reduce((a, b) => a + b, 0)
    telemetry.push(oneGpuSample({ totalMb: TOTAL_MB, freeMb: TOTAL_MB - used }))
  }
  supervisor.onEvent((e) => {
    if (e.type === 'spawned') {
      holding.set(e.service, need.get(e.service) ?? 0)
      push()
    }
    // A stop on request ends with 'stopped' (no 'exited'); a process that ended by itself has both.
    if ((e.type === 'exited' || e.type === 'stopped') && holding.has(e.service)) {
      const release = setTimeout(() => {
        releases.delete(release)
        holding.delete(e.service)
        push()
      }, releaseDelayMs)
      releases.add(release)
    }
  })
  push()
  const timer = setInterval(push, 50)
  supervisor.attachTelemetry(telemetry)
  return {
    telemetry,
    close: () => {
      closed = true
      clearInterval(timer)
      for (const release of releases) clearTimeout(release)
      releases.clear()
      telemetry.close()
    },
  }
}

const closers: Array<() => void> = []
afterEach(() => {
  for (const close of closers.splice(0)) close()
})

function setUp(config: ServicesConfig, releaseDelayMs = 0) {
  const { supervisor, events } = supervise(config)
  const gpu = gpuFollowing(supervisor, config, releaseDelayMs)
  closers.push(gpu.close)
  return { supervisor, events }
}

function withArbiter(supervisor: ServiceSupervisor, policies: Record<string, { priority?: number; maxWaitMs?: number }> = {}) {
  const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'], maxConcurrentLeases: 4, policies })
  supervisor.attachArbiter(arbiter)
  closers.push(() => arbiter.close())
  return arbiter
}

const types = (events: ServiceEvent[], service: string) => events.filter((e) => e.service === service).map((e) => e.type)

describe('on demand', () => {
  test('startAll skips an on-demand service; a lease request for its task type starts it and waits through the load', async () => {
    const config: ServicesConfig = { vramHeadroomMb: 0, services: [model('asr', 2000), model('nmt', 3000, { onDemand: true, gpu: { key: 'gpu:0', taskTypes: ['NMT'] } }, 600)] }
    const { supervisor, events } = setUp(config)
    const arbiter = withArbiter(supervisor, { NMT: { maxWaitMs: 50 } })
    const outcomes = await supervisor.startAll()
    expect(outcomes.map((o) => o.service)).toEqual(['asr'])
    expect(supervisor.status('nmt').state).toBe('idle')
    const lease = (await arbiter.acquire({ taskType: 'NMT' })) as GpuLeaseAcquired
    expect(lease.leaseId).toBeDefined()
    expect(supervisor.status('nmt').state).toBe('ready') // granted only once its model is loaded
    expect(lease.queueWaitMs).toBeGreaterThanOrEqual(500) // past its maxWaitMs: the real wait
    expect(of(events, 'nmt', 'demanded')).toEqual([expect.objectContaining({ taskType: 'NMT' })])
    lease.release()
    // Loaded: the next request is granted at once, with no new start.
    const again = (await arbiter.acquire({ taskType: 'NMT' })) as GpuLeaseAcquired
    expect(again.queueWaitMs).toBeLessThan(500)
    again.release()
    expect(of(events, 'nmt', 'spawned')).toHaveLength(1)
  })

  test('attaching another arbiter leaves the first as a detach does: its requests no longer start on-demand services', async () => {
    const config: ServicesConfig = { vramHeadroomMb: 0, services: [model('nmt', 3000, { onDemand: true, gpu: { key: 'gpu:0', taskTypes: ['NMT'] } }, 600)] }
    const { supervisor, events } = setUp(config)
    const first = withArbiter(supervisor)
    const second = withArbiter(supervisor)
    // Granted by the first arbiter's own rules, at once: no start, no wait for a load.
    const left = (await first.acquire({ taskType: 'NMT' })) as GpuLeaseAcquired
    expect(left.leaseId).toBeDefined()
    expect(left.queueWaitMs).toBeLessThan(500)
    left.release()
    expect(of(events, 'nmt', 'demanded')).toEqual([])
    expect(supervisor.status('nmt').state).toBe('idle')
    // The arbiter attached now starts it.
    const served = (await second.acquire({ taskType: 'NMT' })) as GpuLeaseAcquired
    expect(supervisor.status('nmt').state).toBe('ready')
    served.release()
    expect(of(events, 'nmt', 'demanded')).toHaveLength(1)
  })

  test('a request waits for the start on its way, eviction and a load slower than learned included, and is granted', async () => {
    // Two 6000 MB models on a 10000 MB GPU: every request for the other one is a swap. The
    // driver frees an evicted model's memory 400 ms after its exit.
    const config: ServicesConfig = {
      vramHeadroomMb: 0,
      vramTimeoutMs: 10_000,
      services: [
        model('first', 6000, { onDemand: true, gpu: { key: 'gpu:0', taskTypes: ['FIRST'] } }, 300),
        model('second', 6000, { onDemand: true, gpu: { key: 'gpu:0', taskTypes: ['SECOND'] } }, 300),
      ],
    }
    const { supervisor, events } = setUp(config, 400)
    const arbiter = withArbiter(supervisor, { FIRST: { maxWaitMs: 50 }, SECOND: { maxWaitMs: 50 } })
    for (const taskType of ['FIRST', 'SECOND']) {
      const lease = await arbiter.acquire({ taskType })
      expect(lease).toMatchObject({ status: 'ACQUIRED' })
      ;(lease as GpuLeaseAcquired).release()
    }
    // 'first' was evicted for 'second'. Now its load (learned: ~300 ms) comes after an eviction
    // (400 ms): past maxWaitMs + the learned load time, and still no reason to give up.
    expect(supervisor.status('first').state).not.toBe('ready')
    const asked = Date.now()
    const lease = await arbiter.acquire({ taskType: 'FIRST' })
    expect(lease).toMatchObject({ status: 'ACQUIRED' })
    expect(Date.now() - asked).toBeGreaterThanOrEqual(50 + 300 + 300)
    expect((lease as GpuLeaseAcquired).queueWaitMs).toBeGreaterThanOrEqual(600)
    ;(lease as GpuLeaseAcquired).release()
    expect(events.filter((e) => e.type === 'evicted').map((e) => [e.service, (e as Extract<ServiceEvent, { type: 'evicted' }>).for])).toEqual([
      ['first', 'second'],
      ['second', 'first'],
    ])
  })

  test('keepAliveMs: idle for that long, it is stopped with idle-stopped; the next request brings it back', async () => {
    const config: ServicesConfig = { services: [model('tts', 1000, { onDemand: true, keepAliveMs: 300, gpu: { key: 'gpu:0', taskTypes: ['TTS'] } })] }
    const { supervisor, events } = setUp(config)
    const arbiter = withArbiter(supervisor)
    const lease = (await arbiter.acquire({ taskType: 'TTS' })) as GpuLeaseAcquired
    await sleep(500) // held past keepAliveMs: a service in use is not idle
    expect(supervisor.status('tts').state).toBe('ready')
    lease.release()
    const idle = await waitFor(() => of(events, 'tts', 'idle-stopped')[0], 3000, 'the idle stop')
    expect(idle.idleMs).toBeGreaterThanOrEqual(300)
    await waitFor(() => supervisor.status('tts').state === 'stopped', 3000, 'the stop')
    const back = (await arbiter.acquire({ taskType: 'TTS' })) as GpuLeaseAcquired
    expect(supervisor.status('tts').state).toBe('ready')
    back.release()
    expect(of(events, 'tts', 'spawned')).toHaveLength(2)
  })

  test('a start that fails settles the waiting requests SERVICE_UNAVAILABLE', async () => {
    const broken: ServiceConfig = { name: 'repair', command: 'python3', args: ['-c', 'import sys; sys.exit(3)'], readiness: READY_LINE, onDemand: true, gpu: { key: 'gpu:0', vramMb: 100, taskTypes: ['SEMANTIC_REPAIR'] } }
    const { supervisor } = setUp({ services: [broken] })
    const arbiter = withArbiter(supervisor)
    const answers = await Promise.all([arbiter.acquire({ taskType: 'SEMANTIC_REPAIR' }), arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', busyPolicy: 'FALLBACK_CPU' })])
    expect(answers).toEqual([
      { status: 'SKIPPED', reason: 'SERVICE_UNAVAILABLE' },
      { status: 'FALLBACK_CPU', reason: 'SERVICE_UNAVAILABLE' },
    ])
    expect(supervisor.status('repair').state).toBe('failed')
  })

  test('ensure(name) starts a service for callers that take no lease, and rejects with the start error', async () => {
    const { supervisor } = setUp({ services: [model('punct', 500, { onDemand: true })] })
    const status = await supervisor.ensure('punct')
    expect(status).toMatchObject({ name: 'punct', state: 'ready' })
    expect((await supervisor.ensure('punct')).pid).toBe(status.pid) // already running: not started twice
    await expect(supervisor.ensure('nope')).rejects.toMatchObject({ code: 'UNKNOWN_SERVICE' })
  })

  test('config: keepAliveMs needs onDemand, and onDemand needs gpu, with the JSON path', () => {
    expect(() => new ServiceSupervisor({ services: [{ ...model('a', 1), keepAliveMs: 1000 }] })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('services.services[0].keepAliveMs: only an onDemand service') }),
    )
    const cpu: ServiceConfig = { name: 'b', command: 'true', readiness: { none: {} }, onDemand: true }
    expect(() => new ServiceSupervisor({ services: [cpu] })).toThrow(expect.objectContaining({ message: expect.stringContaining('services.services[0].onDemand:') }))
  })
})

describe('eviction', () => {
  test('lowest priority first, then least recently used; never pinned, never holding a lease; each eviction waits for the memory', async () => {
    // 4 x 2400 MB of 10000: a fifth model does not fit until one goes.
    const config: ServicesConfig = {
      vramHeadroomMb: 0,
      vramTimeoutMs: 10_000,
      services: [
        model('old', 2400, { evictable: true, priority: 10 }),
        model('newer', 2400, { evictable: true, priority: 10 }),
        model('busy', 2400, { evictable: true, priority: 5, gpu: { key: 'gpu:0', taskTypes: ['BUSY'] } }),
        model('kept', 2400, { evictable: true, pinned: true, priority: 0 }),
        model('first', 2400, { onDemand: true }),
        model('second', 2400, { onDemand: true }),
      ],
    }
    const { supervisor, events } = setUp(config, 300)
    const arbiter = withArbiter(supervisor)
    expect((await supervisor.startAll()).map((o) => o.status)).toEqual(['ready', 'ready', 'ready', 'ready'])
    const held = (await arbiter.acquire({ taskType: 'BUSY' })) as GpuLeaseAcquired
    await waitFor(() => supervisor.status('busy').leases.active.length === 1, 2000, 'the lease to be attributed')

    await supervisor.ensure('first')
    const evicted = events.filter((e): e is Extract<ServiceEvent, { type: 'evicted' }> => e.type === 'evicted')
    expect(evicted.map((e) => [e.service, e.for])).toEqual([['old', 'first']])
    expect(evicted[0]).toMatchObject({ gpuKey: 'gpu:0', expectedMb: 2400, freedMb: 2400 })
    // The recovery wait: 'first' was spawned only once the evicted memory showed as free.
    const oldExited = of(events, 'old', 'stopped')[0].at
    expect(of(events, 'first', 'spawned')[0].at - oldExited).toBeGreaterThanOrEqual(250)

    await supervisor.ensure('second')
    const order = events.filter((e) => e.type === 'evicted').map((e) => e.service)
    expect(order).toEqual(['old', 'newer'])
    expect(supervisor.status('busy').state).toBe('ready')
    expect(supervisor.status('kept').state).toBe('ready')
    held.release()
  })

  test('when evicting everything allowed would not be enough, nothing is evicted and the gate times out as before', async () => {
    const config: ServicesConfig = {
      vramHeadroomMb: 0,
      vramTimeoutMs: 400,
      services: [model('small', 2000, { evictable: true }), model('pinned', 7000, { pinned: true, evictable: true }), model('huge', 4000, { onDemand: true })],
    }
    const { supervisor, events } = setUp(config)
    await supervisor.startAll()
    await expect(supervisor.ensure('huge')).rejects.toMatchObject({ code: 'VRAM_TIMEOUT' })
    expect(events.filter((e) => e.type === 'evicted')).toEqual([])
    expect(supervisor.status('small').state).toBe('ready')
  })
})

describe('out of memory during a load', () => {
  test('evicts every evictable service on the GPU and retries once (oom-retry)', async () => {
    const count = join(tempDir(), 'count')
    const config: ServicesConfig = {
      vramHeadroomMb: 0,
      services: [
        model('idle', 1000, { evictable: true }),
        model('kept', 1000, { pinned: true }),
        { name: 'whisper', command: 'python3', args: [OOM, '--times', '1', '--count-file', count], readiness: READY_LINE, onDemand: true, gpu: { key: 'gpu:0', vramMb: 1000 } },
      ],
    }
    const { supervisor, events } = setUp(config)
    await supervisor.startAll()
    expect(await supervisor.ensure('whisper')).toMatchObject({ state: 'ready' })
    expect(of(events, 'whisper', 'oom-retry')).toEqual([expect.objectContaining({ gpuKey: 'gpu:0', evicted: ['idle'] })])
    expect(types(events, 'idle')).toContain('evicted')
    expect(supervisor.status('kept').state).toBe('ready')
  })

  test('a second out-of-memory fails the start with VRAM_OOM', async () => {
    const count = join(tempDir(), 'count')
    const config: ServicesConfig = {
      services: [{ name: 'whisper', command: 'python3', args: [OOM, '--times', '2', '--count-file', count], readiness: READY_LINE, onDemand: true, gpu: { key: 'gpu:0', vramMb: 1000 } }],
    }
    const { supervisor, events } = setUp(config)
    await expect(supervisor.ensure('whisper')).rejects.toMatchObject({ code: 'VRAM_OOM', message: expect.stringContaining('whisper: ran out of GPU memory on gpu:0') })
    expect(of(events, 'whisper', 'oom-retry')).toHaveLength(1)
    expect(of(events, 'whisper', 'spawned')).toHaveLength(2)
  })
})
