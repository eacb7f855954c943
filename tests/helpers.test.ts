import { GpuArbiter, GpuLeaseError, getGpuArbiter, setGpuArbiter, setLogger, tryAcquireGpuLease, withGpuLease } from '../gpu-sidecar'
import { waitFor } from './support'

describe('lease helpers', () => {
  let arbiter: GpuArbiter
  beforeEach(() => {
    arbiter = new GpuArbiter({ defaultQueueLimit: 1 })
    setGpuArbiter(arbiter)
  })
  afterEach(() => {
    setGpuArbiter(null)
    arbiter.close()
  })

  test('withGpuLease runs fn with a lease and releases it, also when fn throws', async () => {
    const result = await withGpuLease('ASR', async (lease) => {
      expect(arbiter.snapshot('gpu:0')!.activeLeases[0].leaseId).toBe(lease.leaseId)
      return 42
    }, { jobId: 'j1' })
    expect(result).toBe(42)
    expect(arbiter.snapshot('gpu:0')!.activeLeases).toHaveLength(0)
    const boom = new Error('inference failed')
    await expect(withGpuLease('ASR', () => Promise.reject(boom))).rejects.toBe(boom)
    await expect(withGpuLease('ASR', () => { throw boom })).rejects.toBe(boom)
    expect(arbiter.snapshot('gpu:0')!.activeLeases).toHaveLength(0)
  })

  test("non-acquired results throw the seed's messages with code, status and reason", async () => {
    const held = await tryAcquireGpuLease('ASR')
    expect(held).not.toBeNull()
    const fn = jest.fn()
    await expect(withGpuLease('SEMANTIC_REPAIR', fn, undefined, { busyPolicy: 'SKIP' })).rejects.toMatchObject({
      name: 'GpuLeaseError',
      message: 'GPU lease skipped: GPU_BUSY (SEMANTIC_REPAIR)',
      code: 'GPU_LEASE_SKIPPED',
      status: 'SKIPPED',
      reason: 'GPU_BUSY',
    })
    await expect(withGpuLease('SEMANTIC_REPAIR', fn, undefined, { busyPolicy: 'FALLBACK_CPU' })).rejects.toMatchObject({
      message: 'GPU lease fallback to CPU: GPU_BUSY (SEMANTIC_REPAIR)',
      code: 'GPU_LEASE_FALLBACK_CPU',
    })
    const err = await withGpuLease('NMT', fn, undefined, { maxWaitMs: 20 }).catch((e) => e)
    expect(err).toBeInstanceOf(GpuLeaseError)
    expect(err).toMatchObject({ message: 'GPU lease skipped: TIMEOUT (NMT)', code: 'GPU_LEASE_SKIPPED', status: 'SKIPPED', reason: 'TIMEOUT' })
    // Seed 002: a slow ASR call holds the GPU under HIGH_PRESSURE; the next ASR job times out.
    arbiter.observeGpu('gpu:0', { utilizationGpu: 99 })
    await expect(withGpuLease('ASR', fn, undefined, { maxWaitMs: 20 })).rejects.toMatchObject({
      message: 'GPU lease timeout: GPU_USAGE_HIGH (ASR)',
      code: 'GPU_LEASE_TIMEOUT',
    })
    arbiter.release(held!.leaseId)
    await expect(withGpuLease('OTHER', fn, undefined, { priority: 5, maxWaitMs: 20 })).rejects.toMatchObject({
      message: 'GPU lease skipped: GPU_USAGE_HIGH (OTHER)',
    })
    expect(fn).not.toHaveBeenCalled()
  })

  test('tryAcquireGpuLease returns a lease or null', async () => {
    const lease = await tryAcquireGpuLease('ASR', { jobId: 'x' })
    expect(lease).toMatchObject({ status: 'ACQUIRED', gpuKey: 'gpu:0' })
    await expect(tryAcquireGpuLease('SEMANTIC_REPAIR', undefined, { busyPolicy: 'SKIP' })).resolves.toBeNull()
    arbiter.release(lease!.leaseId)
  })

  test('an absent, closed or disabled arbiter runs fn at once', async () => {
    setGpuArbiter(null)
    expect(getGpuArbiter()).toBeNull()
    await expect(withGpuLease('ASR', (lease) => lease.leaseId)).resolves.toBe('no-arbiter')
    const disabled = new GpuArbiter({ enabled: false })
    setGpuArbiter(disabled)
    expect(getGpuArbiter()).toBe(disabled)
    const inside = await Promise.all([1, 2, 3].map(() => withGpuLease('ASR', (l) => l.leaseId)))
    expect(inside).toEqual(['no-arbiter', 'no-arbiter', 'no-arbiter'])
    disabled.close()
    await expect(withGpuLease('ASR', () => 'ran')).resolves.toBe('ran')
    expect(() => setGpuArbiter({} as GpuArbiter)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })
})

describe('setLogger', () => {
  afterEach(() => setLogger(null))

  test('routes the addon warnings to a JS logger with fields', async () => {
    const lines: Array<[string, string, Record<string, unknown>]> = []
    setLogger((level, message, fields) => lines.push([level, message, fields]))
    const arbiter = new GpuArbiter({ defaultHoldMaxMs: 20, colour: 'red' } as never)
    const lease = await arbiter.acquire({ taskType: 'ASR' })
    await waitFor(() => lines.find(([, m]) => m.includes('holdMaxMs')), 3000, 'watchdog log line')
    expect(lines).toContainEqual(['warn', 'gpuArbiter.colour: unknown key, ignored', {}])
    expect(lines.find(([, m]) => m.includes('holdMaxMs'))![2]).toMatchObject({ task_type: 'ASR', action: 'warn' })
    arbiter.release((lease as { leaseId: string }).leaseId)
    arbiter.close()
  })

  test('filters by level and rejects an unknown level', async () => {
    const lines: string[] = []
    setLogger((level) => lines.push(level), 'error')
    new GpuArbiter({ colour: 'red' } as never).close()
    await new Promise((r) => setTimeout(r, 50))
    expect(lines).toEqual([])
    expect(() => setLogger(() => {}, 'loud' as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })
})
