/**
 * `@mana-sync/local-store` installed the way an app outside this repository
 * gets it: `npm pack` of `web/local-store` (which builds it), a fresh project
 * in a temporary directory outside the workspace that installs the tarball
 * and its peer from the registry (the npm cache first), and that project's
 * own test (`package-consumer/`): a strict type-check against the shipped
 * declarations, the package README's Svelte integration type-checked and
 * compiled, then two devices syncing through the real server, in plain Node
 * and through a Svelte live query compiled by the consumer's Svelte plugin.
 */

import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT, Server } from './harness.ts';

const run = promisify(execFile);
const PACKAGE = join(ROOT, 'web/local-store');
const CONSUMER = join(ROOT, 'web/e2e/package-consumer');

/** The version the workspace's lockfile installs of `name`, so that the scratch project finds it in the npm cache. */
function locked(name: string): string {
  const lock = JSON.parse(readFileSync(join(ROOT, 'web/package-lock.json'), 'utf8')) as { packages: Record<string, { version?: string }> };
  const version = lock.packages[`node_modules/${name}`]?.version;
  if (!version) throw new Error(`${name} is not in web/package-lock.json`);
  return version;
}

/**
 * This environment without what `npm run` put there (`npm_config_local_prefix`
 * would make the workspace the scratch project's root). The user's own
 * `NPM_CONFIG_*` settings (a registry mirror, say) stay.
 */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('npm_') && key !== 'INIT_CWD'));
  return { ...env, ...extra };
}

/** Runs a command; on failure the error carries its whole output. */
async function sh(cwd: string, command: string, args: string[], env: NodeJS.ProcessEnv = cleanEnv()): Promise<string> {
  try {
    const { stdout } = await run(command, args, { cwd, env, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`\`${command} ${args.join(' ')}\` in ${cwd} failed:\n${stdout ?? ''}\n${stderr ?? ''}`, { cause: error });
  }
}

interface Packed {
  filename: string;
  files: { path: string }[];
}

describe('the packed package in a project outside the workspace', () => {
  let server: Server;
  let scratch: string;
  let packed: Packed;

  beforeAll(async () => {
    server = await Server.start();
    // realpath: /tmp may be a symlink; the paths compared below are real ones.
    scratch = realpathSync(mkdtempSync(join(tmpdir(), 'mana-package-')));
    // `prepack` builds dist/; its output goes to stderr, the JSON to stdout.
    [packed] = JSON.parse(await sh(PACKAGE, 'npm', ['pack', '--json', '--pack-destination', scratch])) as [Packed];
    cpSync(CONSUMER, scratch, { recursive: true });
    const manifest = {
      name: 'mana-sync-package-consumer',
      private: true,
      type: 'module',
      scripts: {
        test: 'tsc -p . && svelte-check --tsconfig ./tsconfig.app.json --fail-on-warnings && vite build && node --import fake-indexeddb/auto --test out/core.test.js dist/live.test.js',
      },
      dependencies: { '@mana-sync/local-store': `file:./${packed.filename}`, svelte: locked('svelte') },
      devDependencies: Object.fromEntries(
        ['@sveltejs/vite-plugin-svelte', '@types/node', 'fake-indexeddb', 'svelte-check', 'typescript', 'vite'].map((name) => [name, locked(name)]),
      ),
    };
    writeFileSync(join(scratch, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    await sh(scratch, 'npm', ['install', '--prefer-offline', '--no-audit', '--no-fund']);
  }, 300_000);

  afterAll(async () => {
    await server?.dispose();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('ships the built modules, their declarations and the README, and no tests', () => {
    const files = packed.files.map((file) => file.path);
    for (const file of ['package.json', 'README.md', 'dist/index.js', 'dist/index.d.ts', 'dist/svelte.svelte.js', 'dist/svelte.svelte.d.ts', 'dist/compat/index.js', 'dist/compat/index.d.ts', 'dist/compat/svelte.svelte.js']) {
      expect(files).toContain(file);
    }
    expect(files.filter((file) => /^(test|node_modules)\/|tsconfig|vitest/.test(file))).toEqual([]);
  });

  it('is installed from the tarball, outside the workspace', async () => {
    expect(relative(ROOT, scratch).startsWith('..')).toBe(true);
    const resolved = await sh(scratch, 'node', ['--input-type=module', '-e', "console.log(import.meta.resolve('@mana-sync/local-store'))"]);
    expect(new URL(resolved.trim()).pathname).toBe(join(scratch, 'node_modules/@mana-sync/local-store/dist/index.js'));
  });

  it('type-checks strictly in the project, and syncs two devices through the server in its test', async () => {
    const output = await sh(scratch, 'npm', ['test'], cleanEnv({ MANA_SYNC_URL: server.url, MANA_SYNC_TOKEN: await server.token('alice') }));
    // node --test's summary: both tests ran and passed.
    expect(output).toMatch(/^# pass 2$/m);
    expect(output).toMatch(/^# fail 0$/m);
  }, 300_000);
});
