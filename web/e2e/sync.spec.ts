/**
 * Two devices of one user (two browser profiles), one of them offline for a
 * while, and two tabs of one device.
 */

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
  openApp,
  screenshot,
  signedInDevices,
  todo,
  todoList,
} from './harness.ts';

let server: Server;
let browser: Browser;
let phone: BrowserContext;
let laptop: BrowserContext;
let a: Page;
let b: Page;

beforeAll(async () => {
  checkPrerequisites();
  server = await Server.start();
  browser = await launchChromium();
  ({ contexts: [phone, laptop], pages: [a, b] } = await signedInDevices(browser, server, ['alice', 'alice']));
  await converged(a, b);
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});

describe('two devices signed in as one user', () => {
  it('a todo added on one appears on the other within 1 s', async () => {
    for (const title of ['Buy oat milk', 'Call mum', 'Water the plants']) {
      await addTodo(a, title);
      const added = Date.now();
      // The deadline is the claim: 1 s from pressing Enter to the other screen.
      await todo(b, title).waitFor({ timeout: 1000 });
      console.log(`"${title}" appeared on the other device after ${Date.now() - added} ms`);
    }
    await screenshot(b, 'second-device');
  });

  it('completing, renaming and deleting reach the other device too', async () => {
    await todo(b, 'Buy oat milk').getByTestId('todo-toggle').check();
    await todo(a, 'Buy oat milk').getByTestId('todo-toggle').and(a.locator(':checked')).waitFor({ timeout: 1000 });

    await todo(a, 'Call mum').getByTestId('todo-rename').click();
    await a.getByTestId('todo-edit').fill('Call mum back');
    await a.getByTestId('todo-edit').press('Enter');
    await todo(b, 'Call mum back').waitFor({ timeout: 1000 });

    await todo(b, 'Water the plants').getByTestId('todo-delete').click();
    await todo(a, 'Water the plants').waitFor({ state: 'detached', timeout: 1000 });
    expect(await converged(a, b)).toContain('Buy oat milk ✓');
  });

  it('converges after one device edited offline while the other edited online', async () => {
    await laptop.setOffline(true);
    await expectIndicator(b, 'offline');
    // Offline edits on the laptop…
    await addTodo(b, 'Written offline');
    await todo(b, 'Written offline').waitFor();
    await todo(b, 'Call mum back').getByTestId('todo-toggle').check();
    await todo(b, 'Buy oat milk').getByTestId('todo-title').dblclick();
    await b.getByTestId('todo-edit').fill('Buy oat milk (offline name)');
    await b.getByTestId('todo-edit').press('Enter');
    await expect.poll(() => b.getByTestId('pending').textContent()).toBe('3 unsent');
    await screenshot(b, 'offline-edits');
    // …while the phone edits the same todo's other field, and adds one.
    await todo(a, 'Buy oat milk').getByTestId('todo-toggle').uncheck();
    await addTodo(a, 'Written online');
    await todo(a, 'Written online').waitFor();
    expect(await todoList(b)).not.toContain('Written online');

    await laptop.setOffline(false);
    await expectIndicator(b, 'synced');
    const list = await converged(a, b);
    // Field by field: the laptop's new title and the phone's "not done" both survive.
    expect(list).toContain('Buy oat milk (offline name)');
    expect(list).toContain('Call mum back ✓');
    expect(list).toContain('Written offline');
    expect(list).toContain('Written online');
    await expectIndicator(a, 'synced');
    await screenshot(a, 'converged');
    expect(await cspViolations(a)).toEqual([]);
    expect(await cspViolations(b)).toEqual([]);
  });
});

describe('two tabs of one device', () => {
  it('only one tab syncs, and every tab sees the data', async () => {
    const streamsBefore = (await server.health()).connections.streams;
    expect(streamsBefore).toBe(2);
    const second = await openApp(phone, server);
    await expectIndicator(second, 'synced');
    const leaders = await Promise.all([a, second].map((page) => page.evaluate(() => (globalThis as unknown as { manaTodo: { sync: { leader: boolean } } }).manaTodo.sync.leader)));
    expect(leaders.filter(Boolean)).toHaveLength(1);
    expect((await server.health()).connections.streams).toBe(2);

    // A write in the tab that does not sync reaches the other tab, and the other device.
    await addTodo(second, 'Added in the second tab');
    await todo(a, 'Added in the second tab').waitFor({ timeout: 1000 });
    await todo(b, 'Added in the second tab').waitFor({ timeout: 2000 });
    // A change from the other device reaches both tabs.
    await addTodo(b, 'Seen by both tabs');
    await todo(a, 'Seen by both tabs').waitFor({ timeout: 1000 });
    await todo(second, 'Seen by both tabs').waitFor({ timeout: 1000 });

    // Closing the syncing tab hands syncing over to the other one.
    const [leader, follower] = leaders[0] ? [a, second] : [second, a];
    await leader.close();
    await follower.waitForFunction(() => (globalThis as unknown as { manaTodo: { sync: { leader: boolean } } }).manaTodo.sync.leader, undefined, { timeout: 5000 });
    await expectIndicator(follower, 'synced');
    await addTodo(b, 'After the hand-over');
    await todo(follower, 'After the hand-over').waitFor({ timeout: 2000 });
    a = follower;
  });
});
