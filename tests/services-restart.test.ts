// Restart hygiene (issue 9, point 4) with real Python services: the attempt count resets after
// a stable run, maxRestarts counts within windowMs, jitter spreads delays within its bounds, and
// status() shows the attempt, the next restart and the last failure.
import { of, py, supervise } from './services-support'
import { waitFor } from './support'

test('a stable run resets the attempt and the backoff: a service that crashes now and then never runs out', async () => {
  const { supervisor, events } = supervise({
    services: [
      // Ready, then exits 3 after 400 ms: each run lasts longer than resetAfterMs (300).
      py('asr', 'crash-after', ['--run-ms', 400], {
        restart: { policy: 'on-failure', maxRestarts: 1, backoffMs: 50, jitter: 0, resetAfterMs: 300 },
      }),
    ],
  })
  await supervisor.startAll()
  await waitFor(() => of(events, 'asr', 'restarting').length >= 3, 15000, 'three restarts')
  // Without the reset, maxRestarts 1 would have failed it at the second crash.
  expect(of(events, 'asr', 'failed')).toEqual([])
  expect(of(events, 'asr', 'restarting').slice(0, 3).map((e) => [e.attempt, e.delayMs])).toEqual([
    [1, 50],
    [1, 50],
    [1, 50],
  ])
  const status = supervisor.status('asr')
  expect(status.restarts).toBeGreaterThanOrEqual(3)
  expect(status.lastFailure?.error).toMatchObject({ code: 'SERVICE_EXITED', message: expect.stringContaining('exit code 3') })
})

test('without a stable run the same service runs out of restarts', async () => {
  const { supervisor, events } = supervise({
    services: [
      py('asr', 'crash-after', ['--run-ms', 100], {
        restart: { policy: 'on-failure', maxRestarts: 2, backoffMs: 50, jitter: 0, resetAfterMs: 60000 },
      }),
    ],
  })
  await supervisor.startAll()
  const [failed] = await waitFor(() => of(events, 'asr', 'failed').length > 0 && of(events, 'asr', 'failed'), 15000, 'failed')
  expect(failed.error.message).toContain('after 2 restarts')
  expect(of(events, 'asr', 'restarting').map((e) => [e.attempt, e.delayMs])).toEqual([
    [1, 50],
    [2, 100],
  ])
})

test('windowMs: maxRestarts counts only the restarts within the window', async () => {
  const { supervisor, events } = supervise({
    services: [
      // A crash every ~0.3 s; 2 restarts allowed per 0.5 s window, so it runs out only when three
      // crashes fall within one window: the 800 ms backoff cap keeps them apart.
      py('asr', 'crash-after', ['--run-ms', 50], {
        restart: { policy: 'on-failure', maxRestarts: 2, windowMs: 500, backoffMs: 800, maxBackoffMs: 800, jitter: 0, resetAfterMs: 60000 },
      }),
    ],
  })
  await supervisor.startAll()
  await waitFor(() => of(events, 'asr', 'restarting').length >= 4, 20000, 'four restarts')
  // The attempt keeps counting (no stable run), but the window never holds more than two.
  expect(of(events, 'asr', 'restarting').slice(0, 4).map((e) => e.attempt)).toEqual([1, 2, 3, 4])
  expect(of(events, 'asr', 'failed')).toEqual([])
})

test('windowMs: restarts bunched within the window use up maxRestarts', async () => {
  const { supervisor, events } = supervise({
    services: [
      py('asr', 'crash-after', ['--run-ms', 50], {
        restart: { policy: 'on-failure', maxRestarts: 2, windowMs: 60000, backoffMs: 50, maxBackoffMs: 50, jitter: 0, resetAfterMs: 60000 },
      }),
    ],
  })
  await supervisor.startAll()
  const [failed] = await waitFor(() => of(events, 'asr', 'failed').length > 0 && of(events, 'asr', 'failed'), 15000, 'failed')
  expect(of(events, 'asr', 'restarting')).toHaveLength(2)
  expect(failed.error).toMatchObject({ code: 'SERVICE_EXITED', message: expect.stringContaining('after 2 restarts') })
})

test('status shows the attempt and when the next restart is due', async () => {
  const { supervisor, events } = supervise({
    services: [py('asr', 'crash-after', ['--run-ms', 50], { restart: { policy: 'on-failure', maxRestarts: 5, backoffMs: 3000, jitter: 0 } })],
  })
  await supervisor.startAll()
  const [restarting] = await waitFor(() => of(events, 'asr', 'restarting').length > 0 && of(events, 'asr', 'restarting'), 10000, 'restarting')
  const status = supervisor.status('asr')
  expect(status).toMatchObject({ state: 'restarting', attempt: 1, restarts: 1, pid: null })
  expect(status.nextRestartAt).toBeGreaterThanOrEqual(restarting.at + 2900)
  expect(status.nextRestartAt).toBeLessThanOrEqual(restarting.at + 3100)
  expect(status.lastFailure).toMatchObject({ at: expect.any(Number), error: { code: 'SERVICE_EXITED' } })
  expect(status.lastLines).toContain('[SERVICE_READY]')
})

test('jitter spreads the delays within its bounds', async () => {
  const { supervisor, events } = supervise({
    services: [
      py('asr', 'crash-after', ['--run-ms', 10], {
        restart: { policy: 'on-failure', maxRestarts: 8, backoffMs: 100, maxBackoffMs: 100, jitter: 0.5 },
      }),
    ],
  })
  await supervisor.startAll()
  await waitFor(() => of(events, 'asr', 'failed').length > 0, 30000, 'failed')
  const delays = of(events, 'asr', 'restarting').map((e) => e.delayMs)
  expect(delays).toHaveLength(8)
  for (const d of delays) {
    expect(d).toBeGreaterThanOrEqual(50)
    expect(d).toBeLessThanOrEqual(150)
  }
  expect(new Set(delays).size).toBeGreaterThan(1)
})

test('a jitter outside 0-1 is refused with its JSON path', () => {
  expect(() => supervise({ services: [py('x', 'talk', [], { restart: { jitter: 1.5 } })] })).toThrow(
    expect.objectContaining({ code: 'INVALID_CONFIG', message: 'services.services[0].restart.jitter: expected a number 0-1, got 1.5' }),
  )
})
