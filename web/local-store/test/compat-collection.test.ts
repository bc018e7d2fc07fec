/** The seed's collection API on the engine: writes, soft deletes, filters, sorting, paging, guest seeds. */

import { describe, expect, it } from 'vitest';

import { StoreError } from '../src/errors.ts';
import { parseJson } from '../src/json.ts';
import { readChange } from '../src/merge.ts';
import { NOW, compatStore, manualClock } from './helpers.ts';

interface Task {
  id: string;
  title: string;
  done: boolean;
  rank?: number | null;
  note?: string | null;
  createdAt?: string;
  updatedAt?: string;
  deletedAt?: string | null;
}

async function opened(config: Parameters<typeof compatStore>[0] = {}) {
  const store = compatStore(config);
  await store.initialize();
  return store;
}

function change(json: string) {
  return readChange(parseJson(json));
}

async function outbox(store: Awaited<ReturnType<typeof opened>>) {
  return (await store.core.db.outbox.orderBy(':id').toArray()).map((row) => JSON.parse(row.change));
}

const AT_NOW = '2026-11-25T10:00:00.123Z';

describe('writes', () => {
  it('insert sets createdAt (unless given), updatedAt and deletedAt: null, returns the stored record, and queues an engine insert', async () => {
    const clock = manualClock(NOW);
    const store = await opened({ engine: { now: clock.now } });
    const tasks = store.collection<Task>('tasks');
    const milk = await tasks.insert({ title: 'Milk', done: false, note: undefined });
    expect(milk).toEqual({
      id: milk.id,
      title: 'Milk',
      done: false,
      createdAt: AT_NOW,
      // When the record last changed, on the engine's clock.
      updatedAt: '2026-11-25T10:00:00.123000000Z',
      deletedAt: null,
    });
    expect(await tasks.get(milk.id)).toEqual(milk);
    const given = await tasks.insert({ id: 'mine', title: 'Old', done: true, createdAt: '2020-01-01T00:00:00.000Z' });
    expect(given).toMatchObject({ id: 'mine', createdAt: '2020-01-01T00:00:00.000Z' });
    await expect(tasks.insert({ id: 'mine', title: 'again', done: false })).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'already_exists');

    const [insert] = await outbox(store);
    expect(insert).toMatchObject({
      table: 'tasks',
      op: 'insert',
      data: { id: milk.id, title: 'Milk', done: false, createdAt: AT_NOW, updatedAt: AT_NOW, deletedAt: null },
      schemaVersion: 2,
    });
    expect(insert.fields.title.at).toBe('2026-11-25T10:00:00.123000000Z');
  });

  it('bulkInsert writes all records or none', async () => {
    const store = await opened();
    const tasks = store.collection<Task>('tasks');
    const stored = await tasks.bulkInsert([
      { id: 'a', title: 'one', done: false },
      { id: 'b', title: 'two', done: true },
    ]);
    expect(stored.map((t) => [t.id, t.title, t.deletedAt])).toEqual([
      ['a', 'one', null],
      ['b', 'two', null],
    ]);
    await expect(tasks.bulkInsert([{ id: 'c', title: 'new', done: false }, { id: 'a', title: 'exists', done: false }])).rejects.toThrow(StoreError);
    expect(await tasks.get('c')).toBeUndefined();
    expect(await tasks.count()).toBe(2);
  });

  it('update sets the fields it may and updatedAt, returns the record, and undefined for a missing or deleted one', async () => {
    const clock = manualClock(NOW);
    const store = await opened({ engine: { now: clock.now } });
    const tasks = store.collection<Task>('tasks');
    const task = await tasks.insert({ id: 't', title: 'Milk', done: false, note: 'skimmed' });
    clock.set(NOW + 1000);
    const updated = await tasks.update('t', {
      done: true,
      note: undefined,
      id: 'other',
      createdAt: '1999-01-01T00:00:00.000Z',
      updatedAt: '1999-01-01T00:00:00.000Z',
      deletedAt: '1999-01-01T00:00:00.000Z',
    });
    // `undefined` clears a field (to null); the collection's own fields are untouched.
    expect(updated).toEqual({ ...task, done: true, note: null, updatedAt: '2026-11-25T10:00:01.123000000Z' });
    expect(await tasks.get('t')).toEqual(updated);
    const last = (await outbox(store)).at(-1);
    expect(last).toMatchObject({ op: 'update', id: 't' });
    expect(Object.keys(last.fields).sort()).toEqual(['done', 'note', 'updatedAt']);
    expect(last.fields.updatedAt.value).toBe('2026-11-25T10:00:01.123Z');

    expect(await tasks.update('missing', { done: true })).toBeUndefined();
    await tasks.delete('t');
    expect(await tasks.update('t', { done: false })).toBeUndefined();
  });

  it('delete is soft and synced: reads skip the record, getModifiedSince shows it with deletedAt', async () => {
    const clock = manualClock(NOW);
    const store = await opened({ engine: { now: clock.now } });
    const tasks = store.collection<Task>('tasks');
    await tasks.insert({ id: 'gone', title: 'Milk', done: false });
    await tasks.insert({ id: 'kept', title: 'Bread', done: false });
    clock.set(NOW + 5000);
    await tasks.delete('gone');
    expect(await tasks.get('gone')).toBeUndefined();
    expect((await tasks.getAll()).map((t) => t.id)).toEqual(['kept']);
    expect(await tasks.count()).toBe(1);
    expect((await outbox(store)).at(-1)).toEqual({ table: 'tasks', id: 'gone', op: 'delete', deletedAt: '2026-11-25T10:00:05.123000000Z', schemaVersion: 2 });
    const modified = await tasks.getModifiedSince('2026-11-25T10:00:01Z');
    expect(modified).toEqual([
      expect.objectContaining({ id: 'gone', title: 'Milk', deletedAt: '2026-11-25T10:00:05.123000000Z', updatedAt: '2026-11-25T10:00:05.123000000Z' }),
    ]);
    // Deleting again, or a missing record, does nothing; the id is not reused.
    const pending = await store.core.pendingCount();
    await tasks.delete('gone');
    await tasks.delete('never');
    expect(await store.core.pendingCount()).toBe(pending);
    await expect(tasks.insert({ id: 'gone', title: 'back', done: false })).rejects.toThrow(StoreError);
  });

  it('a record whose own deletedAt is set (by a device on the seed package) counts as deleted', async () => {
    const store = await opened();
    const tasks = store.collection<Task>('tasks');
    await store.core.applyRemote([
      change('{"table":"tasks","id":"soft","op":"insert","data":{"id":"soft","title":"x","deletedAt":"2026-11-20T00:00:00.000Z","updatedAt":"2026-11-20T00:00:00.000Z"}}'),
    ]);
    expect(await tasks.get('soft')).toBeUndefined();
    expect(await tasks.count()).toBe(0);
    expect(await tasks.getModifiedSince('2026-01-01T00:00:00Z')).toEqual([expect.objectContaining({ id: 'soft', deletedAt: '2026-11-20T00:00:00.000Z' })]);
  });

  it('purge removes a record here only, and queues nothing', async () => {
    const store = await opened();
    const tasks = store.collection<Task>('tasks');
    await tasks.insert({ id: 'p', title: 'local', done: false });
    const pending = await store.core.pendingCount();
    await tasks.purge('p');
    expect(await tasks.get('p')).toBeUndefined();
    expect(await tasks.getModifiedSince('1970-01-01T00:00:00Z')).toEqual([]);
    expect(await store.core.pendingCount()).toBe(pending);
  });
});

describe('reads', () => {
  async function ranked() {
    const store = await opened();
    const tasks = store.collection<Task>('tasks');
    await tasks.bulkInsert([
      { id: 'b', title: 'b', rank: 2, done: false },
      { id: 'a', title: 'a', rank: 2, done: true },
      { id: 'c', title: 'c', rank: 1, done: false },
      { id: 'd', title: 'd', done: false },
      { id: 'e', title: 'e', rank: null, done: false },
      { id: 'f', title: 'f', rank: 3, done: true },
    ]);
    await tasks.delete('f');
    return tasks;
  }

  it('getAll filters on equal fields, sorts either way (ties by id), and pages', async () => {
    const tasks = await ranked();
    const ids = async (...args: Parameters<typeof tasks.getAll>) => (await tasks.getAll(...args)).map((t) => t.id);
    expect(await ids()).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(await ids({ done: false })).toEqual(['b', 'c', 'd', 'e']);
    expect(await ids({ done: false, rank: 2 })).toEqual(['b']);
    expect(await ids({ rank: null })).toEqual(['e']);
    expect(await ids({}, { sortBy: 'rank' })).toEqual(['d', 'e', 'c', 'a', 'b']);
    expect(await ids({}, { sortBy: 'rank', sortDirection: 'desc' })).toEqual(['a', 'b', 'c', 'e', 'd']);
    expect(await ids({}, { sortBy: 'rank', sortDirection: 'asc', offset: 1, limit: 2 })).toEqual(['e', 'c']);
    expect(await ids({ done: false }, { limit: 1 })).toEqual(['b']);
    expect(await ids({}, { offset: 4 })).toEqual(['e']);
  });

  it('count counts what getAll returns', async () => {
    const tasks = await ranked();
    expect(await tasks.count()).toBe(5);
    expect(await tasks.count({ done: true })).toBe(1);
    expect(await tasks.count({ title: 'zzz' })).toBe(0);
  });

  it('getModifiedSince sees every change, from any app, oldest first; refuses what is not a timestamp', async () => {
    const clock = manualClock(NOW);
    const store = await opened({ engine: { now: clock.now } });
    const tasks = store.collection<Task>('tasks');
    await tasks.insert({ id: 'old', title: 'old', done: false });
    await tasks.insert({ id: 'other', title: 'edited elsewhere', done: false });
    clock.set(NOW + 60_000);
    await tasks.insert({ id: 'new', title: 'new', done: false });
    // An app that does not write `updatedAt` (the Todo app, mana-todo) edits a record.
    await store.core.applyRemote([change('{"table":"tasks","id":"other","op":"update","fields":{"done":{"value":true,"at":"2026-11-25T10:00:30.000000000Z"}}}')]);
    const since = await tasks.getModifiedSince('2026-11-25T10:00:10Z');
    expect(since.map((t) => [t.id, t.updatedAt])).toEqual([
      ['other', '2026-11-25T10:00:30.000000000Z'],
      ['new', '2026-11-25T10:01:00.123000000Z'],
    ]);
    expect((await tasks.get('other'))?.updatedAt).toBe('2026-11-25T10:00:30.000000000Z');
    expect(await tasks.getModifiedSince('2030-01-01T00:00:00Z')).toEqual([]);
    await expect(tasks.getModifiedSince('yesterday')).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'invalid_input');
  });
});

describe('the store', () => {
  it('loads the guest seeds into a new store once, with fixed ids and the lowest timestamp', async () => {
    const config = {
      collections: [{ name: 'tasks', guestSeed: [{ title: 'Welcome', done: false }, { id: 'tour', title: 'Take the tour', done: false }] }, { name: 'lists' }],
    };
    const store = await opened(config);
    const tasks = store.collection<Task>('tasks');
    expect((await tasks.getAll()).map((t) => [t.id, t.title, t.deletedAt])).toEqual([
      ['guest-tasks-1', 'Welcome', null],
      ['tour', 'Take the tour', null],
    ]);
    expect((await tasks.get('tour'))?.updatedAt).toBe('0000-01-01T00:00:00.000000000Z');
    await tasks.delete('tour');
    await store.close();
    // Opened again: no second copy, and a deleted seed stays deleted.
    const again = compatStore({ ...config, appId: store.config.appId });
    await again.initialize();
    expect((await again.collection<Task>('tasks').getAll()).map((t) => t.id)).toEqual(['guest-tasks-1']);
    // Any real edit wins over a seed.
    await again.core.applyRemote([change('{"table":"tasks","id":"guest-tasks-1","op":"update","fields":{"done":{"value":true,"at":"1971-01-01T00:00:00Z"}}}')]);
    expect((await again.collection<Task>('tasks').get('guest-tasks-1'))?.done).toBe(true);
    await again.close();
  });

  it('names its collections, and needs initialize() first', async () => {
    const store = compatStore({ collections: [{ name: 'tasks', indexes: ['done'] }] });
    await expect(store.collection('tasks').getAll()).rejects.toThrow(/initialize\(\)/);
    expect(() => store.collection('notes')).toThrow(/unknown collection `notes`/);
    await store.initialize();
    await store.initialize();
    expect(await store.collection('tasks').count()).toBe(0);
    await store.close();
    await expect(store.collection('tasks').count()).rejects.toThrow(/initialize\(\)/);
  });

  it('stamps the actor on writes; records show who wrote them', async () => {
    const store = await opened({ actor: { kind: 'ai', agent: 'planner' } });
    const task = await store.collection<Task>('tasks').insert({ title: 'Suggested', done: false });
    expect(task).toMatchObject({ __lastActor: { kind: 'ai', agent: 'planner' } });
    expect((await outbox(store))[0].actor).toEqual({ kind: 'ai', agent: 'planner' });
  });

  it('reset wipes the data and starts again with the guest seeds and a new device id', async () => {
    const store = await opened({ collections: [{ name: 'tasks', guestSeed: [{ title: 'Welcome', done: false }] }] });
    const tasks = store.collection<Task>('tasks');
    await tasks.delete('guest-tasks-1');
    await tasks.insert({ title: 'mine', done: false });
    const device = store.core.clientId;
    await store.reset();
    expect((await tasks.getAll()).map((t) => t.title)).toEqual(['Welcome']);
    expect(store.core.clientId).not.toBe(device);
    expect(await store.core.pendingCount()).toBe(1);
    await store.close();
  });
});
