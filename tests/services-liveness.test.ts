// Liveness after ready and the hung service seen through its leases (issue 9, points 1 and 2),
// with real Python services.
import { join } from 'node:path'
import { GpuArbiter } from '../gpu-sidecar'
import { tempDir, waitFor } from './support'
import { alive, freePort, of, py, supervise } from './services-support'

describe('liveness', () => {
  test('a service that stops answering /health after ready is unhealthy, stopped and restarted (on-failure)', async () => {
    const port = await freePort()
    const url = `http://127.0.0.1:${port}/health`
    const flag = join(tempDir(), 'hung-once')
    const { supervisor, events } = supervise({
      services: [
        py('nmt', 'http', ['--port', port, '--hang-once', flag, '--hang-after-ms', 300], {
          port,
          probeIntervalMs: 50,
          readiness: { http: { url } },
          liveness: { http: { url }, intervalMs: 150, timeoutMs: 100, failureThreshold: 2 },
          restart: { policy: 'on-failure', backoffMs: 50, jitter: 0 },
        }),
      ],
    })
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
    await waitFor(() => of(events, 'nmt', 'ready').length === 2, 15000, 'the restart to be ready')
    const types = events.filter((e) => e.service === 'nmt').map((e) => e.type)
    const unhealthy = types.indexOf('unhealthy')
    expect(unhealthy).toBeGreaterThan(types.indexOf('ready'))
    expect(types.slice(unhealthy)).toEqual(expect.arrayContaining(['exited', 'restarting', 'starting', 'spawned', 'ready']))
    expect(types.lastIndexOf('ready')).toBeGreaterThan(types.indexOf('restarting'))
    const [sick] = of(events, 'nmt', 'unhealthy')
    expect(sick.failures).toHaveLength(2)
    expect(sick.failures[0]).toContain('no answer within 100 ms')
    expect(of(events, 'nmt', 'liveness-failed').map((e) => e.consecutive)).toEqual([1, 2])
    const [first, second] = of(events, 'nmt', 'spawned').map((e) => e.pid)
    expect(second).not.toBe(first)
    await waitFor(() => !alive(first), 5000, 'the hung process to be gone')
    const status = supervisor.status('nmt')
    expect(status).toMatchObject({ state: 'ready', pid: second, restarts: 1, attempt: 1 })
    expect(status.lastFailure?.error).toMatchObject({ code: 'LIVENESS_FAILED', message: expect.stringContaining('2 times in a row') })
  })

  test('with policy no, a missed logLine heartbeat ends the service failed with LIVENESS_FAILED', async () => {
    const { supervisor, events } = supervise({
      services: [
        py('asr', 'heartbeat', ['--tick-ms', 50, '--hang-after-ms', 400], {
          liveness: { logLine: { pattern: '\\[ALIVE\\]' }, intervalMs: 200, failureThreshold: 2 },
        }),
      ],
    })
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
    const [failed] = await waitFor(() => of(events, 'asr', 'failed').length > 0 && of(events, 'asr', 'failed'), 10000, 'failed')
    expect(failed.error).toMatchObject({ code: 'LIVENESS_FAILED' })
    expect(failed.error.message).toContain('no line matching "\\\\[ALIVE\\\\]" for 200 ms')
    const hungAt = Number(of(events, 'asr', 'log').find((e) => e.line.startsWith('HUNG_AT'))!.line.split(' ')[1])
    const [sick] = of(events, 'asr', 'unhealthy')
    // Two missed intervals of 200 ms after the last line, give or take one tick and scheduling.
    expect(sick.at - hungAt).toBeGreaterThanOrEqual(300)
    expect(of(events, 'asr', 'restarting')).toEqual([])
    expect(supervisor.status('asr')).toMatchObject({ state: 'failed', pid: null, error: { code: 'LIVENESS_FAILED' } })
    expect(alive(of(events, 'asr', 'spawned')[0].pid)).toBe(false)
  })

  test('steady heartbeats keep a service ready', async () => {
    const { supervisor, events } = supervise({
      services: [py('tts', 'heartbeat', ['--tick-ms', 40], { liveness: { logLine: { pattern: 'ALIVE' }, intervalMs: 200, failureThreshold: 1 } })],
    })
    await supervisor.startAll()
    await new Promise((r) => setTimeout(r, 1000))
    expect(of(events, 'tts', 'liveness-failed')).toEqual([])
    expect(supervisor.status('tts').state).toBe('ready')
  })

  test('a bad liveness config names its JSON path', () => {
    expect(() => supervise({ services: [py('x', 'heartbeat', [], { liveness: { intervalMs: 100 } as never })] })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('services.services[0].liveness: expected exactly one of') }),
    )
    expect(() =>
      supervise({ services: [py('x', 'heartbeat', [], { liveness: { logLine: { pattern: 'a' }, failureThreshold: 0 } })] }),
    ).toThrow(expect.objectContaining({ message: expect.stringContaining('services.services[0].liveness.failureThreshold') }))
  })
})

describe('hung through its leases', () => {
  test('two leases of its task type revoked by the watchdog: hung, their signals abort, and it is restarted', async () => {
    const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'], maxConcurrentLeases: 2, watchdogAction: 'revoke' })
    const { supervisor, events } = supervise({
      services: [
        py('asr', 'heartbeat', ['--tick-ms', 1000], {
          gpu: { key: 'gpu:0', taskTypes: ['ASR'] },
          restart: { policy: 'on-failure', backoffMs: 50, jitter: 0 },
          hangAfterRevokes: 2,
          hangWindowMs: 10000,
        }),
      ],
    })
    supervisor.attachArbiter(arbiter)
    try {
      expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
      const leases = []
      for (let k = 0; k < 2; k++) {
        const lease = await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', holdMaxMs: 150 * (k + 1) })
        if (lease.status !== 'ACQUIRED') throw new Error(`not granted: ${JSON.stringify(lease)}`)
        leases.push(lease)
      }
      const status = supervisor.status('asr')
      expect(status.leases.active.map((l) => l.leaseId).sort()).toEqual(leases.map((l) => l.leaseId).sort())
      expect(status.leases.lastGrant).toMatchObject({ leaseId: leases[1].leaseId, taskType: 'ASR' })
      const [hung] = await waitFor(() => of(events, 'asr', 'hung').length > 0 && of(events, 'asr', 'hung'), 5000, 'hung')
      expect(hung).toMatchObject({ revokes: 2, windowMs: 10000, leaseIds: leases.map((l) => l.leaseId) })
      expect(leases.every((l) => (l as unknown as { signal: AbortSignal }).signal.aborted)).toBe(true)
      await waitFor(() => of(events, 'asr', 'ready').length === 2, 10000, 'ready again')
      const after = supervisor.status('asr')
      expect(after).toMatchObject({ state: 'ready', restarts: 1, leases: { active: [], watchdogRevokes: 2 } })
      expect(after.lastFailure?.error.code).toBe('SERVICE_HUNG')
      const types = events.filter((e) => e.service === 'asr').map((e) => e.type)
      expect(types.slice(types.indexOf('hung'))).toEqual(expect.arrayContaining(['exited', 'restarting', 'ready']))
    } finally {
      arbiter.close()
    }
  })

  test('one revoke is not a hang; leases of other task types, or after detach, are not attributed', async () => {
    const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'], maxConcurrentLeases: 4, watchdogAction: 'revoke' })
    const { supervisor, events } = supervise({
      services: [py('asr', 'heartbeat', ['--tick-ms', 1000], { gpu: { key: 'gpu:0', taskTypes: ['ASR'] }, hangAfterRevokes: 2 })],
    })
    const detach = supervisor.attachArbiter(arbiter)
    try {
      await supervisor.startAll()
      await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', holdMaxMs: 100 })
      const mt = await arbiter.acquire({ taskType: 'MT', gpuKey: 'gpu:0', holdMaxMs: 100 })
      await waitFor(() => supervisor.status('asr').leases.watchdogRevokes === 1, 5000, 'the revoke')
      await new Promise((r) => setTimeout(r, 300))
      expect(of(events, 'asr', 'hung')).toEqual([])
      expect(supervisor.status('asr')).toMatchObject({ state: 'ready', leases: { active: [], watchdogRevokes: 1 } })
      expect(mt.status).toBe('ACQUIRED')
      const released = await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', holdMaxMs: 10000 })
      if (released.status !== 'ACQUIRED') throw new Error('not granted')
      expect(supervisor.status('asr').leases.active).toHaveLength(1)
      released.release()
      expect(supervisor.status('asr').leases.active).toHaveLength(0)
      // Detached: its leases are no longer followed.
      const held = await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', holdMaxMs: 10000 })
      expect(held.status).toBe('ACQUIRED')
      expect(supervisor.status('asr').leases.active).toHaveLength(1)
      detach()
      expect(supervisor.status('asr').leases).toMatchObject({ active: [], watchdogRevokes: 1 })
      await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', holdMaxMs: 10000 })
      expect(supervisor.status('asr').leases.active).toEqual([])
    } finally {
      arbiter.close()
    }
  })
})
