// @ts-check
'use strict'
// Errors the hand-written JS throws, with the same documented `code`s the native side uses.

/** A bad argument, named in `message` (`request.signal: expected an AbortSignal`). @param {string} message */
function invalidArgument(message) {
  return /** @type {TypeError & { code: 'INVALID_ARGUMENT' }} */ (Object.assign(new TypeError(message), { code: 'INVALID_ARGUMENT' }))
}

module.exports = { invalidArgument }
