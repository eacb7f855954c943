import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { GpuArbiter, Telemetry, TelemetryAlert, TelemetryOptions, TelemetrySample, recommendConcurrency } from '../gpu-sidecar'
import { sleep, tempDir, waitFor } from './support'

type GpuSpec = { util: number; freeMb?: number; totalMb?: number; processes?: Array<{ pid: number; usedMb: number }>; lost?: boolean }
type HostSpec = { availableMb?: number; swapUsedMb?: number; zombieChildren?: number }

/** One recorded sample line, as `record` writes it. */
function sampleLine(at: number, gpus: GpuSpec[], host: HostSpec = {}, xid?: number): string {
  const sample: TelemetrySample = {
    at,
    nvml: { available: true },
    gpus: gpus.map((g, index) => {
      const totalMb = g.totalMb ?? 81559
      const freeMb = g.freeMb ?? 60000
      return {
        index,
        key: `gpu:${index}`,
        uuid: `GPU-${index}`,
        name: 'NVIDIA H100 80GB HBM3',
        totalMb,
        usedMb: totalMb - freeMb,
        freeMb,
        utilizationGpu: g.util,
        utilizationMemory: Math.round(g.util / 2),
        temperatureC: 40,
        powerW: 120.5,
        processes: (g.processes ?? []).map((p) => ({ ...p, service: null })),
        lost: g.lost ?? false,
      }
    }),
    host: {
      totalMb: 24000,
      availableMb: host.availableMb ?? 20000,
      swapTotalMb: 8000,
      swapUsedMb: host.swapUsedMb ?? 0,
      cpuPercent: 12.5,
      processes: [],
      zombieChildren: host.zombieChildren ?? 0,
    },
    ...(xid === undefined ? {} : { xidErrors: [{ gpuKey: 'gpu:0', xid }] }),
  }
  return JSON.stringify(sample)
}

function recording(lines: string[]): string {
  const path = join(tempDir(), 'incident.jsonl')
  writeFileSync(path, lines.join('\n') + '\n')
  return path
}

const fastThresholds = { minDurationMs: 1000, clearDurationMs: 1000 }

/** Replays a recording and collects everything until it ends. */
async function replay(path: string, options: TelemetryOptions = {}, arbiter?: GpuArbiter) {
  const telemetry = new Telemetry({ replay: path, replaySpeed: 'asFastAsPossible', thresholds: fastThresholds, ...options })
  if (arbiter) telemetry.attachArbiter(arbiter)
  const samples: TelemetrySample[] = []
  const alerts: TelemetryAlert[] = []
  telemetry.onSample((s) => samples.push(s))
  telemetry.onAlert((a) => alerts.push(a))
  const ended = new Promise<Error | null>((r) => telemetry.onEnd(r))
  const keepAlive = setInterval(() => {}, 1000)
  const error = await ended
  clearInterval(keepAlive)
  telemetry.close()
  return { samples, alerts, error }
}

const t0 = 1_790_000_000_000

describe('replayed telemetry', () => {
  test('delivers every field of every recorded sample, in order', async () => {
    const lines = [0, 1, 2].map((i) => sampleLine(t0 + i * 1000, [{ util: 10 * i, processes: [{ pid: 4242, usedMb: 3000 }] }, { util: 50 }]))
    const { samples, error } = await replay(recording(lines))
    expect(error).toBeNull()
    expect(samples).toEqual(lines.map((l) => JSON.parse(l)))
    expect(samples[2].gpus[0]).toMatchObject({ key: 'gpu:0', utilizationGpu: 20, usedMb: 21559, processes: [{ pid: 4242, usedMb: 3000 }] })
  })

  test('GPU_USAGE_HIGH is raised after the minimum duration and cleared under the low water mark, per GPU', async () => {
    const utils = [90, 90, 90, 80, 82, 70, 70, 70]
    const lines = utils.map((u, i) => sampleLine(t0 + i * 500, [{ util: u }, { util: 10 }]))
    const { alerts } = await replay(recording(lines))
    const usage = alerts.filter((a) => a.code === 'GPU_USAGE_HIGH')
    expect(usage.map((a) => [a.active, a.gpuKey, a.at - t0])).toEqual([
      [true, 'gpu:0', 1000],
      [false, 'gpu:0', 3500],
    ])
    expect(usage[0]).toMatchObject({ level: 'warning', figures: expect.objectContaining({ utilizationGpu: 90 }) })
    expect(usage[1].level).toBe('info')
  })

  test('a short spike does not raise an alert', async () => {
    const lines = [10, 95, 10, 95, 10].map((u, i) => sampleLine(t0 + i * 500, [{ util: u }]))
    const { alerts } = await replay(recording(lines))
    expect(alerts).toEqual([])
  })

  test('VRAM_PRESSURE, HOST_MEMORY_PRESSURE, SWAP_ACTIVE, ZOMBIE_PROCESSES and XID_ERROR', async () => {
    const lines = [0, 1, 2, 3].map((i) =>
      sampleLine(t0 + i * 600, [{ util: 30, freeMb: 200 }], { availableMb: 300, swapUsedMb: 2048, zombieChildren: 74 }, i === 0 ? 79 : undefined),
    )
    const { alerts } = await replay(recording(lines))
    const raised = alerts.filter((a) => a.active).map((a) => a.code).sort()
    expect(raised).toEqual(['HOST_MEMORY_PRESSURE', 'SWAP_ACTIVE', 'VRAM_PRESSURE', 'XID_ERROR', 'ZOMBIE_PROCESSES'])
    expect(alerts.find((a) => a.code === 'ZOMBIE_PROCESSES')!.figures).toMatchObject({ zombieChildren: 74 })
    expect(alerts.find((a) => a.code === 'XID_ERROR')).toMatchObject({ level: 'critical', gpuKey: 'gpu:0' })
  })

  test('GPU_IDLE_WITH_BACKLOG: an idle GPU while the arbiter holds work on it (seed 001)', async () => {
    const arbiter = new GpuArbiter({ maxConcurrentLeases: 1, defaultHoldMaxMs: 0 })
    const held = await arbiter.acquire({ taskType: 'ASR' })
    const lines = Array.from({ length: 12 }, (_, i) => sampleLine(t0 + i * 500, [{ util: 0 }]))
    // As fast as possible: the sampler thread reads the arbiter's load itself, no JS turn between samples needed.
    const { alerts } = await replay(recording(lines), { thresholds: { ...fastThresholds, gpuIdle: { idleForMs: 2000 } } }, arbiter)
    const idle = alerts.find((a) => a.code === 'GPU_IDLE_WITH_BACKLOG')
    expect(idle).toMatchObject({ active: true, gpuKey: 'gpu:0', figures: expect.objectContaining({ leases: 1 }) })
    arbiter.release((held as { leaseId: string }).leaseId)
    arbiter.close()
  })

  test('what the turn that made a Telemetry attaches is in place for its first sample, however long that turn runs', async () => {
    const arbiter = new GpuArbiter({ maxConcurrentLeases: 1, defaultHoldMaxMs: 0 })
    const held = await arbiter.acquire({ taskType: 'ASR' })
    const lines = Array.from({ length: 12 }, (_, i) => sampleLine(t0 + i * 500, [{ util: 0 }]))
    const thresholds = { ...fastThresholds, gpuIdle: { idleForMs: 2000 } }
    const telemetry = new Telemetry({ replay: recording(lines), replaySpeed: 'asFastAsPossible', thresholds })
    // A replay's thread would have played every line by the end of this; sampling starts after the turn.
    const busyUntil = Date.now() + 300
    while (Date.now() < busyUntil) {}
    telemetry.attachArbiter(arbiter)
    const samples: TelemetrySample[] = []
    const alerts: TelemetryAlert[] = []
    telemetry.onSample((s) => samples.push(s))
    telemetry.onAlert((a) => alerts.push(a))
    const keepAlive = setInterval(() => {}, 1000)
    const error = await new Promise<Error | null>((r) => telemetry.onEnd(r))
    clearInterval(keepAlive)
    telemetry.close()
    expect(error).toBeNull()
    expect(samples).toHaveLength(12)
    expect(alerts.find((a) => a.code === 'GPU_IDLE_WITH_BACKLOG')).toMatchObject({ active: true, figures: expect.objectContaining({ leases: 1 }) })
    arbiter.release((held as { leaseId: string }).leaseId)
    arbiter.close()
  })

  test('no backlog, no GPU_IDLE_WITH_BACKLOG', async () => {
    const lines = Array.from({ length: 12 }, (_, i) => sampleLine(t0 + i * 500, [{ util: 0 }]))
    const { alerts } = await replay(recording(lines), { replaySpeed: 25, thresholds: { ...fastThresholds, gpuIdle: { idleForMs: 2000 } } })
    expect(alerts.filter((a) => a.code === 'GPU_IDLE_WITH_BACKLOG')).toEqual([])
  })

  test('a bad line ends the replay with an error naming file and line', () => {
    const path = recording([sampleLine(t0, [{ util: 1 }]), '{"at": "yesterday"}'])
    expect(() => new Telemetry({ replay: path })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('incident.jsonl:2') }))
  })
})

describe('the arbiter on replayed telemetry', () => {
  test('per-GPU HIGH_PRESSURE from each GPU’s own utilization; low priority held back, high priority admitted', async () => {
    const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0', 'gpu:1'], maxConcurrentLeases: 4 })
    await replay(recording([sampleLine(t0, [{ util: 95 }, { util: 20 }])]), {}, arbiter)
    expect(arbiter.snapshot('gpu:0')!.admission).toMatchObject({ state: 'HIGH_PRESSURE', sample: { utilizationGpu: 95 } })
    expect(arbiter.snapshot('gpu:0')!.admission.sample!.ageMs).toBeLessThan(5000)
    expect(arbiter.snapshot('gpu:1')!.admission.state).toBe('NORMAL')
    await expect(arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', gpuKey: 'gpu:0', busyPolicy: 'SKIP' })).resolves.toEqual({ status: 'SKIPPED', reason: 'GPU_USAGE_HIGH' })
    await expect(arbiter.acquire({ taskType: 'SEMANTIC_REPAIR', gpuKey: 'gpu:1' })).resolves.toMatchObject({ status: 'ACQUIRED' })
    await expect(arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0' })).resolves.toMatchObject({ status: 'ACQUIRED' })
    // Without a gpuKey, low-priority work goes to the GPU that is not under pressure.
    await expect(arbiter.acquire({ taskType: 'SEMANTIC_REPAIR' })).resolves.toMatchObject({ status: 'ACQUIRED', gpuKey: 'gpu:1' })
    arbiter.close()
  })

  test('VRAM admission against the sample: fits are granted, the rest wait and re-check on each sample', async () => {
    const arbiter = new GpuArbiter({ maxConcurrentLeases: 4, gpuUsage: { vramReserveMb: 1024 } })
    const path = recording([sampleLine(t0, [{ util: 20, freeMb: 10000 }])])
    await replay(path, {}, arbiter)
    await expect(arbiter.acquire({ taskType: 'ASR', vramMb: 8000 })).resolves.toMatchObject({ status: 'ACQUIRED' })
    await expect(arbiter.acquire({ taskType: 'TTS', vramMb: 2000, busyPolicy: 'SKIP' })).resolves.toEqual({ status: 'SKIPPED', reason: 'VRAM_LOW' })
    const waiting = arbiter.acquire({ taskType: 'NMT', vramMb: 2000, maxWaitMs: 10000 })
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(1)
    await replay(recording([sampleLine(t0 + 1000, [{ util: 20, freeMb: 12000 }])]), {}, arbiter)
    await expect(waiting).resolves.toMatchObject({ status: 'ACQUIRED' })
    arbiter.close()
  })

  test('no NVML in the samples: the arbiter stays on logical leases', async () => {
    const arbiter = new GpuArbiter({})
    const noGpu = JSON.parse(sampleLine(t0, []))
    noGpu.nvml = { available: false, reason: 'LIBRARY_NOT_FOUND' }
    await replay(recording([JSON.stringify(noGpu)]), {}, arbiter)
    expect(arbiter.snapshot('gpu:0')!.admission).toEqual({ state: 'UNKNOWN' })
    await expect(arbiter.acquire({ taskType: 'ASR', vramMb: 999999 })).resolves.toMatchObject({ status: 'ACQUIRED' })
    arbiter.close()
  })
})

describe('live telemetry on this machine', () => {
  test('samples on its own thread; without NVML it says why and host figures still flow', async () => {
    const telemetry = new Telemetry({ intervalMs: 50 })
    expect(telemetry.latest()).toBeNull()
    telemetry.registerProcess(process.pid, 'jest')
    const samples: TelemetrySample[] = []
    telemetry.onSample((s) => samples.push(s))
    await waitFor(() => samples.length >= 3, 5000, 'three samples')
    const sample = samples[samples.length - 1]
    if (!sample.nvml.available) {
      expect(sample.nvml.reason).toBe('LIBRARY_NOT_FOUND')
      expect(sample.gpus).toEqual([])
    }
    expect(sample.host.totalMb).toBeGreaterThan(0)
    expect(sample.host.availableMb).toBeGreaterThan(0)
    expect(sample.host.availableMb).toBeLessThanOrEqual(sample.host.totalMb)
    expect(sample.host.processes).toEqual([expect.objectContaining({ pid: process.pid, label: 'jest', rssMb: expect.any(Number) })])
    expect(sample.at).toBeGreaterThan(samples[0].at)
    expect(telemetry.latest()).toMatchObject({ host: expect.any(Object) })
    const text = telemetry.metrics()
    expect(text).toContain('gpu_sidecar_host_memory_available_bytes')
    expect(text).toContain('gpu_sidecar_nvml_available')
    const advice = telemetry.recommendConcurrency({ perWorkerMb: 250, reserveFraction: 0.2 })
    expect(advice.workers).toBe(Math.max(0, Math.floor((advice.availableMb - advice.reserveMb) / 250)))
    telemetry.close()
  })

  test('no callback fires after close', async () => {
    const telemetry = new Telemetry({ intervalMs: 50 })
    let calls = 0
    telemetry.onSample(() => calls++)
    await waitFor(() => calls > 0, 5000, 'a sample')
    telemetry.close()
    const atClose = calls
    await sleep(300)
    expect(calls).toBe(atClose)
    expect(telemetry.latest()).toBeNull()
    telemetry.close() // idempotent
  })

  test('a running Telemetry does not keep node from exiting', () => {
    const entry = resolve(__dirname, '..', 'gpu-sidecar.js')
    const started = Date.now()
    const child = spawnSync(
      process.execPath,
      ['-e', `const { Telemetry } = require(${JSON.stringify(entry)}); const t = new Telemetry({ intervalMs: 50 }); t.onSample(() => {}); t.onAlert(() => {}); setTimeout(() => console.log('bye'), 300)`],
      { encoding: 'utf8', timeout: 20000 },
    )
    expect(child.status).toBe(0)
    expect(child.stdout.trim()).toBe('bye')
    expect(Date.now() - started).toBeLessThan(15000)
  })

  test('record writes every sample as JSONL and replay plays it back', async () => {
    const path = join(tempDir(), 'recorded.jsonl')
    const telemetry = new Telemetry({ intervalMs: 50, record: path })
    const live: TelemetrySample[] = []
    telemetry.onSample((s) => live.push(s))
    await waitFor(() => live.length >= 3, 5000, 'three samples')
    telemetry.close()
    const lines = readFileSync(path, 'utf8').trim().split('\n')
    expect(lines.length).toBeGreaterThanOrEqual(3)
    expect(lines.slice(0, 3).map((l) => JSON.parse(l))).toEqual(live.slice(0, 3))
    const { samples } = await replay(path)
    expect(samples.slice(0, 3)).toEqual(live.slice(0, 3))
  })
})

describe('telemetry errors and advice', () => {
  test('bad options are INVALID_CONFIG with the JSON path', () => {
    expect(() => new Telemetry({ intervalMs: 10 })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('telemetry.intervalMs: expected an integer 50-') }),
    )
    expect(() => new Telemetry({ thresholds: { gpuUsage: { highWater: 'lots' as never } } })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('telemetry.thresholds.gpuUsage.highWater') }),
    )
    expect(() => new Telemetry({ replay: '/nonexistent/x.jsonl' })).toThrow(expect.objectContaining({ code: 'IO_ERROR' }))
  })

  test('recommendConcurrency sizes workers from memory (seed 004)', () => {
    const advice = recommendConcurrency({ perWorkerMb: 250, reserveFraction: 0.25, on: 'host' })
    expect(advice.on).toBe('host')
    expect(advice.workers).toBe(Math.max(0, Math.floor((advice.availableMb - advice.reserveMb) / 250)))
    expect(advice.basis).toContain('250')
    expect(() => recommendConcurrency({ perWorkerMb: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => recommendConcurrency({ perWorkerMb: 250, on: 'gpu:9' })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  test('listeners must be functions', () => {
    const telemetry = new Telemetry({ intervalMs: 1000 })
    expect(() => telemetry.onSample(42 as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    telemetry.close()
  })
})
