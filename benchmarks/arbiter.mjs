// Acquire+release round trips through each subject's public API, uncontended and with 64
// concurrent waiters: the native arbiter beside an in-JS arbiter built as seed 003 describes the
// one it replaces, p-queue (concurrency 1) and async-mutex's Semaphore(1), measured in the same
// run with the same work per subject (warm-up, then the median of several rounds). The summary
// gives gpu-sidecar's ratios to each peer beside issue 20's goals; on a noisy machine compare the
// medians of several runs. Then the native arbiter's memory: heap growth
// per 100k round trips, and RSS and heap across 1M.
import { performance } from 'node:perf_hooks'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import PQueue from 'p-queue'
import { Semaphore } from 'async-mutex'
import sidecar from '../gpu-sidecar.js'
import { InJsArbiter } from './peers/in-js-arbiter.mjs'

const { GpuArbiter } = sidecar
const ROUNDS = 7
const OPS = Number(process.env.BENCH_OPS ?? 100_000)
const WAITERS = 64
const TARGETS_US = { uncontended: 1.0, [`${WAITERS} waiters`]: 1.5 }
/** Issue 20's goals: the round trip in µs, and its most as a multiple of async-mutex's. */
const GOALS = { uncontended: { us: 0.5, vsSemaphore: 3 }, [`${WAITERS} waiters`]: { us: 1.0, vsSemaphore: 2 } }
const SEMAPHORE = 'async-mutex Semaphore'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc')

const subjects = {
  'gpu-sidecar': () => {
    const arbiter = new GpuArbiter({ defaultQueueLimit: 1024 })
    return {
      async once() {
        const lease = await arbiter.acquire({ taskType: 'ASR' })
        arbiter.release(lease.leaseId)
      },
      close: () => arbiter.close(),
    }
  },
  'in-JS arbiter (seed 003 design)': () => {
    const arbiter = new InJsArbiter({ queueLimit: 1024 })
    return {
      async once() {
        const lease = await arbiter.acquire({ taskType: 'ASR', priority: 90 })
        arbiter.release(lease.leaseId)
      },
      close: () => arbiter.close(),
    }
  },
  'p-queue': () => {
    const queue = new PQueue({ concurrency: 1 })
    const noop = async () => {}
    return { once: () => queue.add(noop), close() {} }
  },
  'async-mutex Semaphore': () => {
    const semaphore = new Semaphore(1)
    return {
      async once() {
        const [, release] = await semaphore.acquire()
        release()
      },
      close() {},
    }
  },
}

async function run(subject, concurrency, total) {
  const perWorker = Math.floor(total / concurrency)
  const worker = async () => {
    for (let i = 0; i < perWorker; i++) await subject.once()
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return perWorker * concurrency
}

/** The median µs per round trip of one subject, after a warm-up. */
async function measure(make, concurrency) {
  const subject = make()
  await run(subject, concurrency, OPS) // warm-up
  const samples = []
  for (let round = 0; round < ROUNDS; round++) {
    const start = performance.now()
    const ops = await run(subject, concurrency, OPS)
    samples.push(((performance.now() - start) * 1000) / ops)
  }
  subject.close()
  samples.sort((a, b) => a - b)
  return samples[Math.floor(samples.length / 2)]
}

const mb = (bytes) => Number((bytes / 1024 / 1024).toFixed(1))

async function memory() {
  const subject = subjects['gpu-sidecar']()
  await run(subject, WAITERS, 100_000)
  gc()
  const heap0 = process.memoryUsage().heapUsed
  await run(subject, WAITERS, 100_000)
  gc()
  const perHundredK = process.memoryUsage().heapUsed - heap0
  const before = process.memoryUsage()
  for (let i = 0; i < 10; i++) await run(subject, WAITERS, 100_000)
  gc()
  const after = process.memoryUsage()
  subject.close()
  return [
    { figure: 'heap growth per 100k round trips (64 waiters, after GC)', value: `${(perHundredK / 1024).toFixed(1)} KiB` },
    { figure: 'RSS before / after 1M round trips', value: `${mb(before.rss)} / ${mb(after.rss)} MB` },
    { figure: 'heap before / after 1M round trips (after GC)', value: `${mb(before.heapUsed)} / ${mb(after.heapUsed)} MB` },
  ]
}

export async function benchArbiter() {
  const rows = []
  const summary = []
  for (const concurrency of [1, WAITERS]) {
    const scenario = concurrency === 1 ? 'uncontended' : `${WAITERS} waiters`
    const results = {}
    for (const [name, make] of Object.entries(subjects)) results[name] = await measure(make, concurrency)
    const ours = results['gpu-sidecar']
    for (const [name, us] of Object.entries(results)) {
      rows.push({
        scenario,
        subject: name,
        'us/op': Number(us.toFixed(3)),
        'gpu-sidecar / this': Number((ours / us).toFixed(2)),
        target: name === 'gpu-sidecar' ? `<= ${TARGETS_US[scenario]} us: ${ours <= TARGETS_US[scenario] ? 'met' : 'MISSED'}` : '',
      })
    }
    const goal = GOALS[scenario]
    const vsSemaphore = ours / results[SEMAPHORE]
    summary.push({
      scenario,
      'gpu-sidecar us': Number(ours.toFixed(3)),
      'goal us': `<= ${goal.us}: ${ours <= goal.us ? 'met' : 'MISSED'}`,
      'x async-mutex': Number(vsSemaphore.toFixed(2)),
      'goal x async-mutex': `<= ${goal.vsSemaphore}: ${vsSemaphore <= goal.vsSemaphore ? 'met' : 'MISSED'}`,
      'x in-JS arbiter': Number((ours / results['in-JS arbiter (seed 003 design)']).toFixed(2)),
      'x p-queue': Number((ours / results['p-queue']).toFixed(2)),
    })
  }
  console.log(`\nGPU lease arbiter: acquire+release round trip, ${OPS} ops x ${ROUNDS} rounds (median), node ${process.version}`)
  console.table(rows)
  console.log('gpu-sidecar round trip against its peers (ratio: gpu-sidecar time / peer time, lower is better):')
  console.table(summary)
  console.log('gpu-sidecar memory:')
  console.table(await memory())
}

if (import.meta.url === `file://${process.argv[1]}`) await benchArbiter()
