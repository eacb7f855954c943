// @ts-check
'use strict'
// The JS half of GpuArbiter (see src/binding/arbiter/mod.rs). The native core makes every
// decision; this module holds what JS holds cheaply: the promises, the result objects, AbortSignal
// listeners and the one deadline timer. Native calls take and return numbers, and leave what they
// caused in a shared Float64Array (the mailbox), whose layout the native module exports. The
// native calls live on an internal handle that only this module gets (`register`): nothing on the
// arbiter object reaches them.

const timers = require('node:timers')
const native = require('../../index.js')
const { invalidArgument } = require('./errors.js')

const { ArbiterMailboxSlot: Slot, ArbiterRecordField: Field, ArbiterRecordKind: Kind } = native
// The layout, read once into constants for the hot loops.
const RECORD_COUNT = Slot.RecordCount
const RECORDS = Slot.Records
const RECORD_SIZE = Field.Size
const KIND = Field.Kind
const ID = Field.Id
/** Where an acquire leaves its outcome's kind. */
const OUTCOME_KIND = Slot.Outcome + Field.Kind
const { statuses: STATUS, reasons: REASON, leaseIdPrefix: LEASE_PREFIX } = native.arbiterCodeNames()
/** What no caller can pass: the last task type and lease id before there is one. */
const NONE = Symbol('none')
/** Node's timers overflow past this (and then fire every millisecond). */
const MAX_TIMER_MS = 2 ** 31 - 1
/** "000" to "999": a lease id's last three digits (see `ArbiterSide#leaseIdText`). */
const LOW_DIGITS = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'))
/** Revoked lease ids remembered for a `signal` first asked for after the revocation. */
const REMEMBERED_REVOCATIONS = 1024
// A registry symbol: the native module is loaded once per thread, but this file may be evaluated
// more than once against it (Jest's per-file module registries, bundles that duplicate it). The
// first evaluation installs the JS half; later ones reuse it rather than wrap it again.
const INSTALLED = Symbol.for('gpu-sidecar.arbiterJsHalf')

/**
 * @typedef {import('../../index').GpuArbiter} NativeArbiter
 * @typedef {{
 *   taskTypeNumber(taskType: string): number,
 *   acquireTask(taskType: number | string, trace?: unknown): void,
 *   acquireRequest(request: object): void,
 *   releaseLease(id: number | unknown): boolean,
 *   leaseHeld(id: number): boolean,
 *   tick(): void,
 *   cancelWaiter(id: number): void,
 *   takeRecords(): void,
 *   bindSide(notify: () => void): Float64Array,
 * }} ArbiterHandle the native calls of one arbiter (src/binding/arbiter/hot_path.rs)
 * @typedef {{ id: number, resolve: (value: unknown) => void, taskType: string, signal: AbortSignal | null, onAbort: (() => void) | null }} Waiter
 */

/** Slots in the waiter table's array part: it starts small (most arbiters seldom queue, and a
 * test suite or hot reload makes thousands) and doubles on a clash up to the most (powers of two). */
const WAITER_SLOTS_FIRST = 8
const WAITER_SLOTS_MOST = 4096

/**
 * Queued requests by id. Ids come from one increasing counter, so an array indexed by the id's
 * low bits finds almost every waiter without hashing; the rare id whose slot is taken (a waiter
 * older than 4096 newer ids) goes to a Map.
 */
class WaiterTable {
  constructor() {
    /** @type {(Waiter | undefined)[]} */
    this.slots = new Array(WAITER_SLOTS_FIRST).fill(undefined)
    /** @type {Map<number, Waiter>} */
    this.overflow = new Map()
  }

  /** @param {Waiter} waiter */
  add(waiter) {
    let at = waiter.id & (this.slots.length - 1)
    while (this.slots[at] !== undefined && this.slots.length < WAITER_SLOTS_MOST) {
      this.grow()
      at = waiter.id & (this.slots.length - 1)
    }
    if (this.slots[at] === undefined) this.slots[at] = waiter
    else this.overflow.set(waiter.id, waiter)
  }

  /** Doubles the array part; each waiter moves to its slot under the wider mask. */
  grow() {
    const old = this.slots
    this.slots = new Array(old.length * 2).fill(undefined)
    for (const waiter of old) {
      if (waiter !== undefined) this.slots[waiter.id & (this.slots.length - 1)] = waiter
    }
  }

  /** Removes and returns the waiter with this id, if any. @param {number} id */
  take(id) {
    const at = id & (this.slots.length - 1)
    const waiter = this.slots[at]
    if (waiter !== undefined && waiter.id === id) {
      this.slots[at] = undefined
      return waiter
    }
    if (this.overflow.size === 0) return undefined
    const other = this.overflow.get(id)
    if (other !== undefined) this.overflow.delete(id)
    return other
  }
}


/** Why a lease's signal aborts: the watchdog took the lease back. @param {number} id */
function revokedReason(id) {
  return Object.assign(new Error(`GPU lease ${LEASE_PREFIX}${id} was revoked: held past its holdMaxMs`), { code: 'GPU_LEASE_REVOKED' })
}

/** Why a lease's signal aborts: the arbiter closed. */
function closedReason() {
  return Object.assign(new Error('the GPU arbiter is closed'), { code: 'CLOSED' })
}

/** A granted lease. `release()` is idempotent; `signal` aborts when the lease is revoked or the arbiter closes. */
class Lease {
  #side
  #id
  /**
   * @param {ArbiterSide} side @param {number} id @param {string} gpuKey @param {string} taskType
   * @param {number} acquiredAt @param {number} queueWaitMs @param {number} holdMaxMs
   */
  constructor(side, id, gpuKey, taskType, acquiredAt, queueWaitMs, holdMaxMs) {
    this.#side = side
    this.#id = id
    this.status = /** @type {'ACQUIRED'} */ ('ACQUIRED')
    this.leaseId = side.leaseIdText(id)
    this.gpuKey = gpuKey
    this.taskType = taskType
    this.acquiredAt = acquiredAt
    this.holdMaxMs = holdMaxMs
    this.queueWaitMs = queueWaitMs
  }

  /** Gives the lease back; returns whether it was still held. */
  release() {
    return this.#side.release(this.#id)
  }

  /** Aborts when the hold watchdog revokes the lease or the arbiter closes. */
  get signal() {
    return this.#side.signalFor(this.#id)
  }
}

/** Sides with requests waiting: kept alive until each is settled (see `ArbiterSide#keepAlive`). */
const waitingSides = new Set()
/** Clears the pending timer of a side that was collected. */
const collectedTimers = new FinalizationRegistry((/** @type {{ timer: any }} */ holder) => {
  if (holder.timer !== null) timers.clearTimeout(holder.timer)
})

/**
 * The deadline timer's callback. Made out here: a closure made in the constructor would share its
 * context with the ones that use `this`, and so hold the side strongly after all.
 * @param {WeakRef<ArbiterSide>} side
 */
function weakCallback(side) {
  return () => side.deref()?.fire()
}

class ArbiterSide {
  /** @param {NativeArbiter} arbiter @param {ArbiterHandle} native */
  constructor(arbiter, native) {
    this.arbiter = arbiter
    this.native = native
    /** @type {Map<string, number>} task type -> the number it crosses as */
    this.taskTypes = new Map()
    // The last task type and lease seen: most calls repeat the one before (same string, so `===`
    // compares pointers), and skip the lookup.
    /** @type {unknown} */
    this.lastTaskType = NONE
    this.lastTaskNumber = -1
    /** @type {unknown} */
    this.lastLeaseId = NONE
    this.lastLeaseNumber = -1
    this.waiters = new WaiterTable()
    /** @type {Map<number, AbortController>} lease id -> controller, for leases whose signal was asked for */
    this.signals = new Map()
    /** @type {Set<number>} */
    this.revoked = new Set()
    /**
     * The deadline timer, in an object of its own: `collectedTimers` holds that object (not this
     * side) to clear the timer once this side is collected.
     * @type {{ timer: ReturnType<typeof timers.setTimeout> | null }}
     */
    this.pending = { timer: null }
    this.timerAt = -1
    this.timerKeepsAlive = false
    this.closed = false
    // The timer holds this side weakly: a lease watchdog's pending timer must not keep a dropped
    // arbiter alive (while requests wait, `waitingSides` keeps it). A collected side's timer is
    // cleared through `collectedTimers`.
    this.onTimer = weakCallback(new WeakRef(this))
    collectedTimers.register(this, this.pending)
    // The native side holds this function and the event listeners weakly (each reaches the
    // arbiter's JS object, so a strong native reference would keep the arbiter forever); the JS
    // half holds them for as long as the arbiter lives.
    this.notify = () => this.sync()
    /** @type {Set<{ listener: unknown }>} */
    this.listeners = new Set()
    this.mailbox = native.bindSide(this.notify)
    this.generation = -1
    /** @type {string[]} */
    this.gpuKeys = []
    /** The lease id's digits above the last three, and `lease-` with them (see `leaseIdText`). */
    this.idHigh = -1
    this.idHighText = ''
  }

  /**
   * `lease-<id>`, made without turning the whole id into a string: V8 keeps every number it
   * turns into a string in a cache that outlives the young generation, so each lease's digits
   * would be copied by the next scavenge. The digits above the last three change once per 1000
   * leases (ids only grow) and are kept; the last three come from a table.
   * @param {number} id
   */
  leaseIdText(id) {
    if (id < 1000) return LEASE_PREFIX + id
    const high = Math.floor(id / 1000)
    if (high !== this.idHigh) {
      this.idHigh = high
      this.idHighText = LEASE_PREFIX + high
    }
    return this.idHighText + LOW_DIGITS[id - high * 1000]
  }

  /** @param {number} index */
  gpuKey(index) {
    const generation = this.mailbox[Slot.ConfigGeneration]
    if (generation !== this.generation) {
      this.gpuKeys = this.arbiter.gpuKeys()
      this.generation = generation
    }
    return this.gpuKeys[index]
  }

  /** Settles what the last native call recorded, and keeps the timer at the next deadline. */
  sync() {
    const m = this.mailbox
    if (m[RECORD_COUNT] > 0) this.takeRecords()
    const next = m[Slot.NextDeadline]
    if (next >= 0 && (this.pending.timer === null || next < this.timerAt)) {
      this.arm(next, m[Slot.Now])
    } else if (m[Slot.Waiters] > 0 !== this.timerKeepsAlive) {
      this.keepAlive(!this.timerKeepsAlive)
      if (this.pending.timer === null) return
      if (this.timerKeepsAlive) this.pending.timer.ref()
      else this.pending.timer.unref()
    }
  }

  /** The deadline timer fired. */
  fire() {
    this.pending.timer = null
    this.timerAt = -1
    if (this.closed) return
    this.native.tick()
    this.sync()
  }

  /**
   * Whether waiting requests keep this arbiter (and Node) alive: a promise is owed to each, and
   * only the deadline timer can settle it once the app has dropped the arbiter.
   * @param {boolean} waiting
   */
  keepAlive(waiting) {
    this.timerKeepsAlive = waiting
    if (waiting) waitingSides.add(this)
    else waitingSides.delete(this)
  }

  /** @param {number} next @param {number} now */
  arm(next, now) {
    if (this.pending.timer !== null) timers.clearTimeout(this.pending.timer)
    // Capped: a later deadline is met by re-arming when this one fires.
    const delay = Math.min(Math.max(1, Math.ceil(next - now)), MAX_TIMER_MS)
    this.timerAt = now + delay
    this.pending.timer = timers.setTimeout(this.onTimer, delay)
    // Only waiting requests keep Node alive; a lease watchdog alone does not.
    this.keepAlive(this.mailbox[Slot.Waiters] > 0)
    if (!this.timerKeepsAlive) this.pending.timer.unref()
  }

  takeRecords() {
    const m = this.mailbox
    /** @type {number[]} */
    const revoked = []
    for (;;) {
      const count = m[RECORD_COUNT]
      m[RECORD_COUNT] = 0
      for (let i = 0; i < count; i++) {
        const at = RECORDS + i * RECORD_SIZE
        const kind = m[at + KIND]
        const id = m[at + ID]
        if (kind === Kind.Revoked) {
          revoked.push(id)
          continue
        }
        const waiter = this.waiters.take(id)
        if (waiter === undefined) continue
        if (waiter.signal !== null && waiter.onAbort !== null) waiter.signal.removeEventListener('abort', waiter.onAbort)
        waiter.resolve(kind === Kind.Acquired ? this.lease(at, waiter.taskType) : this.refusal(at))
      }
      if (m[Slot.MoreRecords] !== 1) break
      this.native.takeRecords()
    }
    // Last: abort listeners are user code, which may call back into the arbiter.
    for (const id of revoked) this.revoke(id)
  }

  /** @param {number} at @param {string} taskType */
  lease(at, taskType) {
    const m = this.mailbox
    const lease = new Lease(this, m[at + Field.Id], this.gpuKey(m[at + Field.Gpu]), taskType, m[at + Field.AcquiredAt], m[at + Field.QueueWaitMs], m[at + Field.HoldMaxMs])
    this.lastLeaseId = lease.leaseId
    this.lastLeaseNumber = m[at + Field.Id]
    return lease
  }

  /** The number `taskType` crosses as; its text once the arbiter keeps no more names. @param {unknown} taskType */
  taskTypeArg(taskType) {
    if (taskType === this.lastTaskType) return this.lastTaskNumber
    if (typeof taskType !== 'string') throw invalidArgument('request.taskType: expected a string')
    let number = this.taskTypes.get(taskType)
    if (number === undefined) {
      number = this.native.taskTypeNumber(taskType)
      if (number < 0) return taskType
      this.taskTypes.set(taskType, number)
    }
    this.lastTaskType = taskType
    this.lastTaskNumber = number
    return number
  }

  /** `lease-42` -> 42; anything else -> -1. @param {unknown} leaseId */
  leaseNumber(leaseId) {
    return leaseId === this.lastLeaseId ? this.lastLeaseNumber : leaseNumber(leaseId)
  }

  /** @param {number} at */
  refusal(at) {
    const m = this.mailbox
    return { status: STATUS[m[at + Field.Status]], reason: REASON[m[at + Field.Reason]] }
  }

  /** @param {number} id */
  revoke(id) {
    this.revoked.add(id)
    if (this.revoked.size > REMEMBERED_REVOCATIONS) this.revoked.delete(this.revoked.values().next().value ?? id)
    const controller = this.signals.get(id)
    if (controller === undefined) return
    this.signals.delete(id)
    controller.abort(revokedReason(id))
  }

  /** @param {number} id */
  signalFor(id) {
    const existing = this.signals.get(id)
    if (existing !== undefined) return existing.signal
    const controller = new AbortController()
    if (this.closed) {
      controller.abort(closedReason())
    } else if (this.revoked.has(id)) {
      controller.abort(revokedReason(id))
    } else if (this.native.leaseHeld(id)) {
      this.signals.set(id, controller)
    }
    // A lease already released keeps a signal that never aborts.
    return controller.signal
  }

  /** @param {number | unknown} id */
  release(id) {
    const released = this.native.releaseLease(id)
    if (released && this.signals.size !== 0) this.signals.delete(/** @type {number} */ (id))
    this.sync()
    return released
  }

  /**
   * Turns a native outcome into the promise `acquire` returns.
   * @param {number} kind @param {string} taskType @param {AbortSignal | null} signal
   */
  answer(kind, taskType, signal) {
    const at = Slot.Outcome
    if (kind === Kind.Acquired) {
      const lease = this.lease(at, taskType)
      this.sync()
      return Promise.resolve(lease)
    }
    if (kind === Kind.NotAcquired) {
      const refusal = this.refusal(at)
      this.sync()
      return Promise.resolve(refusal)
    }
    const id = this.mailbox[at + ID]
    // One shared executor, not a closure per request.
    const promise = new Promise(captureResolve)
    /** @type {Waiter} */
    const waiter = { id, resolve: capturedResolve, taskType, signal, onAbort: null }
    this.waiters.add(waiter)
    if (signal !== null) {
      waiter.onAbort = () => {
        if (this.closed) return
        this.native.cancelWaiter(id)
        this.sync()
      }
      signal.addEventListener('abort', waiter.onAbort, { once: true })
    }
    this.sync()
    return promise
  }

  /** After `close()`: no timer, and every lease's signal aborts. */
  shutdown() {
    this.closed = true
    if (this.pending.timer !== null) timers.clearTimeout(this.pending.timer)
    this.pending.timer = null
    this.timerAt = -1
    this.keepAlive(false)
    this.listeners.clear()
    const controllers = [...this.signals.values()]
    this.signals.clear()
    for (const c of controllers) c.abort(closedReason())
  }
}

/** @type {(value: unknown) => void} */
let capturedResolve = () => {}
/** @param {(value: unknown) => void} resolve */
function captureResolve(resolve) {
  capturedResolve = resolve
}

/** `lease-42` -> 42; anything else -> -1. Char codes: no substring on the release path. @param {unknown} leaseId */
function leaseNumber(leaseId) {
  if (typeof leaseId !== 'string' || leaseId.length <= LEASE_PREFIX.length || !leaseId.startsWith(LEASE_PREFIX)) return -1
  let n = 0
  for (let i = LEASE_PREFIX.length; i < leaseId.length; i++) {
    const digit = leaseId.charCodeAt(i) - 48
    if (digit < 0 || digit > 9) return -1
    n = n * 10 + digit
  }
  return Number.isSafeInteger(n) ? n : -1
}

/** A base class whose constructor returns the object it is given, so a subclass adds its private
 * fields to that object: fields only this module can read, and no one can list. */
class Stamp {
  /** @param {object} target */
  constructor(target) {
    return target
  }
}

/** An arbiter's side, in a private field of the arbiter itself. */
class SideSlot extends Stamp {
  #side
  /** @param {NativeArbiter} arbiter @param {ArbiterSide} side */
  constructor(arbiter, side) {
    super(arbiter)
    this.#side = side
  }

  /** @param {any} arbiter @returns {ArbiterSide} */
  static of(arbiter) {
    if (arbiter !== null && typeof arbiter === 'object' && #side in arbiter) return arbiter.#side
    throw invalidArgument('this: expected a GpuArbiter (made after gpu-sidecar was loaded)')
  }
}

/** Called by the native constructor with every new arbiter and its handle. @param {NativeArbiter} arbiter @param {ArbiterHandle} handle */
function register(arbiter, handle) {
  new SideSlot(arbiter, new ArbiterSide(arbiter, handle))
}

const sideOf = SideSlot.of

/** A `signal` must be an AbortSignal, or at least look like one (as p-queue accepts). @param {any} signal */
function checkSignal(signal) {
  if (signal instanceof AbortSignal) return
  if (typeof signal === 'object' && typeof signal.aborted === 'boolean' && typeof signal.addEventListener === 'function' && typeof signal.removeEventListener === 'function') return
  throw invalidArgument('request.signal: expected an AbortSignal')
}

/**
 * @this {NativeArbiter}
 * @param {any} request
 */
function acquire(request) {
  const side = sideOf(this)
  if (request === null || typeof request !== 'object') throw invalidArgument('request: expected an object with a taskType')
  /** @type {any} */
  let signal
  /** @type {boolean} */
  let plain
  try {
    signal = request.signal
    // The common request (task type and trace) crosses as two arguments; any other field sends
    // the whole request to be read by name.
    plain =
      request.gpuKey === undefined &&
      request.priority === undefined &&
      request.maxWaitMs === undefined &&
      request.holdMaxMs === undefined &&
      request.queueLimit === undefined &&
      request.busyPolicy === undefined &&
      request.vramMb === undefined
  } catch (e) {
    throw invalidArgument(`request: cannot be read: ${/** @type {Error} */ (e).message}`)
  }
  if (signal === undefined || signal === null) {
    signal = null
  } else {
    // Before anything is queued: a request that throws leaves no trace.
    checkSignal(signal)
    if (signal.aborted) {
      if (typeof request.taskType !== 'string') throw invalidArgument('request.taskType: expected a string')
      return Promise.resolve({ status: 'CANCELLED', reason: 'ABORTED' })
    }
  }
  const taskType = request.taskType
  if (plain) {
    const trace = request.trace
    // No trace, no argument: the native side then skips looking at one.
    if (trace === undefined) side.native.acquireTask(side.taskTypeArg(taskType))
    else side.native.acquireTask(side.taskTypeArg(taskType), trace)
  } else {
    side.native.acquireRequest(request)
  }
  return side.answer(side.mailbox[OUTCOME_KIND], taskType, signal)
}

/**
 * @this {NativeArbiter}
 * @param {unknown} leaseId
 */
function release(leaseId) {
  const side = sideOf(this)
  const id = side.leaseNumber(leaseId)
  // Not one of ours: the native side logs it and answers false.
  return side.release(id >= 0 ? id : leaseId)
}

/** Whether the arbiter arbitrates (`enabled`), read from the mailbox. @param {NativeArbiter} arbiter */
function isEnabled(arbiter) {
  return sideOf(arbiter).mailbox[Slot.Enabled] === 1
}

/** Defines the JS half's methods on the native classes, once per native module. */
function install() {
  // Not in the types: nobody else may bind, and the function is gone from the exports after this.
  const internal = /** @type {any} */ (native)
  internal.bindArbiterHalf(register)
  delete internal.bindArbiterHalf
  const nativeClose = native.GpuArbiter.prototype.close

  /** @this {NativeArbiter} */
  function close() {
    nativeClose.call(this)
    sideOf(this).shutdown()
  }


  const nativeOnEvent = native.GpuArbiter.prototype.onEvent

  /** @this {NativeArbiter} @param {any} listener */
  function onEvent(listener) {
    const side = sideOf(this)
    const unsubscribe = nativeOnEvent.call(this, listener)
    const held = { listener }
    side.listeners.add(held)
    return () => {
      side.listeners.delete(held)
      unsubscribe()
    }
  }

  for (const [name, value] of Object.entries({ acquire, release, close, onEvent })) {
    Object.defineProperty(native.GpuArbiter.prototype, name, { value, writable: true, configurable: true })
  }

  return { Lease, isEnabled, LEASE_PREFIX }
}

/** @type {any} the class: one object per native module, whichever copy of this file runs */
const installedOn = native.GpuArbiter
/** @type {ReturnType<typeof install>} */
const jsHalf = installedOn[INSTALLED] ?? (installedOn[INSTALLED] = install())
module.exports = jsHalf
