'use strict'
// The package entry: the generated native binding (./index.js), completed by the arbiter's JS half
// (src/js/arbiter.js, which defines `acquire`, `release` and `close` on GpuArbiter), the lease
// helpers the orchestrator's call sites use (src/js/lease-helpers.js) and the operators' status
// page (src/status/server.js, README "Operators").

require('./src/js/arbiter.js')
const { serveStatus } = require('./src/status/server.js')

// `...require()` re-exports (not variables), so Node's CommonJS lexer sees every name and ES
// modules can `import { GpuArbiter, withGpuLease } from 'gpu-sidecar'`.
module.exports = {
  ...require('./index.js'),
  ...require('./src/js/lease-helpers.js'),
  serveStatus,
}
