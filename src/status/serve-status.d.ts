// Types of serveStatus (src/status/server.js), re-exported by the package entry. A separate name,
// so that tsc still type-checks server.js itself (src/cli/tsconfig.json).
import type { GpuArbiter, ServiceSupervisor, Telemetry } from '../../index'

export interface StatusServerOptions {
  arbiter?: GpuArbiter | null
  telemetry?: Telemetry | null
  supervisor?: ServiceSupervisor | null
  /** Default `'127.0.0.1'`. Anything but loopback (127.0.0.0/8, `::1`, `localhost`) needs `allowRemote`. */
  host?: string
  /** 0 picks a free port (read it from the result). */
  port: number
  /** Serve on a non-loopback address. Default false. */
  allowRemote?: boolean
  /** The page's title. Default `'gpu-sidecar status'`. */
  title?: string
  /** How often open pages get the services' and leases' state, ms. Default 500. */
  stateIntervalMs?: number
}

export interface StatusServer {
  /** `http://127.0.0.1:<port>/` */
  url: string
  host: string
  port: number
  /** Stops listening, ends open event streams and unsubscribes. */
  close(): Promise<void>
}

/**
 * Serves `/` (live page over server-sent events, the report's renderer), `/metrics` (Prometheus
 * text: arbiter, telemetry, services up/ready/restarts/time to ready) and `/status` (JSON).
 * Resolves once listening. Throws `INVALID_ARGUMENT` for a non-loopback host without
 * `allowRemote: true` or a bad port; rejects with `PORT_IN_USE` when the port is taken.
 */
export declare function serveStatus(options: StatusServerOptions): Promise<StatusServer>
