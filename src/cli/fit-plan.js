// @ts-check
// The fit plan `gpu-sidecar doctor --config` prints: per GPU, whether the configured services'
// memory fits together, only when loaded one at a time, only by evicting what else holds the GPU,
// or not at all; and for the host, whether the services' host memory fits beside each other.
// What each service needs and the headroom defaults come from the core (`fitNeeds`), the same
// rules the supervisor's VRAM and host-memory gates apply; this file only judges and explains.

const { fitNeeds } = require('../../gpu-sidecar.js')

/** @typedef {import('../../index').ExpandedServicesConfig} ServicesConfig */
/** @typedef {import('../../index').TelemetrySample} TelemetrySample */

/**
 * @typedef {{ name: string, needMb: number | null, peakMb: number | null, source: 'vramMb' | 'learned' | 'vramMb+learned' | 'unknown' }} ServiceNeed
 * @typedef {'together' | 'sequence' | 'eviction' | 'no-fit' | 'unknown'} FitVerdict
 * @typedef {{
 *   gpuKey: string, services: ServiceNeed[], sumMb: number, sumPeakMb: number, headroomMb: number,
 *   totalMb: number | null, freeMb: number | null, ownMb: number, verdict: FitVerdict, explanation: string,
 * }} GpuFit
 * @typedef {{ name: string, needMb: number | null, source: 'hostMemMb' | 'learned' | 'unknown' }} HostNeed
 * @typedef {'together' | 'wait' | 'no-fit' | 'unknown'} HostVerdict
 * @typedef {{
 *   services: HostNeed[], sumMb: number, headroomMb: number, totalMb: number | null, availableMb: number | null,
 *   verdict: HostVerdict, explanation: string,
 * }} HostFit
 */

/**
 * @param {ServicesConfig} services the validated `services` section
 * @param {Record<string, { peakVramMb?: number }>} learned per service, from the state file
 * @param {TelemetrySample | null} sample the GPU figures to plan against
 * @returns {GpuFit[]}
 */
function fitPlan(services, learned, sample) {
  const core = fitNeeds(services, learned)
  const headroomMb = core.vramHeadroomMb
  /** @type {Map<string, ServiceNeed[]>} */
  const byGpu = new Map()
  for (const [i, s] of (services.services ?? []).entries()) {
    if (!s.gpu) continue
    const configured = s.gpu.vramMb ?? null
    const peak = learned[s.name]?.peakVramMb ?? null
    /** @type {ServiceNeed} */
    const need = {
      name: s.name,
      // What the VRAM gate waits for (the core's rule).
      needMb: core.services[i].vramNeedMb,
      peakMb: configured === null ? peak : Math.max(configured, peak ?? 0),
      source: configured !== null ? (peak !== null ? 'vramMb+learned' : 'vramMb') : peak !== null ? 'learned' : 'unknown',
    }
    byGpu.set(s.gpu.key, [...(byGpu.get(s.gpu.key) ?? []), need])
  }
  return [...byGpu].map(([gpuKey, needs]) => judge(gpuKey, needs, headroomMb, sample?.gpus.find((g) => g.key === gpuKey) ?? null, sample))
}

/**
 * @param {string} gpuKey @param {ServiceNeed[]} needs @param {number} headroomMb
 * @param {TelemetrySample['gpus'][number] | null} gpu @param {TelemetrySample | null} sample
 * @returns {GpuFit}
 */
function judge(gpuKey, needs, headroomMb, gpu, sample) {
  const sumMb = needs.reduce((s, n) => s + (n.needMb ?? 0), 0)
  const sumPeakMb = needs.reduce((s, n) => s + (n.peakMb ?? 0), 0)
  // Loaded one at a time, only the service loading is at its peak; the others sit at their need.
  const sequentialPeakMb = Math.max(0, ...needs.map((n) => sumMb - (n.needMb ?? 0) + (n.peakMb ?? 0)))
  const totalMb = gpu?.totalMb ?? null
  // Memory our own services already hold (doctor run beside a running node) is theirs to use.
  const ownMb = gpu ? gpu.processes.filter((p) => needs.some((n) => n.name === p.service)).reduce((s, p) => s + (p.usedMb ?? 0), 0) : 0
  const freeMb = gpu?.freeMb === null || gpu?.freeMb === undefined ? null : gpu.freeMb + ownMb
  const base = { gpuKey, services: needs, sumMb, sumPeakMb, headroomMb, totalMb, freeMb, ownMb }
  const unknown = needs.filter((n) => n.needMb === null).map((n) => n.name)
  if (unknown.length) {
    return { ...base, verdict: 'unknown', explanation: `no vramMb and nothing learned for ${unknown.join(', ')}: the VRAM gate is off for them` }
  }
  if (!gpu || totalMb === null || freeMb === null) {
    const why = !sample ? 'no telemetry sample' : !sample.nvml.available ? `NVML unavailable (${sample.nvml.reason ?? 'unknown'})` : `no GPU ${gpuKey}`
    return { ...base, verdict: 'unknown', explanation: `${why}: cannot compare ${sumMb} MiB with the GPU's memory` }
  }
  const mb = (/** @type {number} */ v) => `${Math.round(v)} MiB`
  const free = ownMb ? `${mb(freeMb)} free (with the ${mb(ownMb)} these services hold now)` : `${mb(freeMb)} free`
  if (sumPeakMb + headroomMb <= freeMb) {
    return { ...base, verdict: 'together', explanation: `${mb(sumPeakMb)} + ${mb(headroomMb)} headroom fits in ${free}, even with every service loading at once` }
  }
  if (sequentialPeakMb + headroomMb <= freeMb) {
    return { ...base, verdict: 'sequence', explanation: `fits in ${free} only when loaded one at a time (peak ${mb(sequentialPeakMb)}, all at once ${mb(sumPeakMb)}): keep maxConcurrentStarts at 1` }
  }
  if (sequentialPeakMb + headroomMb <= totalMb) {
    return { ...base, verdict: 'eviction', explanation: `${mb(sequentialPeakMb + headroomMb)} needed, ${free} of ${mb(totalMb)}: fits only if other processes on ${gpuKey} give up ${mb(sequentialPeakMb + headroomMb - freeMb)}` }
  }
  return { ...base, verdict: 'no-fit', explanation: `${mb(sequentialPeakMb + headroomMb)} needed but ${gpuKey} has ${mb(totalMb)} in total` }
}

/**
 * Host memory: every service's `hostMemMb`, else its learned peak RSS, all resident at once (a
 * loaded service keeps its memory), plus `hostMemHeadroomMb`, against the host's available and
 * total memory.
 * @param {ServicesConfig} services the validated `services` section
 * @param {Record<string, { peakRssMb?: number }>} learned per service, from the state file
 * @param {TelemetrySample | null} sample the host figures to plan against
 * @returns {HostFit}
 */
function hostFit(services, learned, sample) {
  const core = fitNeeds(services, learned)
  const headroomMb = core.hostMemHeadroomMb
  /** @type {HostNeed[]} */
  const needs = (services.services ?? []).map((s, i) => {
    const configured = s.hostMemMb ?? null
    const needMb = core.services[i].hostNeedMb
    return { name: s.name, needMb, source: configured !== null ? 'hostMemMb' : needMb !== null ? 'learned' : 'unknown' }
  })
  const sumMb = needs.reduce((s, n) => s + (n.needMb ?? 0), 0)
  const totalMb = sample?.host.totalMb ?? null
  const availableMb = sample?.host.availableMb ?? null
  const base = { services: needs, sumMb, headroomMb, totalMb, availableMb }
  const unknown = needs.filter((n) => n.needMb === null).map((n) => n.name)
  if (unknown.length) {
    return { ...base, verdict: 'unknown', explanation: `no hostMemMb and no peak RSS learned for ${unknown.join(', ')}: their starts wait only for swapping to stop` }
  }
  if (totalMb === null || availableMb === null) {
    return { ...base, verdict: 'unknown', explanation: `no host figures: cannot compare ${sumMb} MiB with the host's memory` }
  }
  const mb = (/** @type {number} */ v) => `${Math.round(v)} MiB`
  const needed = sumMb + headroomMb
  if (needed <= availableMb) {
    return { ...base, verdict: 'together', explanation: `${mb(sumMb)} + ${mb(headroomMb)} headroom fits in the ${mb(availableMb)} available` }
  }
  if (needed <= totalMb) {
    return { ...base, verdict: 'wait', explanation: `${mb(needed)} needed, ${mb(availableMb)} available of ${mb(totalMb)}: the last starts wait for memory (HOST_MEMORY_LOW after hostMemTimeoutMs) unless other processes give up ${mb(needed - availableMb)}` }
  }
  return { ...base, verdict: 'no-fit', explanation: `${mb(needed)} needed but the host has ${mb(totalMb)} in total` }
}

module.exports = { fitPlan, hostFit }
