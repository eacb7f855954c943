import { writeFileSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import { GpuArbiter, GpuArbiterEvent, loadConfig } from '../gpu-sidecar'
import { tempDir, waitFor } from './support'

const seedConfig = {
  servicePreferences: { nmt: true },
  gpuArbiter: {
    enabled: true,
    gpuKeys: ['gpu:0'],
    defaultQueueLimit: 8,
    defaultHoldMaxMs: 8000,
    policies: {
      ASR: { priority: 90, maxWaitMs: 3000, busyPolicy: 'WAIT' },
      NMT: { priority: 80, maxWaitMs: 3000, busyPolicy: 'WAIT' },
      TTS: { priority: 70, maxWaitMs: 2000, busyPolicy: 'WAIT' },
      SEMANTIC_REPAIR: { priority: 20, maxWaitMs: 400, busyPolicy: 'SKIP' },
    },
  },
}

function writeConfig(dir: string, value: unknown, name = 'electron-node-config.json'): string {
  const path = join(dir, name)
  writeFileSync(path, typeof value === 'string' ? value : JSON.stringify(value, null, 2))
  return path
}

describe('loadConfig', () => {
  test('accepts the seed config file as written and applies defaults', () => {
    const cfg = loadConfig(writeConfig(tempDir(), seedConfig))
    expect(cfg.warnings).toEqual([])
    expect(cfg.gpuArbiter).toMatchObject({
      enabled: true,
      gpuKeys: ['gpu:0'],
      defaultQueueLimit: 8,
      maxConcurrentLeases: 1,
      watchdogAction: 'warn',
      policies: { SEMANTIC_REPAIR: { priority: 20, maxWaitMs: 400, busyPolicy: 'SKIP' } },
      gpuUsage: { highWater: 85, lowWater: 78 },
    })
    // The loaded section builds an arbiter as is.
    new GpuArbiter(cfg.gpuArbiter).close()
  })

  test('a wrong type names the JSON path and the value', () => {
    const path = writeConfig(tempDir(), { gpuArbiter: { policies: { ASR: { priority: 'high' } } } })
    expect(() => loadConfig(path)).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: 'gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high"' }),
    )
  })

  test.each([
    [{ gpuArbiter: { defaultQueueLimit: -1 } }, 'gpuArbiter.defaultQueueLimit: expected an integer'],
    [{ gpuArbiter: { policies: { TTS: { busyPolicy: 'LATER' } } } }, 'gpuArbiter.policies.TTS.busyPolicy: expected one of'],
    [{ gpuArbiter: { gpuKeys: [] } }, 'gpuArbiter.gpuKeys: expected at least one GPU key'],
    [{ gpuArbiter: { gpuKeys: ['gpu:0', 3] } }, 'gpuArbiter.gpuKeys[1]: expected a string, got 3'],
    [{ gpuArbiter: { watchdogAction: 'explode' } }, 'gpuArbiter.watchdogAction: expected "warn" or "revoke", got "explode"'],
    [{ gpuArbiter: { gpuUsage: { highWater: 50, lowWater: 60 } } }, 'gpuArbiter.gpuUsage.lowWater: expected less than highWater'],
    [{ gpuArbiter: { enabled: 'yes' } }, 'gpuArbiter.enabled: expected a boolean, got "yes"'],
  ])('rejects %j', (value, message) => {
    const path = writeConfig(tempDir(), value)
    expect(() => loadConfig(path)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining(message) }))
  })

  test('unknown keys are warnings, not errors', () => {
    const cfg = loadConfig(writeConfig(tempDir(), { gpuArbiter: { enabled: true, queueLimitt: 3, policies: { ASR: { prio: 1 } } } }))
    expect(cfg.warnings).toEqual([
      'gpuArbiter.policies.ASR.prio: unknown key, ignored',
      'gpuArbiter.queueLimitt: unknown key, ignored',
    ].sort())
  })

  test('a missing file or broken JSON is INVALID_CONFIG naming the file', () => {
    const dir = tempDir()
    expect(() => loadConfig(join(dir, 'nope.json'))).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('nope.json') }))
    const broken = writeConfig(dir, '{ "gpuArbiter": { ', 'broken.json')
    expect(() => loadConfig(broken)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(/broken\.json: not valid JSON.*line 1/) }))
  })

  test('the constructor validates the same way', () => {
    expect(() => new GpuArbiter({ maxConcurrentLeases: 0 })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: 'gpuArbiter.maxConcurrentLeases: expected an integer 1-65536, got 0' }),
    )
  })
})

describe('setConfig', () => {
  test('applies a patch while keeping leases and queue', async () => {
    const arbiter = new GpuArbiter({})
    const events: GpuArbiterEvent[] = []
    arbiter.onEvent((e) => events.push(e))
    const lease = await arbiter.acquire({ taskType: 'ASR' })
    const waiting = arbiter.acquire({ taskType: 'NMT' })
    arbiter.setConfig({ maxConcurrentLeases: 2, policies: { NMT: { priority: 99 } } })
    await expect(waiting).resolves.toMatchObject({ status: 'ACQUIRED' })
    expect(arbiter.config().policies!.NMT).toMatchObject({ priority: 99, maxWaitMs: 8000 })
    expect(arbiter.snapshot('gpu:0')!.activeLeases.map((l) => l.leaseId)).toContain((lease as { leaseId: string }).leaseId)
    expect(events.map((e) => e.type)).toContain('config-reloaded')
    arbiter.close()
  })

  test('a bad patch throws INVALID_CONFIG, changes nothing and emits config-rejected', () => {
    const arbiter = new GpuArbiter({ defaultQueueLimit: 5 })
    const events: GpuArbiterEvent[] = []
    arbiter.onEvent((e) => events.push(e))
    expect(() => arbiter.setConfig({ defaultQueueLimit: 2, policies: { ASR: { priority: 500 } } })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('gpuArbiter.policies.ASR.priority') }),
    )
    expect(arbiter.config().defaultQueueLimit).toBe(5)
    expect(events).toEqual([expect.objectContaining({ type: 'config-rejected', detail: expect.stringContaining('policies.ASR.priority') })])
    arbiter.close()
  })
})

describe('GpuArbiter.fromFile with watch', () => {
  test('applies edits while running and keeps the last good config on a bad edit', async () => {
    const dir = tempDir()
    const path = writeConfig(dir, seedConfig)
    const arbiter = GpuArbiter.fromFile(path, { watch: true })
    const events: GpuArbiterEvent[] = []
    arbiter.onEvent((e) => events.push(e))
    const lease = await arbiter.acquire({ taskType: 'ASR' })
    const waiting = arbiter.acquire({ taskType: 'TTS', maxWaitMs: 20000 })

    // An editor-style save: write a temp file and rename it over the config.
    const edited = structuredClone(seedConfig)
    edited.gpuArbiter.policies.SEMANTIC_REPAIR.priority = 35
    writeFileSync(path + '.tmp', JSON.stringify(edited))
    renameSync(path + '.tmp', path)
    await waitFor(() => events.find((e) => e.type === 'config-reloaded'), 5000, 'config-reloaded')
    expect(arbiter.config().policies!.SEMANTIC_REPAIR.priority).toBe(35)
    expect(arbiter.snapshot('gpu:0')!.queueLength).toBe(1)

    writeFileSync(path, JSON.stringify({ gpuArbiter: { policies: { ASR: { priority: 'high' } } } }))
    const rejected = await waitFor(() => events.find((e) => e.type === 'config-rejected'), 5000, 'config-rejected')
    expect(rejected.detail).toBe('gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high"')
    expect(arbiter.config().policies!.SEMANTIC_REPAIR.priority).toBe(35)

    arbiter.release((lease as { leaseId: string }).leaseId)
    await expect(waiting).resolves.toMatchObject({ status: 'ACQUIRED' })
    arbiter.close()
  })
})
