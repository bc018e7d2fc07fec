/**
 * What the end-to-end tests run against: the real `mana-sync` binary (dev
 * mode, a temporary SQLite database, serving the built app) and Debian's
 * Chromium driven by playwright-core. Nothing here sleeps to wait: every
 * wait is for a condition, with a deadline.
 */

import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { type Browser, type BrowserContext, type Page, chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const MANA_SYNC = process.env.MANA_SYNC_BIN ?? join(ROOT, 'target/debug/mana-sync');
export const MANA_TODO = process.env.MANA_TODO_BIN ?? join(ROOT, 'target/debug/mana-todo');
export const WEB_DIR = process.env.WEB_DIR ?? join(ROOT, 'web/todo/dist');
export const ARTIFACTS = join(ROOT, 'web/e2e/artifacts');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const run = promisify(execFile);

/** Fails early, with the command that fixes it, when something the tests need is missing. */
export function checkPrerequisites(): void {
  const missing: string[] = [];
  if (!existsSync(MANA_SYNC)) missing.push(`${MANA_SYNC} (cargo build -p mana-sync -p mana-todo)`);
  if (!existsSync(join(WEB_DIR, 'index.html'))) missing.push(`${WEB_DIR}/index.html (make web)`);
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (apt-get install -y chromium)`);
  if (missing.length > 0) throw new Error(`the end-to-end tests need: ${missing.join('; ')}`);
  const built = statSync(join(WEB_DIR, 'index.html')).mtimeMs;
  const sources = [join(ROOT, 'web/todo/src'), join(ROOT, 'web/todo/index.html'), join(ROOT, 'web/todo/compat'), join(ROOT, 'web/local-store/src')];
  if (!process.env.WEB_DIR && sources.some((path) => newest(path) > built)) {
    throw new Error(`${WEB_DIR} is older than the app's sources: build it first (make web)`);
  }
}

/** The newest modification time under `path`. */
function newest(path: string): number {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(stat.mtimeMs, ...readdirSync(path).map((name) => newest(join(path, name))));
}

/** Resolves when `predicate` holds for a line of `lines`, or rejects after `ms`. */
function waitForLine(lines: AsyncIterable<string>, predicate: (line: string) => string | undefined, ms: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    (async () => {
      for await (const line of lines) {
        const found = predicate(line);
        if (found !== undefined) {
          clearTimeout(timer);
          resolve(found);
          return;
        }
      }
      clearTimeout(timer);
      reject(new Error(`the process ended before ${what}`));
    })().catch(reject);
  });
}

/** A running `mana-sync serve` in dev mode on a temporary SQLite database. */
export class Server {
  private child: ChildProcess | undefined;
  private readonly log: string[] = [];
  url = '';
  port = 0;

  private constructor(
    readonly dir: string,
    private readonly settings: Record<string, string>,
  ) {}

  /** Starts a server on a free port, on a fresh database, with extra settings (`COMPACTION_THRESHOLD`, …). */
  static async start(settings: Record<string, string> = {}): Promise<Server> {
    const server = new Server(mkdtempSync(join(tmpdir(), 'mana-e2e-')), settings);
    await server.spawn(0);
    return server;
  }

  get databaseUrl(): string {
    return `sqlite://${join(this.dir, 'sync.db')}`;
  }

  private env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    // No JWT_SECRET/JWKS_URL: dev mode, whatever the caller's environment says.
    return { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? this.dir, DATABASE_URL: this.databaseUrl, RUST_LOG: 'info', ...extra };
  }

  private async spawn(port: number): Promise<void> {
    const child = spawn(MANA_SYNC, ['serve'], {
      cwd: this.dir,
      env: this.env({ PORT: String(port), HOST: '127.0.0.1', WEB_DIR, ...this.settings }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    createInterface({ input: child.stderr! }).on('line', (line) => this.log.push(line));
    const url = await waitForLine(
      createInterface({ input: child.stdout! }),
      (line) => line.match(/^mana-sync listening on (http:\/\/\S+)$/)?.[1],
      30_000,
      'mana-sync to listen',
    ).catch((error: Error) => {
      throw new Error(`${error.message}\n${this.log.join('\n')}`);
    });
    this.url = url;
    this.port = Number(new URL(url).port);
  }

  /** Stops the server (SIGTERM) and waits until it exited. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    this.child = undefined;
  }

  /** Starts the server again on the same port and database. */
  async restart(): Promise<void> {
    await this.stop();
    await this.spawn(this.port);
  }

  /** A dev-mode token for `user`, minted by `mana-sync token` from the server's database. */
  async token(user: string): Promise<string> {
    const { stdout } = await run(MANA_SYNC, ['token', '--user', user], { env: this.env() });
    return stdout.trim();
  }

  /**
   * Runs `mana-sync compact --user USER` against the running server's SQLite
   * file, keeping deleted records `retentionDays` (0: drops them all).
   * Returns what it printed.
   */
  async compact(user: string, retentionDays: number): Promise<{ folded: number; dropped: number }> {
    const { stdout } = await run(MANA_SYNC, ['compact', '--user', user], { env: this.env({ TOMBSTONE_RETENTION_DAYS: String(retentionDays) }) });
    const count = (label: string) => Number(new RegExp(`${label} (\\d+)`).exec(stdout)?.[1] ?? NaN);
    return { folded: count('changes folded'), dropped: count('changes dropped') };
  }

  /** `GET /health`. */
  async health(): Promise<{ connections: { streams: number; sockets: number } }> {
    const response = await fetch(`${this.url}/health`);
    return (await response.json()) as { connections: { streams: number; sockets: number } };
  }

  logs(): string {
    return this.log.join('\n');
  }

  /** Stops the server and removes its database. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * `mana-todo --data DIR ARGS…` for `user` on `server`, as a terminal user
 * would run it (the Rust client's Todo pilot, on the same app and collection).
 */
export function manaTodoCli(server: Server, user: string, data: string): (...args: string[]) => Promise<string> {
  return async (...args) => {
    const env = { PATH: process.env.PATH ?? '', HOME: data, MANA_SYNC_SERVER: server.url, MANA_SYNC_TOKEN: await server.token(user) };
    const { stdout } = await run(MANA_TODO, ['--data', data, ...args], { env });
    return stdout.trim();
  };
}

/** Debian's Chromium, headless, on this closed network. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

declare global {
  interface Window {
    cspViolations?: string[];
  }
}

/** A fresh browser profile (one device), recording Content-Security-Policy violations. */
export async function newDevice(browser: Browser): Promise<BrowserContext> {
  const context = await browser.newContext({ viewport: { width: 900, height: 720 }, deviceScaleFactor: 1 });
  // Fail a step within the test's time, naming the step.
  context.setDefaultTimeout(10_000);
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      (window.cspViolations ??= []).push(`${event.violatedDirective} ${event.blockedURI}`);
    });
  });
  return context;
}

/** Opens the app (or its compat mode, `/compat/`) in a new tab of `context` and waits until it shows its sync state. */
export async function openApp(context: BrowserContext, server: Server, path = '/'): Promise<Page> {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`page error: ${error.message}`));
  await page.goto(`${server.url}${path}`);
  await page.getByTestId('sync-indicator').waitFor();
  return page;
}

/** Waits until the sync indicator says `state`. */
export async function expectIndicator(page: Page, state: string, timeout = 15_000): Promise<void> {
  try {
    await page.waitForFunction(
      (expected) => document.querySelector('[data-testid="sync-indicator"]')?.textContent?.trim() === expected,
      state,
      { timeout },
    );
  } catch (error) {
    const shown = await page.getByTestId('sync-indicator').textContent().catch(() => '?');
    const title = await page.getByTestId('sync-indicator').getAttribute('title').catch(() => '?');
    throw new Error(`the sync indicator says "${shown}" (${title}), not "${state}" after ${timeout} ms`, { cause: error });
  }
}

/** Closes the welcome modal if it is open. */
export async function dismissWelcome(page: Page): Promise<void> {
  // The app has read the account once the pill (or the account's name) shows;
  // the welcome modal, if any, renders in the same update.
  await page.locator('[data-testid="login-pill"], [data-testid="account"]').first().waitFor();
  const welcome = page.getByTestId('guest-welcome');
  if (await welcome.isVisible()) {
    await page.getByTestId('guest-welcome-close').click();
    await welcome.waitFor({ state: 'detached' });
  }
}

/** Signs in with the dev-mode form and waits until synced. */
export async function signIn(page: Page, user: string): Promise<void> {
  // A tab behind another gets few animation frames, and clicks wait for them.
  await page.bringToFront();
  await dismissWelcome(page);
  await page.getByTestId('login-pill').click();
  await page.getByTestId('login-name').fill(user);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('login-pill').waitFor({ state: 'detached' });
  await expectIndicator(page, 'synced');
}

/** Two devices (browser profiles) with the app open, signed in as `users` (the same name twice: two devices of one person). */
export async function signedInDevices(
  browser: Browser,
  server: Server,
  users: [string, string],
): Promise<{ contexts: [BrowserContext, BrowserContext]; pages: [Page, Page] }> {
  const contexts: [BrowserContext, BrowserContext] = [await newDevice(browser), await newDevice(browser)];
  const pages: [Page, Page] = [await openApp(contexts[0], server), await openApp(contexts[1], server)];
  await signIn(pages[0], users[0]);
  await signIn(pages[1], users[1]);
  return { contexts, pages };
}

/** Adds a todo through the input (Enter adds). */
export async function addTodo(page: Page, title: string): Promise<void> {
  await page.getByTestId('new-todo').fill(title);
  await page.getByTestId('new-todo').press('Enter');
}

/** The todo with this title. */
export function todo(page: Page, title: string) {
  return page.getByTestId('todo-item').filter({ has: page.getByTestId('todo-title').getByText(title, { exact: true }) });
}

/** Every todo as `title` or `title ✓`, in the list's order. */
export async function todoList(page: Page): Promise<string[]> {
  return page.getByTestId('todo-item').evaluateAll((items) =>
    items.map((item) => {
      const title = item.querySelector('[data-testid="todo-title"]')?.textContent?.trim() ?? '';
      const done = (item.querySelector('[data-testid="todo-toggle"]') as HTMLInputElement | null)?.checked;
      return done ? `${title} ✓` : title;
    }),
  );
}

/** Waits until two pages show the same list; returns it. */
export async function converged(a: Page, b: Page, timeout = 15_000): Promise<string[]> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const [x, y] = [await todoList(a), await todoList(b)];
    if (JSON.stringify(x) === JSON.stringify(y)) return x;
    if (Date.now() > deadline) throw new Error(`the lists did not converge within ${timeout} ms:\n${JSON.stringify(x)}\n${JSON.stringify(y)}`);
    // Wait for the next change of either list rather than polling on a timer.
    await Promise.race([listChanged(a, x), listChanged(b, y)]);
  }
}

/** Resolves when the page's list differs from `from` (or after a second, to look again). */
async function listChanged(page: Page, from: string[]): Promise<void> {
  await page
    .waitForFunction(
      (before) =>
        JSON.stringify(
          [...document.querySelectorAll('[data-testid="todo-item"]')].map((item) => {
            const title = item.querySelector('[data-testid="todo-title"]')?.textContent?.trim() ?? '';
            return (item.querySelector('[data-testid="todo-toggle"]') as HTMLInputElement | null)?.checked ? `${title} ✓` : title;
          }),
        ) !== before,
      JSON.stringify(from),
      { timeout: 1000 },
    )
    .catch(() => {});
}

/** Saves a screenshot under web/e2e/artifacts/. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  // No hover effects from the last click in the picture.
  await page.mouse.move(1, page.viewportSize()?.height ? page.viewportSize()!.height - 1 : 700);
  await page.screenshot({ path });
  return path;
}

/** Content-Security-Policy violations the page reported. */
export function cspViolations(page: Page): Promise<string[]> {
  return page.evaluate(() => window.cspViolations ?? []);
}
