// What users and their Jest suites actually get: the packed main package plus the prebuilt
// linux-x64-gnu platform package, installed into a fresh project offline, with no Rust around.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpSync, readdirSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { tempDir } from './support'

const root = resolve(__dirname, '..')
const run = (cmd: string, args: string[], cwd: string) =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false' } })

const onLinuxX64 = process.platform === 'linux' && process.arch === 'x64'

;(onLinuxX64 ? describe : describe.skip)('packed tarballs', () => {
  let project: string

  beforeAll(() => {
    const work = tempDir('gpu-sidecar-pack-')
    run('npm', ['pack', '--pack-destination', work], root)
    const platform = join(work, 'linux-x64-gnu')
    cpSync(join(root, 'npm', 'linux-x64-gnu'), platform, { recursive: true })
    cpSync(join(root, 'gpu-sidecar.linux-x64-gnu.node'), join(platform, 'gpu-sidecar.linux-x64-gnu.node'))
    run('npm', ['pack', '--pack-destination', work], platform)
    const tarballs = readdirSync(work).filter((f) => f.endsWith('.tgz')).map((f) => join(work, f))
    expect(tarballs).toHaveLength(2)

    project = join(work, 'consumer')
    cpSync(join(root, 'tests', 'fixtures', 'consumer'), project, { recursive: true })
    // Offline: nothing may be fetched; the other platforms' optional packages are simply skipped.
    run('npm', ['install', '--offline', '--no-save', ...tarballs], project)
  }, 120_000)

  test('the main tarball carries no binary and the platform tarball carries one', () => {
    const installed = readdirSync(join(project, 'node_modules', 'gpu-sidecar'))
    expect(installed.filter((f) => f.endsWith('.node'))).toEqual([])
    expect(readdirSync(join(project, 'node_modules', 'gpu-sidecar-linux-x64-gnu'))).toContain('gpu-sidecar.linux-x64-gnu.node')
  })

  test('require() works', () => {
    expect(run('node', ['require.cjs'], project).trim()).toBe('ACQUIRED gpu:0')
  })

  test('import from an ES module works, named exports included', () => {
    expect(run('node', ['import.mjs'], project).trim()).toBe('ACQUIRED function function')
  })

  test('a TypeScript file type-checks against the package', () => {
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          target: 'ES2022',
          module: 'commonjs',
          moduleResolution: 'node',
          typeRoots: [join(root, 'node_modules', '@types')],
          types: ['node'],
        },
        files: ['usage.ts'],
      }),
    )
    run('node', [tsc, '-p', 'tsconfig.json'], project)
    // And a misuse is caught by the types.
    writeFileSync(join(project, 'misuse.ts'), "import { GpuArbiter } from 'gpu-sidecar'\nnew GpuArbiter({ enabled: 'yes' })\n")
    const misuse = spawnSync('node', [tsc, '--noEmit', '--strict', '--types', 'node', '--typeRoots', join(root, 'node_modules', '@types'), 'misuse.ts'], {
      cwd: project,
      encoding: 'utf8',
    })
    expect(misuse.status).not.toBe(0)
    expect(misuse.stdout).toMatch(/misuse\.ts\(2,.*TS2322/)
  })
})
