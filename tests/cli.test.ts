// The `gpu-sidecar` command, run as a real process on replayed data.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { RECORDED_EVENTS, recordingWithEvents } from './recording-events'
import { tempDir, waitFor } from './support'

const root = join(__dirname, '..')
const bin = join(root, 'src/cli/main.js')
const recording = join(root, 'examples/node-recording.jsonl')
const fakeService = join(root, 'examples/fake-model-service.mjs')

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 30_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** A node config whose GPU services need `vramMb` each on gpu:0 (48 GB in the recording). */
function configWith(vramMb: number[], extra: object = {}): string {
  const path = join(tempDir(), 'node-config.json')
  const services = vramMb.map((mb, i) => ({
    name: `svc${i}`,
    command: process.execPath,
    args: [fakeService, '--name', `svc${i}`, '--load-ms', '100'],
    readiness: { logLine: { pattern: 'SERVICE_READY' } },
    gpu: { key: 'gpu:0', vramMb: mb },
  }))
  writeFileSync(path, JSON.stringify({ gpuArbiter: { gpuKeys: ['gpu:0', 'gpu:1'] }, services: { services, ...extra } }))
  return path
}

/** Liveness by /proc: a zombie or a missing entry is dead (init reaps orphans slowly here). */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0] !== 'Z'
  } catch {
    return false
  }
}

describe('help and version', () => {
  test('--version prints the package version', () => {
    const r = cli(['--version'])
    expect(r.code).toBe(0)
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version)
  })

  test.each(['doctor', 'report', 'run'])('%s --help prints its usage and exits 0', (command) => {
    const r = cli([command, '--help'])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`Usage: gpu-sidecar ${command}`)
  })

  test('an unknown command or option is a usage error, exit 2', () => {
    expect(cli(['fly']).code).toBe(2)
    const r = cli(['doctor', '--colour'])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain("Unknown option '--colour'")
  })
})

describe('doctor', () => {
  test('on this machine: reports NVML and the host, healthy only when NVML is available', () => {
    const r = cli(['doctor', '--json'])
    const report = JSON.parse(r.stdout)
    const nvml = report.checks.find((c: { check: string }) => c.check === 'nvml')
    expect(report.host.totalMb).toBeGreaterThan(0)
    expect(report.checks.map((c: { check: string }) => c.check)).toEqual(expect.arrayContaining(['nvml', 'host memory', 'swap', 'zombies']))
    if (report.inventory.nvml.available) {
      expect(nvml.status).toBe('ok')
    } else {
      expect(nvml).toMatchObject({ status: 'fail', detail: expect.stringMatching(/^unavailable: [A-Z_]+$/), hint: expect.any(String) })
      expect(r.code).toBe(1)
    }
  })

  test('a config that fits: together, exit 0, with the plan in text and JSON', () => {
    const config = configWith([4000, 6000])
    const text = cli(['doctor', '--config', config, '--replay', recording])
    expect(text.code).toBe(0)
    expect(text.stdout).toMatch(/fit plan\n  gpu:0: TOGETHER/)
    expect(text.stdout).toMatch(/svc0 +4000 MiB +from vramMb/)
    const json = JSON.parse(cli(['doctor', '--config', config, '--replay', recording, '--json']).stdout)
    expect(json.healthy).toBe(true)
    expect(json.fitPlan).toEqual([expect.objectContaining({ gpuKey: 'gpu:0', verdict: 'together', sumMb: 10000, totalMb: 49140 })])
  })

  test('a config that fits only with eviction, or not at all: exit 1', () => {
    // The recording's last sample: gpu:0 has 13720 MiB used (none of it ours) of 49140.
    const eviction = cli(['doctor', '--config', configWith([20000, 20000]), '--replay', recording, '--json'])
    expect(eviction.code).toBe(1)
    expect(JSON.parse(eviction.stdout).fitPlan[0].verdict).toBe('eviction')
    const noFit = cli(['doctor', '--config', configWith([30000, 30000]), '--replay', recording])
    expect(noFit.code).toBe(1)
    expect(noFit.stdout).toMatch(/FAIL +fit gpu:0 +no-fit: 60512 MiB needed but gpu:0 has 49140 MiB in total/)
  })

  test('learned peaks from the state file count, and may make loading in sequence the only way', () => {
    const dir = tempDir()
    const state = join(dir, 'state.json')
    // 35420 MiB free. Steady 10000 each, but each peaks at 20000 while loading: 30000 in sequence,
    // 40000 at once.
    writeFileSync(state, JSON.stringify({ services: { svc0: { peakVramMb: 20000 }, svc1: { peakVramMb: 20000 } } }))
    const config = configWith([10000, 10000], { stateFile: state })
    const r = JSON.parse(cli(['doctor', '--config', config, '--replay', recording, '--json']).stdout)
    expect(r.fitPlan[0]).toMatchObject({ verdict: 'sequence', sumMb: 20000, sumPeakMb: 40000 })
    expect(r.fitPlan[0].services[0]).toMatchObject({ needMb: 10000, peakMb: 20000, source: 'vramMb+learned' })
    expect(r.healthy).toBe(true) // maxConcurrentStarts is 1
  })

  test('a bad config fails with its JSON path; a missing command and a taken port are named', async () => {
    const bad = join(tempDir(), 'bad.json')
    writeFileSync(bad, JSON.stringify({ gpuArbiter: { policies: { ASR: { priority: 'high' } } } }))
    const r = cli(['doctor', '--config', bad, '--replay', recording])
    expect(r.code).toBe(1)
    expect(r.stdout).toContain('FAIL  config')
    expect(r.stdout).toContain('INVALID_CONFIG: gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high"')

    const net = await import('node:net')
    const server = net.createServer().listen(0, '127.0.0.1')
    await new Promise((done) => server.once('listening', done))
    const port = (server.address() as { port: number }).port
    const path = join(tempDir(), 'node-config.json')
    writeFileSync(path, JSON.stringify({ services: { services: [{ name: 'ghost', command: 'no-such-program-xyz', port, readiness: { none: {} } }] } }))
    const out = await new Promise<string>((done) => {
      const child = spawn(process.execPath, [bin, 'doctor', '--config', path, '--replay', recording])
      let text = ''
      child.stdout.on('data', (d) => (text += d))
      child.on('exit', () => done(text))
    })
    server.close()
    expect(out).toMatch(/FAIL +ghost command +no-such-program-xyz not found on PATH/)
    expect(out).toMatch(new RegExp(`FAIL +ghost port +${port} is taken`))
  })
})

describe('report', () => {
  test('writes one self-contained HTML file with inline SVG, and prints the summary', () => {
    const out = join(tempDir(), 'incident.html')
    const r = cli(['report', recording, '-o', out])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('56 samples over 27.5 s')
    expect(r.stdout).toMatch(/gpu:0 \(NVIDIA RTX 6000 Ada Generation\): peak utilization 97 %/)
    expect(r.stdout).toMatch(/warning GPU_USAGE_HIGH gpu:0: raised 1x, \d+\.\d s in total/)
    expect(r.stdout).toContain(`report: ${out}`)
    const html = readFileSync(out, 'utf8')
    expect(html.startsWith('<!doctype html>')).toBe(true)
    expect(html.trimEnd().endsWith('</html>')).toBe(true)
    // Self-contained: no script, no external resource; the only URL is SVG's XML namespace.
    expect(html).not.toMatch(/<script|<link|<img|@import|url\(/i)
    expect(html.match(/https?:\/\/[^"\s<]+/g)?.every((u) => u === 'http://www.w3.org/2000/svg')).toBe(true)
    expect(html).toContain("default-src 'none'")
    // Per GPU: utilization, used memory and memory per service; then host and alerts.
    expect((html.match(/<svg /g) ?? []).length).toBe(2 * 3 + 2)
    expect(html).toMatch(/data-layer="asr"[\s\S]*data-layer="nmt"[\s\S]*data-layer="semantic-repair"/)
    for (const code of ['VRAM_PRESSURE', 'GPU_USAGE_HIGH', 'HOST_MEMORY_PRESSURE', 'SWAP_ACTIVE']) {
      expect(html).toContain(`data-code="${code}"`)
    }
    // Tags balance (a cheap well-formedness check of the generated markup).
    for (const tag of ['svg', 'section', 'figure', 'table', 'pre']) {
      expect((html.match(new RegExp(`<${tag}[ >]`, 'g')) ?? []).length).toBe((html.match(new RegExp(`</${tag}>`, 'g')) ?? []).length)
    }
  })

  test('marks every time axis with the recording\'s events and its alerts, each labelled, and lists them numbered in an events table', () => {
    const out = join(tempDir(), 'events.html')
    const r = cli(['report', recordingWithEvents(), '-o', out])
    expect(r.code).toBe(0)
    const html = readFileSync(out, 'utf8')
    const charts = html.match(/<svg [\s\S]*?<\/svg>/g) ?? []
    expect(charts).toHaveLength(2 * 3 + 2)
    const kinds = ['service-ready', 'service-failed', 'service-restarted', 'service-evicted', 'lease-revoked', 'alert-raised', 'alert-cleared']
    for (const chart of charts) {
      // Every time axis carries a mark of each kind, with its label as the hover title.
      for (const kind of kinds) expect(chart).toMatch(new RegExp(`<g class="mark" data-kind="${kind}" data-n="\\d+"><title>\\d+\\. \\d\\d:\\d\\d:\\d\\d\\.\\d [^<]+</title>`))
    }
    for (const [, , , label] of RECORDED_EVENTS) expect(html).toContain(label)
    // In print: the events table lists each mark by its number.
    const events = html.slice(html.indexOf('<section id="events">'))
    const rows = [...events.matchAll(/<tr data-kind="([a-z-]+)"><td>(\d+)<\/td>/g)].map((m) => [m[1], Number(m[2])])
    expect(rows.map(([, n]) => n)).toEqual(rows.map((_, i) => i + 1))
    expect(new Set(rows.map(([kind]) => kind))).toEqual(new Set(kinds))
    expect(events).toContain('raised warning GPU_USAGE_HIGH gpu:0: utilization')
    expect(events).toContain('asr ready in 1.8 s')
  })

  test('prints each alert with its subject once, in the summary, the report\'s lists and its hover labels', () => {
    const out = join(tempDir(), 'once.html')
    const r = cli(['report', recording, '-o', out])
    expect(r.code).toBe(0)
    const html = readFileSync(out, 'utf8')
    expect(html).toMatch(/<title>warning GPU_USAGE_HIGH gpu:0: utilization \d+% at or above 85%<\/title>/)
    for (const text of [r.stdout, html]) expect(text).not.toMatch(/\b(gpu:\d+|host):? \1:/)
  })

  test('a bad recording fails naming its line, exit 1, and writes nothing', () => {
    const dir = tempDir()
    const rec = join(dir, 'bad.jsonl')
    writeFileSync(rec, readFileSync(recording, 'utf8').split('\n')[0] + '\n{"at": "soon"}\n')
    const r = cli(['report', rec, '-o', join(dir, 'out.html')])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/INVALID_ARGUMENT: .*bad\.jsonl:2: not a telemetry sample/)
    expect(existsSync(join(dir, 'out.html'))).toBe(false)
  })
})

describe('run', () => {
  test('starts the services, prints one line per event, and on SIGTERM stops every service and exits 0', async () => {
    const config = configWith([1000, 1000])
    const child = spawn(process.execPath, [bin, 'run', config, '--replay', recording], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)))
    await waitFor(() => out.includes('running; Ctrl-C or SIGTERM stops'), 20_000, 'both services started')
    const pids = [...out.matchAll(/service (svc\d) spawned \{"pid":(\d+)\}/g)].map((m) => Number(m[2]))
    expect(pids).toHaveLength(2)
    expect(out).toMatch(/start svc0: ready in \d+ ms\n.*start svc1: ready in \d+ ms/)
    expect(pids.every(alive)).toBe(true)
    child.kill('SIGTERM')
    expect(await exited).toBe(0)
    expect(pids.some(alive)).toBe(false)
    expect(out).toContain('stopping (SIGTERM)')
    expect(out).toMatch(/SERVICE +STATE +PID +VRAM +READY IN +RESTARTS/)
    expect(out).toMatch(/svc0 +ready +\d+/) // the table as it ran, before the stop
    expect(out).toContain('stopped: svc0 stopped, svc1 stopped')
  })

  test('in a terminal: a live table redrawn in place, and Ctrl-C stops everything and exits 0', async () => {
    // util-linux `script` gives the command a pseudo-terminal; \x03 typed into it is Ctrl-C.
    // `exec`: without it, a shell that does not exec its last command (dash, when SHELL is unset)
    // stays the terminal's foreground process, and Ctrl-C ends it instead of reaching the CLI.
    const command = ['exec', ...[process.execPath, bin, 'run', configWith([1000]), '--replay', recording].map((a) => `'${a}'`)].join(' ')
    const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)))
    await waitFor(() => (out.match(/\x1b\[H\x1b\[2J/g) ?? []).length >= 2 && /svc0 +ready/.test(out), 20_000, 'two redraws with the service ready')
    expect(out).toContain('\x1b[?1049h') // the alternate screen
    expect(out).toMatch(/GPU +UTIL +MEMORY +LEASES +QUEUE +ADMISSION/)
    expect(out).toMatch(/gpu:0 +\d+ % +[\d.]+ (GiB|MiB) \/ 48\.0 GiB/)
    expect(out).not.toContain('service svc0 spawned') // no event lines in a terminal
    try {
      child.stdin.write('\x03')
      expect(await exited).toBe(0)
      expect(out).toContain('\x1b[?1049l')
      expect(out).toContain('stopped: svc0 stopped')
    } finally {
      child.kill('SIGKILL') // only if the CLI did not stop: leave nothing that keeps Jest alive
    }
  })

  test('--http serves the status page on loopback; another address needs --allow-remote', async () => {
    const child = spawn(process.execPath, [bin, 'run', configWith([1000]), '--replay', recording, '--http', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)))
    const url = (await waitFor(() => /status page (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out), 20_000, 'the status page'))[1]
    await waitFor(() => out.includes('running;'), 20_000, 'the service started')
    const status = await (await fetch(`${url}status`)).json()
    expect(status.services.map((s: { state: string }) => s.state)).toEqual(['ready'])
    child.kill('SIGTERM')
    expect(await exited).toBe(0)

    const remote = cli(['run', configWith([1000]), '--replay', recording, '--http', '0.0.0.0:0'])
    expect(remote.code).toBe(1)
    expect(remote.stderr).toMatch(/INVALID_ARGUMENT: serveStatus: host "0.0.0.0" is not a loopback address; pass allowRemote: true/)
  })

  test('--record keeps the services\' events beside the samples for the report to mark; alert lines name their subject once', () => {
    const dir = tempDir()
    const rec = join(dir, 'run.jsonl')
    const script = join(dir, 'wait.mjs')
    writeFileSync(script, 'export default () => new Promise((done) => setTimeout(done, 2500))\n')
    const r = spawnSync(process.execPath, [bin, 'run', configWith([1000]), '--replay', recording, '--replay-speed', '10', '--record', rec, '--script', script], { encoding: 'utf8', timeout: 30_000 })
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/ alert raised warning GPU_USAGE_HIGH gpu:0: utilization \d+% at or above 85%\n/)
    expect(r.stdout).toMatch(/ alert raised critical HOST_MEMORY_PRESSURE host: available memory \d+ MB is under 1024 MB\n/)
    expect(r.stdout).not.toMatch(/\b(gpu:\d+|host): \1:/)
    const lines = readFileSync(rec, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    expect(lines.filter((l) => l.event)).toEqual([{ at: expect.any(Number), event: { kind: 'service-ready', subject: 'svc0', label: expect.stringMatching(/^svc0 ready in \d+ ms$/) } }])
    expect(lines.filter((l) => l.nvml).length).toBeGreaterThan(10)
    const out = join(dir, 'run.html')
    expect(cli(['report', rec, '-o', out]).code).toBe(0)
    expect(readFileSync(out, 'utf8')).toMatch(/<tr data-kind="service-ready"><td>\d+<\/td><td>[\d:.]+<\/td><td>.*service ready<\/td><td>svc0 ready in \d+ ms<\/td>/)
  })

  test('--script runs after the services start, then the node stops and writes its report', () => {
    const dir = tempDir()
    const script = join(dir, 'probe.mjs')
    writeFileSync(script, "export default async ({ supervisor, arbiter }) => { console.log('states', supervisor.statuses().map((s) => s.state).join(',')); const l = await arbiter.acquire({ taskType: 'NMT' }); console.log('lease', l.status); arbiter.release(l.leaseId) }\n")
    const report = join(dir, 'run.html')
    const r = spawnSync(process.execPath, [bin, 'run', configWith([1000]), '--replay', recording, '--replay-speed', '10', '--script', script, '--report', report], { encoding: 'utf8', timeout: 30_000 })
    expect(r.status).toBe(0)
    expect(r.stdout).toContain('states ready')
    expect(r.stdout).toContain('lease ACQUIRED')
    expect(r.stdout).toContain(`report: ${report}`)
    expect(readFileSync(report, 'utf8')).toContain('<section id="services">')
  })
})
