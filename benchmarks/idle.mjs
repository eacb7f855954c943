// Idle cost: what a node that does nothing costs its host process (the Electron main process),
// as CPU time of that process (`process.cpuUsage()`) over BENCH_IDLE_S seconds (default 15) and
// as event-loop utilization, beside a bare Node process measured in the same run. Each row is its
// own host process: a GpuArbiter; a Telemetry sampling every 1 s; a ServiceSupervisor with 1 and
// with 8 idle services, and with 8 of 32 threads each (a walk reads each thread's children list);
// and the whole node (arbiter, Telemetry at 1 s attached to both, and a supervisor with 8 idle
// services). An idle service prints its ready line and sleeps. All rows run
// at once, first with the machine's own processes (topped up to about 70), then with extra
// `sleep` processes up to about 500 on the machine; the bench starts and reaps those itself.
// The window opens BENCH_IDLE_SETTLE_MS (default 10 s) after ready, past the start's one-off GCs.
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'

const SELF = fileURLToPath(import.meta.url)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
/** An idle service: `threads` threads in all (an inference service has dozens), a ready line, sleep. */
const idleService = (threads) => [
  '-c',
  `import threading,time\nfor _ in range(${threads - 1}): threading.Thread(target=time.sleep, args=(1e6,), daemon=True).start()\nprint('[SERVICE_READY]', flush=True)\nwhile True: time.sleep(3600)`,
]

function processCount() {
  if (process.platform !== 'linux') return null
  return readdirSync('/proc').filter((name) => /^\d+$/.test(name)).length
}

/** In a host child: sets up `kind`, waits until idle, then measures for `seconds`. */
async function host(kind, services, threads, seconds) {
  const { createRequire } = await import('node:module')
  // The bare row never loads the addon.
  const sidecar = kind === 'bare' ? {} : createRequire(import.meta.url)('../gpu-sidecar.js')
  const { GpuArbiter, ServiceSupervisor, Telemetry } = sidecar
  const closers = []
  const withArbiter = kind === 'arbiter' || kind === 'node'
  const withTelemetry = kind === 'telemetry' || kind === 'node'
  const withSupervisor = kind === 'supervisor' || kind === 'node'
  const arbiter = withArbiter ? new GpuArbiter() : null
  if (arbiter) closers.push(() => arbiter.close())
  const telemetry = withTelemetry ? new Telemetry({ intervalMs: 1000 }) : null
  if (telemetry) {
    telemetry.onSample(() => {})
    closers.push(() => telemetry.close())
    if (arbiter) telemetry.attachArbiter(arbiter)
  }
  if (withSupervisor) {
    const supervisor = new ServiceSupervisor({
      services: Array.from({ length: services }, (_, n) => ({
        name: `idle-${n}`,
        command: 'python3',
        args: idleService(threads),
        readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
      })),
    })
    supervisor.onEvent(() => {})
    if (telemetry) supervisor.attachTelemetry(telemetry)
    if (arbiter) supervisor.attachArbiter(arbiter)
    const outcomes = await supervisor.startAll()
    const bad = outcomes.filter((o) => o.status !== 'ready')
    if (bad.length) throw new Error(`idle services did not start: ${JSON.stringify(bad)}`)
    closers.unshift(() => supervisor.close())
  }
  // Keeps the process alive as an app's main process is; wakes once a minute, not in the window.
  const keepAlive = setInterval(() => {}, 60_000)
  // Past the start: V8's memory reducer runs its compacting GCs about 8 s after the load, once.
  await sleep(Number(process.env.BENCH_IDLE_SETTLE_MS ?? 10_000))
  process.stdout.write('IDLE\n')
  const cpu0 = process.cpuUsage()
  const elu0 = performance.eventLoopUtilization()
  const t0 = performance.now()
  await sleep(seconds * 1000)
  const cpu = process.cpuUsage(cpu0)
  const elu = performance.eventLoopUtilization(elu0)
  const wallMs = performance.now() - t0
  for (const close of closers) await close()
  clearInterval(keepAlive)
  process.stdout.write(`${JSON.stringify({ userMs: cpu.user / 1000, systemMs: cpu.system / 1000, wallMs, elu: elu.utilization })}\n`)
}

function runHost(kind, services, threads, seconds) {
  const child = spawn(process.execPath, [SELF, '--host', kind, String(services), String(threads), String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  let idle
  const idleSeen = new Promise((r) => (idle = r))
  child.stdout.on('data', (chunk) => {
    out += chunk
    if (out.includes('IDLE\n')) idle()
  })
  const result = new Promise((resolve, reject) => {
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`idle host ${kind} exited ${code}: ${out}`))
      resolve(JSON.parse(out.trim().split('\n').pop()))
    })
  })
  return { idleSeen, result }
}

/** About `target` processes on the machine: one shell with sleeps below it, in its own group. */
async function fill(target) {
  const extra = Math.max(0, target - processCount())
  if (extra === 0) return { extra, stop: async () => {} }
  const shell = spawn('sh', ['-c', `i=0; while [ $i -lt ${extra - 1} ]; do sleep 3600 & i=$((i+1)); done; echo up; wait`], {
    stdio: ['ignore', 'pipe', 'ignore'],
    detached: true,
  })
  await new Promise((r) => shell.stdout.once('data', r))
  const exited = new Promise((r) => shell.on('exit', r))
  return {
    extra,
    stop: async () => {
      process.kill(-shell.pid, 'SIGKILL')
      await exited
    },
  }
}

/** [label, kind, services, threads per service] */
const ROWS = [
  ['a bare Node process', 'bare', 0, 1],
  ['a GpuArbiter', 'arbiter', 0, 1],
  ['a Telemetry sampling every 1 s', 'telemetry', 0, 1],
  ['a ServiceSupervisor, 1 idle service', 'supervisor', 1, 1],
  ['a ServiceSupervisor, 8 idle services', 'supervisor', 8, 1],
  ['a ServiceSupervisor, 8 idle services of 32 threads', 'supervisor', 8, 32],
  ['whole node: arbiter + Telemetry 1 s + 8 idle services', 'node', 8, 1],
]
const WHOLE_NODE = ROWS.length - 1

export async function benchIdle() {
  console.log('\n## Idle cost (host process CPU while nothing happens)')
  if (process.platform !== 'linux') {
    console.log(`skipped: the process counts and filler processes are Linux-only here (this is ${process.platform})`)
    return
  }
  const seconds = Number(process.env.BENCH_IDLE_S ?? 15)
  const results = new Map()
  const counts = []
  for (const target of [70, 500]) {
    const filler = await fill(target)
    try {
      const hosts = ROWS.map(([, kind, services, threads]) => runHost(kind, services, threads, seconds))
      await Promise.all(hosts.map((h) => h.idleSeen))
      await sleep((seconds * 1000) / 2)
      counts.push(processCount())
      const measured = await Promise.all(hosts.map((h) => h.result))
      ROWS.forEach(([label], r) => results.set(`${label}@${target}`, measured[r]))
    } finally {
      await filler.stop()
    }
  }
  const pct = (r) => ((r.userMs + r.systemMs) / r.wallMs) * 100
  const table = ROWS.map(([label]) => {
    const row = { 'what runs': label }
    for (const [t, target] of [70, 500].entries()) {
      const r = results.get(`${label}@${target}`)
      const bare = results.get(`${ROWS[0][0]}@${target}`)
      const head = `${counts[t]} procs`
      row[`${head}: % core`] = Number(pct(r).toFixed(3))
      row[`${head}: sys ms`] = Number(r.systemMs.toFixed(0))
      row[`${head}: vs bare (pp)`] = Number((pct(r) - pct(bare)).toFixed(3))
      row[`${head}: ELU %`] = Number((r.elu * 100).toFixed(3))
    }
    return row
  })
  console.table(table)
  const node = results.get(`${ROWS[WHOLE_NODE][0]}@500`)
  const bare = results.get(`${ROWS[0][0]}@500`)
  console.log(
    `whole node, 8 idle services, ${counts[1]} processes on the machine: ${pct(node).toFixed(3)} % of a core ` +
      `(${(pct(node) - pct(bare)).toFixed(3)} points above a bare Node process) over ${seconds} s; aim <= 0.2 %: ` +
      `${pct(node) <= 0.2 ? 'met' : 'not met'}`,
  )
}

if (process.argv[2] === '--host') {
  await host(process.argv[3], Number(process.argv[4]), Number(process.argv[5]), Number(process.argv[6]))
} else if (process.argv[1] === SELF) {
  await benchIdle()
}
