// @ts-check
// Prometheus text for the services, next to the arbiter's and the telemetry's own metrics.

/** @typedef {import('../../index').ServiceStatus} ServiceStatus */

/** @param {string} value */
function label(value) {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

/**
 * `gpu_sidecar_service_up` (its process runs), `gpu_sidecar_service_ready`,
 * `gpu_sidecar_service_restarts` and `gpu_sidecar_service_time_to_ready_seconds` per service.
 * @param {ServiceStatus[]} services
 */
function servicesMetrics(services) {
  /** @type {Array<[string, string, (s: ServiceStatus) => number | null]>} */
  const gauges = [
    ['gpu_sidecar_service_up', 'Whether the service has a running process (1) or not (0).', (s) => (s.pid === null ? 0 : 1)],
    ['gpu_sidecar_service_ready', 'Whether the service passed its readiness check and is running (1) or not (0).', (s) => (s.state === 'ready' ? 1 : 0)],
    ['gpu_sidecar_service_restarts', 'Restarts since the service was last started explicitly.', (s) => s.restarts],
    ['gpu_sidecar_service_time_to_ready_seconds', 'Spawn to ready of the current run.', (s) => (s.timeToReadyMs === null ? null : s.timeToReadyMs / 1000)],
  ]
  let out = ''
  for (const [name, help, value] of gauges) {
    out += `# HELP ${name} ${help}\n# TYPE ${name} gauge\n`
    for (const s of services) {
      const v = value(s)
      if (v !== null) out += `${name}{service="${label(s.name)}"} ${v}\n`
    }
  }
  return out
}

module.exports = { servicesMetrics }
