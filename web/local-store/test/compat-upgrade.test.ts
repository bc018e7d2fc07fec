/**
 * A device that ran the seed package upgrades: its database
 * `manacore-{appId}`, written here in the seed's exact shape (one table per
 * collection, `_pendingChanges`, `_syncMeta`), is taken over at the first
 * start, unsent edits included, and synced from its cursors.
 */

import { Dexie } from 'dexie';
import { describe, expect, it } from 'vitest';

import type { CompatStore } from '../src/compat/index.ts';
import { takeOver } from '../src/compat/legacy.ts';
import { SyncClient } from '../src/sync.ts';
import { FakeServer } from './fake-server.ts';
import { compatStore, freshStore, token } from './helpers.ts';

const SERVER = 'http://sync.test';

interface Task {
  id: string;
  title: string;
  done: boolean;
  deletedAt?: string | null;
}

/** Writes the seed package's database of `appId` as the seed package did. */
async function seedDatabase(appId: string, content: { tasks?: object[]; lists?: object[]; pending?: object[]; syncMeta?: object[] }) {
  const db = new Dexie(`manacore-${appId}`);
  db.version(1).stores({
    tasks: 'id, createdAt, updatedAt, deletedAt, done',
    lists: 'id, createdAt, updatedAt, deletedAt',
    _pendingChanges: '++id, collection, recordId, createdAt',
    _syncMeta: 'collection',
  });
  await db.open();
  await db.table('tasks').bulkAdd(content.tasks ?? []);
  await db.table('lists').bulkAdd(content.lists ?? []);
  await db.table('_pendingChanges').bulkAdd(content.pending ?? []);
  await db.table('_syncMeta').bulkAdd(content.syncMeta ?? []);
  db.close();
}

/** A store of two collections, `tasks` with a guest seed, syncing with `server`. */
function upgraded(server: FakeServer) {
  return compatStore({
    collections: [{ name: 'tasks', indexes: ['done'], guestSeed: [{ title: 'Welcome', done: false }] }, { name: 'lists' }],
    sync: { serverUrl: SERVER },
    engine: { fetch: server.fetch, minBackoffMs: 5, maxBackoffMs: 20 },
  });
}

async function outbox(store: CompatStore) {
  return (await store.core.db.outbox.orderBy(':id').toArray()).map((row) => JSON.parse(row.change));
}

describe('upgrading from the seed package', () => {
  it('takes over records, unsent changes and cursors, then deletes the old database', async () => {
    const server = new FakeServer();
    const store = upgraded(server);
    const appId = store.config.appId;
    await seedDatabase(appId, {
      tasks: [
        { id: 't1', title: 'Synced', done: false, createdAt: '2026-11-01T08:00:00.000Z', updatedAt: '2026-11-02T08:00:00.000Z', deletedAt: null, __lastActor: { kind: 'user' } },
        { id: 't2', title: 'Deleted', done: false, createdAt: '2026-11-01T08:00:00.000Z', updatedAt: '2026-11-03T08:00:00.000Z', deletedAt: '2026-11-03T08:00:00.000Z' },
        // Written offline: the record, and its pending insert below.
        { id: 't3', title: 'Added offline', done: false, createdAt: '2026-11-24T09:00:00.000Z', updatedAt: '2026-11-24T09:00:00.000Z', deletedAt: null },
      ],
      // Never synced (no cursor): a guest's records, to be pushed.
      lists: [{ id: 'l1', name: 'Home', createdAt: '2026-11-20T08:00:00.000Z', updatedAt: '2026-11-20T08:00:00.000Z', deletedAt: null }],
      pending: [
        {
          collection: 'tasks',
          recordId: 't3',
          op: 'insert',
          data: { id: 't3', title: 'Added offline', done: false, createdAt: '2026-11-24T09:00:00.000Z', updatedAt: '2026-11-24T09:00:00.000Z', deletedAt: null },
          createdAt: '2026-11-24T09:00:00.000Z',
        },
        { collection: 'tasks', recordId: 't1', op: 'update', fields: { done: { value: true, updatedAt: '2026-11-24T09:01:00.000Z' } }, createdAt: '2026-11-24T09:01:00.000Z' },
        // An update queued with bare values: the change's time stamps them.
        { collection: 'tasks', recordId: 't1', op: 'update', fields: { title: 'Synced, renamed offline' }, createdAt: '2026-11-24T09:02:00.000Z' },
        { collection: 'tasks', recordId: 't9', op: 'delete', deletedAt: '2026-11-24T09:03:00.000Z', createdAt: '2026-11-24T09:03:00.000Z' },
        { collection: 'tasks', op: 'update' },
      ],
      syncMeta: [
        { collection: 'tasks', lastSyncedAt: '2026-11-23T12:00:00.000Z' },
        { collection: 'lists', lastSyncedAt: '1970-01-01T00:00:00.000Z' },
      ],
    });

    await store.initialize();
    const tasks = store.collection<Task>('tasks');
    // The records as the seed showed them, not the guest seed.
    expect((await tasks.getAll({}, { sortBy: 'title' })).map((t) => [t.id, t.title, t.done])).toEqual([
      ['t3', 'Added offline', false],
      ['t1', 'Synced, renamed offline', true],
    ]);
    expect(await tasks.get('t2')).toBeUndefined();
    expect((await tasks.getModifiedSince('2026-11-01T00:00:00Z')).find((t) => t.id === 't2')?.deletedAt).toBe('2026-11-03T08:00:00.000000000Z');
    expect(await store.collection('lists').getAll()).toEqual([expect.objectContaining({ id: 'l1', name: 'Home' })]);
    // The unsent changes and the guest's never-synced records, queued in order.
    expect((await outbox(store)).map((c) => [c.op, c.table, c.id, Object.keys(c.fields ?? {}).sort()])).toEqual([
      ['insert', 'lists', 'l1', ['createdAt', 'deletedAt', 'id', 'name', 'updatedAt']],
      ['insert', 'tasks', 't3', ['createdAt', 'deletedAt', 'done', 'id', 'title', 'updatedAt']],
      ['update', 'tasks', 't1', ['done']],
      ['update', 'tasks', 't1', ['title']],
      ['delete', 'tasks', 't9', []],
    ]);
    expect((await outbox(store))[3].fields.title).toEqual({ value: 'Synced, renamed offline', at: '2026-11-24T09:02:00.000Z' });
    // The seed's cursor, kept as a legacy `since`; the never-synced one is no cursor.
    expect(await store.core.cursor('tasks')).toBe('2026-11-23T12:00:00.000Z');
    expect(await store.core.cursor('lists')).toBeUndefined();
    await expect.poll(() => Dexie.exists(`manacore-${appId}`)).toBe(false);

    // Signed in: the offline edits reach another device.
    await store.startSync(async () => token('alice'));
    await expect.poll(() => store.syncStatus).toBe('synced');
    const laptop = await freshStore({ appId, collections: ['tasks', 'lists'] });
    await new SyncClient(laptop, await laptop.signIn(SERVER, token('alice')), { fetch: server.fetch }).sync();
    expect((await laptop.list('tasks')).map((t) => [t.id, t.title, t.done])).toEqual([
      ['t1', 'Synced, renamed offline', true],
      ['t3', 'Added offline', false],
    ]);
    expect((await laptop.list('lists')).map((l) => l.name)).toEqual(['Home']);
    await store.close();

    // Started again: nothing is taken over twice.
    const reopened = compatStore({ ...store.config });
    await reopened.initialize();
    expect(await reopened.core.pendingCount()).toBe(0);
    expect(await reopened.collection('tasks').count()).toBe(2);
    await reopened.close();
  });

  it('two tabs upgrading at once take the old database over once; one that finds it gone starts as it is', async () => {
    const server = new FakeServer();
    const first = upgraded(server);
    const appId = first.config.appId;
    await seedDatabase(appId, {
      tasks: [{ id: 't1', title: 'Offline', done: false, createdAt: '2026-11-24T09:00:00.000Z', updatedAt: '2026-11-24T09:00:00.000Z', deletedAt: null }],
      pending: [{ collection: 'tasks', recordId: 't1', op: 'update', fields: { title: { value: 'Offline', updatedAt: '2026-11-24T09:00:00.000Z' } }, createdAt: '2026-11-24T09:00:00.000Z' }],
    });
    const second = compatStore({ ...first.config });
    await Promise.all([first.initialize(), second.initialize()]);
    // The record queued as a guest's insert, and the pending update: once each.
    expect(await first.core.pendingCount()).toBe(2);
    expect(await second.collection('tasks').count()).toBe(1);
    await expect.poll(() => Dexie.exists(`manacore-${appId}`)).toBe(false);
    // The old database is gone by the time this tab looks into it.
    await takeOver(second.core, SERVER);
    expect(await second.core.pendingCount()).toBe(2);
    await first.close();
    await second.close();
  });

  it('an offline device that upgrades and reloads before it syncs loses nothing', async () => {
    const server = new FakeServer();
    const store = upgraded(server);
    const appId = store.config.appId;
    await seedDatabase(appId, {
      tasks: [{ id: 't1', title: 'Edited offline', done: true, createdAt: '2026-11-01T08:00:00.000Z', updatedAt: '2026-11-24T09:00:00.000Z', deletedAt: null }],
      pending: [{ collection: 'tasks', recordId: 't1', op: 'update', fields: { title: { value: 'Edited offline', updatedAt: '2026-11-24T09:00:00.000Z' } }, createdAt: '2026-11-24T09:00:00.000Z' }],
      syncMeta: [
        { collection: 'tasks', lastSyncedAt: '2026-11-23T12:00:00.000Z' },
        { collection: 'lists', lastSyncedAt: '2026-11-22T12:00:00.000Z' },
      ],
    });
    await store.initialize();
    await store.close();
    const reloaded = compatStore({ ...store.config });
    await reloaded.initialize();
    expect(await reloaded.core.pendingCount()).toBe(1);
    expect((await reloaded.collection<Task>('tasks').get('t1'))?.title).toBe('Edited offline');
    // Another device's older edit of the same field loses; its newer edit of another field wins.
    const phone = await freshStore({ appId, collections: ['tasks', 'lists'] });
    const phoneSync = new SyncClient(phone, await phone.signIn(SERVER, token('alice')), { fetch: server.fetch });
    // A device still on the seed package pushes (no changeset id, timestamps named `updatedAt`).
    await server.fetch(`${SERVER}/sync/${appId}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token('alice')}`, 'X-Client-Id': 'seed-phone' },
      body: JSON.stringify({
        since: '1970-01-01T00:00:00.000Z',
        changes: [
          { table: 'tasks', id: 't1', op: 'update', fields: { title: { value: 'Older', updatedAt: '2026-11-24T08:00:00.000Z' }, done: { value: false, updatedAt: '2026-11-24T10:00:00.000Z' } } },
        ],
      }),
    });
    const since: unknown[] = [];
    server.hook = ({ method, body }) => {
      if (method === 'POST') since.push(body?.since);
      return undefined;
    };
    await reloaded.startSync(async () => token('alice'));
    await expect.poll(() => reloaded.syncStatus).toBe('synced');
    // The first push resumed from the seed's cursors (the earliest of them), a legacy `since`.
    expect(since[0]).toBe('2026-11-22T12:00:00.000Z');
    expect(await reloaded.collection<Task>('tasks').get('t1')).toMatchObject({ title: 'Edited offline', done: false });
    await phoneSync.sync();
    expect(await phone.get('tasks', 't1')).toMatchObject({ title: 'Edited offline', done: false });
    await reloaded.close();
  });
});
