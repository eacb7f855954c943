// @ts-check
'use strict'
// The helpers the orchestrator's call sites use (`withGpuLease`, `tryAcquireGpuLease`) and the
// process-wide arbiter behind them, made on first use as the old arbiter's factory made it. Plain
// JS: they run user callbacks and must rethrow the user's own errors untouched.

const native = require('../../index.js')
const { isEnabled } = require('./arbiter.js')
const { invalidArgument } = require('./errors.js')

/** The environment variable naming the node config file the default arbiter reads. */
const CONFIG_ENV = 'GPU_SIDECAR_CONFIG'

/**
 * How each status of a lease that was not granted reads in a GpuLeaseError's message. Typed by
 * the generated status union, so `npm run typecheck` fails when the core gains a status this
 * lacks.
 * @type {Record<import('../../index').GpuLeaseNotAcquired['status'], string>}
 */
const NOT_GRANTED = {
  SKIPPED: 'skipped',
  FALLBACK_CPU: 'fallback to CPU',
  TIMEOUT: 'timeout',
  CANCELLED: 'cancelled',
}

/** Error thrown by the helpers when a lease is not granted; its message is the old arbiter's. */
class GpuLeaseError extends Error {
  /** @param {{ status: string, reason: string }} result @param {string} taskType */
  constructor(result, taskType) {
    if (result === null || typeof result !== 'object') throw invalidArgument('result: expected a lease result { status, reason }')
    const { status, reason } = result
    const what = typeof status === 'string' && Object.hasOwn(NOT_GRANTED, status) ? NOT_GRANTED[/** @type {keyof NOT_GRANTED} */ (status)] : undefined
    if (what === undefined) throw invalidArgument(`result.status: expected one of ${Object.keys(NOT_GRANTED).join(', ')}`)
    if (typeof reason !== 'string') throw invalidArgument('result.reason: expected a string')
    if (typeof taskType !== 'string') throw invalidArgument('taskType: expected a string')
    super(`GPU lease ${what}: ${result.reason} (${taskType})`)
    this.name = 'GpuLeaseError'
    this.code = `GPU_LEASE_${result.status}`
    this.status = result.status
    this.reason = result.reason
    this.taskType = taskType
  }
}


/**
 * The default arbiter: `undefined` until first use (then the factory makes one), `null` when the
 * app said there is none.
 * @type {import('../../index').GpuArbiter | null | undefined}
 */
let current
/** @type {import('../../index').Telemetry | null} GPU sampling for the factory's arbiter */
let sampler = null
/** @type {{ configPath?: string, watch: boolean } | null} */
let factoryOptions = null

/**
 * Names the node config file the default arbiter is made from (else `$GPU_SIDECAR_CONFIG`, else
 * the built-in defaults). Loads it now, so a bad file throws `INVALID_CONFIG` here. Replaces a
 * default arbiter made earlier by the factory.
 * @param {{ configPath?: string, watch?: boolean }} [options]
 */
function configureGpuArbiter(options = {}) {
  if (options === null || typeof options !== 'object') throw invalidArgument('options: expected an object')
  /** @type {{ configPath?: unknown, watch?: unknown }} */
  let fields
  try {
    fields = { configPath: options.configPath, watch: options.watch ?? true }
  } catch (e) {
    throw invalidArgument(`options: cannot be read: ${/** @type {Error} */ (e).message}`)
  }
  const { configPath, watch } = fields
  if (configPath !== undefined && typeof configPath !== 'string') throw invalidArgument('options.configPath: expected a string')
  if (typeof watch !== 'boolean') throw invalidArgument('options.watch: expected a boolean')
  factoryOptions = { configPath: /** @type {string | undefined} */ (configPath), watch }
  dropFactoryArbiter()
  current = makeDefaultArbiter()
  return current
}

function makeDefaultArbiter() {
  const configPath = factoryOptions?.configPath ?? process.env[CONFIG_ENV]
  const arbiter = configPath
    ? native.GpuArbiter.fromFile(configPath, { watch: factoryOptions?.watch ?? true })
    : new native.GpuArbiter()
  // The old arbiter sampled GPU utilization itself every gpuUsage.sampleIntervalMs.
  const { enabled, gpuUsage } = /** @type {any} */ (arbiter.config())
  if (enabled && gpuUsage.enabled) {
    sampler = new native.Telemetry({ intervalMs: Math.max(100, gpuUsage.sampleIntervalMs) })
    sampler.attachArbiter(arbiter)
  }
  return arbiter
}

function dropFactoryArbiter() {
  if (sampler !== null) {
    sampler.close()
    sampler = null
    current?.close()
  }
  current = undefined
}

/**
 * Sets the arbiter the helpers use: a `GpuArbiter`, `null` for none (work then runs at once), or
 * `undefined` to have the factory make one again on next use.
 * @param {import('../../index').GpuArbiter | null | undefined} arbiter
 */
function setGpuArbiter(arbiter) {
  if (arbiter != null && !(arbiter instanceof native.GpuArbiter)) throw invalidArgument('setGpuArbiter: expected a GpuArbiter, null or undefined')
  if (arbiter !== current) dropFactoryArbiter()
  current = arbiter
}

/** The arbiter the helpers use; made on first use, as the old factory did. */
function getGpuArbiter() {
  if (current === undefined) current = makeDefaultArbiter()
  return current
}

/** Without arbitration nothing revokes a lease: one signal that never aborts serves them all. */
const NEVER_ABORTED = new AbortController().signal

/** The old arbiter's stand-in, plus a `signal` so callers need not check which they got. @param {string} taskType */
function standInLease(taskType) {
  return { status: 'ACQUIRED', leaseId: 'no-arbiter', gpuKey: 'gpu:0', taskType, acquiredAt: Date.now(), holdMaxMs: 8000, queueWaitMs: 0, release() {}, signal: NEVER_ABORTED }
}

function usableArbiter() {
  const arbiter = getGpuArbiter()
  return arbiter && !arbiter.closed && isEnabled(/** @type {any} */ (arbiter)) ? arbiter : null
}

/**
 * @param {string} taskType @param {unknown} trace @param {object | undefined} options
 */
function request(taskType, trace, options) {
  if (typeof taskType !== 'string' || taskType.trim() === '') throw invalidArgument('taskType: expected a non-empty string')
  if (options !== undefined && (options === null || typeof options !== 'object')) throw invalidArgument('options: expected an object')
  if (options === undefined) return { taskType, trace }
  try {
    return { ...options, taskType, trace }
  } catch (e) {
    throw invalidArgument(`options: cannot be read: ${/** @type {Error} */ (e).message}`)
  }
}

/**
 * @template T
 * @param {string} taskType @param {(lease: any) => T | Promise<T>} fn @param {unknown} [trace] @param {object} [options]
 */
async function withGpuLease(taskType, fn, trace, options) {
  if (typeof fn !== 'function') throw invalidArgument('fn: expected a function')
  const req = request(taskType, trace, options)
  const arbiter = usableArbiter()
  if (!arbiter) return fn(standInLease(taskType))
  const result = /** @type {any} */ (await arbiter.acquire(/** @type {any} */ (req)))
  if (result.status !== 'ACQUIRED') throw new GpuLeaseError(result, taskType)
  try {
    return await fn(result)
  } finally {
    result.release()
  }
}

/** @param {string} taskType @param {unknown} [trace] @param {object} [options] */
async function tryAcquireGpuLease(taskType, trace, options) {
  const req = request(taskType, trace, options)
  const arbiter = usableArbiter()
  if (!arbiter) return standInLease(taskType)
  const result = /** @type {any} */ (await arbiter.acquire(/** @type {any} */ (req)))
  return result.status === 'ACQUIRED' ? result : null
}

module.exports = { GpuLeaseError, configureGpuArbiter, setGpuArbiter, getGpuArbiter, withGpuLease, tryAcquireGpuLease }
