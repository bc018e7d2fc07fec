/**
 * A browser device offline with unsent edits while the server compacts and
 * drops a deleted record: its cursor has expired. Back online, it is told so
 * (`cursor_expired`), downloads everything again, loses the dropped record,
 * keeps its edits, pushes them, and converges with the other device.
 */

import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  Server,
  addTodo,
  checkPrerequisites,
  converged,
  expectIndicator,
  launchChromium,
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

interface Exposed {
  manaTodo: {
    store: {
      list(collection: string): Promise<{ id: string; title: string }[]>;
      recordState(collection: string, id: string): Promise<unknown>;
    };
  };
}

beforeAll(async () => {
  checkPrerequisites();
  // Compaction runs only when the test says so.
  server = await Server.start({ COMPACTION_THRESHOLD: '0' });
  browser = await launchChromium();
  ({ contexts: [phone, laptop], pages: [a, b] } = await signedInDevices(browser, server, ['alice', 'alice']));
  await converged(a, b);
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});

describe('an expired cursor in the browser', () => {
  it('a device offline with edits keeps them through a dropped record, and converges', async () => {
    for (const title of ['Doomed', 'Kept', 'Written by the phone, never touched again']) {
      await addTodo(a, title);
      await todo(b, title).waitFor({ timeout: 2000 });
    }
    const doomed = await a.evaluate(
      async () => (await (globalThis as unknown as Exposed).manaTodo.store.list('tasks')).find((t) => t.title === 'Doomed')!.id,
    );

    // The phone goes offline and edits.
    await phone.setOffline(true);
    await expectIndicator(a, 'offline');
    await todo(a, 'Kept').getByTestId('todo-title').dblclick();
    await a.getByTestId('todo-edit').fill('Kept, renamed offline');
    await a.getByTestId('todo-edit').press('Enter');
    await addTodo(a, 'Written offline');
    await expect.poll(() => a.getByTestId('pending').textContent()).toBe('2 unsent');

    // Meanwhile the laptop deletes a todo, and compaction drops it.
    await todo(b, 'Doomed').getByTestId('todo-delete').click();
    await todo(b, 'Doomed').waitFor({ state: 'detached' });
    await expectIndicator(b, 'synced');
    await expect.poll(() => b.getByTestId('pending').count()).toBe(0);
    const compacted = await server.compact('alice', 0);
    expect(compacted.dropped).toBeGreaterThanOrEqual(2);
    expect(await todoList(a)).toContain('Doomed');

    await phone.setOffline(false);
    await expectIndicator(a, 'synced');
    const list = await converged(a, b);
    expect(list).not.toContain('Doomed');
    expect(list).toEqual(expect.arrayContaining(['Kept, renamed offline', 'Written by the phone, never touched again', 'Written offline']));
    await expect.poll(() => a.getByTestId('pending').count()).toBe(0);
    // Removed from the browser's database, not merely hidden.
    expect(await a.evaluate((id) => (globalThis as unknown as Exposed).manaTodo.store.recordState('tasks', id), doomed)).toBeUndefined();
    await screenshot(a, 'expired-cursor-converged');
  });
});
