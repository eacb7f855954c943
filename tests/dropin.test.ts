// The arbiter as a drop-in for the orchestrator's in-JS arbiter: its exact strings and shapes,
// its lease object, its factory and defaults, its config keys (issue 7).
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  GpuArbiter,
  GpuLeaseAcquired,
  configureGpuArbiter,
  getGpuArbiter,
  setGpuArbiter,
  tryAcquireGpuLease,
  withGpuLease,
} from '../gpu-sidecar'
import { sleep, tempDir, waitFor } from './support'

function acquired(r: { status: string }): GpuLeaseAcquired {
  expect(r.status).toBe('ACQUIRED')
  return r as GpuLeaseAcquired
}

const arbiters: GpuArbiter[] = []
function make(config: object = {}): GpuArbiter {
  const a = new GpuArbiter(config)
  arbiters.push(a)
  return a
}
afterEach(() => {
  for (const a of arbiters.splice(0)) a.close()
  setGpuArbiter(null)
})

describe('a wait that runs out is answered by the old rule', () => {
  // One GPU held by another lease; the request waits 30 ms. Under HIGH_PRESSURE or not.
  async function runOut(pressure: boolean, request: { taskType: string; priority?: number; busyPolicy?: 'WAIT' | 'SKIP' | 'FALLBACK_CPU' }) {
    const a = make({ gpuUsage: { priorityFloor: 0 } })
    a.observeGpu('gpu:0', { utilizationGpu: pressure ? 95 : 10 })
    acquired(await a.acquire({ taskType: 'HOLDER' }))
    return a.acquire({ ...request, maxWaitMs: 30 })
  }

  test.each([
    // [pressure, priority, busyPolicy, expected]
    [false, 90, 'WAIT', { status: 'SKIPPED', reason: 'TIMEOUT' }],
    [false, 20, 'WAIT', { status: 'SKIPPED', reason: 'TIMEOUT' }],
    [true, 90, 'WAIT', { status: 'TIMEOUT', reason: 'GPU_USAGE_HIGH' }],
    [true, 70, 'WAIT', { status: 'TIMEOUT', reason: 'GPU_USAGE_HIGH' }],
    [true, 69, 'WAIT', { status: 'SKIPPED', reason: 'GPU_USAGE_HIGH' }],
    // SKIP and FALLBACK_CPU never wait: they answer at once with what holds the GPU.
    [false, 90, 'SKIP', { status: 'SKIPPED', reason: 'GPU_BUSY' }],
    [true, 90, 'SKIP', { status: 'SKIPPED', reason: 'GPU_BUSY' }],
    [false, 20, 'FALLBACK_CPU', { status: 'FALLBACK_CPU', reason: 'GPU_BUSY' }],
    [true, 90, 'FALLBACK_CPU', { status: 'FALLBACK_CPU', reason: 'GPU_BUSY' }],
  ] as const)('pressure %s, priority %d, %s', async (pressure, priority, busyPolicy, expected) => {
    await expect(runOut(pressure, { taskType: 'X', priority, busyPolicy })).resolves.toEqual(expected)
  })

  test("the helpers throw the old arbiter's messages, and the counters follow the statuses", async () => {
    const a = make()
    setGpuArbiter(a)
    const held = await tryAcquireGpuLease('ASR')
    await expect(withGpuLease('NMT', jest.fn(), undefined, { maxWaitMs: 20 })).rejects.toMatchObject({
      message: 'GPU lease skipped: TIMEOUT (NMT)',
      code: 'GPU_LEASE_SKIPPED',
    })
    a.observeGpu('gpu:0', { utilizationGpu: 97 })
    await expect(withGpuLease('ASR', jest.fn(), { jobId: 'j9' }, { maxWaitMs: 20 })).rejects.toMatchObject({
      message: 'GPU lease timeout: GPU_USAGE_HIGH (ASR)',
      code: 'GPU_LEASE_TIMEOUT',
      status: 'TIMEOUT',
      reason: 'GPU_USAGE_HIGH',
    })
    const snap = a.snapshot('gpu:0')!
    expect(snap.metrics.acquireTotal).toEqual({ ACQUIRED: 1, SKIPPED: 1, FALLBACK_CPU: 0 })
    expect(snap.metrics.timeoutsTotal).toBe(2)
    expect(a.metrics()).toContain('gpu_arbiter_acquire_total{gpu="gpu:0",task_type="NMT",status="SKIPPED"} 1')
    held!.release()
  })
})

describe('trace fields are diagnostics', () => {
  test('a numeric jobId or a string utteranceIndex is converted, never refused', async () => {
    const a = make()
    setGpuArbiter(a)
    const trace = { jobId: 42, sessionId: 's-1', utteranceIndex: '7', stage: 'ASR', extra: { x: 1 } }
    const seen = await withGpuLease('ASR', () => a.snapshot('gpu:0')!.activeLeases[0].trace, trace as never)
    expect(seen).toEqual({ jobId: '42', sessionId: 's-1', utteranceIndex: 7, stage: 'ASR' })
    const odd = await withGpuLease('ASR', () => a.snapshot('gpu:0')!.activeLeases[0].trace, { utteranceIndex: 'first', jobId: null } as never)
    expect(odd).toEqual({})
    await expect(withGpuLease('ASR', () => 'ran', 'not-an-object' as never)).resolves.toBe('ran')
    await expect(withGpuLease(undefined as never, () => 'ran')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
  })
})

describe('the lease object', () => {
  test('has the old fields, release() is idempotent, and the helpers use it', async () => {
    const a = make()
    setGpuArbiter(a)
    const lease = (await tryAcquireGpuLease('NMT', { jobId: 'j' }))!
    expect(lease).toMatchObject({ leaseId: expect.stringMatching(/^lease-\d+$/), gpuKey: 'gpu:0', taskType: 'NMT', holdMaxMs: 60000, queueWaitMs: 0 })
    expect(Math.abs(lease.acquiredAt - Date.now())).toBeLessThan(1000)
    expect(lease.signal).toBeInstanceOf(AbortSignal)
    expect(lease.release()).toBe(true)
    expect(lease.release()).toBe(false)
    expect(a.release(lease.leaseId)).toBe(false)
    const inside = await withGpuLease('TTS', (l) => {
      expect(a.snapshot('gpu:0')!.activeLeases.map((x) => x.leaseId)).toEqual([l.leaseId])
      return l
    })
    expect(inside).toMatchObject({ taskType: 'TTS', holdMaxMs: 60000 })
    expect(a.snapshot('gpu:0')!.activeLeases).toEqual([])
  })

  test('its signal aborts when the watchdog revokes the lease (seed 002), and when the arbiter closes', async () => {
    const a = make({ watchdogAction: 'revoke' })
    setGpuArbiter(a)
    const reasons: string[] = []
    const work = withGpuLease('ASR', (lease) =>
      new Promise<string>((resolve) => {
        lease.signal.addEventListener('abort', () => {
          reasons.push(lease.signal.reason.code)
          resolve('stopped')
        })
      }),
      undefined,
      { holdMaxMs: 40 },
    )
    const next = a.acquire({ taskType: 'NMT' })
    await expect(work).resolves.toBe('stopped')
    expect(reasons).toEqual(['GPU_LEASE_REVOKED'])
    const nextLease = acquired(await next)
    const signal = nextLease.signal
    a.close()
    expect(signal.aborted).toBe(true)
    expect(signal.reason.code).toBe('CLOSED')
  })

  test('a signal first read after the revocation is already aborted; after a release it never aborts', async () => {
    const a = make({ watchdogAction: 'revoke' })
    const stuck = acquired(await a.acquire({ taskType: 'ASR', holdMaxMs: 20 }))
    await waitFor(() => a.snapshot('gpu:0')!.activeLeases.length === 0, 3000, 'revocation')
    expect(stuck.signal.aborted).toBe(true)
    expect(stuck.signal.reason.code).toBe('GPU_LEASE_REVOKED')
    const done = acquired(await a.acquire({ taskType: 'ASR' }))
    done.release()
    const signal = done.signal
    a.close()
    expect(signal.aborted).toBe(false)
  })
})

describe('no arbiter, and the factory', () => {
  test("with none or a disabled one, fn gets the old arbiter's stand-in lease", async () => {
    setGpuArbiter(null)
    const lease = await withGpuLease('ASR', (l) => l)
    expect(lease).toMatchObject({ leaseId: 'no-arbiter', gpuKey: 'gpu:0', taskType: 'ASR', holdMaxMs: 8000 })
    expect(typeof lease.release).toBe('function')
    expect(Math.abs(lease.acquiredAt - Date.now())).toBeLessThan(1000)
    const disabled = make({ enabled: false })
    setGpuArbiter(disabled)
    await expect(tryAcquireGpuLease('NMT')).resolves.toMatchObject({ leaseId: 'no-arbiter', taskType: 'NMT' })
  })

  test('getGpuArbiter() makes an enabled arbiter on first use, with the old factory defaults', async () => {
    setGpuArbiter(undefined) // back to "not made yet"
    const lease = await withGpuLease('ASR', (l) => l)
    expect(lease.leaseId).toMatch(/^lease-\d+$/)
    const arbiter = getGpuArbiter()!
    expect(arbiter).toBeInstanceOf(GpuArbiter)
    expect(getGpuArbiter()).toBe(arbiter)
    const config = arbiter.config()
    expect(config).toMatchObject({ enabled: true, defaultHoldMaxMs: 60000, defaultQueueLimit: 8 })
    const policy = (t: string) => [config.policies![t].priority, config.policies![t].maxWaitMs, config.policies![t].busyPolicy]
    expect(policy('ASR')).toEqual([90, 60000, 'WAIT'])
    expect(policy('NMT')).toEqual([80, 8000, 'WAIT'])
    expect(policy('TTS')).toEqual([70, 13000, 'WAIT'])
    expect(policy('SEMANTIC_REPAIR')).toEqual([20, 8000, 'WAIT'])
    expect(policy('PHONETIC_CORRECTION')).toEqual([60, 20000, 'WAIT'])
    expect(policy('PUNCTUATION_RESTORE')).toEqual([55, 20000, 'WAIT'])
    // A task type without a policy waits defaultHoldMaxMs.
    const held = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    arbiter.acquire({ taskType: 'CUSTOM' })
    expect(arbiter.snapshot('gpu:0')!.queue[0].remainingMs).toBeGreaterThan(59000)
    held.release()
    setGpuArbiter(null)
    expect(arbiter.closed).toBe(true) // the factory's arbiter is closed when replaced
  })

  test('a node config file with the old keys takes effect (configureGpuArbiter)', async () => {
    const dir = tempDir()
    const path = join(dir, 'electron-node-config.json')
    writeFileSync(path, JSON.stringify({ gpuArbiter: { gpuUsage: { baseHighWater: 60, baseLowWater: 40, cacheTtlMs: 9000 } } }))
    const arbiter = configureGpuArbiter({ configPath: path, watch: false })
    expect(getGpuArbiter()).toBe(arbiter)
    expect(arbiter.config().gpuUsage).toMatchObject({ highWater: 60, lowWater: 40, staleAfterMs: 9000 })
    arbiter.observeGpu('gpu:0', { utilizationGpu: 65 })
    expect(arbiter.snapshot('gpu:0')!.gpuAdmissionState).toBe('HIGH_PRESSURE')
    writeFileSync(path, '{ not json')
    expect(() => configureGpuArbiter({ configPath: path })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }))
  })
})

describe('the snapshot and config are a superset of the old ones', () => {
  test("currentLease, queue items, metrics and the heartbeat's fields", async () => {
    const a = make()
    const first = acquired(await a.acquire({ taskType: 'ASR' }))
    a.acquire({ taskType: 'NMT' })
    a.observeGpu('gpu:0', { utilizationGpu: 42 })
    await sleep(20)
    const snap = a.snapshot('gpu:0')!
    expect(snap.currentLease).toMatchObject({ leaseId: first.leaseId, taskType: 'ASR', acquiredAt: first.acquiredAt })
    expect(snap.currentLease!.holdTimeMs).toBeGreaterThanOrEqual(15)
    expect(snap.queue[0]).toMatchObject({ taskType: 'NMT', priority: 80, leaseId: expect.stringMatching(/^lease-\d+$/) })
    expect(snap.queue[0].waitTimeMs).toBeGreaterThanOrEqual(15)
    expect(snap.queueLength).toBe(1)
    expect(snap.gpuAdmissionState).toBe('NORMAL')
    expect(snap.gpuUsage).toBe(42)
    expect(snap.gpuUsageCacheAgeMs).toBeGreaterThanOrEqual(15)
    const queuedId = snap.queue[0].leaseId
    first.release()
    const s2 = a.snapshot('gpu:0')!
    expect(s2.currentLease!.leaseId).toBe(queuedId) // a queued request keeps its id as its lease id
    expect(s2.metrics.queueWaitMs).toHaveLength(2)
    expect(s2.metrics.holdMs).toHaveLength(1)
    expect(a.snapshot('gpu:0')!.metrics).toMatchObject({ timeoutsTotal: 0, queueFullTotal: 0, watchdogExceededTotal: 0 })
    a.close()
    expect(new GpuArbiter().snapshot('gpu:0')!.currentLease).toBeNull()
  })

  test('gpuUsageThreshold and setConfig with the old names', () => {
    const a = make({ gpuUsageThreshold: 90 })
    expect(a.config().gpuUsage!.highWater).toBe(90)
    a.setConfig({ gpuUsage: { baseLowWater: 50 } } as never)
    expect(a.config().gpuUsage!.lowWater).toBe(50)
    expect(() => make({ gpuUsageThreshold: 90, gpuUsage: { highWater: 80 } })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('gpuArbiter.gpuUsageThreshold: conflicts with gpuArbiter.gpuUsage.highWater') }),
    )
  })

  test('notifyAsrTaskHint raises both water marks for adjustmentTtlMs, then restores them', async () => {
    const a = make({ gpuUsage: { dynamicAdjustment: { adjustmentTtlMs: 150 } } })
    const states: string[] = []
    a.onEvent((e) => e.type === 'admission-state' && states.push(e.detail!))
    a.observeGpu('gpu:0', { utilizationGpu: 88 }) // over 85: HIGH_PRESSURE
    expect(a.snapshot('gpu:0')!.gpuAdmissionState).toBe('HIGH_PRESSURE')
    expect(a.notifyAsrTaskHint({ estimatedAudioMs: 5000 })).toBe(false) // short audio: no change
    expect(a.notifyAsrTaskHint({ estimatedAudioMs: 12000, estimatedGpuHoldMs: 3000 })).toBe(true)
    // 85 + 7 = 92 high, 78 + 7 = 85 low: 88 stays HIGH until it drops under 85.
    a.observeGpu('gpu:0', { utilizationGpu: 84 })
    expect(a.snapshot('gpu:0')!.gpuAdmissionState).toBe('NORMAL')
    a.observeGpu('gpu:0', { utilizationGpu: 90 })
    expect(a.snapshot('gpu:0')!.gpuAdmissionState).toBe('NORMAL') // under the raised 92
    await waitFor(() => a.snapshot('gpu:0')!.gpuAdmissionState === 'HIGH_PRESSURE', 3000, 'the marks restored')
    expect(states).toEqual(['HIGH_PRESSURE', 'NORMAL', 'HIGH_PRESSURE'])
    expect(() => a.notifyAsrTaskHint(null as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })
})
