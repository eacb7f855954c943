// What users and their Jest suites actually get: the packed main package plus the prebuilt
// linux-x64-gnu platform package, installed into a fresh project offline, with no Rust around.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpSync, existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
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

  test('a ts-jest suite in the consumer project runs against the package and leaves no open handles', () => {
    cpSync(join(root, 'examples', 'node-recording.jsonl'), join(project, 'jest-suite', 'recording.jsonl'))
    const jest = spawnSync(process.execPath, [join(root, 'node_modules', 'jest', 'bin', 'jest.js'), '--ci', '--detectOpenHandles', '--config', 'jest.config.js'], {
      cwd: project,
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, GPU_SIDECAR_DEV_MODULES: join(root, 'node_modules') },
    })
    expect(jest.stderr).toMatch(/Tests: +2 passed, 2 total/)
    expect(jest.stderr).not.toMatch(/open handle/i)
    expect(jest.status).toBe(0)
  }, 120_000)

  test('the gpu-sidecar command is installed with the package, and the config schema ships in it', () => {
    const bin = join(project, 'node_modules', '.bin', 'gpu-sidecar')
    const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version
    expect(run(bin, ['--version'], project).trim()).toBe(version)
    const doctor = spawnSync(bin, ['doctor', '--json', '--replay', join(root, 'examples', 'node-recording.jsonl')], { cwd: project, encoding: 'utf8' })
    expect(doctor.status).toBe(0)
    expect(JSON.parse(doctor.stdout).gpus).toHaveLength(2)
    expect(existsSync(join(project, 'node_modules', 'gpu-sidecar', 'src', 'config', 'node-config.schema.json'))).toBe(true)
  })
})
