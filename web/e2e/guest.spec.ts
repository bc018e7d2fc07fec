/**
 * A guest's first visit, working without an account, and signing in: the
 * guest's todos become the account's.
 */

import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  Server,
  addTodo,
  checkPrerequisites,
  converged,
  cspViolations,
  dismissWelcome,
  expectIndicator,
  launchChromium,
  newDevice,
  openApp,
  screenshot,
  signIn,
  todo,
  todoList,
} from './harness.ts';

let server: Server;
let browser: Browser;

beforeAll(async () => {
  checkPrerequisites();
  server = await Server.start();
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});

describe('a guest', () => {
  it('is welcomed on the first visit, with onboarding todos, a login pill and the local state', async () => {
    const context = await newDevice(browser);
    const page = await openApp(context, server);
    await page.getByTestId('guest-welcome').waitFor();
    await expectIndicator(page, 'local');
    await page.getByTestId('login-pill').waitFor();
    expect(await todoList(page)).toEqual([
      'Welcome! Your todos live in this browser and work offline',
      'Tick a todo off, double-click one to rename it, × deletes it',
      'Sign in to sync your todos with your other devices',
    ]);
    await screenshot(page, 'guest-welcome');
    await dismissWelcome(page);
    // The next visit has no welcome (and the same onboarding todos, not a second copy).
    await page.reload();
    await expectIndicator(page, 'local');
    expect(await page.getByTestId('guest-welcome').count()).toBe(0);
    expect(await page.getByTestId('todo-item').count()).toBe(3);
    expect(await cspViolations(page)).toEqual([]);
    await context.close();
  });

  it('lists, adds, edits, completes and deletes todos with no account, and keeps them across reloads', async () => {
    const context = await newDevice(browser);
    const page = await openApp(context, server);
    await dismissWelcome(page);
    await addTodo(page, 'Buy oat milk');
    await addTodo(page, 'Call mum');
    await todo(page, 'Call mum').waitFor();
    expect(await page.getByTestId('new-todo').inputValue()).toBe('');

    await todo(page, 'Buy oat milk').getByTestId('todo-title').dblclick();
    await page.getByTestId('todo-edit').fill('Buy oat milk and bread');
    await page.getByTestId('todo-edit').press('Enter');
    await todo(page, 'Buy oat milk and bread').waitFor();

    await todo(page, 'Call mum').getByTestId('todo-toggle').check();
    await todo(page, 'Tick a todo off, double-click one to rename it, × deletes it').getByTestId('todo-delete').click();
    await todo(page, 'Tick a todo off, double-click one to rename it, × deletes it').waitFor({ state: 'detached' });

    const expected = [
      'Welcome! Your todos live in this browser and work offline',
      'Sign in to sync your todos with your other devices',
      'Buy oat milk and bread',
      'Call mum ✓',
    ];
    expect(await todoList(page)).toEqual(expected);
    await expect.poll(() => page.getByTestId('summary').textContent()).toBe('3 open · 1 done');
    await page.reload();
    await page.getByTestId('todo-item').first().waitFor();
    expect(await todoList(page)).toEqual(expected);
    await expectIndicator(page, 'local');
    await screenshot(page, 'guest-todos');
    expect(await cspViolations(page)).toEqual([]);
    await context.close();
  });

  it("keeps the guest's todos when signing in, and they become the account's", async () => {
    const phone = await newDevice(browser);
    const page = await openApp(phone, server);
    await dismissWelcome(page);
    await addTodo(page, 'Made as a guest');
    await todo(page, 'Made as a guest').getByTestId('todo-toggle').check();
    await addTodo(page, 'Also made as a guest');
    await todo(page, 'Also made as a guest').waitFor();
    const before = await todoList(page);

    await signIn(page, 'grace');
    expect(await todoList(page)).toEqual(before);
    await expect.poll(() => page.getByTestId('account').textContent()).toBe('grace');
    await screenshot(page, 'signed-in');

    // Another device of the account receives them (and its own onboarding
    // todos merge with the same three, not beside them).
    const laptop = await newDevice(browser);
    const other = await openApp(laptop, server);
    await signIn(other, 'grace');
    expect(await converged(page, other)).toEqual(before);
    expect(await cspViolations(page)).toEqual([]);
    await phone.close();
    await laptop.close();
  });
});

describe('signing out', () => {
  it("deletes this browser's copy, in every tab, and the next visit is a guest again", async () => {
    const context = await newDevice(browser);
    const page = await openApp(context, server);
    await signIn(page, 'henry');
    await addTodo(page, 'Synced before signing out');
    await expect.poll(() => page.getByTestId('pending').count()).toBe(0);
    const other = await openApp(context, server);
    await todo(other, 'Synced before signing out').waitFor();
    const reloaded = other.waitForEvent('load');
    await Promise.all([page.waitForEvent('load'), page.getByTestId('logout').click()]);
    await reloaded;
    for (const tab of [page, other]) {
      await expectIndicator(tab, 'local');
      await tab.getByTestId('login-pill').waitFor();
      expect(await todo(tab, 'Synced before signing out').count()).toBe(0);
      expect(await tab.getByTestId('todo-item').count()).toBe(3);
    }
    // Signing in again brings the account's todos back.
    await signIn(page, 'henry');
    await todo(page, 'Synced before signing out').waitFor({ timeout: 5000 });
    await context.close();
  });
});

describe('a refused token', () => {
  it('turns the indicator to error with a way to sign in again, which resumes syncing', async () => {
    const context = await newDevice(browser);
    const page = await openApp(context, server);
    await signIn(page, 'jo');
    // A token the server did not sign, as an expired or revoked one would be refused.
    await page.evaluate(async () => {
      const { store } = (globalThis as unknown as { manaTodo: { store: { account(): Promise<{ token: string }>; signIn(s: string, t: string): Promise<unknown> } } }).manaTodo;
      const [header, payload] = (await store.account()).token.split('.');
      await store.signIn(window.location.origin, `${header}.${payload}.not-the-signature`);
    });
    await expectIndicator(page, 'error');
    await addTodo(page, 'Kept while the token is refused');
    await todo(page, 'Kept while the token is refused').waitFor();
    await screenshot(page, 'token-refused');
    await page.getByTestId('login-again').click();
    expect(await page.getByTestId('login-name').inputValue()).toBe('jo');
    await page.getByTestId('login-submit').click();
    await expectIndicator(page, 'synced');
    await page.getByTestId('login-again').waitFor({ state: 'detached' });
    await expect.poll(() => page.getByTestId('pending').count()).toBe(0);
    await context.close();
  });
});

describe('the server', () => {
  it('serves the app with a Content-Security-Policy that allows exactly itself', async () => {
    const response = await fetch(`${server.url}/`, { headers: { Accept: 'text/html' } });
    expect(response.status).toBe(200);
    const policy = response.headers.get('content-security-policy') ?? '';
    expect(policy).toContain("connect-src 'self';");
    expect(policy).toContain("script-src 'self';");
    expect(policy).toContain("style-src 'self';");
    expect(await response.text()).toContain('<div id="app">');
    // An app route falls back to the app; an API path keeps its JSON 404.
    expect((await fetch(`${server.url}/some/view`, { headers: { Accept: 'text/html' } })).status).toBe(200);
    const api = await fetch(`${server.url}/sync`, { headers: { Accept: 'text/html' } });
    expect(api.status).toBe(404);
    expect(((await api.json()) as { error: { code: string } }).error.code).toBe('not_found');
  });

  it('offers dev sign-in', async () => {
    const config = await fetch(`${server.url}/dev/config`);
    expect(await config.json()).toEqual({ devMode: true });
  });

  it('shows offline in the indicator when it stops, and synced again when it is back', async () => {
    const context = await newDevice(browser);
    const page = await openApp(context, server);
    await signIn(page, 'ada');
    await server.stop();
    await expectIndicator(page, 'offline');
    await addTodo(page, 'Written while the server was down');
    await todo(page, 'Written while the server was down').waitFor();
    await screenshot(page, 'server-stopped');
    await server.restart();
    await expectIndicator(page, 'synced', 30_000);
    expect(await page.evaluate(() => (globalThis as unknown as { manaTodo: { store: { pendingCount(): Promise<number> } } }).manaTodo.store.pendingCount())).toBe(0);
    await context.close();
  });
});
