import { resolve } from 'node:path'
import { Worker } from 'node:worker_threads'
import { GpuArbiter } from '../gpu-sidecar'

const entry = resolve(__dirname, '..', 'gpu-sidecar.js')

function runInWorker(source: string): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const worker = new Worker(source, { eval: true, workerData: { entry } })
    worker.once('message', resolvePromise)
    worker.once('error', reject)
    worker.once('exit', (code) => code !== 0 && reject(new Error(`worker exited with ${code}`)))
  })
}

test('the addon loads and works in a worker_threads Worker, beside the main thread', async () => {
  const main = new GpuArbiter({})
  const held = await main.acquire({ taskType: 'ASR' })
  const result = await runInWorker(`
    const { parentPort, workerData } = require('node:worker_threads')
    const { GpuArbiter } = require(workerData.entry)
    const arbiter = new GpuArbiter({ defaultQueueLimit: 2 })
    ;(async () => {
      const first = await arbiter.acquire({ taskType: 'ASR' })
      const queued = arbiter.acquire({ taskType: 'NMT', maxWaitMs: 30 })
      const timedOut = await queued
      arbiter.release(first.leaseId)
      arbiter.close()
      parentPort.postMessage([first.status, timedOut.status, timedOut.reason])
    })()
  `)
  expect(result).toEqual(['ACQUIRED', 'SKIPPED', 'TIMEOUT'])
  // Each thread has its own arbiter: the worker's leases never touched this one.
  expect(main.snapshot('gpu:0')!.activeLeases.map((l) => l.leaseId)).toEqual([(held as { leaseId: string }).leaseId])
  main.close()
})

test('terminating a worker with waiters pending does not disturb the main thread', async () => {
  const worker = new Worker(
    `
    const { parentPort, workerData } = require('node:worker_threads')
    const { GpuArbiter } = require(workerData.entry)
    const arbiter = new GpuArbiter({})
    arbiter.acquire({ taskType: 'ASR' }).then(() => {
      arbiter.acquire({ taskType: 'NMT', maxWaitMs: 60000 })
      parentPort.postMessage('waiting')
    })
  `,
    { eval: true, workerData: { entry } },
  )
  await new Promise((r) => worker.once('message', r))
  await worker.terminate()
  const arbiter = new GpuArbiter({})
  await expect(arbiter.acquire({ taskType: 'ASR' })).resolves.toMatchObject({ status: 'ACQUIRED' })
  arbiter.close()
})
