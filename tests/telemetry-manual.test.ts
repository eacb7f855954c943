// A Telemetry fed by hand (`source: 'manual'`, `push`): readings from another tool or host, and
// the test source whose free memory follows what the services do. Pushed samples must be checked
// like replayed lines and then go everywhere a sampled one goes: listeners, alerts, recording,
// attached arbiters (admission, backlog) and a supervisor's VRAM gate.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { GpuArbiter, ServiceEvent, ServiceSupervisor, Telemetry, TelemetryAlert, TelemetryOptions, TelemetrySample } from '../gpu-sidecar'
import { oneGpuSample, sleep, tempDir, waitFor } from './support'

const SERVICE = join(__dirname, 'fixtures', 'services', 'service.py')
const t0 = 1_790_000_000_000

type Figures = { util?: number; freeMb?: number; swapUsedMb?: number }

/** One sample with one 80 GB GPU (`gpu:0`), as an AMD reader or a remote host would push it. */
function sample(at: number, { util = 10, freeMb = 60000, swapUsedMb = 0 }: Figures = {}): TelemetrySample {
  return oneGpuSample({ at, util, freeMb, swapUsedMb, name: 'AMD Instinct MI210', swapTotalMb: 8000 })
}

const open: Telemetry[] = []

/** A manual Telemetry whose samples and alerts are collected; closed after each test. */
function manual(options: TelemetryOptions = {}) {
  const telemetry = new Telemetry({ source: 'manual', ...options })
  open.push(telemetry)
  const samples: TelemetrySample[] = []
  const alerts: TelemetryAlert[] = []
  telemetry.onSample((s) => samples.push(s))
  telemetry.onAlert((a) => alerts.push(a))
  /** Pushes `pushed` and resolves once the listeners have seen them all. */
  const push = async (...pushed: TelemetrySample[]) => {
    const want = samples.length + pushed.length
    for (const s of pushed) telemetry.push(s)
    await waitFor(() => samples.length >= want, 5000, `${want} samples`)
  }
  return { telemetry, samples, alerts, push }
}

// Serde values reach JS through JSON (src/binding/js.rs `to_js`); napi's serializer made a
// BigInt of any integer above 2^32 - 1, which the generated types call a number.
test('a pushed figure above 2^32 reaches the listener as a number, its fields in declaration order', async () => {
  const { samples, push } = manual()
  const big = sample(t0)
  big.host.totalMb = 6_000_000_000
  await push(big)
  expect(typeof samples[0].host.totalMb).toBe('number')
  expect(samples[0].host.totalMb).toBe(6_000_000_000)
  expect(Object.keys(samples[0]).slice(0, 2)).toEqual(['at', 'nvml'])
})

afterEach(() => {
  for (const t of open.splice(0)) t.close()
})

function invalid(f: () => unknown, code: string, message: string) {
  expect(f).toThrow(expect.objectContaining({ code, message }))
}

describe('a manual Telemetry', () => {
  test('pushed samples reach onSample and latest() in order, are recorded, and nothing is sampled by itself', async () => {
    const record = join(tempDir(), 'pushed.jsonl')
    const { telemetry, samples, push } = manual({ record, intervalMs: 50 })
    await sleep(200)
    expect(samples).toEqual([])
    expect(telemetry.latest()).toBeNull()
    const pushed = [0, 1, 2].map((i) => sample(t0 + i * 1000, { util: 10 * i }))
    await push(...pushed)
    expect(samples).toEqual(pushed)
    expect(telemetry.latest()).toEqual(pushed[2])
    expect(telemetry.metrics()).toContain('gpu_sidecar_gpu_utilization_percent{gpu="gpu:0"')
    const recorded = readFileSync(record, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    expect(recorded).toEqual(pushed)
  })

  test('pushed samples raise and clear alerts with the usual durations', async () => {
    const { alerts, push } = manual({ thresholds: { minDurationMs: 1000, clearDurationMs: 1000 } })
    const swap = [4096, 4096, 4096, 0, 0, 0, 0]
    await push(...swap.map((swapUsedMb, i) => sample(t0 + i * 600, { swapUsedMb, freeMb: 100 })))
    expect(alerts.filter((a) => a.code === 'SWAP_ACTIVE').map((a) => [a.active, a.at - t0])).toEqual([
      [true, 1200],
      [false, 3000],
    ])
    // VRAM_PRESSURE from the pushed freeMb (100 MB free), still raised.
    expect(alerts.find((a) => a.code === 'VRAM_PRESSURE')).toMatchObject({ active: true, gpuKey: 'gpu:0' })
  })

  test('a bad sample is refused with its JSON path, like the same line in a replay, and goes nowhere', async () => {
    const { telemetry, samples } = manual()
    const bad = sample(t0) as unknown as { gpus: Array<Record<string, unknown>> }
    bad.gpus[0].freeMb = 'lots'
    invalid(() => telemetry.push(bad as never), 'INVALID_ARGUMENT', 'sample.gpus[0].freeMb: expected u64, got "lots"')
    invalid(() => telemetry.push({ ...sample(t0), at: NaN }), 'INVALID_ARGUMENT', 'sample.at: expected a finite number, got NaN')
    const { host: _host, ...noHost } = sample(t0)
    invalid(() => telemetry.push(noHost as never), 'INVALID_ARGUMENT', 'sample: missing field "host"')
    invalid(() => telemetry.push(null as never), 'INVALID_ARGUMENT', 'sample: expected a telemetry sample (an object with at, nvml, gpus, host), got null')
    // The replay parser says the same about the same field.
    const path = join(tempDir(), 'bad.jsonl')
    writeFileSync(path, JSON.stringify(sample(t0)) + '\n' + JSON.stringify(bad) + '\n')
    expect(() => new Telemetry({ replay: path })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('bad.jsonl:2: not a telemetry sample: gpus[0].freeMb: expected u64, got "lots"') }),
    )
    await sleep(100)
    expect(samples).toEqual([])
    expect(telemetry.latest()).toBeNull()
  })

  test('push on a live or replaying Telemetry is INVALID_ARGUMENT, after close CLOSED; a manual replay is INVALID_CONFIG', () => {
    const live = new Telemetry({ intervalMs: 1000 })
    open.push(live)
    invalid(() => live.push(sample(t0)), 'INVALID_ARGUMENT', 'push: this Telemetry reads NVML and the host (or a replay); only one made with source: "manual" takes pushed samples')
    const path = join(tempDir(), 'one.jsonl')
    writeFileSync(path, JSON.stringify(sample(t0)) + '\n')
    const replaying = new Telemetry({ replay: path, replaySpeed: 0.001 })
    open.push(replaying)
    expect(() => replaying.push(sample(t0))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    const { telemetry } = manual()
    telemetry.close()
    invalid(() => telemetry.push(sample(t0)), 'CLOSED', 'push: the Telemetry is closed')
    invalid(() => new Telemetry({ source: 'manual', replay: path }), 'INVALID_CONFIG', 'telemetry.replay: a manual source plays no file (leave out replay, or source: "manual")')
    invalid(() => new Telemetry({ source: 'amd' as never }), 'INVALID_CONFIG', 'telemetry.source: expected "live" or "manual", got "amd"')
  })
})

describe('an arbiter attached to a manual Telemetry', () => {
  const arbiters: GpuArbiter[] = []
  afterEach(() => {
    for (const a of arbiters.splice(0)) a.close()
  })

  function attached(options: TelemetryOptions = {}) {
    const arbiter = new GpuArbiter({ maxConcurrentLeases: 4, gpuUsage: { vramReserveMb: 1000 } })
    arbiters.push(arbiter)
    const m = manual(options)
    const detach = m.telemetry.attachArbiter(arbiter)
    return { arbiter, detach, ...m }
  }

  test('a HIGH_PRESSURE sample holds low-priority work back until a calm one comes', async () => {
    const { arbiter, push } = attached()
    await push(sample(Date.now(), { util: 95 }))
    expect(arbiter.snapshot('gpu:0')!.admission).toMatchObject({ state: 'HIGH_PRESSURE', sample: { utilizationGpu: 95 } })
    await expect(arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', busyPolicy: 'SKIP' })).resolves.toEqual({ status: 'SKIPPED', reason: 'GPU_USAGE_HIGH' })
    const held = arbiter.acquire({ taskType: 'OTHER', priority: 10, maxWaitMs: 5000 })
    await expect(arbiter.acquire({ taskType: 'ASR' })).resolves.toMatchObject({ status: 'ACQUIRED' })
    await push(sample(Date.now(), { util: 30 }))
    await expect(held).resolves.toMatchObject({ status: 'ACQUIRED' })
    expect(arbiter.snapshot('gpu:0')!.admission.state).toBe('NORMAL')
  })

  test("before the attached Telemetry's first reading a request naming its VRAM need waits for it, then its own policy answers", async () => {
    const { arbiter, push } = attached()
    // The boot: attached in this turn, no sample yet. Before, both were granted blind.
    const huge = arbiter.acquire({ taskType: 'TTS', vramMb: 30000, busyPolicy: 'SKIP' })
    const fits = arbiter.acquire({ taskType: 'ASR', vramMb: 2000 })
    await expect(arbiter.acquire({ taskType: 'OTHER' })).resolves.toMatchObject({ status: 'ACQUIRED' })
    await sleep(50)
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(2)
    await push(sample(Date.now(), { freeMb: 24000 }))
    await expect(huge).resolves.toEqual({ status: 'SKIPPED', reason: 'VRAM_LOW' })
    await expect(fits).resolves.toMatchObject({ status: 'ACQUIRED', gpuKey: 'gpu:0' })
  })

  test('a detached Telemetry is not waited for', async () => {
    const { arbiter, detach } = attached()
    detach()
    await expect(arbiter.acquire({ taskType: 'ASR', vramMb: 2000, busyPolicy: 'SKIP' })).resolves.toMatchObject({ status: 'ACQUIRED' })
  })

  test('VRAM admission follows the pushed freeMb', async () => {
    const { arbiter, push } = attached()
    await push(sample(Date.now(), { freeMb: 5000 }))
    await expect(arbiter.acquire({ taskType: 'TTS', vramMb: 6000, busyPolicy: 'SKIP' })).resolves.toEqual({ status: 'SKIPPED', reason: 'VRAM_LOW' })
    const waiting = arbiter.acquire({ taskType: 'NMT', vramMb: 6000, maxWaitMs: 5000 })
    await sleep(50)
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(1)
    await push(sample(Date.now(), { freeMb: 9000 }))
    await expect(waiting).resolves.toMatchObject({ status: 'ACQUIRED', gpuKey: 'gpu:0' })
  })

  test('GPU_IDLE_WITH_BACKLOG sees the backlog as each sample is taken, not one JS turn late', async () => {
    const idle = { thresholds: { minDurationMs: 0, clearDurationMs: 0, gpuIdle: { idleForMs: 1000 } } }
    const { arbiter, telemetry, alerts, push } = attached(idle)
    const lease = await arbiter.acquire({ taskType: 'ASR' })
    expect(lease.status).toBe('ACQUIRED')
    // Pushed in one go: the sampler thread handles all of them before the JS thread hears of any,
    // so only a backlog read on that thread can raise the alert.
    const pushed = Array.from({ length: 4 }, (_, i) => sample(t0 + i * 500, { util: 0 }))
    for (const s of pushed) telemetry.push(s)
    await waitFor(() => telemetry.latest()?.at === pushed[3].at, 5000, 'the last sample')
    await push(sample(t0 + 2000, { util: 0 }))
    const raised = alerts.find((a) => a.code === 'GPU_IDLE_WITH_BACKLOG' && a.active)
    expect(raised).toMatchObject({ gpuKey: 'gpu:0', at: t0 + 1000, figures: expect.objectContaining({ leases: 1, waiters: 0 }) })
  })

  test('a detached arbiter’s backlog no longer counts', async () => {
    const idle = { thresholds: { minDurationMs: 0, clearDurationMs: 0, gpuIdle: { idleForMs: 1000 } } }
    const { arbiter, detach, alerts, push } = attached(idle)
    expect((await arbiter.acquire({ taskType: 'ASR' })).status).toBe('ACQUIRED')
    detach()
    await push(...Array.from({ length: 5 }, (_, i) => sample(t0 + i * 500, { util: 0 })))
    expect(alerts.filter((a) => a.code === 'GPU_IDLE_WITH_BACKLOG')).toEqual([])
  })
})

describe('a supervisor on a manual Telemetry', () => {
  let supervisor: ServiceSupervisor | undefined
  afterEach(async () => {
    await supervisor?.close()
    supervisor = undefined
  })

  test('the VRAM gate waits until a pushed sample shows enough free memory', async () => {
    const { telemetry, push } = manual()
    await push(sample(Date.now(), { freeMb: 2000 }))
    supervisor = new ServiceSupervisor({
      vramHeadroomMb: 512,
      services: [
        {
          name: 'asr',
          command: 'python3',
          args: [SERVICE, '--mode', 'log', '--name', 'asr'],
          readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
          gpu: { key: 'gpu:0', vramMb: 5000 },
          probeIntervalMs: 20,
          stopTimeoutMs: 2000,
        },
      ],
    })
    const events: ServiceEvent[] = []
    supervisor.onEvent((e) => events.push(e))
    supervisor.attachTelemetry(telemetry)
    const started = supervisor.startAll()
    const wait = await waitFor(() => events.find((e) => e.type === 'vram-wait'), 5000, 'vram-wait')
    expect(wait).toMatchObject({ service: 'asr', gpuKey: 'gpu:0', neededMb: 5512, freeMb: 2000 })
    // Still too little: 5000 MB free is under 5000 + 512.
    await push(sample(Date.now(), { freeMb: 5000 }))
    await sleep(200)
    expect(events.filter((e) => e.type === 'spawned')).toEqual([])
    const enoughAt = Date.now()
    await push(sample(enoughAt, { freeMb: 8000 }))
    const [outcome] = await started
    expect(outcome).toMatchObject({ service: 'asr', status: 'ready' })
    const spawned = events.find((e) => e.type === 'spawned')!
    expect(spawned.at).toBeGreaterThanOrEqual(enoughAt)
    expect(events.filter((e) => e.type === 'vram-gate-off')).toEqual([])
  })
})
