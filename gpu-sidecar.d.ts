// Types of the package entry: everything the native binding declares, plus the lease helpers.
import type { GpuArbiter, GpuLeaseAcquired, GpuLeaseNotAcquired, GpuLeaseRequest, GpuLeaseTraceInput } from './index'

export * from './index'
export { serveStatus, StatusServer, StatusServerOptions } from './src/status/serve-status' // README "Operators"

declare module './index' {
  interface GpuArbiter {
    /**
     * Asks for a lease; resolves when it is granted or definitively answered (every request
     * resolves exactly once). Throws `INVALID_ARGUMENT`, `INVALID_GPU_KEY` or `CLOSED`.
     */
    acquire(request: GpuLeaseRequest): Promise<GpuLeaseAcquired | GpuLeaseNotAcquired>
    /**
     * Gives a lease back and hands the GPU to the next waiter. Idempotent: an unknown, already
     * released or revoked id is ignored (logged at debug level). Returns whether a lease was released.
     */
    release(leaseId: string): boolean
  }
}

/** The lease the helpers pass to `fn` when no arbiter is in use (the old arbiter's stand-in). */
export interface GpuStandInLease {
  status: 'ACQUIRED'
  leaseId: 'no-arbiter'
  gpuKey: 'gpu:0'
  taskType: string
  acquiredAt: number
  holdMaxMs: 8000
  queueWaitMs: 0
  release(): void
  /** Never aborts: nothing revokes a lease without an arbiter. */
  readonly signal: AbortSignal
}

/** Request fields the helpers pass through to `acquire` (besides `taskType` and `trace`). */
export type GpuLeaseOptions = Omit<GpuLeaseRequest, 'taskType' | 'trace'>

/**
 * Thrown by `withGpuLease` when no lease is granted. `message` is the old arbiter's, e.g.
 * `GPU lease timeout: GPU_USAGE_HIGH (ASR)`.
 */
export declare class GpuLeaseError extends Error {
  /** Throws `INVALID_ARGUMENT` for a `result` that is not a refused lease. */
  constructor(result: GpuLeaseNotAcquired, taskType: string)
  readonly code: `GPU_LEASE_${GpuLeaseNotAcquired['status']}`
  readonly status: GpuLeaseNotAcquired['status']
  readonly reason: GpuLeaseNotAcquired['reason']
  readonly taskType: string
}

/**
 * Sets the arbiter the helpers use; `null`: none (work then runs at once with a stand-in lease);
 * `undefined`: the factory makes one again on next use. Replacing the factory's arbiter closes it.
 */
export declare function setGpuArbiter(arbiter: GpuArbiter | null | undefined): void

/**
 * The arbiter the helpers use. On first use it is made as the old arbiter's factory made it:
 * enabled, from the node config file named by `configureGpuArbiter` or `$GPU_SIDECAR_CONFIG`,
 * else the built-in defaults, sampling its GPUs every `gpuUsage.sampleIntervalMs`. `null` after
 * `setGpuArbiter(null)`.
 */
export declare function getGpuArbiter(): GpuArbiter | null

/**
 * Names the node config file the default arbiter is made from (watched for edits unless
 * `watch: false`) and makes it now: a bad file throws `INVALID_CONFIG`.
 */
export declare function configureGpuArbiter(options?: { configPath?: string; watch?: boolean }): GpuArbiter

/**
 * Acquires a lease from the default arbiter, runs `fn(lease)` and always releases, also when `fn`
 * throws. Throws `GpuLeaseError` when no lease is granted. With no, a closed or a disabled
 * arbiter, `fn` runs at once with the stand-in lease (`leaseId: 'no-arbiter'`). Trace fields of
 * other types (a numeric `jobId`) are converted, never refused.
 */
export declare function withGpuLease<T>(
  taskType: string,
  fn: (lease: GpuLeaseAcquired | GpuStandInLease) => T | Promise<T>,
  trace?: GpuLeaseTraceInput,
  options?: GpuLeaseOptions,
): Promise<T>

/**
 * Acquires a lease from the default arbiter, or returns `null` when none is granted. The caller
 * must `release()` it. With no, a closed or a disabled arbiter, the stand-in lease.
 */
export declare function tryAcquireGpuLease(
  taskType: string,
  trace?: GpuLeaseTraceInput,
  options?: GpuLeaseOptions,
): Promise<GpuLeaseAcquired | GpuStandInLease | null>
