// The node's own service.json manifests (tests/fixtures/node-services, copied with free ports):
// loading with the node's rules and a diagnostic for each file skipped, overrides from the node
// config, the runner's conventions (a folder's virtualenv interpreter, PYTHONIOENCODING), and the
// default readiness: ready when the service's /health or its [SERVICE_READY] line says so, never
// earlier, and READINESS_TIMEOUT saying how to configure it when it never does.
import { spawnSync } from 'node:child_process'
import Ajv2020 from 'ajv/dist/2020'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { ServiceEvent, ServiceOverride } from '../gpu-sidecar'
import { loadConfig, loadServiceManifests, ServiceSupervisor, setLogger } from '../gpu-sidecar'
import { tempDir } from './support'

const { copyNodeServices } = require('./fixtures/node-services/_fake/copy.js') as {
  copyNodeServices(dest: string): Promise<{ dir: string; ports: Record<string, number> }>
}

const KEPT = ['faster-whisper-vad', 'never-ready', 'nmt-m2m100', 'phonetic-correction', 'punctuation-restore', 'semantic-repair-zh', 'tone-lexicon', 'piper-tts']
const GPU_MANIFESTS = ['faster-whisper-vad', 'nmt-m2m100', 'piper-tts', 'semantic-repair-zh']

let fixture: { dir: string; ports: Record<string, number> }
// The skipped files' warnings are what one test reads; elsewhere they are noise.
const quiet = () => {}
beforeAll(async () => {
  setLogger(quiet, 'error')
  fixture = await copyNodeServices(join(tempDir('node-services-'), 'services'))
})
afterAll(() => setLogger(null))

const open: ServiceSupervisor[] = []
afterEach(async () => {
  for (const s of open.splice(0)) await s.close()
})

function supervise(config: ConstructorParameters<typeof ServiceSupervisor>[0]) {
  const supervisor = new ServiceSupervisor(config)
  open.push(supervisor)
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  return { supervisor, events }
}

/** Overrides that take the GPU away (no Telemetry here: `'auto'` would fail NO_GPU). */
const noGpu: ServiceOverride[] = GPU_MANIFESTS.map((name) => ({ name, gpu: null }))

const lines = (events: ServiceEvent[], service: string) =>
  events.filter((e): e is Extract<ServiceEvent, { type: 'log' }> => e.type === 'log' && e.service === service).map((e) => e.line)

describe('loading', () => {
  test('loadServiceManifests keeps the good manifests, and says (and logs) why each other file was skipped', async () => {
    const logged: Array<{ level: string; message: string; fields: Record<string, unknown> }> = []
    setLogger((level, message, fields) => logged.push({ level, message, fields }), 'warn')
    let loaded: ReturnType<typeof loadServiceManifests>
    try {
      loaded = loadServiceManifests(fixture.dir)
      // The logger is called on a later turn of the event loop.
      for (let waited = 0; logged.length < loaded.diagnostics.length && waited < 5000; waited += 10) await new Promise((r) => setTimeout(r, 10))
    } finally {
      setLogger(quiet, 'error')
    }
    expect(loaded.services.map((s) => s.name)).toEqual(KEPT)
    expect(loaded.manifests.map((m) => m.id)).toEqual(KEPT)
    const file = (folder: string) => join(fixture.dir, folder, 'service.json')
    expect(loaded.diagnostics).toEqual([
      { path: file('asr-whisper-old'), jsonPath: 'id', message: `duplicate id "faster-whisper-vad": ${file('asr-whisper')} has it and is kept; this file is skipped` },
      { path: file('broken-json'), jsonPath: 'exec.args', message: expect.stringMatching(/^not valid JSON: /) },
      { path: file('latin1'), jsonPath: '', message: 'not valid UTF-8 (at byte 34)' },
      { path: file('no-args'), jsonPath: 'exec.args', message: 'missing required field (an array)' },
    ])
    // Nothing silent: each one reached the app's logger too.
    for (const d of loaded.diagnostics) {
      expect(logged).toContainEqual({ level: 'warn', message: `service manifest skipped: ${d.message}`, fields: { path: d.path, json_path: d.jsonPath } })
    }
    const asr = loaded.manifests[0]
    expect(asr).toMatchObject({ name: 'Faster Whisper + Silero VAD', type: 'asr', device: 'gpu', taskType: 'ASR', version: '1.2.0', tags: ['asr', 'zh', 'en'], path: file('asr-whisper') })
    const spec = loaded.services[0]
    expect(spec).toMatchObject({
      command: join(fixture.dir, 'asr-whisper', '.venv', 'bin', 'python'),
      cwd: join(fixture.dir, 'asr-whisper'),
      port: fixture.ports['18701'],
      gpu: { key: 'auto', taskTypes: ['ASR'] },
      readinessTimeoutMs: 180000,
      env: { ASR_MODEL: 'large-v3', ASR_BEAM: '5', PYTHONIOENCODING: 'utf-8' },
    })
    expect(loadServiceManifests([fixture.dir], { taskTypes: { tone: 'TTS' } }).manifests.find((m) => m.id === 'tone-lexicon')?.taskType).toBe('TTS')
  })

  test('a missing folder is MANIFESTS_NOT_FOUND; bad arguments are INVALID_ARGUMENT', () => {
    const missing = join(fixture.dir, 'nope')
    expect(() => loadServiceManifests(missing)).toThrow(expect.objectContaining({ code: 'MANIFESTS_NOT_FOUND', message: `dir: no such folder: ${missing}` }))
    expect(() => loadServiceManifests([fixture.dir, missing])).toThrow(expect.objectContaining({ code: 'MANIFESTS_NOT_FOUND', message: `dir[1]: no such folder: ${missing}` }))
    expect(() => loadServiceManifests(join(fixture.dir, 'asr-whisper', 'service.json'))).toThrow(expect.objectContaining({ code: 'MANIFESTS_NOT_FOUND' }))
    expect(() => loadServiceManifests(5 as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => loadServiceManifests(fixture.dir, { taskTypes: { asr: 1 } } as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^options\.taskTypes\.asr: /) }))
  })

  test('the node config: manifests relative to the file, services[] entries override by name, errors keep their JSON path', () => {
    const root = join(fixture.dir, '..')
    const path = join(root, 'electron-node-config.json')
    const write = (services: unknown) => writeFileSync(path, JSON.stringify({ servicePreferences: { 'faster-whisper-vad': true }, services }))
    write({
      manifests: ['services'],
      manifestTaskTypes: { tone: 'TTS' },
      services: [
        { name: 'faster-whisper-vad', gpu: { vramMb: 3000 }, onDemand: true, readinessTimeoutMs: 240000, priority: 80, restart: { policy: 'on-failure' } },
        { name: 'nmt-m2m100', gpu: { key: 'gpu:1' } },
        { name: 'tone-lexicon', gpu: { key: 'auto' } },
        { name: 'extra', command: 'true', readiness: { none: {} } },
      ],
    })
    // The shipped schema takes the override entries too (an editor does not flag them), and
    // still refuses a whole service that lacks its readiness.
    const schema = JSON.parse(readFileSync(join(__dirname, '..', 'src', 'config', 'node-config.schema.json'), 'utf8'))
    const validate = new Ajv2020({ strict: false, validateFormats: false }).compile(schema)
    expect(validate(JSON.parse(readFileSync(path, 'utf8')))).toBe(true)
    expect(validate({ services: { manifests: ['services'], services: [{ name: 'x', command: 'x' }] } })).toBe(false)
    const config = loadConfig(path)
    expect(config.warnings).toEqual([])
    expect(config.manifests?.diagnostics).toHaveLength(4)
    const byName = Object.fromEntries((config.services?.services ?? []).map((s) => [s.name, s]))
    expect(Object.keys(byName)).toEqual([...KEPT, 'extra'])
    expect(byName['faster-whisper-vad']).toMatchObject({ gpu: { key: 'auto', taskTypes: ['ASR'], vramMb: 3000 }, onDemand: true, readinessTimeoutMs: 240000, priority: 80, restart: { policy: 'on-failure' } })
    expect(byName['nmt-m2m100'].gpu).toEqual({ key: 'gpu:1', taskTypes: ['NMT'] })
    expect(byName['tone-lexicon'].gpu).toEqual({ key: 'auto' })
    expect((config.services as Record<string, unknown>).manifests).toBeUndefined()
    // The expanded section is what the supervisor takes.
    supervise(config.services!)

    write({ manifests: ['services'], services: [{ name: 'extra', command: 'true', readiness: { none: {} } }, { name: 'piper-tts', gpu: { vramMb: -1 } }] })
    expect(() => loadConfig(path)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(/^services\.services\[1\]\.gpu\.vramMb: expected an integer/) }))
    write({ manifests: ['services', 'plugins'] })
    expect(() => loadConfig(path)).toThrow(expect.objectContaining({ code: 'MANIFESTS_NOT_FOUND', message: `services.manifests[1]: no such folder: ${join(root, 'plugins')}` }))
  })
})

test('gpu-sidecar doctor lists each manifest the node config would skip', () => {
  const path = join(fixture.dir, '..', 'doctor-config.json')
  writeFileSync(path, JSON.stringify({ services: { manifests: ['services'] } }))
  const run = spawnSync(process.execPath, [join(__dirname, '..', 'src', 'cli', 'main.js'), 'doctor', '--config', path, '--json'], { encoding: 'utf8', timeout: 60_000 })
  const checks = (JSON.parse(run.stdout) as { checks: Array<{ check: string; status: string; detail: string }> }).checks
  const skipped = checks.filter((c) => c.check === 'manifest skipped')
  expect(skipped.map((c) => c.status)).toEqual(['warn', 'warn', 'warn', 'warn'])
  expect(skipped[1].detail).toMatch(new RegExp(`^${join(fixture.dir, 'broken-json', 'service.json').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} at exec\.args: not valid JSON`))
  expect(checks.find((c) => c.check === 'faster-whisper-vad command')?.detail).toBe(join(fixture.dir, 'asr-whisper', '.venv', 'bin', 'python'))
})

describe('running manifest services', () => {
  test('a python command runs the folder\'s .venv, then venv, interpreter, else PATH\'s; PYTHONIOENCODING=utf-8 unless env sets it', async () => {
    const names = ['faster-whisper-vad', 'nmt-m2m100', 'punctuation-restore', 'tone-lexicon']
    const { supervisor, events } = supervise({ manifests: [fixture.dir], maxConcurrentStarts: 4, services: noGpu })
    const outcomes = await Promise.all(names.map((n) => supervisor.start(n).then(() => supervisor.status(n))))
    expect(outcomes.map((s) => s.state)).toEqual(['ready', 'ready', 'ready', 'ready'])
    expect(lines(events, 'faster-whisper-vad')).toContain(`VENV ${join(fixture.dir, 'asr-whisper', '.venv', 'bin', 'python')}`)
    expect(lines(events, 'nmt-m2m100')).toContain(`VENV ${join(fixture.dir, 'nmt-m2m', 'venv', 'bin', 'python')}`)
    expect(lines(events, 'nmt-m2m100')).toContain(`CWD ${join(fixture.dir, '_fake')}`)
    expect(lines(events, 'punctuation-restore')).toContain('VENV -')
    for (const name of ['faster-whisper-vad', 'nmt-m2m100', 'punctuation-restore']) expect(lines(events, name)).toContain('ENV PYTHONIOENCODING=utf-8')
    expect(lines(events, 'tone-lexicon')).toContain('ENV PYTHONIOENCODING=utf-8:strict')
  })

  test('each is ready when its health (or its line) says so, never earlier: ok, healthy, not_ready then ok, degraded, no JSON, the line only', async () => {
    const names = ['faster-whisper-vad', 'nmt-m2m100', 'piper-tts', 'semantic-repair-zh', 'punctuation-restore', 'phonetic-correction']
    const { supervisor, events } = supervise({ manifests: [fixture.dir], maxConcurrentStarts: 6, services: noGpu })
    await Promise.all(names.map((n) => supervisor.start(n)))
    for (const name of names) {
      const readyAt = Number(lines(events, name).find((l) => l.startsWith('READY_AT '))?.slice(9))
      const ready = events.find((e) => e.service === name && e.type === 'ready')
      expect(readyAt).toBeGreaterThan(0)
      expect(ready).toBeDefined()
      // The service printed READY_AT before it first said so; the ready event cannot precede it.
      expect(ready!.at).toBeGreaterThanOrEqual(readyAt)
    }
    // piper-tts answered 200 {"status":"not_ready"} while it loaded: that was no ready answer.
    const piper = events.filter((e): e is Extract<ServiceEvent, { type: 'probe-failed' }> => e.service === 'piper-tts' && e.type === 'probe-failed')
    expect(piper.map((e) => e.reason)).toContain(`GET http://127.0.0.1:${fixture.ports['18703']}/health: status is "not_ready"`)
  })

  test('a service that never says it is ready fails READINESS_TIMEOUT, saying how to set its readiness', async () => {
    const { supervisor } = supervise({ manifests: [fixture.dir], services: [...noGpu, { name: 'never-ready', readinessTimeoutMs: 1500 }] })
    const outcome = await supervisor.start('never-ready')
    expect(outcome).toMatchObject({ status: 'failed', error: { code: 'READINESS_TIMEOUT' } })
    const message = outcome.status === 'failed' ? outcome.error.message : ''
    expect(message).toContain('never-ready: not ready after 1500 ms; last probe: GET')
    expect(message).toContain('status is "loading"')
    expect(message).toContain('set "readiness" or "readinessTimeoutMs" in the services[] entry named "never-ready"')
    expect(supervisor.status('never-ready').state).toBe('failed')
  })
})
