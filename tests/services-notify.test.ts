// Readiness a model load can report (issue 9, point 3): the notify pipe, anyOf, and the stall
// timer, with real Python services.
import { waitFor } from './support'
import { freePort, of, py, supervise } from './services-support'

describe('notify', () => {
  test('READY=1, STATUS= and EXTEND_TIMEOUT_MS= over GPU_SIDECAR_NOTIFY_FD', async () => {
    const { supervisor, events } = supervise({
      services: [
        py('asr', 'notify', ['--load-ms', 1200, '--tick-ms', 200, '--extend-ms', 3000], {
          readiness: { notify: {} },
          readinessTimeoutMs: 700,
          maxReadinessTimeoutMs: 2500,
        }),
      ],
    })
    // Ready after 1.2 s: past readinessTimeoutMs (700), within the extension (capped at 2500).
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ service: 'asr', status: 'ready' })])
    expect(of(events, 'asr', 'readiness-extended')).toEqual([expect.objectContaining({ timeoutMs: 2500 })])
    const texts = of(events, 'asr', 'status').map((e) => e.text)
    expect(texts[0]).toBe('loading 0%')
    expect(texts).toContain('serving')
    expect(supervisor.status('asr').notifyStatus).toBe('serving')
    expect(of(events, 'asr', 'ready')[0].timeToReadyMs).toBeGreaterThanOrEqual(1100)
  })

  test('without an extension the same load times out', async () => {
    const { supervisor } = supervise({
      services: [py('asr', 'notify', ['--load-ms', 1200, '--tick-ms', 200], { readiness: { notify: {} }, readinessTimeoutMs: 700 })],
    })
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'failed', error: expect.objectContaining({ code: 'READINESS_TIMEOUT' }) })])
  })

  test('WATCHDOG=1 keeps it alive; a missed WATCHDOG makes it unhealthy', async () => {
    const { supervisor, events } = supervise({
      services: [
        py('steady', 'notify', ['--tick-ms', 50], { readiness: { notify: {} }, liveness: { notify: {}, intervalMs: 250, failureThreshold: 1 } }),
        py('stuck', 'notify', ['--tick-ms', 50, '--hang-after-ms', 500], {
          readiness: { notify: {} },
          liveness: { notify: {}, intervalMs: 250, failureThreshold: 1 },
        }),
      ],
      maxConcurrentStarts: 2,
    })
    await supervisor.startAll()
    const [failed] = await waitForEvent(events, 'stuck', 'failed')
    expect(failed.error).toMatchObject({ code: 'LIVENESS_FAILED', message: expect.stringContaining('no WATCHDOG=1 message for 250 ms') })
    expect(of(events, 'stuck', 'unhealthy')).toHaveLength(1)
    expect(of(events, 'steady', 'liveness-failed')).toEqual([])
    expect(supervisor.status('steady').state).toBe('ready')
  })

  test('a notify service is given the variable and a working pipe; others are not', async () => {
    const { supervisor, events } = supervise({
      services: [
        {
          name: 'probe',
          command: 'python3',
          args: ['-c', "import os; fd=os.environ.get('GPU_SIDECAR_NOTIFY_FD'); print('FD', fd, flush=True); fd and os.write(int(fd), b'READY=1\\n'); import time; time.sleep(60)"],
          readiness: { notify: {} },
        },
        {
          name: 'plain',
          command: 'python3',
          args: ['-c', "import os; print('FD', os.environ.get('GPU_SIDECAR_NOTIFY_FD'), flush=True); import time; time.sleep(60)"],
          readiness: { logLine: { pattern: '^FD' } },
        },
      ],
    })
    expect((await supervisor.startAll()).map((o) => o.status)).toEqual(['ready', 'ready'])
    expect(of(events, 'probe', 'log')[0].line).toMatch(/^FD \d+$/)
    expect(of(events, 'plain', 'log')[0].line).toBe('FD None')
  })
})

test('STOPPING=1 is an event; unknown messages are ignored', async () => {
  const script = [
    'import os, time',
    "fd = int(os.environ['GPU_SIDECAR_NOTIFY_FD'])",
    "os.write(fd, b'MAINPID=1\\nREADY=1\\n')",
    'time.sleep(0.2)',
    "os.write(fd, b'STOPPING=1\\n')",
    'time.sleep(0.2)',
  ].join('\n')
  const { supervisor, events } = supervise({ services: [{ name: 'asr', command: 'python3', args: ['-c', script], readiness: { notify: {} } }] })
  expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
  await waitFor(() => of(events, 'asr', 'stopped').length > 0, 5000, 'stopped')
  const types = events.filter((e) => e.service === 'asr').map((e) => e.type)
  expect(types.indexOf('notify-stopping')).toBeGreaterThan(types.indexOf('ready'))
  expect(types.indexOf('notify-stopping')).toBeLessThan(types.indexOf('exited'))
  expect(of(events, 'asr', 'status')).toEqual([])
})

describe('anyOf', () => {
  test('ready on whichever comes first: the log line, or /health', async () => {
    const port = await freePort()
    const anyOf = [{ logLine: { pattern: '\\[SERVICE_READY\\]' } }, { http: { url: `http://127.0.0.1:${port}/health` } }]
    const { supervisor, events } = supervise({
      services: [
        py('by-log', 'ready-http', ['--log-ms', 200, '--http-ms', 5000, '--port', port], { readiness: { anyOf }, probeIntervalMs: 50 }),
      ],
    })
    await supervisor.startAll()
    expect(of(events, 'by-log', 'ready')[0].timeToReadyMs).toBeLessThan(3000)
    await supervisor.close()

    const port2 = await freePort()
    const anyOf2 = [{ logLine: { pattern: '\\[SERVICE_READY\\]' } }, { http: { url: `http://127.0.0.1:${port2}/health` } }]
    const second = supervise({
      services: [py('by-http', 'ready-http', ['--http-ms', 300, '--port', port2], { readiness: { anyOf: anyOf2 }, probeIntervalMs: 50 })],
    })
    expect(await second.supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
    const lines = of(second.events, 'by-http', 'log').map((e) => e.line)
    expect(lines).toContain('HTTP_UP')
    expect(lines).not.toContain('[SERVICE_READY]')
  })

  test('an empty anyOf is refused with its JSON path', () => {
    expect(() => supervise({ services: [py('x', 'talk', [], { readiness: { anyOf: [] } })] })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('services.services[0].readiness.anyOf') }),
    )
  })
})

describe('readinessStallTimeoutMs', () => {
  test('a stalled load fails fast with READINESS_STALLED, a slow talkative one succeeds', async () => {
    const { supervisor, events } = supervise({
      maxConcurrentStarts: 2,
      services: [
        py('stalled', 'stall', ['--lines', 3], { readinessTimeoutMs: 20000, readinessStallTimeoutMs: 600 }),
        py('talkative', 'talk', ['--load-ms', 2000, '--tick-ms', 200], { readinessTimeoutMs: 20000, readinessStallTimeoutMs: 600 }),
      ],
    })
    const started = Date.now()
    const outcomes = await supervisor.startAll()
    expect(outcomes).toEqual([
      expect.objectContaining({ service: 'stalled', status: 'failed', error: expect.objectContaining({ code: 'READINESS_STALLED' }) }),
      expect.objectContaining({ service: 'talkative', status: 'ready' }),
    ])
    const stalledAt = of(events, 'stalled', 'readiness-stalled')[0]
    expect(stalledAt).toMatchObject({ stallTimeoutMs: 600 })
    expect(stalledAt.at - started).toBeLessThan(10000) // far from the 20 s cap
    expect(of(events, 'talkative', 'ready')[0].timeToReadyMs).toBeGreaterThanOrEqual(1900)
  })
})

function waitForEvent<T extends Parameters<typeof of>[2]>(events: Parameters<typeof of>[0], service: string, type: T) {
  return waitFor(() => of(events, service, type).length > 0 && of(events, service, type), 10000, type)
}
