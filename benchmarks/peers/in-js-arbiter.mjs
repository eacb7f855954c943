// A peer for the arbiter benchmark: an in-JS lease arbiter built the way seed 003 describes the
// orchestrator's (gpu-arbiter.ts): leases in a Map, a priority queue kept sorted in an array, one
// setTimeout per waiter for maxWaitMs and one per lease for the holdMaxMs watchdog, wait and hold
// histories for its snapshot. Written from that description for this comparison; not its code.

export class InJsArbiter {
  constructor({ queueLimit = 8, maxWaitMs = 60_000, holdMaxMs = 60_000 } = {}) {
    this.queueLimit = queueLimit
    this.maxWaitMs = maxWaitMs
    this.holdMaxMs = holdMaxMs
    this.leases = new Map()
    this.queue = []
    this.nextId = 1
    this.metrics = { acquireTotal: { ACQUIRED: 0, SKIPPED: 0, FALLBACK_CPU: 0 }, queueWaitMs: [], holdMs: [], timeoutsTotal: 0 }
  }

  acquire({ taskType, priority = 50 }) {
    const requestedAt = Date.now()
    if (this.leases.size === 0) return Promise.resolve(this.grant(taskType, requestedAt))
    if (this.queue.length >= this.queueLimit) {
      this.metrics.acquireTotal.SKIPPED++
      return Promise.resolve({ status: 'SKIPPED', reason: 'QUEUE_FULL' })
    }
    return new Promise((resolve) => {
      const waiter = { taskType, priority, requestedAt, resolve, timer: null }
      waiter.timer = setTimeout(() => {
        this.queue.splice(this.queue.indexOf(waiter), 1)
        this.metrics.timeoutsTotal++
        resolve({ status: 'SKIPPED', reason: 'TIMEOUT' })
      }, this.maxWaitMs)
      let at = this.queue.findIndex((w) => w.priority < priority)
      if (at < 0) at = this.queue.length
      this.queue.splice(at, 0, waiter)
    })
  }

  grant(taskType, requestedAt) {
    const leaseId = `lease-${this.nextId++}`
    const acquiredAt = Date.now()
    const watchdog = setTimeout(() => console.warn(`lease ${leaseId} held past holdMaxMs`), this.holdMaxMs)
    this.leases.set(leaseId, { taskType, acquiredAt, watchdog })
    this.metrics.acquireTotal.ACQUIRED++
    pushBounded(this.metrics.queueWaitMs, acquiredAt - requestedAt)
    return { status: 'ACQUIRED', leaseId, gpuKey: 'gpu:0', acquiredAt, queueWaitMs: acquiredAt - requestedAt }
  }

  release(leaseId) {
    const lease = this.leases.get(leaseId)
    if (!lease) return
    clearTimeout(lease.watchdog)
    this.leases.delete(leaseId)
    pushBounded(this.metrics.holdMs, Date.now() - lease.acquiredAt)
    const next = this.queue.shift()
    if (next) {
      clearTimeout(next.timer)
      next.resolve(this.grant(next.taskType, next.requestedAt))
    }
  }

  close() {
    for (const w of this.queue.splice(0)) clearTimeout(w.timer)
    for (const l of this.leases.values()) clearTimeout(l.watchdog)
    this.leases.clear()
  }
}

function pushBounded(list, value) {
  list.push(value)
  if (list.length > 100) list.shift()
}
