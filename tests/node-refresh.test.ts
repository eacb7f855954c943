// Services added, removed and changed while the node runs (issue 19 §4) the node's ways: its
// services folder rescanned (`refresh()`) after a package is installed or removed, and an edit of
// its watched config file (`ServiceSupervisor.fromFile(path, { watch: true })`). Real manifests,
// real files, real processes; the running services keep their pids.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ServiceConfig, ServiceEvent, ServiceSupervisor, setLogger } from '../gpu-sidecar'
import { tempDir, waitFor } from './support'

const SCRIPT = "console.log('[SERVICE_READY]'); setInterval(() => {}, 1000)"

/** Writes `<root>/<id>/service.json` in the node's format: a cpu service that says it is ready. */
function installPackage(root: string, id: string) {
  mkdirSync(join(root, id), { recursive: true })
  const manifest = { id, name: id, type: 'tone', device: 'cpu', exec: { command: process.execPath, args: ['-e', SCRIPT] } }
  writeFileSync(join(root, id, 'service.json'), JSON.stringify(manifest))
}

function service(name: string, rest: Partial<ServiceConfig> = {}): ServiceConfig {
  return { name, command: process.execPath, args: ['-e', SCRIPT], readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } }, ...rest }
}

const open: ServiceSupervisor[] = []
afterEach(async () => {
  for (const s of open.splice(0)) await s.close()
})

function watchEvents(supervisor: ServiceSupervisor) {
  open.push(supervisor)
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  return events
}

const changes = (events: ServiceEvent[]) =>
  events.filter((e) => ['added', 'changed', 'removed'].includes(e.type)).map((e) => [e.type, e.service])

test('refresh() rescans the manifests folder: an installed package is added, a removed one stopped and dropped, the rest keep running', async () => {
  const root = join(tempDir('refresh-'), 'services')
  for (const id of ['asr', 'vad', 'tts']) installPackage(root, id)
  const supervisor = new ServiceSupervisor({ manifests: [root], services: [{ name: 'asr', env: { LEVEL: 'one' } }] })
  const events = watchEvents(supervisor)
  await supervisor.startAll({ only: ['asr', 'vad', 'tts'] })
  const pids = Object.fromEntries(supervisor.statuses().map((s) => [s.name, s.pid]))

  installPackage(root, 'punct')
  rmSync(join(root, 'vad'), { recursive: true })
  mkdirSync(join(root, 'broken'))
  writeFileSync(join(root, 'broken', 'service.json'), '{ "id": ')
  setLogger(() => {}, 'error')
  let refreshed: Awaited<ReturnType<ServiceSupervisor['refresh']>>
  try {
    refreshed = await supervisor.refresh()
  } finally {
    setLogger(null)
  }
  expect(refreshed).toMatchObject({ added: ['punct'], changed: [], removed: ['vad'] })
  expect(refreshed.diagnostics).toEqual([expect.objectContaining({ path: join(root, 'broken', 'service.json') })])
  // In discovery order (the folders' names).
  expect(supervisor.statuses().map((s) => [s.name, s.state, s.pid])).toEqual([
    ['asr', 'ready', pids.asr],
    ['punct', 'idle', null],
    ['tts', 'ready', pids.tts],
  ])
  expect(changes(events)).toEqual([['added', 'punct'], ['removed', 'vad']])
  expect(events.filter((e) => e.service === 'vad').map((e) => e.type).slice(-2)).toEqual(['stopped', 'removed'])
  // Nothing new on disk: nothing changes.
  rmSync(join(root, 'broken'), { recursive: true })
  expect(await supervisor.refresh()).toEqual({ added: [], changed: [], removed: [], diagnostics: [] })
})

test('fromFile(path, { watch: true }): an edit of the services section adds, changes and removes; a bad edit changes nothing', async () => {
  const dir = tempDir('watched-')
  const path = join(dir, 'electron-node-config.json')
  const write = (services: ServiceConfig[]) =>
    writeFileSync(path, JSON.stringify({ servicePreferences: {}, services: { maxConcurrentStarts: 2, services } }, null, 2))
  write([service('asr'), service('nmt')])
  const logged: string[] = []
  setLogger((level, message, fields) => logged.push(`${level} ${message} ${JSON.stringify(fields)}`), 'warn')
  try {
    const supervisor = ServiceSupervisor.fromFile(path, { watch: true })
    const events = watchEvents(supervisor)
    await supervisor.startAll()
    const asrPid = supervisor.status('asr').pid

    write([service('asr', { env: { LEVEL: 'two' } }), service('tts')])
    await waitFor(() => changes(events).length === 3, 10_000, 'the edit to be applied')
    expect(changes(events)).toEqual([['changed', 'asr'], ['added', 'tts'], ['removed', 'nmt']])
    expect(supervisor.status('asr')).toMatchObject({ state: 'ready', pid: asrPid })
    expect(supervisor.statuses().map((s) => s.name)).toEqual(['asr', 'tts'])

    write([service('asr'), { ...service('bad'), command: '' }])
    await waitFor(() => logged.some((l) => l.includes('services section edit rejected')), 10_000, 'the rejection to be logged')
    expect(logged.find((l) => l.includes('rejected'))).toContain('services.services[1].command: expected a non-empty string')
    expect(changes(events)).toHaveLength(3)
    expect(supervisor.statuses().map((s) => [s.name, s.pid === null])).toEqual([['asr', false], ['tts', true]])
  } finally {
    setLogger(null)
  }
})

test('fromFile: a file without a services section, and a bad option, say so', () => {
  const path = join(tempDir('nosection-'), 'config.json')
  writeFileSync(path, JSON.stringify({ gpuArbiter: {} }))
  expect(() => ServiceSupervisor.fromFile(path)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: `${path}: has no "services" section` }))
  expect(() => ServiceSupervisor.fromFile(path, { watch: 'yes' } as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
})
