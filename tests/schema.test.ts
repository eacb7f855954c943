// The node config's JSON Schema (generated from the Rust config types) accepts the example
// configs and rejects a bad one at the same JSON path loadConfig names.
import Ajv2020 from 'ajv/dist/2020'
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadConfig, readRecording, ServiceEvent, ServiceSupervisor } from '../gpu-sidecar'
import { tempDir } from './support'

const root = join(__dirname, '..')
const schema = JSON.parse(readFileSync(join(root, 'src/config/node-config.schema.json'), 'utf8'))
// `format: regex` is JSON Schema's; ajv checks formats only when given a checker (ajv-formats).
const isRegex = (text: string) => {
  try {
    return new RegExp(text) instanceof RegExp
  } catch {
    return false
  }
}
const validate = new Ajv2020({ allErrors: true, strict: false, formats: { regex: isRegex } }).compile(schema)

/** ajv's `/services/services/0/port` as loadConfig writes it: `services.services[0].port`. */
function dotted(instancePath: string): string {
  const parts = instancePath.split('/').slice(1)
  return parts.reduce((path, p) => (/^\d+$/.test(p) ? `${path}[${p}]` : path ? `${path}.${p}` : p), '')
}

function loadConfigError(config: unknown): string {
  const path = join(tempDir(), 'node-config.json')
  writeFileSync(path, JSON.stringify(config))
  try {
    loadConfig(path)
  } catch (e) {
    expect((e as { code: string }).code).toBe('INVALID_CONFIG')
    return (e as Error).message
  }
  throw new Error('loadConfig accepted a bad config')
}

test('the example node config is valid against the shipped schema and for loadConfig', () => {
  const example = JSON.parse(readFileSync(join(root, 'examples/node-config.json'), 'utf8'))
  expect(validate(example)).toBe(true)
  expect(validate.errors ?? []).toEqual([])
  expect(loadConfig(join(root, 'examples/node-config.json')).warnings).toEqual([])
  expect(example.$schema).toBe('../src/config/node-config.schema.json')
})

test('the schema carries the validator\'s bounds, enums and required fields', () => {
  const priority = schema.$defs.TaskPolicy.properties.priority
  expect([priority.minimum, priority.maximum]).toEqual([0, 100])
  expect(schema.$defs.ServiceSpec.required).toEqual(['name', 'command', 'readiness'])
  expect(JSON.stringify(schema.$defs.BusyPolicy)).toContain('FALLBACK_CPU')
})

test.each([
  [{ gpuArbiter: { policies: { ASR: { priority: 'high' } } } }, 'gpuArbiter.policies.ASR.priority'],
  [{ gpuArbiter: { defaultBusyPolicy: 'MAYBE' } }, 'gpuArbiter.defaultBusyPolicy'],
  [{ gpuArbiter: { gpuUsage: { highWater: 120 } } }, 'gpuArbiter.gpuUsage.highWater'],
  [{ services: { services: [{ name: 'a', command: 'x', port: 70000, readiness: { none: {} } }] } }, 'services.services[0].port'],
  [{ services: { services: [{ name: 'a', command: 'x' }] } }, 'services.services[0]'],
  [{ services: { services: [{ name: 'a', command: 'x', readiness: { none: {} }, restart: { policy: 'sometimes' } }] } }, 'services.services[0].restart.policy'],
])('a bad config fails in the schema at the path loadConfig names: %j', (config, path) => {
  expect(validate(config)).toBe(false)
  const paths = (validate.errors ?? []).map((e) => dotted(e.instancePath))
  expect(paths).toContain(path)
  expect(loadConfigError(config)).toMatch(new RegExp(`^${path.replace(/[.[\]]/g, '\\$&')}: `))
})

describe('the config types, generated from the same schema', () => {
  test('src/config/node-config.d.ts is what the schema gives (npm run schema)', () => {
    const run = spawnSync(process.execPath, [join(root, 'scripts/config-types.mjs'), '--check'], { encoding: 'utf8' })
    expect(run.stdout).toContain('is current')
    expect(run.status).toBe(0)
  })

  test('they carry the Rust docs, defaults and old key names, and type-check a real config', () => {
    const types = readFileSync(join(root, 'src/config/node-config.d.ts'), 'utf8')
    expect(types).toMatch(/export interface GpuArbiterConfig \{/)
    expect(types).toMatch(/export interface ServiceConfig \{/)
    expect(types).toContain('Default: `60000`')
    expect(types).toContain('gpuUsageThreshold?:')
    // The package's own index.d.ts takes them from there, not from a hand-written copy.
    const index = readFileSync(join(root, 'index.d.ts'), 'utf8')
    expect(index).toContain("export type * from './src/config/node-config'")
    expect(index).not.toMatch(/export interface GpuArbiterConfig \{/)
    const seed: import('../gpu-sidecar').GpuArbiterConfig = {
      enabled: true,
      gpuKeys: ['gpu:0'],
      policies: { SEMANTIC_REPAIR: { priority: 20, maxWaitMs: 400, busyPolicy: 'SKIP' } },
      gpuUsage: { baseHighWater: 85, dynamicAdjustment: { longAudioThresholdMs: 8000 } },
    }
    expect(validate({ gpuArbiter: seed })).toBe(true)
  })
})

describe('the event, sample and alert types, generated from the Rust types that serialize them', () => {
  const events = JSON.parse(readFileSync(join(root, 'src/binding/events.schema.json'), 'utf8'))
  const ajv = new Ajv2020({ allErrors: true, strict: false, validateFormats: false })
  ajv.addSchema(events, 'events')
  const check = (def: string, value: unknown) => {
    const ok = ajv.validate(`events#/$defs/${def}`, value)
    return ok ? [] : (ajv.errors ?? []).map((e) => `${e.instancePath} ${e.message}`)
  }

  // With the cargo test that checks events.schema.json against the types (`cargo test --lib
  // config::schema`), this fails whenever the Rust types and the TypeScript differ.
  test('src/binding/events.d.ts is what the schema gives (npm run schema)', () => {
    const run = spawnSync(process.execPath, [join(root, 'scripts/event-types.mjs'), '--check'], { encoding: 'utf8' })
    expect(run.stdout).toContain('is current')
    expect(run.status).toBe(0)
  })

  test('index.d.ts takes them from there, not from a hand-written copy', () => {
    const index = readFileSync(join(root, 'index.d.ts'), 'utf8')
    expect(index).toContain("export type * from './src/binding/events'")
    expect(index).not.toMatch(/export (interface|type) (ServiceEvent|TelemetrySample|TelemetryAlert|TelemetryGpu)\b/)
    const types = readFileSync(join(root, 'src/binding/events.d.ts'), 'utf8')
    for (const name of ['type ServiceEvent', 'interface TelemetrySample', 'interface TelemetryAlert', 'interface TelemetryGpu', 'interface TelemetryGpuProcess']) {
      expect(types).toContain(`export ${name} `)
    }
    expect(types).toContain('type: "host-memory-wait"')
    expect(types).toContain('type: "log-dropped"')
  })

  test('each type is declared once: a field documented at its use names the type, not a numbered copy', () => {
    const types = readFileSync(join(root, 'src/binding/events.d.ts'), 'utf8')
    const declared = [...types.matchAll(/^export (?:interface|type) (\w+)/gm)].map((m) => m[1])
    expect(declared).toContain('LatencyPercentiles')
    expect(declared.filter((name) => /\d$/.test(name) && declared.includes(name.replace(/\d+$/, '')))).toEqual([])
    expect(types).toMatch(/waitMs\?: LatencyPercentiles\n/)
  })

  test('recorded samples and their alerts are valid against the schema', () => {
    const { samples, alerts } = readRecording(join(root, 'examples/node-recording.jsonl'))
    expect(samples.length).toBeGreaterThan(0)
    expect(alerts.length).toBeGreaterThan(0)
    for (const sample of samples) expect(check('TelemetrySample', sample)).toEqual([])
    for (const alert of alerts) expect(check('TelemetryAlert', alert)).toEqual([])
    expect(check('TelemetrySample', { ...samples[0], host: { ...samples[0].host, totalMb: 'lots' } })).not.toEqual([])
  })

  test("a service's events are valid against the schema", async () => {
    const script = "console.log('UP'); console.error('warn'); setTimeout(() => process.exit(3), 100)"
    const supervisor = new ServiceSupervisor({
      services: [{ name: 'a', command: process.execPath, args: ['-e', script], readiness: { logLine: { pattern: 'UP' } }, restart: { policy: 'no' } }],
    })
    const seen: ServiceEvent[] = []
    supervisor.onEvent((e) => seen.push(e))
    try {
      await supervisor.start('a')
      const deadline = Date.now() + 10_000
      while (!seen.some((e) => e.type === 'exited') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    } finally {
      await supervisor.close()
    }
    const types = new Set(seen.map((e) => e.type))
    for (const type of ['starting', 'spawned', 'log', 'ready', 'exited'] as const) expect(types).toContain(type)
    for (const event of seen) expect([event.type, check('ServiceEvent', event)]).toEqual([event.type, []])
    expect(check('ServiceEvent', { ...seen[0], type: 'no-such-event' })).not.toEqual([])
    expect(check('ServiceEvent', { type: 'log-dropped', service: 'a', at: 1, count: 2 })).toEqual([])
  })
})
