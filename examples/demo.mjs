// npm run demo: the GPU lease arbiter on its built-in defaults, playing one busy minute of a
// speech-translation node compressed into a few seconds: ASR, NMT and TTS jobs for several
// sessions compete for one GPU while the low-priority semantic-repair model tries to squeeze in.
// Then an ASR call gets stuck (seed 002) and the operator switches the watchdog to `revoke`.
import sidecar from '../gpu-sidecar.js'

const { GpuArbiter, withGpuLease, setGpuArbiter, setLogger, GpuLeaseError } = sidecar
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

setLogger(null) // the addon's own warnings go to stderr; an app would pass its logger here
const arbiter = new GpuArbiter() // built-in defaults: one GPU (gpu:0), the seed's policies
setGpuArbiter(arbiter)
const policies = arbiter.config().policies
console.log('gpu-sidecar demo: built-in defaults')
for (const [task, p] of Object.entries(policies)) {
  console.log(`  ${task.padEnd(16)} priority ${String(p.priority).padStart(3)}  maxWait ${String(p.maxWaitMs).padStart(5)} ms  ${p.busyPolicy}`)
}

const tally = {}
const count = (task, outcome) => {
  tally[task] ??= {}
  tally[task][outcome] = (tally[task][outcome] ?? 0) + 1
}

// Each utterance: ASR, then (sometimes) semantic repair, then NMT, then TTS; GPU time in ms.
const stages = [
  ['ASR', 60],
  ['SEMANTIC_REPAIR', 40],
  ['NMT', 35],
  ['TTS', 45],
]
async function utterance(sessionId, utteranceIndex) {
  for (const [stage, gpuMs] of stages) {
    const trace = { jobId: `${sessionId}:${utteranceIndex}`, sessionId, utteranceIndex, stage }
    try {
      await withGpuLease(stage, () => sleep(gpuMs), trace)
      count(stage, 'ACQUIRED')
    } catch (e) {
      if (!(e instanceof GpuLeaseError)) throw e
      count(stage, `${e.status}/${e.reason}`)
      if (stage !== 'SEMANTIC_REPAIR') return // the main chain gives up on this utterance
    }
  }
}

console.log('\nphase 1: 3 sessions, an utterance each every 600 ms (the GPU is ~90% busy)')
const started = Date.now()
const jobs = []
for (let u = 0; u < 5; u++) {
  for (let s = 0; s < 3; s++) jobs.push(utterance(`s-${s}`, u)) // the sessions speak at once
  await sleep(600)
}
await Promise.all(jobs)
console.log(`  done in ${Date.now() - started} ms`)
console.table(tally)

const snap = arbiter.snapshot('gpu:0')
console.log('per task type on gpu:0 (queue wait and hold, ms):')
console.table(
  snap.tasks.map((t) => ({
    task: t.taskType,
    acquired: t.acquired,
    skipped: t.skipped,
    timeout: t.timeout,
    'wait p50': t.waitMs?.p50.toFixed(1) ?? '-',
    'wait p95': t.waitMs?.p95.toFixed(1) ?? '-',
    'hold p95': t.holdMs?.p95.toFixed(1) ?? '-',
  })),
)

console.log('phase 2: an ASR call hangs (seed 002); watchdog set to revoke after 300 ms')
arbiter.setConfig({ watchdogAction: 'revoke', policies: { ASR: { holdMaxMs: 300 } } })
arbiter.onEvent((e) => {
  if (e.type === 'watchdog') console.log(`  watchdog: ${e.leaseId} (${e.taskType}) held ${e.heldMs.toFixed(0)} ms -> ${e.detail}`)
})
const stuck = await arbiter.acquire({ taskType: 'ASR', trace: { jobId: 'stuck' } }) // never released
const next = await arbiter.acquire({ taskType: 'NMT', trace: { jobId: 'next' } })
console.log(`  next job: ${next.status} after ${next.queueWaitMs.toFixed(0)} ms (the stuck lease ${stuck.leaseId} was taken back)`)
arbiter.release(next.leaseId)

console.log('\nPrometheus metrics (excerpt):')
console.log(
  arbiter
    .metrics()
    .split('\n')
    .filter((l) => l.startsWith('gpu_arbiter_acquire_total') || l.startsWith('gpu_arbiter_watchdog'))
    .join('\n'),
)
arbiter.close()
