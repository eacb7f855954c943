/** @type {import('jest').Config} */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  // The consumer project's own suite runs inside its packed install (tests/package.test.ts).
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/tests/fixtures/'],
  testTimeout: 60000,
}
