'use strict'
// The package entry: the generated native binding (./index.js), completed by the arbiter's JS half
// (src/js/arbiter.js, which defines `acquire`, `release` and `close` on GpuArbiter) and the lease
// helpers the orchestrator's call sites use (src/js/lease-helpers.js).

require('./src/js/arbiter.js')
const {
  GpuLeaseError,
  configureGpuArbiter,
  setGpuArbiter,
  getGpuArbiter,
  withGpuLease,
  tryAcquireGpuLease,
} = require('./src/js/lease-helpers.js')
const { serveStatus } = require('./src/status/server.js') // operators' status page: README "Operators"

// Shorthand names and `...require()` (not a variable), so Node's CommonJS lexer sees every export
// and ES modules can `import { GpuArbiter } from 'gpu-sidecar'`.
module.exports = {
  ...require('./index.js'),
  GpuLeaseError,
  configureGpuArbiter,
  setGpuArbiter,
  getGpuArbiter,
  withGpuLease,
  tryAcquireGpuLease,
  serveStatus,
}
