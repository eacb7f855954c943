// Acquire+release round trips of the native arbiter beside p-queue (concurrency 1)
// and async-mutex's Semaphore(1), measured in the same run, uncontended and with 64 concurrent
// waiters. Prints microseconds per round trip and the ratios.
import { performance } from 'node:perf_hooks'
import PQueue from 'p-queue'
import { Semaphore } from 'async-mutex'
import sidecar from '../gpu-sidecar.js'

const { GpuArbiter } = sidecar
const ROUNDS = 5
const OPS = Number(process.env.BENCH_OPS ?? 100_000)
const WAITERS = 64

const contenders = {
  'gpu-sidecar': () => {
    const arbiter = new GpuArbiter({ defaultQueueLimit: 1024, defaultMaxWaitMs: 600_000 })
    return {
      async once() {
        const lease = await arbiter.acquire({ taskType: 'ASR' })
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

async function measure(make, concurrency) {
  const subject = make()
  const perWorker = Math.floor(OPS / concurrency)
  const worker = async () => {
    for (let i = 0; i < perWorker; i++) await subject.once()
  }
  await Promise.all(Array.from({ length: concurrency }, worker)) // warm-up
  const samples = []
  for (let round = 0; round < ROUNDS; round++) {
    const start = performance.now()
    await Promise.all(Array.from({ length: concurrency }, worker))
    samples.push(((performance.now() - start) * 1000) / (perWorker * concurrency))
  }
  subject.close()
  samples.sort((a, b) => a - b)
  return samples[Math.floor(samples.length / 2)] // median of rounds
}

export async function benchArbiter() {
const rows = []
for (const concurrency of [1, WAITERS]) {
  const results = {}
  for (const [name, make] of Object.entries(contenders)) results[name] = await measure(make, concurrency)
  const ours = results['gpu-sidecar']
  for (const [name, us] of Object.entries(results)) {
    rows.push({
      scenario: concurrency === 1 ? 'uncontended' : `${WAITERS} waiters`,
      contender: name,
      'us/op': Number(us.toFixed(3)),
      'gpu-sidecar / this': Number((ours / us).toFixed(2)),
    })
  }
}
console.log(`\nGPU lease arbiter: acquire+release round trip, ${OPS} ops x ${ROUNDS} rounds (median), node ${process.version}`)
console.table(rows)
}
