import { GpuArbiter, GpuArbiterEvent, GpuLeaseAcquired } from '../gpu-sidecar'
import { sleep, waitFor } from './support'

function acquired(r: { status: string }): GpuLeaseAcquired {
  expect(r.status).toBe('ACQUIRED')
  return r as GpuLeaseAcquired
}

describe('GpuArbiter statuses and reasons', () => {
  let arbiter: GpuArbiter
  afterEach(() => arbiter?.close())

  test('grants at once, with the real queue wait, then hands over on release', async () => {
    arbiter = new GpuArbiter({})
    const first = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    expect(first.gpuKey).toBe('gpu:0')
    expect(first.queueWaitMs).toBe(0)
    expect(Math.abs(first.acquiredAt - Date.now())).toBeLessThan(1000)
    const waiting = arbiter.acquire({ taskType: 'NMT' })
    await sleep(60)
    expect(arbiter.release(first.leaseId)).toBe(true)
    const second = acquired(await waiting)
    expect(second.queueWaitMs).toBeGreaterThanOrEqual(50)
    expect(arbiter.release(second.leaseId)).toBe(true)
  })

  test('release is idempotent and ignores unknown ids', async () => {
    arbiter = new GpuArbiter({})
    const lease = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    expect(arbiter.release(lease.leaseId)).toBe(true)
    expect(arbiter.release(lease.leaseId)).toBe(false)
    expect(arbiter.release('not-a-lease')).toBe(false)
    expect(arbiter.release('lease-999999')).toBe(false)
  })

  test('lease ids read as the native side writes them, across every digit boundary the JS half builds', async () => {
    arbiter = new GpuArbiter({})
    let last = -1
    for (let i = 0; i < 2100; i++) {
      const lease = acquired(await arbiter.acquire({ taskType: 'ASR' }))
      expect(lease.leaseId).toBe(arbiter.snapshot('gpu:0')!.activeLeases[0].leaseId)
      const n = Number(lease.leaseId.slice('lease-'.length))
      expect(n).toBeGreaterThan(last)
      last = n
      expect(arbiter.release(lease.leaseId)).toBe(true)
    }
    expect(last).toBeGreaterThan(2000)
  })

  test('SKIP and FALLBACK_CPU answer a busy GPU at once with GPU_BUSY', async () => {
    arbiter = new GpuArbiter({})
    acquired(await arbiter.acquire({ taskType: 'ASR' }))
    await expect(arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', busyPolicy: 'SKIP' })).resolves.toEqual({ status: 'SKIPPED', reason: 'GPU_BUSY' })
    await expect(arbiter.acquire({ taskType: 'X', busyPolicy: 'FALLBACK_CPU' })).resolves.toEqual({
      status: 'FALLBACK_CPU',
      reason: 'GPU_BUSY',
    })
  })

  test("a WAIT request's wait runs out after maxWaitMs: SKIPPED / TIMEOUT, as the old arbiter answered", async () => {
    arbiter = new GpuArbiter({})
    acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const started = Date.now()
    await expect(arbiter.acquire({ taskType: 'NMT', maxWaitMs: 80 })).resolves.toEqual({ status: 'SKIPPED', reason: 'TIMEOUT' })
    expect(Date.now() - started).toBeGreaterThanOrEqual(75)
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(0)
  })

  test('a full queue is answered QUEUE_FULL at once and never grows past its limit', async () => {
    arbiter = new GpuArbiter({ defaultQueueLimit: 2 })
    acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const waiting = [arbiter.acquire({ taskType: 'ASR' }), arbiter.acquire({ taskType: 'ASR' })]
    await expect(arbiter.acquire({ taskType: 'ASR' })).resolves.toEqual({ status: 'SKIPPED', reason: 'QUEUE_FULL' })
    await expect(arbiter.acquire({ taskType: 'ASR', busyPolicy: 'FALLBACK_CPU' })).resolves.toEqual({
      status: 'FALLBACK_CPU',
      reason: 'QUEUE_FULL',
    })
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(2)
    arbiter.close()
    await expect(Promise.all(waiting)).resolves.toEqual([
      { status: 'CANCELLED', reason: 'SHUTDOWN' },
      { status: 'CANCELLED', reason: 'SHUTDOWN' },
    ])
  })

  test('HIGH_PRESSURE holds low-priority work back with GPU_USAGE_HIGH; high priority still gets in', async () => {
    arbiter = new GpuArbiter({ maxConcurrentLeases: 4 })
    arbiter.observeGpu('gpu:0', { utilizationGpu: 92, freeMb: 40000, totalMb: 80000 })
    expect(arbiter.snapshot('gpu:0')!.admission.state).toBe('HIGH_PRESSURE')
    await expect(arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', busyPolicy: 'SKIP' })).resolves.toEqual({ status: 'SKIPPED', reason: 'GPU_USAGE_HIGH' })
    await expect(arbiter.acquire({ taskType: 'OTHER', priority: 10, maxWaitMs: 60 })).resolves.toEqual({
      status: 'SKIPPED',
      reason: 'GPU_USAGE_HIGH',
    })
    acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const held = arbiter.acquire({ taskType: 'OTHER', priority: 10, maxWaitMs: 5000 })
    arbiter.observeGpu('gpu:0', { utilizationGpu: 80 }) // between the water marks: still high
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(1)
    arbiter.observeGpu('gpu:0', { utilizationGpu: 40 })
    acquired(await held)
    expect(arbiter.snapshot('gpu:0')!.admission.state).toBe('NORMAL')
  })

  test('VRAM admission answers VRAM_LOW and grants once memory is free', async () => {
    arbiter = new GpuArbiter({ maxConcurrentLeases: 4, gpuUsage: { vramReserveMb: 1000 } })
    arbiter.observeGpu('gpu:0', { utilizationGpu: 5, freeMb: 5000, totalMb: 80000 })
    await expect(arbiter.acquire({ taskType: 'TTS', vramMb: 6000, busyPolicy: 'SKIP' })).resolves.toEqual({
      status: 'SKIPPED',
      reason: 'VRAM_LOW',
    })
    const fits = acquired(await arbiter.acquire({ taskType: 'ASR', vramMb: 3000 }))
    // Not yet visible in telemetry: the second 3000 MB does not fit in 5000 - 1000 - 3000.
    const waiting = arbiter.acquire({ taskType: 'NMT', vramMb: 3000, maxWaitMs: 5000 })
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(1)
    arbiter.release(fits.leaseId)
    arbiter.observeGpu('gpu:0', { utilizationGpu: 5, freeMb: 9000, totalMb: 80000 })
    acquired(await waiting)
  })

  test('an AbortSignal withdraws a queued request at once; an aborted one resolves at once', async () => {
    arbiter = new GpuArbiter({ defaultQueueLimit: 1 })
    acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const controller = new AbortController()
    const waiting = arbiter.acquire({ taskType: 'NMT', signal: controller.signal })
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(1)
    controller.abort()
    await expect(waiting).resolves.toEqual({ status: 'CANCELLED', reason: 'ABORTED' })
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(0)
    // Its place is free: a new request can queue (limit 1).
    const next = arbiter.acquire({ taskType: 'NMT', maxWaitMs: 50 })
    await expect(next).resolves.toEqual({ status: 'SKIPPED', reason: 'TIMEOUT' })
    await expect(arbiter.acquire({ taskType: 'NMT', signal: AbortSignal.abort() })).resolves.toEqual({
      status: 'CANCELLED',
      reason: 'ABORTED',
    })
  })

  test('a granted request removes its abort listener', async () => {
    arbiter = new GpuArbiter({})
    const first = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const controller = new AbortController()
    const waiting = arbiter.acquire({ taskType: 'NMT', signal: controller.signal })
    arbiter.release(first.leaseId)
    const lease = acquired(await waiting)
    controller.abort() // must not affect the granted lease
    expect(arbiter.snapshot('gpu:0')!.activeLeases.map((l) => l.leaseId)).toEqual([lease.leaseId])
  })

  test('close resolves every waiter CANCELLED/SHUTDOWN and later calls fail with CLOSED', async () => {
    arbiter = new GpuArbiter({})
    acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const waiting = arbiter.acquire({ taskType: 'TTS' })
    arbiter.close()
    await expect(waiting).resolves.toEqual({ status: 'CANCELLED', reason: 'SHUTDOWN' })
    expect(arbiter.closed).toBe(true)
    expect(() => arbiter.acquire({ taskType: 'ASR' })).toThrow(expect.objectContaining({ code: 'CLOSED' }))
    expect(() => arbiter.setConfig({ defaultQueueLimit: 3 })).toThrow(expect.objectContaining({ code: 'CLOSED' }))
    arbiter.close() // idempotent
  })

  test('unknown GPU keys and bad requests are rejected with codes', async () => {
    arbiter = new GpuArbiter({ gpuKeys: ['gpu:0', 'gpu:1'] })
    expect(() => arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:7' })).toThrow(
      expect.objectContaining({ code: 'INVALID_GPU_KEY', message: expect.stringContaining('gpu:7') }),
    )
    expect(() => arbiter.acquire({ taskType: '' })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => arbiter.acquire(null as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'request: expected an object with a taskType' }))
    expect(() => arbiter.acquire({ taskType: 7 } as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'request.taskType: expected a string' }))
    expect(() => arbiter.acquire({ taskType: 'ASR', priority: 101 })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'request.priority: expected an integer 0-100, got 101' }),
    )
    expect(() => arbiter.acquire({ taskType: 'ASR', busyPolicy: 'MAYBE' as never })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('request.busyPolicy') }),
    )
    expect(() => arbiter.acquire({ taskType: 'ASR', maxWaitMs: -5 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  test('no gpuKey picks the least-loaded GPU', async () => {
    arbiter = new GpuArbiter({ gpuKeys: ['gpu:0', 'gpu:1'] })
    const a = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const b = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    expect([a.gpuKey, b.gpuKey]).toEqual(['gpu:0', 'gpu:1'])
    arbiter.release(b.leaseId)
    expect(acquired(await arbiter.acquire({ taskType: 'TTS' })).gpuKey).toBe('gpu:1')
  })

  test('priority order with FIFO among equals', async () => {
    arbiter = new GpuArbiter({ agingMsPerPriority: 0, defaultQueueLimit: 10 })
    const first = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const order: string[] = []
    const names = ['low-1', 'high', 'low-2', 'mid']
    const prios = [10, 90, 10, 50]
    const done = names.map((name, i) =>
      arbiter.acquire({ taskType: 'OTHER', priority: prios[i], maxWaitMs: 10000 }).then((r) => {
        order.push(name)
        arbiter.release((r as GpuLeaseAcquired).leaseId)
      }),
    )
    arbiter.release(first.leaseId)
    await Promise.all(done)
    expect(order).toEqual(['high', 'mid', 'low-1', 'low-2'])
  })
})

describe('GpuArbiter watchdog', () => {
  test('warn: emits a watchdog event and counts, the lease stays', async () => {
    const arbiter = new GpuArbiter({ defaultHoldMaxMs: 50 })
    const events: GpuArbiterEvent[] = []
    arbiter.onEvent((e) => events.push(e))
    const lease = acquired(await arbiter.acquire({ taskType: 'ASR', trace: { jobId: 'job-7' } }))
    const event = await waitFor(() => events.find((e) => e.type === 'watchdog'), 2000, 'watchdog event')
    expect(event).toMatchObject({ detail: 'warn', leaseId: lease.leaseId, taskType: 'ASR', trace: { jobId: 'job-7' } })
    expect(event.heldMs).toBeGreaterThanOrEqual(50)
    const snap = arbiter.snapshot('gpu:0')!
    expect(snap.activeLeases[0].watchdogFired).toBe(true)
    expect(snap.tasks.find((t) => t.taskType === 'ASR')!.watchdogExceeded).toBe(1)
    expect(arbiter.metrics()).toContain('gpu_arbiter_watchdog_exceeded_total{gpu="gpu:0",task_type="ASR"} 1')
    expect(arbiter.release(lease.leaseId)).toBe(true)
    arbiter.close()
  })

  test('revoke: a stuck lease is taken back and the next job gets the GPU (seed 002)', async () => {
    const arbiter = new GpuArbiter({ defaultHoldMaxMs: 50, watchdogAction: 'revoke' })
    const stuck = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const next = acquired(await arbiter.acquire({ taskType: 'NMT', maxWaitMs: 3000 }))
    expect(next.queueWaitMs).toBeGreaterThanOrEqual(45)
    expect(arbiter.release(stuck.leaseId)).toBe(false)
    expect(arbiter.snapshot('gpu:0')!.tasks.find((t) => t.taskType === 'ASR')!.revoked).toBe(1)
    arbiter.close()
  })
})

describe('GpuArbiter observability', () => {
  test('snapshot lists holders with trace, the queue in dequeue order, counters and percentiles', async () => {
    const arbiter = new GpuArbiter({ defaultQueueLimit: 4 })
    const lease = acquired(await arbiter.acquire({ taskType: 'ASR', trace: { jobId: 'j1', sessionId: 's1', utteranceIndex: 3, stage: 'ASR' } }))
    const waits = [arbiter.acquire({ taskType: 'TTS' }), arbiter.acquire({ taskType: 'NMT' })]
    await sleep(20)
    const snap = arbiter.snapshot('gpu:0')!
    expect(snap.activeLeases).toHaveLength(1)
    expect(snap.activeLeases[0]).toMatchObject({ leaseId: lease.leaseId, taskType: 'ASR', priority: 90, trace: { jobId: 'j1', utteranceIndex: 3 } })
    expect(snap.activeLeases[0].heldMs).toBeGreaterThanOrEqual(15)
    expect(snap.queue.map((w) => w.taskType)).toEqual(['NMT', 'TTS'])
    expect(snap.queue[0].waitedMs).toBeGreaterThanOrEqual(15)
    expect(arbiter.snapshot('gpu:9')).toBeNull()
    expect(arbiter.snapshotAll().map((s) => s.gpuKey)).toEqual(['gpu:0'])
    arbiter.release(lease.leaseId)
    // NMT (80) is served before TTS (70).
    for (const w of [waits[1], waits[0]]) arbiter.release(acquired(await w).leaseId)
    const tasks = arbiter.snapshot('gpu:0')!.tasks
    const stats = (taskType: string) => tasks.find((t) => t.taskType === taskType)!
    const tts = stats('TTS')
    expect(tts.acquired).toBe(1)
    expect(tts.waitMs!.p50).toBeGreaterThanOrEqual(15)
    // TTS queued before NMT and was served after it, so it waited longer.
    expect(tts.waitMs!.p99).toBeGreaterThanOrEqual(stats('NMT').waitMs!.p99)
    // ASR held its lease through the 20 ms sleep.
    const asrHold = stats('ASR').holdMs!
    expect(asrHold.p99).toBeGreaterThanOrEqual(15)
    expect(asrHold.p50).toBeLessThanOrEqual(asrHold.p99)
    arbiter.close()
  })

  test('metrics() is Prometheus text with the seed metric list', async () => {
    const arbiter = new GpuArbiter({})
    const lease = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    await arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', busyPolicy: 'SKIP' })
    arbiter.release(lease.leaseId)
    const text = arbiter.metrics()
    expect(text).toContain('# TYPE gpu_arbiter_acquire_total counter')
    expect(text).toContain('gpu_arbiter_acquire_total{gpu="gpu:0",task_type="ASR",status="ACQUIRED"} 1')
    expect(text).toContain('gpu_arbiter_acquire_total{gpu="gpu:0",task_type="SEMANTIC_REPAIR",status="SKIPPED"} 1')
    expect(text).toContain('# TYPE gpu_arbiter_queue_wait_ms histogram')
    expect(text).toMatch(/gpu_arbiter_hold_ms_bucket\{gpu="gpu:0",task_type="ASR",le="\+Inf"\} 1/)
    for (const name of ['gpu_arbiter_queue_length', 'gpu_arbiter_timeouts_total', 'gpu_arbiter_queue_full_total', 'gpu_arbiter_watchdog_exceeded_total']) {
      expect(text).toContain(`# TYPE ${name}`)
    }
    // Every sample line is `name{labels} value`.
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
      expect(line).toMatch(/^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$/)
    }
    arbiter.close()
  })

  test('events: acquired, queued, released, timeout, skipped; unsubscribe stops them; a throwing listener is harmless', async () => {
    const arbiter = new GpuArbiter({})
    const types: string[] = []
    arbiter.onEvent(() => {
      throw new Error('listener bug')
    })
    const off = arbiter.onEvent((e) => types.push(e.type))
    const lease = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    await arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', busyPolicy: 'SKIP' })
    await arbiter.acquire({ taskType: 'NMT', maxWaitMs: 30 })
    arbiter.release(lease.leaseId)
    expect(types).toEqual(['acquired', 'skipped', 'queued', 'timeout', 'released'])
    off()
    await arbiter.acquire({ taskType: 'ASR' })
    expect(types).toHaveLength(5)
    arbiter.close()
  })

  test('a listener may call back into the arbiter', async () => {
    const arbiter = new GpuArbiter({})
    arbiter.onEvent((e) => {
      if (e.type === 'acquired') arbiter.release(e.leaseId!)
    })
    const lease = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    expect(arbiter.release(lease.leaseId)).toBe(false)
    expect(arbiter.snapshot('gpu:0')!.activeLeases).toHaveLength(0)
    arbiter.close()
  })
})

describe('GpuArbiter at scale', () => {
  test('10,000 queued waiters drain in priority order, FIFO among equals, each resolved once', async () => {
    const n = 10_000
    const arbiter = new GpuArbiter({ agingMsPerPriority: 0, defaultQueueLimit: n, defaultHoldMaxMs: 0 })
    const first = acquired(await arbiter.acquire({ taskType: 'ASR' }))
    const priorities = Array.from({ length: n }, (_, i) => (i * 7919) % 101)
    const served: number[] = []
    const all = priorities.map((priority, i) =>
      arbiter.acquire({ taskType: 'OTHER', priority, maxWaitMs: 600_000 }).then((r) => {
        served.push(i)
        arbiter.release(acquired(r).leaseId)
      }),
    )
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(n)
    arbiter.release(first.leaseId)
    await Promise.all(all)
    const expected = priorities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).map(([, i]) => i)
    expect(served).toEqual(expected)
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(0)
    expect(arbiter.snapshot('gpu:0')!.activeLeases).toHaveLength(0)
    arbiter.close()
  })
})
