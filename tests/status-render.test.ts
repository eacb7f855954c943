// The shared renderer's pieces that decide what a mark says and where it goes (src/status/render.js).
const render = require('../src/status/render.js')

describe('event marks', () => {
  test('supervisor and arbiter events that are marked, and those that are not', () => {
    expect(render.serviceMark({ type: 'ready', service: 'asr', at: 5, timeToReadyMs: 1800 })).toEqual({ at: 5, kind: 'service-ready', subject: 'asr', label: 'asr ready in 1.8 s' })
    expect(render.serviceMark({ type: 'failed', service: 'asr', at: 5, error: { code: 'SERVICE_EXITED', message: 'asr: exited with code 1' }, lastLines: [] })).toMatchObject({ kind: 'service-failed', label: 'asr failed: SERVICE_EXITED: asr: exited with code 1' })
    expect(render.serviceMark({ type: 'restarting', service: 'asr', at: 5, attempt: 2, delayMs: 2000 })).toMatchObject({ kind: 'service-restarted', label: 'asr restarting (attempt 2) in 2.0 s' })
    expect(render.serviceMark({ type: 'evicted', service: 'old', at: 5, gpuKey: 'gpu:1', for: 'tts', expectedMb: 1, freedMb: 1 })).toMatchObject({ kind: 'service-evicted', subject: 'old', label: 'old evicted from gpu:1 to make room for tts' })
    for (const type of ['starting', 'spawned', 'log', 'probe-failed', 'exited', 'stopped', 'vram-wait']) expect(render.serviceMark({ type, service: 'asr', at: 5 })).toBeNull()
    expect(render.arbiterMark({ type: 'watchdog', detail: 'revoke', at: 9, gpuKey: 'gpu:0', taskType: 'ASR', leaseId: 'lease-4', heldMs: 1500 })).toEqual({ at: 9, kind: 'lease-revoked', subject: 'gpu:0', label: 'ASR lease lease-4 on gpu:0 revoked by the hold watchdog after 1.5 s' })
    expect(render.arbiterMark({ type: 'watchdog', detail: 'warn', at: 9, gpuKey: 'gpu:0' })).toBeNull()
    expect(render.arbiterMark({ type: 'acquired', at: 9, gpuKey: 'gpu:0' })).toBeNull()
  })

  test('an alert is printed as level, code and its message (which names the subject), and marks its raise and its clear', () => {
    const model = { title: 't', source: 's', samples: [], alerts: [], events: [] }
    const raised = { at: 1, level: 'warning', code: 'GPU_USAGE_HIGH', active: true, gpuKey: 'gpu:0', message: 'gpu:0: utilization 89% at or above 85%', figures: {} }
    expect(render.alertText(raised)).toBe('warning GPU_USAGE_HIGH gpu:0: utilization 89% at or above 85%')
    render.addAlert(model, raised)
    render.addAlert(model, { ...raised, at: 2, level: 'info', active: false, message: 'gpu:0: utilization 50% back under 78%' })
    expect(model.events).toEqual([
      { at: 1, kind: 'alert-raised', subject: 'gpu:0', label: 'raised warning GPU_USAGE_HIGH gpu:0: utilization 89% at or above 85%' },
      { at: 2, kind: 'alert-cleared', subject: 'gpu:0', label: 'cleared info GPU_USAGE_HIGH gpu:0: utilization 50% back under 78%' },
    ])
    // Unknown kinds and times are not marked.
    render.addEvent(model, { at: Number.NaN, kind: 'service-ready', subject: 'x', label: 'x' })
    render.addEvent(model, { at: 3, kind: 'exploded', subject: 'x', label: 'x' })
    expect(model.events).toHaveLength(2)
  })

  test('events go on the samples\' time axis: as they are beside live samples, after the latest sample at the replay\'s speed beside a replay', () => {
    const wall = 1_800_000_000_000
    const live = render.sampleClock()
    live.sample(wall - 40, wall)
    expect(live.at(wall + 500, wall + 500)).toBe(wall + 500)
    // A replay recorded a year before, played at 10x: samples 500 ms apart arrive 50 ms apart.
    const recorded = wall - 365 * 86_400_000
    const replay = render.sampleClock()
    expect(replay.at(wall, wall)).toBe(wall) // no sample yet: as it is
    replay.sample(recorded, wall)
    replay.sample(recorded + 500, wall + 50)
    expect(replay.at(wall + 80, wall + 80)).toBe(recorded + 500 + 30 * 10)
    // One sample only: speed 1.
    const one = render.sampleClock()
    one.sample(recorded, wall)
    expect(one.at(wall + 70, wall + 70)).toBe(recorded + 70)
  })
})
