'use strict'
// The package entry: the generated native binding (./index.js) plus the lease helpers that the
// orchestrator's call sites already use. The helpers are plain JS because they run user callbacks
// and must rethrow the user's own errors untouched.

const native = require('./index.js')
const { serveStatus } = require('./src/status/server.js') // operators' status page: README "Operators"

// `acquire(request)` reads the request's fields here, where property access is nearly free, and
// hands them to the instance's native `acquireFields` in this order (src/binding/lease_codec.rs
// `Arg`): through Node-API every property read would cost about as much as the arbitration.
Object.defineProperty(native.GpuArbiter.prototype, 'acquire', {
  value: function acquire(request) {
    if (request === null || typeof request !== 'object') return this.acquireFields(undefined)
    const { trace } = request
    const traced = trace !== null && typeof trace === 'object'
    return this.acquireFields(
      request.taskType,
      request.gpuKey,
      request.priority,
      request.maxWaitMs,
      request.holdMaxMs,
      request.queueLimit,
      request.busyPolicy,
      request.vramMb,
      request.signal,
      trace,
      traced ? trace.jobId : undefined,
      traced ? trace.sessionId : undefined,
      traced ? trace.utteranceIndex : undefined,
      traced ? trace.stage : undefined,
    )
  },
  writable: true,
  configurable: true,
})

let defaultArbiter = null

/** Error thrown by the helpers when a lease is not granted. */
class GpuLeaseError extends Error {
  constructor(result, taskType) {
    const what = {
      SKIPPED: 'skipped',
      FALLBACK_CPU: 'fallback to CPU',
      TIMEOUT: 'timeout',
      CANCELLED: 'cancelled',
    }[result.status]
    super(`GPU lease ${what}: ${result.reason} (${taskType})`)
    this.name = 'GpuLeaseError'
    this.code = `GPU_LEASE_${result.status}`
    this.status = result.status
    this.reason = result.reason
    this.taskType = taskType
  }
}

function setGpuArbiter(arbiter) {
  if (arbiter !== null && !(arbiter instanceof native.GpuArbiter)) {
    const err = new TypeError('setGpuArbiter: expected a GpuArbiter or null')
    err.code = 'INVALID_ARGUMENT'
    throw err
  }
  defaultArbiter = arbiter
}

function getGpuArbiter() {
  return defaultArbiter
}

/** Granted at once when no usable arbiter is set: the work runs as it would without arbitration. */
function passThroughLease() {
  return { status: 'ACQUIRED', leaseId: '', gpuKey: '', acquiredAt: Date.now(), queueWaitMs: 0 }
}

function usableArbiter() {
  return defaultArbiter && !defaultArbiter.closed ? defaultArbiter : null
}

async function withGpuLease(taskType, fn, trace, options) {
  const arbiter = usableArbiter()
  if (!arbiter) return fn(passThroughLease())
  const result = await arbiter.acquire({ ...options, taskType, trace })
  if (result.status !== 'ACQUIRED') throw new GpuLeaseError(result, taskType)
  try {
    return await fn(result)
  } finally {
    arbiter.release(result.leaseId)
  }
}

async function tryAcquireGpuLease(taskType, trace, options) {
  const arbiter = usableArbiter()
  if (!arbiter) return passThroughLease()
  const result = await arbiter.acquire({ ...options, taskType, trace })
  return result.status === 'ACQUIRED' ? result : null
}

// `...require()` (not `...native`) so Node's CommonJS lexer sees the re-export and ES modules
// can `import { GpuArbiter } from 'gpu-sidecar'`.
module.exports = {
  ...require('./index.js'),
  GpuLeaseError,
  setGpuArbiter,
  getGpuArbiter,
  withGpuLease,
  tryAcquireGpuLease,
  serveStatus,
}
