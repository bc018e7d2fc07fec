/** The seed's sync API on the engine: startSync, status, live changes, sync(), token renewal, stopSync, reset. */

import { describe, expect, it } from 'vitest';

import type { CompatStore } from '../src/compat/index.ts';
import { StoreError } from '../src/errors.ts';
import { SyncClient } from '../src/sync.ts';
import { FakeServer } from './fake-server.ts';
import { compatStore, freshStore, token } from './helpers.ts';

const SERVER = 'http://sync.test';

interface Task {
  id: string;
  title: string;
  done: boolean;
}

/** A compat store on `server`, initialized. */
async function compatDevice(server: FakeServer, fetch: typeof globalThis.fetch = server.fetch) {
  const store = compatStore({ sync: { serverUrl: SERVER, pushDebounce: 1000 }, engine: { fetch, minBackoffMs: 5, maxBackoffMs: 20 } });
  await store.initialize();
  return store;
}

/** Another device of `user` on the engine's own API, for the same app. */
async function otherDevice(server: FakeServer, store: CompatStore, user = 'alice') {
  const device = await freshStore({ appId: store.config.appId });
  const account = await device.signIn(SERVER, token(user));
  return { device, sync: new SyncClient(device, account, { fetch: server.fetch }) };
}

async function titles(store: CompatStore): Promise<string[]> {
  return (await store.collection<Task>('tasks').getAll({}, { sortBy: 'title' })).map((t) => t.title);
}

describe('startSync and stopSync', () => {
  it('sync as the token user, live both ways, with the seed’s statuses; stopSync stops this tab', async () => {
    const server = new FakeServer();
    const store = await compatDevice(server);
    expect(store.syncStatus).toBe('idle');
    expect(store.isSyncing).toBe(false);
    const seen: string[] = [];
    const unsubscribe = store.onStatusChange(() => seen.push(store.syncStatus));

    await store.collection<Task>('tasks').insert({ title: 'as a guest', done: false });
    await store.startSync(async () => token('alice'));
    await expect.poll(() => store.syncStatus).toBe('synced');
    expect(seen).toContain('synced');
    expect(server.log.map((e) => e.change.data)).toEqual([expect.objectContaining({ title: 'as a guest', deletedAt: null })]);
    expect(server.openStreams).toBe(1);

    // Another device's change arrives on the stream; a local write is pushed without schedulePush.
    const phone = await otherDevice(server, store);
    await phone.device.insert('tasks', { title: 'from the phone', done: false });
    await phone.sync.sync();
    await expect.poll(() => titles(store)).toEqual(['as a guest', 'from the phone']);
    await store.collection<Task>('tasks').insert({ title: 'pushed at once', done: false });
    await expect.poll(() => server.log.length).toBe(3);
    store.schedulePush();
    await phone.sync.sync();
    expect((await phone.device.list('tasks')).map((t) => t.title).sort()).toEqual(['as a guest', 'from the phone', 'pushed at once']);
    // Each push carried a changeset id.
    expect(server.requests.filter((r) => r.startsWith('POST')).length).toBeGreaterThanOrEqual(2);

    await store.stopSync();
    expect(store.syncStatus).toBe('idle');
    expect(seen.at(-1)).toBe('idle');
    await expect.poll(() => server.openStreams).toBe(0);
    unsubscribe();
    await store.close();
  });

  it('starts one engine when started twice at once, which stopSync stops', async () => {
    const server = new FakeServer();
    const store = await compatDevice(server);
    await Promise.all([store.startSync(async () => token('alice')), store.startSync(async () => token('alice'))]);
    await expect.poll(() => store.syncStatus).toBe('synced');
    await store.stopSync();
    await expect.poll(() => server.openStreams).toBe(0);
    await store.close();
  });

  it('does nothing without a token; refuses a token of another user than the store’s', async () => {
    const server = new FakeServer();
    const store = await compatDevice(server);
    await store.startSync(async () => null);
    expect(store.syncStatus).toBe('idle');
    expect(server.requests).toEqual([]);
    // A token may come synchronously too.
    await store.startSync(() => token('alice'));
    await expect.poll(() => store.syncStatus).toBe('synced');
    await expect(store.startSync(async () => token('mallory'))).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'account_mismatch');
    expect(store.syncStatus).toBe('idle');
    await store.close();
    const unconfigured = compatStore();
    await unconfigured.initialize();
    await expect(unconfigured.startSync(async () => token('alice'))).rejects.toThrow(/sync\.serverUrl/);
    await unconfigured.close();
  });

  it('asks for a new token when the server refuses one, once until a sync succeeds', async () => {
    const server = new FakeServer();
    let refuseAll = false;
    server.hook = ({ authorization }) =>
      refuseAll || authorization === `Bearer ${token('alice', { n: 1 })}` ? new Response('{"error":{"code":"unauthorized","message":"expired"}}', { status: 401 }) : undefined;
    const store = await compatDevice(server);
    const issued: string[] = [];
    const getAuthToken = async () => {
      issued.push(token('alice', { n: issued.length + 1 }));
      return issued.at(-1)!;
    };
    await store.startSync(getAuthToken);
    await expect.poll(() => store.syncStatus).toBe('synced');
    expect(issued).toHaveLength(2);
    expect((await store.core.account())?.token).toBe(issued[1]);

    // Every token refused: one renewal, then the status stays `error`.
    refuseAll = true;
    await store.stopSync();
    await store.startSync(getAuthToken);
    await expect.poll(() => store.syncStatus).toBe('error');
    await expect.poll(() => issued.length).toBe(4);
    await expect.poll(() => store.syncStatus).toBe('error');
    // The status is written again (as a refusal in another tab would): no third renewal.
    let notified = 0;
    store.onStatusChange(() => (notified += 1));
    await store.core.setStatus({ kind: 'error', reason: 'refused again', signInAgain: true });
    await expect.poll(() => notified).toBeGreaterThan(0);
    expect(issued).toHaveLength(4);
    await store.close();
  });
});

describe('sync()', () => {
  it('pushes, then pulls now, from this tab; a failure shows in the status; nothing before startSync', async () => {
    const server = new FakeServer();
    // The stream never opens: only sync() brings changes.
    let streams = 0;
    const noStream: typeof fetch = (input, init) => {
      if (!String(input).includes('/stream')) return server.fetch(input, init);
      streams += 1;
      return new Promise((_, reject) => init?.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))));
    };
    const store = await compatDevice(server, noStream);
    await store.sync();
    expect(server.requests).toEqual([]);

    await store.startSync(async () => token('alice'));
    await expect.poll(() => streams).toBe(1);
    // Waiting for the stream to open: the engine's sync is under way.
    await expect.poll(() => store.isSyncing).toBe(true);
    expect(store.syncStatus).toBe('syncing');
    const phone = await otherDevice(server, store);
    await phone.device.insert('tasks', { title: 'pulled by sync()', done: false });
    await phone.sync.sync();
    await store.collection<Task>('tasks').insert({ title: 'pushed by sync()', done: false });
    await store.sync();
    expect(await titles(store)).toEqual(['pulled by sync()', 'pushed by sync()']);
    await expect.poll(() => store.syncStatus).toBe('synced');
    expect(await store.core.pendingCount()).toBe(0);

    server.hook = ({ method }) => (method === 'POST' ? new Response('{"error":{"code":"unavailable","message":"down"}}', { status: 503 }) : undefined);
    await store.collection<Task>('tasks').insert({ title: 'kept', done: false });
    await store.sync();
    await expect.poll(() => store.syncStatus).toBe('offline');
    expect(await store.core.pendingCount()).toBe(1);
    await store.close();
  });
});

describe('reset', () => {
  it('wipes this browser’s copy and, when syncing, brings the account’s data back', async () => {
    const server = new FakeServer();
    const store = await compatDevice(server);
    await store.startSync(async () => token('alice'));
    await store.collection<Task>('tasks').insert({ title: 'on the server', done: false });
    await expect.poll(() => server.log.length).toBe(1);
    await store.stopSync();
    await store.collection<Task>('tasks').insert({ title: 'unsent, wiped', done: false });

    // Not syncing: a guest store again.
    await store.reset();
    expect(await titles(store)).toEqual([]);
    expect(await store.core.account()).toBeUndefined();
    // Syncing: wiped, then the account's data comes back.
    await store.startSync(async () => token('alice'));
    await expect.poll(() => titles(store)).toEqual(['on the server']);
    await store.reset();
    await expect.poll(() => titles(store)).toEqual(['on the server']);
    await expect.poll(() => store.syncStatus).toBe('synced');
    expect(server.log).toHaveLength(1);
    await store.close();
  });
});
