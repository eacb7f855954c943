// Host memory managed like VRAM (issue 15, seed 004: 100 workers x 250 MB started at once drove a
// machine into swap for 40 hours). A manual Telemetry carries the host figures the test pushes;
// the services are Python fakes that really allocate RAM, so the learned peaks are real.
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { GpuArbiter, ServiceConfig, ServiceEvent, ServiceSupervisor, Telemetry, TelemetrySample } from '../gpu-sidecar'
import { of } from './services-support'
import { sleep, tempDir, waitFor } from './support'

const ALLOC = join(__dirname, 'fixtures', 'services', 'alloc.py')

/** Host figures only: no GPU, no NVML (the host-memory gate does not need them). */
function hostSample(availableMb: number, swapUsedMb = 0): TelemetrySample {
  return {
    at: Date.now(),
    nvml: { available: false, reason: 'LIBRARY_NOT_FOUND' },
    gpus: [],
    host: { totalMb: 24000, availableMb, swapTotalMb: 8000, swapUsedMb, cpuPercent: 5, processes: [], zombieChildren: 0 },
  }
}

function alloc(name: string, mb: number, rest: Partial<ServiceConfig> = {}, childMb = 0): ServiceConfig {
  return {
    name,
    command: 'python3',
    args: [ALLOC, '--mb', String(mb), '--child-mb', String(childMb)],
    readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
    readinessTimeoutMs: 30000,
    probeIntervalMs: 50,
    stopTimeoutMs: 2000,
    ...rest,
  }
}

const open: Array<{ close(): unknown }> = []

afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close()
})

/** A manual Telemetry whose SWAP_ACTIVE alert follows each pushed sample at once. */
function manual() {
  const telemetry = new Telemetry({
    source: 'manual',
    thresholds: { minDurationMs: 0, clearDurationMs: 0, swap: { highUsedMb: 512, clearUsedMb: 256 } },
  })
  open.push(telemetry)
  let seen = 0
  telemetry.onSample(() => seen++)
  const push = async (s: TelemetrySample) => {
    const want = seen + 1
    telemetry.push(s)
    await waitFor(() => seen >= want, 5000, 'the pushed sample')
  }
  return { telemetry, push }
}

function supervise(config: ConstructorParameters<typeof ServiceSupervisor>[0], telemetry: Telemetry) {
  const supervisor = new ServiceSupervisor(config)
  open.push(supervisor)
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  supervisor.attachTelemetry(telemetry)
  return { supervisor, events }
}

test('starts are serialised by host memory, and each service learns its peak RSS', async () => {
  const { telemetry, push } = manual()
  await push(hostSample(900))
  const stateFile = join(tempDir(), 'state.json')
  const { supervisor, events } = supervise(
    {
      maxConcurrentStarts: 2,
      hostMemHeadroomMb: 100,
      hostMemTimeoutMs: 60000,
      stateFile,
      // 900 - 100 headroom fits one 500 MB load, not two, though two start slots are free.
      services: [alloc('a', 300, { hostMemMb: 500 }), alloc('b', 150, { hostMemMb: 500 }, 150)],
    },
    telemetry,
  )
  expect(supervisor.hostBudget(250)).toMatchObject({ availableMb: 900, headroomMb: 100, inFlightMb: 0, budgetMb: 800, swapActive: false, perWorkerMb: 250, workers: 3 })
  const all = supervisor.startAll()
  const waiting = await waitFor(() => supervisor.statuses().find((s) => s.waiting === 'waiting-host-memory'), 20000, 'one start to wait')
  const first = waiting.name === 'a' ? 'b' : 'a'
  expect(supervisor.status(waiting.name)).toMatchObject({ state: 'starting', pid: null })
  expect(supervisor.hostBudget()).toMatchObject({ inFlightMb: 500, budgetMb: 300, workers: null })
  await waitFor(() => supervisor.status(first).state === 'ready', 20000, `${first} to be ready`)
  // The host figures follow what the services do: the first one's 300 MB are in use now.
  // A reading taken in the same millisecond as the ready may predate it (and would still count
  // it as on its way): the next one is a little later, as a sampler's would be.
  await sleep(20)
  await push(hostSample(600))
  const outcomes = await all
  expect(outcomes.map((o) => o.status)).toEqual(['ready', 'ready'])
  await waitFor(() => of(events, waiting.name, 'ready').length, 5000, 'the ready event')
  expect(of(events, waiting.name, 'host-memory-wait')).toEqual([
    expect.objectContaining({ neededMb: 500, availableMb: 900, headroomMb: 100, inFlightMb: 500, budgetMb: 300, swapActive: false }),
  ])
  expect(of(events, first, 'host-memory-wait')).toEqual([])
  expect(of(events, waiting.name, 'spawned')[0].at).toBeGreaterThanOrEqual(of(events, first, 'ready')[0].at)
  expect(supervisor.status(waiting.name).waiting).toBeNull()
  // Learned: each one's whole process tree (b's worker included), within 10% of its 300 MB.
  for (const name of ['a', 'b']) {
    const peak = supervisor.status(name).learned.peakRssMb
    expect(peak).not.toBeNull()
    expect(Math.abs((peak as number) - 300)).toBeLessThanOrEqual(30)
  }
  // Kept in the state file: a new supervisor gates on it without hostMemMb.
  await supervisor.close()
  const again = new ServiceSupervisor({ stateFile, services: [alloc('a', 1)] })
  open.push(again)
  expect(again.status('a').learned.peakRssMb).toBe(supervisor.status('a').learned.peakRssMb)
}, 60000)

test('while SWAP_ACTIVE is raised no start begins; it begins once swap stops', async () => {
  const { telemetry, push } = manual()
  await push(hostSample(20000, 2000))
  const { supervisor, events } = supervise({ hostMemTimeoutMs: 60000, services: [alloc('a', 1)] }, telemetry)
  expect(supervisor.hostBudget(250)).toMatchObject({ swapActive: true, workers: 0 })
  const started = supervisor.start('a')
  await waitFor(() => of(events, 'a', 'host-memory-wait').length, 10000, 'the swap stop')
  expect(supervisor.status('a')).toMatchObject({ state: 'starting', waiting: 'waiting-host-memory' })
  expect(of(events, 'a', 'host-memory-wait')).toEqual([expect.objectContaining({ neededMb: null, swapActive: true })])
  expect(of(events, 'a', 'spawned')).toEqual([])
  await push(hostSample(20000, 100))
  expect((await started).status).toBe('ready')
  expect(supervisor.hostBudget(250)).toMatchObject({ swapActive: false, workers: Math.floor((20000 - 1024) / 250) })
}, 30000)

test('an on-demand lease request waits through its start\'s host-memory wait, past its own maxWaitMs, and the README\'s worst case counts that wait', async () => {
  const { telemetry, push } = manual()
  await push(hostSample(1000))
  const { supervisor, events } = supervise(
    { hostMemHeadroomMb: 200, hostMemTimeoutMs: 20000, services: [alloc('nmt', 1, { hostMemMb: 2000, onDemand: true, gpu: { key: 'gpu:0', taskTypes: ['NMT'] } })] },
    telemetry,
  )
  const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'], policies: { NMT: { maxWaitMs: 100 } } })
  open.push(arbiter)
  supervisor.attachArbiter(arbiter)
  const request = arbiter.acquire({ taskType: 'NMT' })
  await waitFor(() => of(events, 'nmt', 'host-memory-wait').length, 10000, 'the host-memory wait')
  await sleep(600)
  expect(of(events, 'nmt', 'spawned')).toEqual([])
  await push(hostSample(20000))
  const lease = await request
  expect(lease.status).toBe('ACQUIRED')
  if (lease.status === 'ACQUIRED') {
    expect(lease.queueWaitMs).toBeGreaterThanOrEqual(600)
    lease.release()
  }
  const readme = readFileSync(join(__dirname, '..', 'README.md'), 'utf8').replace(/\s+/g, ' ')
  const worstCase = /So the longest wait is ([^;]+);/.exec(readme)?.[1] ?? ''
  expect(worstCase).toMatch(/host-memory wait/)
  expect(worstCase).toMatch(/maxWaitMs/)
}, 30000)

test('too little host memory fails the start with HOST_MEMORY_LOW after hostMemTimeoutMs', async () => {
  const { telemetry, push } = manual()
  await push(hostSample(1000))
  const { supervisor, events } = supervise(
    { hostMemHeadroomMb: 200, hostMemTimeoutMs: 300, services: [alloc('a', 1, { hostMemMb: 900 })] },
    telemetry,
  )
  const outcome = await supervisor.start('a')
  expect(outcome).toMatchObject({
    status: 'failed',
    error: { code: 'HOST_MEMORY_LOW', message: expect.stringContaining('a: needs 900 MB of host memory but after 300 ms only 1000 MB was available') },
  })
  expect(supervisor.status('a')).toMatchObject({ state: 'failed', waiting: null, error: { code: 'HOST_MEMORY_LOW' } })
  expect(of(events, 'a', 'spawned')).toEqual([])
}, 30000)

test('hostBudget is null without telemetry and checks perWorkerMb', async () => {
  const supervisor = new ServiceSupervisor({ services: [alloc('a', 1)] })
  open.push(supervisor)
  expect(supervisor.hostBudget(250)).toBeNull()
  const { telemetry, push } = manual()
  supervisor.attachTelemetry(telemetry)
  expect(supervisor.hostBudget()).toBeNull()
  await push(hostSample(5000))
  expect(supervisor.hostBudget(1000)).toMatchObject({ availableMb: 5000, budgetMb: 5000 - 1024, workers: 3 })
  await push(hostSample(3000))
  expect(supervisor.hostBudget(1000)).toMatchObject({ availableMb: 3000, workers: 1 })
  expect(() => supervisor.hostBudget(0)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'perWorkerMb: expected a number > 0, got 0' }))
  expect(() => supervisor.hostBudget('lots' as unknown as number)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
})

describe('gpu-sidecar doctor --config', () => {
  const root = join(__dirname, '..')
  const recording = join(root, 'examples/node-recording.jsonl') // last sample: 26000 MiB available of 64000
  function doctor(services: object) {
    const path = join(tempDir(), 'node-config.json')
    writeFileSync(path, JSON.stringify({ gpuArbiter: { gpuKeys: ['gpu:0'] }, services }))
    const r = spawnSync(process.execPath, [join(root, 'src/cli/main.js'), 'doctor', '--config', path, '--replay', recording, '--json'], { encoding: 'utf8', timeout: 30_000 })
    return { code: r.status, report: JSON.parse(r.stdout) }
  }
  const svc = (name: string, rest: object = {}) => ({ name, command: process.execPath, readiness: { none: {} }, ...rest })

  test("adds host memory to the fit plan: hostMemMb, else the learned peak RSS, plus headroom", () => {
    const dir = tempDir()
    const stateFile = join(dir, 'state.json')
    writeFileSync(stateFile, JSON.stringify({ services: { b: { peakRssMb: 4000 } } }))
    const fits = doctor({ stateFile, services: [svc('a', { hostMemMb: 20000 }), svc('b')] })
    expect(fits.report.hostFit).toMatchObject({ verdict: 'together', sumMb: 24000, headroomMb: 1024, availableMb: 26000, totalMb: 64000 })
    expect(fits.report.hostFit.services).toEqual([
      { name: 'a', needMb: 20000, source: 'hostMemMb' },
      { name: 'b', needMb: 4000, source: 'learned' },
    ])
    expect(fits.report.checks).toContainEqual(expect.objectContaining({ check: 'fit host', status: 'ok' }))
    // More than is available, less than the host has: the last starts would wait.
    const waits = doctor({ stateFile, services: [svc('a', { hostMemMb: 30000 }), svc('b')] })
    expect(waits.report.hostFit.verdict).toBe('wait')
    expect(waits.report.checks).toContainEqual(expect.objectContaining({ check: 'fit host', status: 'warn' }))
    const noFit = doctor({ stateFile, hostMemHeadroomMb: 0, services: [svc('a', { hostMemMb: 70000 })] })
    expect(noFit.code).toBe(1)
    expect(noFit.report.checks).toContainEqual({ check: 'fit host', status: 'fail', detail: 'no-fit: 70000 MiB needed but the host has 64000 MiB in total' })
    const unknown = doctor({ services: [svc('a')] })
    expect(unknown.report.hostFit).toMatchObject({ verdict: 'unknown', explanation: expect.stringContaining('no hostMemMb and no peak RSS learned for a') })
  })
})
