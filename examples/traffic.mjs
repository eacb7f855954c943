// The demo's traffic, run by `gpu-sidecar run --script` once the services are up: speech-
// translation utterances through withGpuLease, as the orchestrator's call sites do. ASR, NMT and
// semantic repair share gpu:0, TTS has gpu:1. Under load (the replayed gpu:0 passes 85 %, or the
// GPU is simply taken) semantic repair is skipped at once rather than delaying the chain. Then one
// ASR call hangs and the hold watchdog revokes its lease, so the next job gets the GPU.
import sidecar from '../gpu-sidecar.js'

const { withGpuLease, GpuLeaseError } = sidecar
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const GPU_OF = { ASR: 'gpu:0', NMT: 'gpu:0', SEMANTIC_REPAIR: 'gpu:0', TTS: 'gpu:1' }
const STAGES = [['ASR', 60], ['SEMANTIC_REPAIR', 40], ['NMT', 35], ['TTS', 45]] // GPU time, ms

export default async function traffic({ arbiter }) {
  const tally = {}
  const count = (stage, outcome) => ((tally[stage] ??= {})[outcome] = (tally[stage][outcome] ?? 0) + 1)
  async function utterance(sessionId, utteranceIndex) {
    for (const [stage, gpuMs] of STAGES) {
      const trace = { jobId: `${sessionId}:${utteranceIndex}`, sessionId, utteranceIndex, stage }
      try {
        await withGpuLease(stage, () => sleep(gpuMs), trace, { gpuKey: GPU_OF[stage] })
        count(stage, 'ACQUIRED')
      } catch (e) {
        if (!(e instanceof GpuLeaseError)) throw e
        count(stage, `${e.status}/${e.reason}`)
        if (stage !== 'SEMANTIC_REPAIR') return // the main chain gives up on this utterance
      }
    }
  }

  console.log('traffic: 3 sessions speaking 233 ms apart, 10 utterances each (about 7 s)')
  const jobs = []
  for (let u = 0; u < 10; u++) {
    for (let s = 0; s < 3; s++) {
      jobs.push(utterance(`s-${s}`, u))
      await sleep(233) // the sessions speak a little apart
    }
  }
  await Promise.all(jobs)
  console.table(tally)

  console.log('a stuck ASR call: its lease is revoked after holdMaxMs (1500 ms), the next job goes on')
  const off = arbiter.onEvent((e) => {
    if (e.type === 'watchdog') console.log(`  watchdog: ${e.taskType} lease ${e.leaseId} held ${Math.round(e.heldMs)} ms -> ${e.detail}`)
  })
  const stuck = withGpuLease('ASR', () => sleep(2500), { jobId: 'stuck' }, { gpuKey: 'gpu:0' })
  await sleep(50)
  const started = Date.now()
  await withGpuLease('ASR', () => sleep(60), { jobId: 'next' }, { gpuKey: 'gpu:0', maxWaitMs: 3000 })
  console.log(`  next ASR job got gpu:0 after ${Date.now() - started} ms`)
  await stuck
  off()
}
