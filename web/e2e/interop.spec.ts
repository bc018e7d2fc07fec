/**
 * The two pilots on one account: the terminal `mana-todo` (the Rust client)
 * and the web app in Chromium share one list through the server.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';

import { Server, addTodo, checkPrerequisites, launchChromium, manaTodoCli, newDevice, openApp, screenshot, signIn, todo, todoList } from './harness.ts';

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

it('a todo added in the terminal appears in the browser, and the browser’s edits reach the terminal', async () => {
  const manaTodo = manaTodoCli(server, 'carol', data);
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
