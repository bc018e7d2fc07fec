/**
 * The two pilots on one account: the terminal `mana-todo` (the Rust client)
 * and the web app in Chromium share one list through the server.
 */

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';

import { MANA_TODO, Server, addTodo, checkPrerequisites, launchChromium, newDevice, openApp, screenshot, signIn, todo, todoList } from './harness.ts';

const run = promisify(execFile);

let server: Server;
let browser: Browser;
let data: string;

beforeAll(async () => {
  checkPrerequisites();
  server = await Server.start();
  browser = await launchChromium();
  data = mkdtempSync(join(tmpdir(), 'mana-todo-'));
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
  rmSync(data, { recursive: true, force: true });
});

/** Runs `mana-todo --data DIR ARGS…` as a terminal user would. */
async function manaTodo(...args: string[]): Promise<string> {
  const env = { PATH: process.env.PATH ?? '', HOME: data, MANA_SYNC_SERVER: server.url, MANA_SYNC_TOKEN: await server.token('carol') };
  const { stdout } = await run(MANA_TODO, ['--data', data, ...args], { env });
  return stdout.trim();
}

it('a todo added in the terminal appears in the browser, and the browser’s edits reach the terminal', async () => {
  const context = await newDevice(browser);
  const page = await openApp(context, server);
  await signIn(page, 'carol');

  // The terminal: a guest store with mana-todo's own onboarding todos, and one more.
  const id = await manaTodo('add', 'Added in the terminal');
  await manaTodo('sync');
  await todo(page, 'Added in the terminal').waitFor({ timeout: 2000 });

  // The browser edits it and adds one; the terminal syncs and sees both.
  await todo(page, 'Added in the terminal').getByTestId('todo-toggle').check();
  await addTodo(page, 'Added in the browser');
  await todo(page, 'Added in the browser').waitFor();
  await page.waitForFunction(() => (globalThis as unknown as { manaTodo: { store: { db: { outbox: { count(): Promise<number> } } } } }).manaTodo.store.db.outbox.count().then((n) => n === 0));
  await manaTodo('sync');
  const list = JSON.parse(await manaTodo('list', '--json')) as { id: string; title: string; done: boolean }[];
  expect(list.find((t) => t.id === id)).toMatchObject({ title: 'Added in the terminal', done: true });
  expect(list.map((t) => t.title)).toContain('Added in the browser');

  // Both show the same list, in the same order (by createdAt, then id).
  const terminal = list.map((t) => (t.done ? `${t.title} ✓` : t.title));
  await expect.poll(() => todoList(page)).toEqual(terminal);
  await screenshot(page, 'interop');
  await context.close();
});
