// Hostile input to the arbiter: nothing leaks, nothing spins, every error has a documented code
// (issue 8, arbiter part).
import timers from 'node:timers'
import { GpuArbiter, GpuLeaseAcquired } from '../gpu-sidecar'
import { sleep } from './support'

function acquired(r: { status: string }): GpuLeaseAcquired {
  expect(r.status).toBe('ACQUIRED')
  return r as GpuLeaseAcquired
}

describe('arbiter faults', () => {
  let arbiter: GpuArbiter
  afterEach(() => {
    arbiter?.close()
    jest.restoreAllMocks()
  })

  test('a signal that is not an AbortSignal is refused before anything is queued', async () => {
    arbiter = new GpuArbiter({})
    const held = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    for (const signal of [{}, { aborted: false }, 'abort', 42]) {
      expect(() => arbiter.acquire({ taskType: 'NMT', signal: signal as never })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'request.signal: expected an AbortSignal' }),
      )
    }
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(0)
    // When the GPU frees up, the next real request gets it: no phantom waiter holds a lease.
    const next = arbiter.acquire({ taskType: 'NMT' })
    held.release()
    const lease = acquired(await next)
    expect(arbiter.snapshot('gpu:0')!.activeLeases.map((l) => l.leaseId)).toEqual([lease.leaseId])
    // An AbortSignal look-alike (as p-queue accepts) works.
    const listeners: Array<() => void> = []
    const lookAlike = { aborted: false, addEventListener: (_: string, f: () => void) => listeners.push(f), removeEventListener: () => {} }
    const waiting = arbiter.acquire({ taskType: 'TTS', signal: lookAlike as never })
    listeners.forEach((f) => f())
    await expect(waiting).resolves.toEqual({ status: 'CANCELLED', reason: 'ABORTED' })
  })

  test('huge waits and holds never arm a Node timer past its limit', async () => {
    const warnings: string[] = []
    const onWarning = (w: Error) => warnings.push(w.name)
    process.on('warning', onWarning)
    const delays: number[] = []
    // The arbiter's JS half arms its timer through node:timers (one module for every Jest context).
    const realSetTimeout = timers.setTimeout
    jest.spyOn(timers, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => {
      delays.push(ms ?? 0)
      return realSetTimeout(fn, ms)
    }) as never)
    arbiter = new GpuArbiter({})
    const held = acquired(await arbiter.acquire({ taskType: 'ASR', holdMaxMs: 1e300 }))
    const waits = [arbiter.acquire({ taskType: 'NMT', maxWaitMs: 1e300 }), arbiter.acquire({ taskType: 'TTS', maxWaitMs: Infinity })]
    await sleep(200)
    process.off('warning', onWarning)
    expect(warnings).not.toContain('TimeoutOverflowWarning')
    expect(delays.length).toBeGreaterThan(0)
    expect(delays.length).toBeLessThan(5) // armed once or twice, not every millisecond
    expect(Math.max(...delays)).toBeLessThanOrEqual(2 ** 31 - 1)
    expect(arbiter.snapshot('gpu:0')!.queue.map((w) => w.remainingMs! <= 86_400_000)).toEqual([true, true])
    expect(() => arbiter.acquire({ taskType: 'X', maxWaitMs: NaN })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'request.maxWaitMs: expected a number, got NaN' }))
    expect(() => arbiter.acquire({ taskType: 'X', holdMaxMs: -1 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    held.release()
    arbiter.close()
    await expect(Promise.all(waits)).resolves.toHaveLength(2)
  })

  test('close() clears the pending deadline timer', async () => {
    const armed: unknown[] = []
    const cleared: unknown[] = []
    const realSetTimeout = timers.setTimeout
    const realClearTimeout = timers.clearTimeout
    jest.spyOn(timers, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => {
      const t = realSetTimeout(fn, ms)
      armed.push(t)
      return t
    }) as never)
    jest.spyOn(timers, 'clearTimeout').mockImplementation(((t: never) => {
      cleared.push(t)
      realClearTimeout(t)
    }) as never)
    arbiter = new GpuArbiter({})
    acquired(await arbiter.acquire({ taskType: 'ASR' })) // a 60 s watchdog deadline
    const waiting = arbiter.acquire({ taskType: 'NMT' })
    expect(armed.length).toBeGreaterThan(0)
    const last = armed[armed.length - 1]
    expect(process.getActiveResourcesInfo()).toContain('Timeout') // the waiter keeps Node alive
    arbiter.close()
    expect(cleared).toContain(last)
    await expect(waiting).resolves.toEqual({ status: 'CANCELLED', reason: 'SHUTDOWN' })
    expect(() => arbiter.acquire({ taskType: 'ASR' })).toThrow(expect.objectContaining({ code: 'CLOSED' }))
  })

  test('bad arguments to the other methods throw with a documented code', () => {
    arbiter = new GpuArbiter({})
    const invalid = (f: () => unknown, code: string, message?: string) =>
      expect(f).toThrow(expect.objectContaining({ code, ...(message ? { message } : {}) }))
    invalid(() => arbiter.observeGpu('gpu:0', null as never), 'INVALID_ARGUMENT', 'reading: expected an object, got null')
    invalid(() => arbiter.observeGpu('gpu:0', { utilizationGpu: NaN }), 'INVALID_ARGUMENT', 'reading.utilizationGpu: expected a finite number, got NaN')
    invalid(() => arbiter.observeGpu(7 as never, {}), 'INVALID_ARGUMENT', 'gpuKey: expected a string, got the number 7')
    invalid(() => arbiter.snapshot(undefined as never), 'INVALID_ARGUMENT')
    invalid(() => new GpuArbiter({ defaultPriority: NaN }), 'INVALID_CONFIG', 'gpuArbiter.defaultPriority: expected a finite number, got NaN')
    const cyclic: Record<string, unknown> = { policies: {} }
    ;(cyclic.policies as Record<string, unknown>).ASR = cyclic
    invalid(() => new GpuArbiter(cyclic), 'INVALID_CONFIG', 'gpuArbiter.policies.ASR: a cyclic reference (the object contains itself)')
    invalid(() => new GpuArbiter({ gpuKeys: [() => 1] } as never), 'INVALID_CONFIG', 'gpuArbiter.gpuKeys[0]: expected a JSON value, got a function')
    invalid(() => arbiter.setConfig({ defaultHoldMaxMs: Infinity }), 'INVALID_CONFIG', 'gpuArbiter.defaultHoldMaxMs: expected a finite number, got Infinity')
    invalid(() => GpuArbiter.fromFile(42 as never), 'INVALID_ARGUMENT', 'path: expected a string, got the number 42')
    invalid(() => arbiter.onEvent('x' as never), 'INVALID_ARGUMENT')
  })
})
