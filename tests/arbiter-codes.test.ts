// The arbiter's status and reason names live in the Rust core (arbiter::types). JS gets them at
// run time from arbiterCodeNames(); their TypeScript unions (GpuLeaseStatus, GpuLeaseReason) are
// generated from the same enums' serde names (a Rust test holds the two equal). These tests hold
// the run-time names, the generated unions and the types built on them together.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import * as sidecar from '../gpu-sidecar'
import type { GpuLeaseError, GpuLeaseNotAcquired, GpuLeaseReason, GpuLeaseStatus } from '../gpu-sidecar'

const { statuses, reasons } = (sidecar as unknown as { arbiterCodeNames(): { statuses: string[]; reasons: string[] } }).arbiterCodeNames()
const generated = readFileSync(join(__dirname, '../src/binding/events.d.ts'), 'utf8')
const refusals = statuses.filter((s) => s !== 'ACQUIRED')

/** The string literals of `export type name = ...` in the generated events.d.ts. */
function union(name: string): string[] {
  const line = generated.match(new RegExp(`export type ${name} = ([^\\n]*)`))?.[1] ?? ''
  return [...line.matchAll(/"([A-Z_]+)"/g)].map((m) => m[1])
}

// Compile-time checks: ts-jest fails this file when the declared types drift apart.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
const refusedIsEveryStatusButAcquired: Equal<GpuLeaseNotAcquired['status'] | 'ACQUIRED', GpuLeaseStatus> = true
const reasonIsGenerated: Equal<GpuLeaseNotAcquired['reason'], GpuLeaseReason> = true
const errorCodeFollowsStatus: Equal<GpuLeaseError['code'], `GPU_LEASE_${Exclude<GpuLeaseStatus, 'ACQUIRED'>}`> = true

test('the generated GpuLeaseStatus and GpuLeaseReason unions list the names JS gets at run time', () => {
  expect(union('GpuLeaseStatus').sort()).toEqual([...statuses].sort())
  expect(union('GpuLeaseReason').sort()).toEqual([...reasons].sort())
  expect([refusedIsEveryStatusButAcquired, reasonIsGenerated, errorCodeFollowsStatus]).toEqual([true, true, true])
})

test('GpuLeaseError has a message and the code GPU_LEASE_<status> for every status but ACQUIRED, and refuses others', () => {
  for (const status of refusals) {
    const error = new sidecar.GpuLeaseError({ status, reason: reasons[0] } as GpuLeaseNotAcquired, 'ASR')
    expect(error.code).toBe(`GPU_LEASE_${status}`)
    expect(error.message).toContain('ASR')
  }
  expect(() => new sidecar.GpuLeaseError({ status: 'ACQUIRED', reason: 'x' } as never, 'ASR')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
})
