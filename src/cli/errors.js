// @ts-check
// A bad command line: main.js prints the message with the command's usage and exits 2.

/** @param {string} message */
function usageError(message) {
  const e = /** @type {Error & { code: string }} */ (new Error(message))
  e.code = 'USAGE'
  return e
}

module.exports = { usageError }
