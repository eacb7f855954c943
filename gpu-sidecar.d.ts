// Types of the package entry: everything the native binding declares, plus the lease helpers.
import type { GpuArbiter, GpuLeaseAcquired, GpuLeaseNotAcquired, GpuLeaseRequest, GpuLeaseTrace } from './index'

export * from './index'
export { serveStatus, StatusServer, StatusServerOptions } from './src/status/serve-status' // README "Operators"

declare module './index' {
  interface GpuArbiter {
    /**
     * Asks for a lease; resolves when it is granted or definitively answered (every request
     * resolves exactly once). Throws `INVALID_ARGUMENT`, `INVALID_GPU_KEY` or `CLOSED`.
     */
    acquire(request: GpuLeaseRequest): Promise<GpuLeaseAcquired | GpuLeaseNotAcquired>
  }
}

/** Request fields the helpers pass through to `acquire` (besides `taskType` and `trace`). */
export type GpuLeaseOptions = Omit<GpuLeaseRequest, 'taskType' | 'trace'>

/**
 * Thrown by `withGpuLease` when no lease is granted. `message` is the old arbiter's, e.g.
 * `GPU lease timeout: GPU_USAGE_HIGH (ASR)`.
 */
export declare class GpuLeaseError extends Error {
  readonly code: 'GPU_LEASE_SKIPPED' | 'GPU_LEASE_FALLBACK_CPU' | 'GPU_LEASE_TIMEOUT' | 'GPU_LEASE_CANCELLED'
  readonly status: GpuLeaseNotAcquired['status']
  readonly reason: GpuLeaseNotAcquired['reason']
  readonly taskType: string
}

/** Sets (or with `null` clears) the arbiter the helpers use. */
export declare function setGpuArbiter(arbiter: GpuArbiter | null): void

/** The arbiter the helpers use, or `null`. */
export declare function getGpuArbiter(): GpuArbiter | null

/**
 * Acquires a lease from the default arbiter, runs `fn(lease)` and always releases, also when `fn`
 * throws. Throws `GpuLeaseError` when no lease is granted. With no (or a closed) default arbiter,
 * `fn` runs at once with a pass-through lease (empty `leaseId`).
 */
export declare function withGpuLease<T>(
  taskType: string,
  fn: (lease: GpuLeaseAcquired) => T | Promise<T>,
  trace?: GpuLeaseTrace,
  options?: GpuLeaseOptions,
): Promise<T>

/**
 * Acquires a lease from the default arbiter, or returns `null` when none is granted. The caller
 * must `release` it. With no default arbiter, a pass-through lease (empty `leaseId`).
 */
export declare function tryAcquireGpuLease(
  taskType: string,
  trace?: GpuLeaseTrace,
  options?: GpuLeaseOptions,
): Promise<GpuLeaseAcquired | null>
