/**
 * The Todo app's compat mode (`/compat/`), written only against the seed
 * package's API (`@mana-sync/local-store/compat`): two devices of one user,
 * offline edits across a reload, the native Todo app and `mana-todo` on the
 * same list, and a browser upgraded from the seed package's database.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  Server,
  addTodo,
  checkPrerequisites,
  converged,
  cspViolations,
  expectIndicator,
  launchChromium,
  manaTodoCli,
  newDevice,
  openApp,
  screenshot,
  signIn,
  todo,
  todoList,
} from './harness.ts';

const COMPAT = '/compat/';
const GUEST_SEED = 'This list runs on the seed package’s API';

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

/** Renames the todo titled `from` through the page. */
async function rename(page: Page, from: string, to: string): Promise<void> {
  await todo(page, from).getByTestId('todo-rename').click();
  await page.getByTestId('todo-edit').fill(to);
  await page.getByTestId('todo-edit').press('Enter');
}

describe('two devices of one user on the compat mode', () => {
  let phone: BrowserContext;
  let laptop: BrowserContext;
  let a: Page;
  let b: Page;

  it('start as guests with the guest seed, and converge live once signed in', async () => {
    phone = await newDevice(browser);
    laptop = await newDevice(browser);
    a = await openApp(phone, server, COMPAT);
    b = await openApp(laptop, server, COMPAT);
    await expectIndicator(a, 'idle');
    expect(await todoList(a)).toEqual([GUEST_SEED]);
    await addTodo(a, 'Written as a guest');
    await todo(a, 'Written as a guest').waitFor();
    await signIn(a, 'erin');
    await signIn(b, 'erin');
    expect(await converged(a, b)).toEqual([GUEST_SEED, 'Written as a guest']);

    for (const title of ['Buy oat milk', 'Call mum']) {
      await addTodo(a, title);
      // The claim: 1 s from pressing Enter to the other screen.
      await todo(b, title).waitFor({ timeout: 1000 });
    }
    await todo(b, 'Buy oat milk').getByTestId('todo-toggle').check();
    await todo(a, 'Buy oat milk').getByTestId('todo-toggle').and(a.locator(':checked')).waitFor({ timeout: 1000 });
    await rename(a, 'Call mum', 'Call mum back');
    await todo(b, 'Call mum back').waitFor({ timeout: 1000 });
    await todo(b, 'Written as a guest').getByTestId('todo-delete').click();
    await todo(a, 'Written as a guest').waitFor({ state: 'detached', timeout: 1000 });
    expect(await converged(a, b)).toEqual([GUEST_SEED, 'Buy oat milk ✓', 'Call mum back']);
    await screenshot(b, 'compat-second-device');
  });

  it('keeps offline edits across a reload, and syncs them after reconnecting', async () => {
    // The laptop loses the sync server: the network first, then (so that the
    // page itself can still load) only the sync API.
    await laptop.route('**/sync/**', (route) => route.abort('internetdisconnected'));
    await laptop.setOffline(true);
    await expectIndicator(b, 'offline');
    await addTodo(b, 'Written offline');
    await todo(b, 'Written offline').waitFor();
    await todo(b, 'Call mum back').getByTestId('todo-toggle').check();
    await rename(b, 'Buy oat milk', 'Buy oat milk (offline)');
    // Shown by the live query: read back from the database, so committed before the reload.
    await expect.poll(() => todoList(b)).toEqual([GUEST_SEED, 'Buy oat milk (offline) ✓', 'Call mum back ✓', 'Written offline']);
    await laptop.setOffline(false);

    await b.reload();
    await expectIndicator(b, 'offline');
    await expect.poll(() => todoList(b)).toEqual([GUEST_SEED, 'Buy oat milk (offline) ✓', 'Call mum back ✓', 'Written offline']);
    // Nothing the laptop wrote offline reached the phone.
    expect(await todoList(a)).toEqual([GUEST_SEED, 'Buy oat milk ✓', 'Call mum back']);
    // Meanwhile the phone edits another field of a todo the laptop renamed.
    await todo(a, 'Buy oat milk').getByTestId('todo-toggle').uncheck();
    expect(await todoList(a)).toEqual([GUEST_SEED, 'Buy oat milk', 'Call mum back']);
    await screenshot(b, 'compat-offline-after-reload');

    // Reconnected (the browser's `online` event): both converge, field by field.
    await laptop.unroute('**/sync/**');
    await laptop.setOffline(true);
    await laptop.setOffline(false);
    await expectIndicator(b, 'synced');
    expect(await converged(a, b)).toEqual([GUEST_SEED, 'Buy oat milk (offline)', 'Call mum back ✓', 'Written offline']);
    expect(await cspViolations(a)).toEqual([]);
    expect(await cspViolations(b)).toEqual([]);
    await phone.close();
    await laptop.close();
  });
});

it('shares one list with the native Todo app and mana-todo', async () => {
  const manaTodo = manaTodoCli(server, 'frank', data);
  const seedApi = await newDevice(browser);
  const native = await newDevice(browser);
  const c = await openApp(seedApi, server, COMPAT);
  const t = await openApp(native, server);
  await signIn(c, 'frank');
  await signIn(t, 'frank');

  await addTodo(c, 'From the seed API');
  await todo(t, 'From the seed API').waitFor({ timeout: 2000 });
  await todo(t, 'From the seed API').getByTestId('todo-toggle').check();
  await todo(c, 'From the seed API').getByTestId('todo-toggle').and(c.locator(':checked')).waitFor({ timeout: 2000 });

  const id = await manaTodo('add', 'From the terminal');
  await manaTodo('sync');
  await todo(c, 'From the terminal').waitFor({ timeout: 2000 });
  await rename(c, 'From the terminal', 'From the terminal, renamed');
  await todo(t, 'From the terminal, renamed').waitFor({ timeout: 2000 });
  await todo(t, 'Tick a todo off, double-click one to rename it, × deletes it').getByTestId('todo-delete').click();
  await todo(c, 'Tick a todo off, double-click one to rename it, × deletes it').waitFor({ state: 'detached', timeout: 2000 });

  // The three agree, in the same order (createdAt, then id).
  const shown = await converged(c, t);
  await manaTodo('sync');
  const list = JSON.parse(await manaTodo('list', '--json')) as { id: string; title: string; done: boolean }[];
  expect(list.find((x) => x.id === id)).toMatchObject({ title: 'From the terminal, renamed', done: false });
  expect(list.map((x) => (x.done ? `${x.title} ✓` : x.title))).toEqual(shown);
  expect(shown).toContain('From the seed API ✓');
  expect(shown).toContain(GUEST_SEED);
  await screenshot(c, 'compat-interop');
  await seedApi.close();
  await native.close();
});

it('takes over what a browser kept in the seed package’s database, unsent edits included', async () => {
  const upgraded = await newDevice(browser);
  const page = await upgraded.newPage();
  // A page of the app's origin that runs no app: write `manacore-todo` as the seed package left it.
  await page.goto(`${server.url}/health`);
  await page.evaluate(
    () =>
      new Promise<void>((resolve, reject) => {
        const open = indexedDB.open('manacore-todo', 10);
        open.onupgradeneeded = () => {
          const db = open.result;
          db.createObjectStore('tasks', { keyPath: 'id' }).createIndex('updatedAt', 'updatedAt');
          db.createObjectStore('_pendingChanges', { keyPath: 'id', autoIncrement: true }).createIndex('collection', 'collection');
          db.createObjectStore('_syncMeta', { keyPath: 'collection' });
        };
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          const tx = db.transaction(['tasks', '_pendingChanges', '_syncMeta'], 'readwrite');
          const at = '2026-11-24T09:00:00.000Z';
          const record = { id: 'seed-era-1', title: 'Written before the upgrade, offline', done: false, createdAt: at, updatedAt: at, deletedAt: null };
          tx.objectStore('tasks').put(record);
          tx.objectStore('_pendingChanges').add({ collection: 'tasks', recordId: record.id, op: 'insert', data: record, createdAt: at });
          tx.objectStore('_syncMeta').put({ collection: 'tasks', lastSyncedAt: '2026-11-01T00:00:00.000Z' });
          tx.oncomplete = () => {
            db.close();
            resolve();
          };
          tx.onerror = () => reject(tx.error);
        };
      }),
  );
  await page.goto(`${server.url}${COMPAT}`);
  await expectIndicator(page, 'idle');
  // Its data, not the guest seed; the old database is gone.
  await expect.poll(() => todoList(page)).toEqual(['Written before the upgrade, offline']);
  await page.waitForFunction(async () => !(await indexedDB.databases()).some((db) => db.name === 'manacore-todo'));

  await signIn(page, 'gina');
  const other = await newDevice(browser);
  const elsewhere = await openApp(other, server);
  await signIn(elsewhere, 'gina');
  await todo(elsewhere, 'Written before the upgrade, offline').waitFor({ timeout: 2000 });
  await upgraded.close();
  await other.close();
});
