// A seeded property test: every export is called with wrong types, NaN/Infinity, cycles, null,
// throwing getters and nested junk, and everything it throws (or rejects with) must carry one of
// our documented codes with a message naming the argument or JSON path; never napi's own
// `InvalidArg` / `StringExpected` / "Failed to convert js number to serde_json::Number".
//
// EXPORTS is a table of { name, member, call(arg, arg2) }: every part of the addon adds its
// exports, and a test checks that every function, class method and static the package exports
// at run time has an entry (`member`: `fn`, `Class.static` or `Class#method`).
import * as sidecar from '../gpu-sidecar'
import {
  GpuLeaseError,
  getGpuArbiter,
  gpuInventory,
  readRecording,
  serveStatus,
  GpuArbiter,
  Telemetry,
  ServiceSupervisor,
  configureGpuArbiter,
  fitNeeds,
  loadConfig,
  loadServiceManifests,
  recommendConcurrency,
  setGpuArbiter,
  setLogger,
  tryAcquireGpuLease,
  withGpuLease,
} from '../gpu-sidecar'

/** ErrorCode in src/error.rs, as documented in the README. */
const DOCUMENTED_CODES = new Set([
  'INVALID_CONFIG',
  'INVALID_GPU_KEY',
  'INVALID_ARGUMENT',
  'CLOSED',
  'IO_ERROR',
  'INTERNAL',
  'PORT_IN_USE',
  'READINESS_TIMEOUT',
  'VRAM_TIMEOUT',
  'SPAWN_FAILED',
  'SERVICE_EXITED',
  'UNKNOWN_SERVICE',
  'GPU_LEASE_NOT_GRANTED',
  'LIVENESS_FAILED',
  'READINESS_STALLED',
  'SERVICE_HUNG',
  'VRAM_OOM',
  'NO_GPU',
  'HOST_MEMORY_LOW',
  'MANIFESTS_NOT_FOUND',
])

const SEED = Number(process.env.FUZZ_SEED ?? 0x8badf00d)
const CASES_PER_EXPORT = Number(process.env.FUZZ_CASES ?? 150)

/** mulberry32: small, seedable, good enough to pick test inputs. */
function rng(seed: number) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// Keys our options and configs read, so junk reaches the fields (and the paths) behind them.
// `record` is left out: a valid one would create files.
const KEYS = [
  'intervalMs', 'gpus', 'replay', 'replaySpeed', 'thresholds', 'gpuUsage', 'highWater', 'lowWater', 'vram', 'lowFreeMb',
  'services', 'name', 'command', 'args', 'readiness', 'logLine', 'pattern', 'http', 'url', 'dependsOn', 'gpu', 'key',
  'vramMb', 'stopTimeoutMs', 'maxConcurrentStarts', 'restart', 'policy', 'perWorkerMb', 'reserveFraction', 'on', 'x',
  // The arbiter's config, requests and readings.
  'taskType', 'gpuKey', 'priority', 'maxWaitMs', 'holdMaxMs', 'queueLimit', 'busyPolicy', 'signal', 'trace', 'jobId',
  'policies', 'ASR', 'gpuKeys', 'defaultPriority', 'gpuUsageThreshold', 'baseHighWater', 'dynamicAdjustment',
  'utilizationGpu', 'freeMb', 'estimatedAudioMs', 'configPath', 'watch',
]
const STRINGS = ['', 'gpu:0', 'host', 'asFastAsPossible', 'info', 'loud', '/dev/null', '/nonexistent/file.json', '\u0000', 'é漢🎉', 'x'.repeat(300)]
const NUMBERS = [NaN, Infinity, -Infinity, -0, 0, 1, -1, 0.5, 1e-20, 1e300, -1e300, 2 ** 31, 2 ** 53 + 2, Number.MAX_VALUE, 250]

type Gen = () => unknown

function generator(random: () => number): Gen {
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]
  const value = (depth: number): unknown => {
    const roll = random()
    if (depth > 3 || roll < 0.45) {
      return pick<() => unknown>([
        () => undefined,
        () => null,
        () => pick(NUMBERS),
        () => random() * 1e6 - 5e5,
        () => pick(STRINGS),
        () => random() < 0.5,
        () => Symbol('fuzz'),
        () => BigInt(Math.floor(random() * 1e6)),
        () => () => 42,
        () => new Date(0),
      ])()
    }
    if (roll < 0.6) return Array.from({ length: Math.floor(random() * 4) }, () => value(depth + 1))
    if (roll < 0.9) {
      const object: Record<string, unknown> = {}
      for (let i = Math.floor(random() * 4); i > 0; i--) object[pick(KEYS)] = value(depth + 1)
      return object
    }
    return pick<() => unknown>([
      // A cycle, somewhere below the top.
      () => {
        const o: Record<string, unknown> = { [pick(KEYS)]: value(depth + 1) }
        o[pick(KEYS)] = { inner: o }
        return o
      },
      // Deeper than anything we read.
      () => {
        let o: unknown = 1
        for (let i = 0; i < 200; i++) o = { [pick(KEYS)]: o }
        return o
      },
      // A getter that throws, and a Proxy whose traps throw.
      () => Object.defineProperty({}, pick(KEYS), { enumerable: true, get: () => { throw new Error('getter says no') } }),
      () => new Proxy({}, { ownKeys: () => { throw new Error('no keys for you') } }),
      () => new Map([[1, 2]]),
    ])()
  }
  return () => value(0)
}

interface Export {
  name: string
  /** The run-time member it calls: `fn`, `Class.static` or `Class#method`. */
  member: string
  call(arg: unknown, arg2: unknown): unknown
}

// Junk options bring warnings about unknown keys; they are not what this test reads.
const quiet = () => {}
setLogger(quiet, 'error')
const telemetry = new Telemetry({ intervalMs: 50 })
const supervisor = new ServiceSupervisor({ services: [{ name: 'fuzz-target', command: 'true', readiness: { none: {} } }] })
// Requests must not wait: a fuzzed request either answers at once or throws.
const arbiter = new GpuArbiter({ maxConcurrentLeases: 64, defaultQueueLimit: 0 })
const manual = new Telemetry({ source: 'manual' })
/** Gives back whatever a fuzzed acquire was granted, so later cases find the GPU free. */
const settle = async (result: unknown) => {
  const lease = (await result) as { release?: () => void } | null
  if (lease && typeof lease.release === 'function') lease.release()
}

/** Calls a method that takes no argument with one anyway: it must ignore it. */
const junk = (target: object, method: string, arg: unknown): unknown => (target as Record<string, (x: unknown) => unknown>)[method](arg)

/** Every export of Telemetry, ServiceSupervisor and the free functions, called with junk. */
const EXPORTS: Export[] = [
  { name: 'loadConfig(path)', member: 'loadConfig', call: (a) => loadConfig(a as string) },
  { name: 'loadServiceManifests(dir, options)', member: 'loadServiceManifests', call: (a, b) => loadServiceManifests(a as never, b as never) },
  { name: 'fitNeeds(services, learned)', member: 'fitNeeds', call: (a, b) => fitNeeds(a as never, b as never) },
  { name: 'recommendConcurrency(options)', member: 'recommendConcurrency', call: (a) => recommendConcurrency(a as never) },
  { name: 'setLogger(logger, minLevel)', member: 'setLogger', call: (a, b) => { try { setLogger(a as never, b as never) } finally { setLogger(quiet) } } },
  { name: 'new Telemetry(options)', member: 'Telemetry#constructor', call: (a) => new Telemetry(a as never).close() },
  { name: 'telemetry.onSample(listener)', member: 'Telemetry#onSample', call: (a) => (telemetry.onSample(a as never) as () => void)() },
  { name: 'telemetry.onAlert(listener)', member: 'Telemetry#onAlert', call: (a) => (telemetry.onAlert(a as never) as () => void)() },
  { name: 'telemetry.onEnd(listener)', member: 'Telemetry#onEnd', call: (a) => (telemetry.onEnd(a as never) as () => void)() },
  { name: 'telemetry.registerProcess(pid, label)', member: 'Telemetry#registerProcess', call: (a, b) => telemetry.registerProcess(a as number, b as string) },
  { name: 'telemetry.unregisterProcess(pid)', member: 'Telemetry#unregisterProcess', call: (a) => telemetry.unregisterProcess(a as number) },
  { name: 'telemetry.attachArbiter(arbiter)', member: 'Telemetry#attachArbiter', call: (a) => telemetry.attachArbiter(a as never) },
  { name: 'telemetry.recommendConcurrency(options)', member: 'Telemetry#recommendConcurrency', call: (a) => telemetry.recommendConcurrency(a as never) },
  { name: 'new ServiceSupervisor(config)', member: 'ServiceSupervisor#constructor', call: (a) => new ServiceSupervisor(a as never).close() },
  { name: 'supervisor.start(name)', member: 'ServiceSupervisor#start', call: (a) => supervisor.start(a as string) },
  { name: 'supervisor.stop(name)', member: 'ServiceSupervisor#stop', call: (a) => supervisor.stop(a as string) },
  { name: 'supervisor.restart(name)', member: 'ServiceSupervisor#restart', call: (a) => supervisor.restart(a as string) },
  { name: 'supervisor.status(name)', member: 'ServiceSupervisor#status', call: (a) => supervisor.status(a as string) },
  { name: 'supervisor.onEvent(listener)', member: 'ServiceSupervisor#onEvent', call: (a) => (supervisor.onEvent(a as never) as () => void)() },
  { name: 'supervisor.beforeSpawn(hook)', member: 'ServiceSupervisor#beforeSpawn', call: (a) => { try { supervisor.beforeSpawn(a as never) } finally { supervisor.beforeSpawn(null) } } },
  { name: 'supervisor.setServices(services)', member: 'ServiceSupervisor#setServices', call: (a) => supervisor.setServices(a as never) },
  { name: 'supervisor.refresh()', member: 'ServiceSupervisor#refresh', call: async () => { const s = new ServiceSupervisor({ services: [] }); try { await s.refresh() } finally { await s.close() } } },
  { name: 'supervisor.attachTelemetry(telemetry)', member: 'ServiceSupervisor#attachTelemetry', call: (a) => supervisor.attachTelemetry(a as never) },
  { name: 'supervisor.attachArbiter(arbiter)', member: 'ServiceSupervisor#attachArbiter', call: (a) => supervisor.attachArbiter(a as never) },
  { name: 'new GpuArbiter(config)', member: 'GpuArbiter#constructor', call: (a) => new GpuArbiter(a as never).close() },
  { name: 'GpuArbiter.fromFile(path, options)', member: 'GpuArbiter.fromFile', call: (a, b) => GpuArbiter.fromFile(a as string, b as never).close() },
  { name: 'ServiceSupervisor.fromFile(path, options)', member: 'ServiceSupervisor.fromFile', call: (a, b) => ServiceSupervisor.fromFile(a as string, b as never).close() },
  { name: 'arbiter.acquire(request)', member: 'GpuArbiter#acquire', call: (a) => settle(arbiter.acquire(a as never)) },
  { name: 'arbiter.release(leaseId)', member: 'GpuArbiter#release', call: (a) => arbiter.release(a as string) },
  { name: 'arbiter.snapshot(gpuKey)', member: 'GpuArbiter#snapshot', call: (a) => arbiter.snapshot(a as string) },
  { name: 'arbiter.setConfig(patch)', member: 'GpuArbiter#setConfig', call: (a) => arbiter.setConfig(a as never) },
  { name: 'arbiter.observeGpu(gpuKey, reading)', member: 'GpuArbiter#observeGpu', call: (a, b) => arbiter.observeGpu(a as string, b as never) },
  { name: 'arbiter.notifyAsrTaskHint(hint)', member: 'GpuArbiter#notifyAsrTaskHint', call: (a) => arbiter.notifyAsrTaskHint(a as never) },
  { name: 'arbiter.onEvent(listener)', member: 'GpuArbiter#onEvent', call: (a) => (arbiter.onEvent(a as never) as () => void)() },
  { name: 'setGpuArbiter(arbiter)', member: 'setGpuArbiter', call: (a) => { try { setGpuArbiter(a as never) } finally { setGpuArbiter(arbiter) } } },
  { name: 'configureGpuArbiter(options)', member: 'configureGpuArbiter', call: (a) => { try { configureGpuArbiter(a as never) } finally { setGpuArbiter(arbiter) } } },
  { name: 'withGpuLease(taskType, fn, trace, options)', member: 'withGpuLease', call: (a, b) => withGpuLease(a as string, () => 1, b as never, a as never) },
  { name: 'tryAcquireGpuLease(taskType, trace, options)', member: 'tryAcquireGpuLease', call: (a, b) => settle(tryAcquireGpuLease(a as string, b as never, b as never)) },
  { name: 'gpuInventory()', member: 'gpuInventory', call: () => gpuInventory() },
  { name: 'readRecording(path, options)', member: 'readRecording', call: (a, b) => readRecording(a as string, b as never) },
  { name: 'arbiterCodeNames()', member: 'arbiterCodeNames', call: () => (sidecar as unknown as { arbiterCodeNames(): unknown }).arbiterCodeNames() },
  { name: 'getGpuArbiter()', member: 'getGpuArbiter', call: () => getGpuArbiter() },
  { name: 'new GpuLeaseError(...)', member: 'GpuLeaseError', call: (a, b) => new GpuLeaseError(a as never, b as never) },
  { name: 'serveStatus(options)', member: 'serveStatus', call: async (a) => (await serveStatus(a as never)).close() },
  { name: 'arbiter.close()', member: 'GpuArbiter#close', call: (a) => junk(new GpuArbiter(), 'close', a) },
  { name: 'arbiter.config()', member: 'GpuArbiter#config', call: (a) => junk(arbiter, 'config', a) },
  { name: 'arbiter.gpuKeys()', member: 'GpuArbiter#gpuKeys', call: (a) => junk(arbiter, 'gpuKeys', a) },
  { name: 'arbiter.metrics()', member: 'GpuArbiter#metrics', call: (a) => junk(arbiter, 'metrics', a) },
  { name: 'arbiter.snapshotAll()', member: 'GpuArbiter#snapshotAll', call: (a) => junk(arbiter, 'snapshotAll', a) },
  { name: 'supervisor.ensure(name)', member: 'ServiceSupervisor#ensure', call: (a) => supervisor.ensure(a as string) },
  { name: 'supervisor.hostBudget(perWorkerMb)', member: 'ServiceSupervisor#hostBudget', call: (a) => supervisor.hostBudget(a as number) },
  { name: 'supervisor.statuses()', member: 'ServiceSupervisor#statuses', call: (a) => junk(supervisor, 'statuses', a) },
  { name: 'supervisor.startAll()', member: 'ServiceSupervisor#startAll', call: async (a) => { const s = new ServiceSupervisor({ services: [] }); try { await junk(s, 'startAll', a) } finally { await s.close() } } },
  { name: 'supervisor.stopAll()', member: 'ServiceSupervisor#stopAll', call: async (a) => { const s = new ServiceSupervisor({ services: [] }); try { await junk(s, 'stopAll', a) } finally { await s.close() } } },
  { name: 'supervisor.close()', member: 'ServiceSupervisor#close', call: (a) => junk(new ServiceSupervisor({ services: [] }), 'close', a) },
  { name: 'telemetry.push(sample)', member: 'Telemetry#push', call: (a) => manual.push(a as never) },
  { name: 'telemetry.latest()', member: 'Telemetry#latest', call: (a) => junk(telemetry, 'latest', a) },
  { name: 'telemetry.metrics()', member: 'Telemetry#metrics', call: (a) => junk(telemetry, 'metrics', a) },
  { name: 'telemetry.close()', member: 'Telemetry#close', call: (a) => junk(new Telemetry({ source: 'manual' }), 'close', a) },
]

afterAll(async () => {
  setLogger(null)
  setGpuArbiter(null)
  arbiter.close()
  telemetry.close()
  manual.close()
  await supervisor.close()
})

/** Every function, class method and static the package exports at run time. */
function exportedMembers(): string[] {
  const members: string[] = []
  for (const [name, value] of Object.entries(sidecar)) {
    if (typeof value !== 'function') continue
    const prototype = (value as { prototype?: object }).prototype
    const methods = prototype ? Object.getOwnPropertyNames(prototype).filter((m) => m !== 'constructor') : []
    const isClass = methods.length > 0 || /^class\b/.test(Function.prototype.toString.call(value))
    if (!isClass) {
      members.push(name)
      continue
    }
    members.push(prototype && methods.length > 0 ? `${name}#constructor` : name)
    for (const method of methods) {
      // Accessors (`closed`) take no argument.
      if (typeof Object.getOwnPropertyDescriptor(prototype, method)?.value === 'function') members.push(`${name}#${method}`)
    }
    for (const key of Object.getOwnPropertyNames(value)) {
      if (['length', 'name', 'prototype', 'arguments', 'caller'].includes(key)) continue
      if (typeof (value as unknown as Record<string, unknown>)[key] === 'function') members.push(`${name}.${key}`)
    }
  }
  return members.sort()
}

test('the fuzz table covers every exported function, method and static', () => {
  const covered = new Set(EXPORTS.map((e) => e.member))
  const members = exportedMembers()
  expect(members.length).toBeGreaterThan(50)
  expect(members.filter((m) => !covered.has(m))).toEqual([])
  // And nothing in the table names a member that is not exported (a renamed method).
  expect([...covered].filter((m) => !members.includes(m))).toEqual([])
})

/** The error `call` threw or rejected with, or null. */
async function outcome(call: () => unknown): Promise<unknown> {
  try {
    const result = call()
    if (result && typeof (result as Promise<unknown>).then === 'function') await result
    return null
  } catch (e) {
    return e
  }
}

test('every error from every export, for seeded junk arguments, has a documented code and says where', async () => {
  const random = rng(SEED)
  const junk = generator(random)
  const tally = new Map<string, number>()
  const bad: string[] = []
  let cases = 0
  // The fixed cases the issue names first, then the generated ones.
  const cycle: Record<string, unknown> = {}
  cycle.self = cycle
  const fixed: unknown[] = [undefined, null, NaN, Infinity, 42, 'text', {}, [], cycle, { intervalMs: NaN }, { perWorkerMb: NaN }]
  for (const entry of EXPORTS) {
    const inputs = [...fixed.map((a) => [a, a]), ...Array.from({ length: CASES_PER_EXPORT }, () => [junk(), junk()])]
    for (const [a, b] of inputs) {
      cases++
      const error = await outcome(() => entry.call(a, b))
      if (error === null) {
        tally.set('(no error)', (tally.get('(no error)') ?? 0) + 1)
        continue
      }
      const { code, message } = error as { code?: unknown; message?: unknown }
      tally.set(String(code), (tally.get(String(code)) ?? 0) + 1)
      // Bad input names what was wrong and where: `telemetry.intervalMs: ...`, `name: ...`.
      const says = typeof message === 'string' && (code === 'INVALID_CONFIG' || code === 'INVALID_ARGUMENT' ? /^[^:]+: ./.test(message) : message.length > 0)
      if (!DOCUMENTED_CODES.has(code as string) || !says) {
        let shown: string
        try {
          shown = String(JSON.stringify(a)).slice(0, 80)
        } catch {
          shown = typeof a
        }
        bad.push(`${entry.name} with ${shown}: code ${String(code)}, message ${String(message)}`)
      }
    }
  }
  // For the record (and the closing note): cases and the codes seen.
  console.log(`fuzz-errors: seed ${SEED}, ${cases} cases, codes ${JSON.stringify(Object.fromEntries([...tally].sort()))}`)
  expect(bad.slice(0, 40)).toEqual([])
  expect(tally.get('INVALID_ARGUMENT')).toBeGreaterThan(0)
  expect(tally.get('INVALID_CONFIG')).toBeGreaterThan(0)
})

test('recommendConcurrency() and recommendConcurrency(null) throw INVALID_ARGUMENT naming options', () => {
  for (const call of [() => (recommendConcurrency as () => unknown)(), () => recommendConcurrency(null as never)]) {
    expect(call).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^options: expected an object/) }))
  }
})

test('NaN, a cycle and a non-string path name their JSON path or argument', () => {
  const cycle: Record<string, unknown> = { thresholds: {} }
  ;(cycle.thresholds as Record<string, unknown>).again = cycle
  expect(() => new Telemetry({ intervalMs: NaN })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: 'telemetry.intervalMs: expected a finite number, got NaN' }))
  expect(() => new Telemetry(cycle as never)).toThrow(
    expect.objectContaining({ code: 'INVALID_CONFIG', message: 'telemetry.thresholds.again: a cyclic reference (the object contains itself)' }),
  )
  // Once napi's own StringExpected, and an Error with no code.
  expect(() => readRecording(undefined as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^path: expected a string/) }))
  expect(() => readRecording(cycle as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^path: expected a string/) }))
  expect(() => readRecording('/dev/null', cycle as never)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: 'telemetry.thresholds.again: a cyclic reference (the object contains itself)' }))
  expect(() => loadConfig(42 as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: 'path: expected a string, got the number 42' }))
  expect(() => new ServiceSupervisor({ services: [{ name: 'a', command: 'x', stopTimeoutMs: Infinity }] } as never)).toThrow(
    expect.objectContaining({ code: 'INVALID_CONFIG', message: 'services.services[0].stopTimeoutMs: expected a finite number, got Infinity' }),
  )
})

/** Every function reachable from `target` through its own keys (symbols too) and those of its
 * prototypes below Object's (of whichever realm), as [path, holder, key]. */
function reachableFunctions(target: object, name: string): [string, object, PropertyKey][] {
  const found: [string, object, PropertyKey][] = []
  for (let level: object = target; Object.getPrototypeOf(level) !== null; level = Object.getPrototypeOf(level)) {
    for (const key of Reflect.ownKeys(level)) {
      if (key === 'constructor') continue
      const descriptor = Object.getOwnPropertyDescriptor(level, key)
      if (typeof descriptor?.value === 'function') found.push([`${name}.${String(key)}`, target, key])
    }
  }
  return found
}

// The JS half's native calls (acquireTask, releaseLease, tick, cancelWaiter, ...) once sat on each
// arbiter, where junk made them throw napi's own codes (`cancelWaiter(undefined)`: NumberExpected).
test('no member reachable from an arbiter or its lease throws a code outside the documented list', async () => {
  const target = new GpuArbiter({ maxConcurrentLeases: 64, defaultQueueLimit: 0 })
  const lease = (await target.acquire({ taskType: 'ASR' })) as object
  const members = [...reachableFunctions(target, 'arbiter'), ...reachableFunctions(lease, 'lease')]
  const names = members.map(([path]) => path)
  expect(names).toEqual(expect.arrayContaining(['arbiter.acquire', 'arbiter.release', 'lease.release']))
  for (const internal of ['acquireTask', 'acquireRequest', 'releaseLease', 'leaseHeld', 'tick', 'cancelWaiter', 'takeRecords', 'bindSide', 'taskTypeNumber']) {
    expect(names).not.toContain(`arbiter.${internal}`)
  }
  expect(Object.keys(sidecar)).not.toContain('bindArbiterHalf')
  const random = rng(SEED ^ 0x5eed)
  const junk = generator(random)
  const bad: string[] = []
  const cycle: Record<string, unknown> = {}
  cycle.self = cycle
  for (const [path, holder, key] of members) {
    if (path === 'arbiter.close') continue // the last call, below
    const inputs = [[undefined, undefined], [null, null], [NaN, NaN], ['text', 'text'], [cycle, cycle], ...Array.from({ length: 40 }, () => [junk(), junk()])]
    for (const [a, b] of inputs) {
      const error = await outcome(() => settle((holder as Record<PropertyKey, (x: unknown, y: unknown) => unknown>)[key](a, b)))
      const code = (error as { code?: unknown } | null)?.code
      if (error !== null && !DOCUMENTED_CODES.has(code as string)) bad.push(`${path}: code ${String(code)}, message ${String((error as Error).message)}`)
    }
  }
  target.close()
  expect(bad.slice(0, 20)).toEqual([])
})
