/** The local store alone: writes, reads, merge on apply, outbox, cursors, accounts, seeds, tabs. */

import { liveQuery } from 'dexie';
import { describe, expect, it } from 'vitest';

import { StoreError } from '../src/errors.ts';
import { parseJson } from '../src/json.ts';
import { readChange } from '../src/merge.ts';
import { LOWEST_TIMESTAMP, isCanonical } from '../src/timestamp.ts';
import { NOW, freshStore, manualClock, sameDatabase, token } from './helpers.ts';

function change(json: string) {
  return readChange(parseJson(json));
}

async function outbox(store: Awaited<ReturnType<typeof freshStore>>) {
  return (await store.db.outbox.orderBy(':id').toArray()).map((row) => JSON.parse(row.change));
}

describe('local writes', () => {
  it('insert, update and delete are read back at once and queue their changes', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now });
    const id = await store.insert('tasks', { title: 'Milk', done: false });
    expect(await store.get('tasks', id)).toEqual({ id, title: 'Milk', done: false });
    await store.update('tasks', id, { done: true });
    expect((await store.get('tasks', id))?.done).toBe(true);
    await store.delete('tasks', id);
    expect(await store.get('tasks', id)).toBeUndefined();
    expect(await store.list('tasks')).toEqual([]);

    const [insert, update, del] = await outbox(store);
    expect(insert).toEqual({
      table: 'tasks',
      id,
      op: 'insert',
      data: { done: false, id, title: 'Milk' },
      fields: {
        done: { value: false, at: '2026-11-25T10:00:00.123000000Z' },
        id: { value: id, at: '2026-11-25T10:00:00.123000000Z' },
        title: { value: 'Milk', at: '2026-11-25T10:00:00.123000000Z' },
      },
      schemaVersion: 2,
    });
    expect(update).toEqual({ table: 'tasks', id, op: 'update', fields: { done: { value: true, at: '2026-11-25T10:00:00.123000001Z' } }, schemaVersion: 2 });
    expect(del).toEqual({ table: 'tasks', id, op: 'delete', deletedAt: '2026-11-25T10:00:00.123000002Z', schemaVersion: 2 });
  });

  it('insertMany writes several records in one transaction: all of them or none', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now });
    const ids = await store.insertMany('tasks', [{ id: 'a', title: 'one' }, { title: 'two' }]);
    expect(ids[0]).toBe('a');
    expect((await store.list('tasks')).map((r) => r.title).sort()).toEqual(['one', 'two']);
    // Each record has its own timestamp and outbox row.
    expect((await outbox(store)).map((c) => c.fields.title.at)).toEqual(['2026-11-25T10:00:00.123000000Z', '2026-11-25T10:00:00.123000001Z']);
    const refused = async (records: Record<string, unknown>[]) => {
      await expect(store.insertMany('tasks', records)).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'already_exists');
    };
    await refused([{ id: 'c', title: 'new' }, { id: 'a', title: 'exists' }]);
    await refused([{ id: 'd' }, { id: 'd' }]);
    expect(await store.pendingCount()).toBe(2);
    expect(await store.get('tasks', 'c')).toBeUndefined();
    expect(await store.insertMany('tasks', [])).toEqual([]);
  });

  it('purge forgets a record here only: nothing is queued, a later change brings it back', async () => {
    const store = await freshStore();
    await store.insert('tasks', { id: 'p', title: 'local copy' });
    const pending = await store.pendingCount();
    expect(await store.purge('tasks', 'p')).toBe(true);
    expect(await store.get('tasks', 'p')).toBeUndefined();
    expect(await store.recordState('tasks', 'p')).toBeUndefined();
    expect(await store.pendingCount()).toBe(pending);
    expect(await store.purge('tasks', 'p')).toBe(false);
    await store.applyRemote([change('{"table":"tasks","id":"p","op":"update","fields":{"done":{"value":true,"at":"2026-01-01T00:00:00Z"}}}')]);
    expect(await store.get('tasks', 'p')).toEqual({ done: true, id: 'p' });
  });

  it('refuses what the server would refuse, and writes nothing', async () => {
    const store = await freshStore();
    const refused = async (write: Promise<unknown>, code: string) => {
      await expect(write).rejects.toSatisfy((error) => error instanceof StoreError && error.code === code);
    };
    await refused(store.insert('', { title: 'x' }), 'invalid_input');
    await refused(store.insert('tasks', { id: 7 }), 'invalid_input');
    await refused(store.insert('tasks', { id: 'a\u0000b' }), 'invalid_input');
    await refused(store.insert('tasks', { __lastActor: 'me' }), 'invalid_input');
    await refused(store.insert('tasks', { f: () => 1 }), 'invalid_input');
    await refused(store.update('tasks', 'missing', { title: 'x' }), 'not_found');
    const id = await store.insert('tasks', { title: 'x' });
    await refused(store.insert('tasks', { id, title: 'again' }), 'already_exists');
    await refused(store.update('tasks', id, { id: 'other' }), 'invalid_input');
    await store.delete('tasks', id);
    await refused(store.insert('tasks', { id, title: 'reuse' }), 'already_exists');
    await refused(store.delete('tasks', id), 'not_found');
    expect(await store.pendingCount()).toBe(2);
  });

  it('keeps the text of values: what is pushed is what was written', async () => {
    const store = await freshStore();
    const id = await store.insert('tasks', { when: new Date(Date.UTC(2026, 0, 1)), nested: { b: 1, a: [1, 'é', null] }, big: 1e21 });
    const [insert] = await outbox(store);
    expect(insert.data).toEqual({ id, when: '2026-01-01T00:00:00.000Z', nested: { b: 1, a: [1, 'é', null] }, big: 1e21 });
    expect(await store.get('tasks', id)).toEqual(insert.data);
  });

  it('stamps every write after the previous one, even when the wall clock steps back, and across reopening', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now });
    const id = await store.insert('tasks', { title: 'a' });
    clock.set(NOW - 60_000);
    await store.update('tasks', id, { title: 'b' });
    store.close();
    const again = await sameDatabase(store, { now: clock.now });
    await again.update('tasks', id, { title: 'c' });
    const stamps = (await outbox(again)).map((c) => c.fields.title.at as string);
    expect(stamps).toEqual(['2026-11-25T10:00:00.123000000Z', '2026-11-25T10:00:00.123000001Z', '2026-11-25T10:00:00.123000002Z']);
    expect(stamps.every(isCanonical)).toBe(true);
  });

  it('an edit wins over a field written by a clock far ahead, which does not drag the clock along', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now });
    const id = await store.insert('tasks', { title: 'mine', done: false });
    const future = '2030-01-01T00:00:00.000000000Z';
    await store.applyRemote([change(`{"table":"tasks","id":"${id}","op":"update","fields":{"title":{"value":"from the future","at":"${future}"}}}`)]);
    expect((await store.get('tasks', id))?.title).toBe('from the future');
    await store.update('tasks', id, { title: 'mine again', done: true });
    const last = (await outbox(store)).at(-1);
    // The edited field is stamped just after the future write, the other one on this clock.
    expect(last.fields.title.at).toBe('2030-01-01T00:00:00.000000001Z');
    expect(last.fields.done.at).toBe('2026-11-25T10:00:00.123000001Z');
    expect((await store.get('tasks', id))?.title).toBe('mine again');
  });

  it('a remote write within the drift bound moves the clock forward', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now });
    const soon = '2026-11-25T10:01:00.000000000Z';
    await store.applyRemote([change(`{"table":"tasks","id":"r","op":"insert","data":{"id":"r","title":"x"},"fields":{"title":{"value":"x","at":"${soon}"}}}`)]);
    const id = await store.insert('tasks', { title: 'after' });
    const last = (await outbox(store)).at(-1);
    expect(last.fields.title.at).toBe('2026-11-25T10:01:00.000000001Z');
    expect(id).toBeTruthy();
  });
});

describe('remote changes', () => {
  it('merge field by field, keep actors, and never resurrect a deleted record', async () => {
    const store = await freshStore({ actor: { kind: 'user', device: 'phone' } });
    const id = await store.insert('tasks', { title: 'Milk', done: false });
    const at = '2099-01-01T00:00:00.000000000Z';
    await store.applyRemote([change(`{"table":"tasks","id":"${id}","op":"update","fields":{"done":{"value":true,"updatedAt":"${at}","at":"${at}"}},"actor":{"kind":"ai"},"eventId":"e1","schemaVersion":2}`)]);
    expect(await store.get('tasks', id)).toEqual({
      id,
      title: 'Milk',
      done: true,
      __lastActor: { kind: 'ai' },
      __fieldActors: { id: { kind: 'user', device: 'phone' }, title: { kind: 'user', device: 'phone' }, done: { kind: 'ai' } },
    });
    const [insert] = await outbox(store);
    expect(insert.actor).toEqual({ kind: 'user', device: 'phone' });

    await store.applyRemote([change(`{"table":"tasks","id":"${id}","op":"delete","deletedAt":"2026-01-01T00:00:00Z"}`)]);
    expect(await store.get('tasks', id)).toBeUndefined();
    await store.applyRemote([change(`{"table":"tasks","id":"${id}","op":"update","fields":{"title":{"value":"back?","at":"2100-01-01T00:00:00Z"}}}`)]);
    expect(await store.get('tasks', id)).toBeUndefined();
    expect((await store.recordState('tasks', id))?.fields.get('title')?.value).toBe('back?');
    // A delete of a record never seen leaves a tombstone: its insert stays deleted.
    await store.applyRemote([change('{"table":"tasks","id":"ghost","op":"delete","deletedAt":"2026-01-01T00:00:00Z"}')]);
    await store.applyRemote([change('{"table":"tasks","id":"ghost","op":"insert","data":{"id":"ghost"}}')]);
    expect(await store.get('tasks', 'ghost')).toBeUndefined();
  });

  it('applying changes queues nothing', async () => {
    const store = await freshStore();
    await store.applyRemote([change('{"table":"tasks","id":"x","op":"insert","data":{"id":"x","title":"from elsewhere"}}')]);
    expect(await store.pendingCount()).toBe(0);
    expect(await store.list('tasks')).toEqual([{ id: 'x', title: 'from elsewhere' }]);
  });
});

describe('queries', () => {
  it('filter and order like the Rust client (missing < null < bools < numbers < strings), then by id', async () => {
    const store = await freshStore();
    await store.insert('tasks', { id: 'b', rank: 2, done: false });
    await store.insert('tasks', { id: 'a', rank: 2, done: true });
    await store.insert('tasks', { id: 'c', rank: 'x', done: false });
    await store.insert('tasks', { id: 'd', done: false });
    await store.insert('tasks', { id: 'e', rank: null, done: false });
    await store.insert('tasks', { id: 'f', rank: 1.5, done: false });
    const ids = async (q: Parameters<typeof store.query>[0]) => (await store.query(q)).map((r) => r.id);
    expect(await ids({ collection: 'tasks' })).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(await ids({ collection: 'tasks', orderBy: 'rank' })).toEqual(['d', 'e', 'f', 'a', 'b', 'c']);
    expect(await ids({ collection: 'tasks', orderBy: '-rank' })).toEqual(['c', 'a', 'b', 'f', 'e', 'd']);
    expect(await ids({ collection: 'tasks', where: { done: false }, orderBy: 'rank', limit: 3 })).toEqual(['d', 'e', 'f']);
    expect(await ids({ collection: 'tasks', where: (r) => r.rank === 2 })).toEqual(['a', 'b']);
    expect(await ids({ collection: 'other' })).toEqual([]);
    // Paging: an offset after ordering, then the limit.
    expect(await ids({ collection: 'tasks', orderBy: 'rank', offset: 2, limit: 2 })).toEqual(['f', 'a']);
    expect(await ids({ collection: 'tasks', orderBy: 'rank', offset: 4 })).toEqual(['b', 'c']);
    expect(await ids({ collection: 'tasks', offset: 9 })).toEqual([]);
  });

  it('recordStates reads every record of a collection with its merge state, deleted ones too', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now, collections: ['tasks', 'lists'] });
    await store.insert('tasks', { id: 'b', title: 'kept' });
    await store.insert('tasks', { id: 'a', title: 'gone' });
    await store.insert('lists', { id: 'l', title: 'elsewhere' });
    await store.delete('tasks', 'a');
    const states = await store.recordStates('tasks');
    expect(states.map((s) => [s.id, s.state.fields.get('title')?.value, s.state.deleted?.at])).toEqual([
      ['a', 'gone', '2026-11-25T10:00:00.123000003Z'],
      ['b', 'kept', undefined],
    ]);
  });

  it('live reads follow local writes and applied changes', async () => {
    const store = await freshStore();
    const seen: string[][] = [];
    const subscription = store.live((s) => s.query({ collection: 'tasks', orderBy: 'title' })).subscribe((records) => seen.push(records.map((r) => String(r.title))));
    const waitFor = async (expected: string[]) => {
      await expect.poll(() => seen.at(-1)).toEqual(expected);
    };
    await waitFor([]);
    const id = await store.insert('tasks', { title: 'a' });
    await waitFor(['a']);
    await store.applyRemote([change('{"table":"tasks","id":"r","op":"insert","data":{"id":"r","title":"b"}}')]);
    await waitFor(['a', 'b']);
    await store.delete('tasks', id);
    await waitFor(['b']);
    subscription.unsubscribe();
  });
});

describe('seeds and accounts', () => {
  it('a new store is a guest with the seed, written once with the lowest timestamp', async () => {
    const seed = [{ collection: 'tasks', id: 'onboarding-1', data: { title: 'Welcome', done: false } }];
    const store = await freshStore({ seed });
    expect(await store.status()).toEqual({ kind: 'local-only' });
    expect(await store.account()).toBeUndefined();
    expect(await store.list('tasks')).toEqual([{ id: 'onboarding-1', title: 'Welcome', done: false }]);
    const [insert] = await outbox(store);
    expect(insert.fields.title.at).toBe(LOWEST_TIMESTAMP);
    store.close();
    const reopened = await sameDatabase(store, { seed });
    expect(await reopened.pendingCount()).toBe(1);
    expect(reopened.clientId).toBe(store.clientId);
    // Any real edit wins over a seed.
    await reopened.applyRemote([change('{"table":"tasks","id":"onboarding-1","op":"update","fields":{"done":{"value":true,"at":"1971-01-01T00:00:00Z"}}}')]);
    expect((await reopened.get('tasks', 'onboarding-1'))?.done).toBe(true);
  });

  it('signing in claims the guest store; another user is refused; a new server forgets the cursors', async () => {
    const store = await freshStore();
    await store.insert('tasks', { title: 'as a guest' });
    const account = await store.signIn('http://localhost:3050/', token('alice'));
    expect(account).toEqual({ user: 'alice', server: 'http://localhost:3050', token: token('alice') });
    expect(await store.pendingCount()).toBe(1);
    expect(await store.status()).toEqual({ kind: 'offline', reason: 'not synced yet' });
    await expect(store.signIn('http://localhost:3050', token('mallory'))).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'account_mismatch');
    await expect(store.signIn('http://localhost:3050', 'not-a-jwt')).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'invalid_token');

    await store.applyPage([], ['tasks', '2026-11-29T19:20:00.000000005Z']);
    await store.setAppCursor('2026-11-29T19:20:00.000000005Z');
    expect(await store.appCursor()).toBe('2026-11-29T19:20:00.000000005Z');
    await store.signIn('http://localhost:3050', token('alice'));
    expect(await store.appCursor()).toBe('2026-11-29T19:20:00.000000005Z');
    await store.signIn('https://sync.example.com', token('alice'));
    expect(await store.cursor('tasks')).toBeUndefined();
    expect(await store.appCursor()).toBeUndefined();
  });

  it('adopt takes records over unqueued, pending changes queued in this client\'s shape, and the cursors, once', async () => {
    const clock = manualClock(NOW);
    const store = await freshStore({ now: clock.now, collections: ['tasks', 'lists'] });
    const adoption = {
      records: [
        change('{"table":"tasks","id":"t1","op":"insert","data":{"id":"t1","title":"synced","updatedAt":"2026-11-20T08:00:00.000Z"}}'),
        change('{"table":"tasks","id":"t2","op":"insert","data":{"id":"t2","title":"was deleted"},"fields":{"title":{"value":"was deleted","updatedAt":"2026-11-20T08:00:00.000Z"}}}'),
        change('{"table":"tasks","id":"t2","op":"delete","deletedAt":"2026-11-21T08:00:00.000Z"}'),
      ],
      pending: [
        change('{"table":"tasks","id":"t1","op":"update","fields":{"title":{"value":"edited offline","updatedAt":"2026-11-24T09:00:00.000Z"}},"actor":{"kind":"ai"}}'),
        change('{"table":"lists","id":"l1","op":"insert","data":{"id":"l1","name":"Home","n":1.0},"fields":{"id":{"value":"l1","at":"2026-11-24T09:00:01Z"},"name":{"value":"Home","at":"2026-11-24T09:00:01Z"},"n":{"value":1.0,"at":"2026-11-24T09:00:01Z"}}}'),
        change('{"table":"tasks","id":"t3","op":"delete","deletedAt":"2026-11-24T09:00:02.000Z"}'),
      ],
      cursors: { tasks: '2026-11-22T00:00:00.000Z', lists: '2026-11-21T00:00:00.000Z' },
      server: 'http://localhost:3050/',
    };
    expect(await store.adopt('old-db', adoption)).toBe(true);
    expect(await store.get('tasks', 't1')).toMatchObject({ title: 'edited offline', __lastActor: { kind: 'ai' } });
    expect(await store.get('tasks', 't2')).toBeUndefined();
    expect(await store.get('lists', 'l1')).toEqual({ id: 'l1', name: 'Home', n: 1 });
    expect(await outbox(store)).toEqual([
      { table: 'tasks', id: 't1', op: 'update', fields: { title: { value: 'edited offline', at: '2026-11-24T09:00:00.000Z' } }, actor: { kind: 'ai' }, schemaVersion: 2 },
      {
        table: 'lists',
        id: 'l1',
        op: 'insert',
        data: { id: 'l1', n: 1, name: 'Home' },
        fields: { id: { value: 'l1', at: '2026-11-24T09:00:01Z' }, n: { value: 1, at: '2026-11-24T09:00:01Z' }, name: { value: 'Home', at: '2026-11-24T09:00:01Z' } },
        schemaVersion: 2,
      },
      { table: 'tasks', id: 't3', op: 'delete', deletedAt: '2026-11-24T09:00:02.000Z', schemaVersion: 2 },
    ]);
    // Values keep their text in the outbox (\`1.0\`).
    expect((await store.db.outbox.toArray())[1]!.change).toContain('"n":1.0');
    expect(await store.cursor('tasks')).toBe('2026-11-22T00:00:00.000Z');
    expect(await store.appCursor()).toBe('2026-11-21T00:00:00.000Z');
    // Adopted once: a second call changes nothing.
    expect(await store.adopt('old-db', adoption)).toBe(false);
    expect(await store.pendingCount()).toBe(3);
    // A later local edit is stamped after what was adopted (the clock moved past it).
    clock.set(Date.UTC(2026, 0, 1));
    await store.update('tasks', 't1', { title: 'newer' });
    expect((await outbox(store)).at(-1).fields.title.at).toBe('2026-11-24T09:00:02.000000001Z');
    // The first sign-in keeps the cursors if it is to their server.
    await store.signIn('http://localhost:3050', token('alice'));
    expect(await store.appCursor()).toBe('2026-11-21T00:00:00.000Z');
  });

  it('adopted cursors are dropped by a sign-in to another server, and never taken by a store that has its own', async () => {
    const adoption = { records: [], pending: [], cursors: { tasks: '2026-11-22T00:00:00.000Z' }, server: 'http://localhost:3050' };
    const store = await freshStore();
    await store.adopt('old-db', adoption);
    expect(await store.cursor('tasks')).toBe('2026-11-22T00:00:00.000Z');
    await store.signIn('https://sync.example.com', token('alice'));
    expect(await store.cursor('tasks')).toBeUndefined();

    const synced = await freshStore();
    await synced.signIn('http://localhost:3050', token('alice'));
    await synced.applyPage([], ['tasks', '2026-11-29T19:20:00.000000005Z']);
    expect(await synced.adopt('old-db', adoption)).toBe(true);
    expect(await synced.cursor('tasks')).toBe('2026-11-29T19:20:00.000000005Z');
    const unknown = await freshStore();
    await unknown.adopt('old-db', { ...adoption, server: undefined });
    expect(await unknown.cursor('tasks')).toBeUndefined();
  });

  it('refuses a database of another app', async () => {
    const store = await freshStore();
    await expect(sameDatabase(store, { appId: 'notes' })).rejects.toSatisfy((e) => e instanceof StoreError && e.code === 'wrong_app');
  });
});

describe('outbox and changesets', () => {
  it('a changeset keeps its id until the server acknowledged it, then leaves with the reply applied', async () => {
    const store = await freshStore({ collections: ['tasks', 'lists'] });
    for (const title of ['a', 'b', 'c']) await store.insert('tasks', { title });
    const first = await store.nextChangeset(2);
    expect(first?.changes).toHaveLength(2);
    // A retry (lost reply, closed tab) gets the same id and rows.
    const retry = await store.nextChangeset(2);
    expect(retry).toEqual(first);
    await store.insert('tasks', { title: 'd' });
    await store.finishChangeset(first!.id, {
      changes: [change('{"table":"lists","id":"l1","op":"insert","data":{"id":"l1","name":"Home"}}')],
      syncedUntil: '2026-11-29T19:20:00.000000009Z',
      hasMore: false,
    });
    expect(await store.pendingCount()).toBe(2);
    expect(await store.list('lists')).toEqual([{ id: 'l1', name: 'Home' }]);
    expect(await store.cursor('tasks')).toBe('2026-11-29T19:20:00.000000009Z');
    expect(await store.cursor('lists')).toBe('2026-11-29T19:20:00.000000009Z');
    expect(await store.appCursor()).toBe('2026-11-29T19:20:00.000000009Z');
    const second = await store.nextChangeset(500);
    expect(second?.id).not.toBe(first?.id);
    expect(second?.changes.map((c) => JSON.parse(c).data.title)).toEqual(['c', 'd']);
  });

  it('an incomplete push reply moves no cursor', async () => {
    const store = await freshStore();
    await store.insert('tasks', { title: 'a' });
    const changeset = await store.nextChangeset(10);
    await store.finishChangeset(changeset!.id, { changes: [], syncedUntil: '2026-11-29T19:20:00.000000003Z', hasMore: true });
    expect(await store.cursor('tasks')).toBeUndefined();
    expect(await store.appCursor()).toBeUndefined();
  });

  it('a refused changeset splits down to the refused change, which is set aside and can be retried or discarded', async () => {
    const store = await freshStore();
    for (const title of ['a', 'b', 'c']) await store.insert('tasks', { title });
    const whole = await store.nextChangeset(10);
    expect(await store.splitChangeset(whole!.id)).toBe(true);
    const half = await store.nextChangeset(10);
    expect(half?.changes.map((c) => JSON.parse(c).data.title)).toEqual(['a']);
    expect(await store.splitChangeset(half!.id)).toBe(false);
    expect(await store.rejectChangeset(half!.id, 'invalid_change: no')).toBe(1);
    const rest = await store.nextChangeset(10);
    expect(rest?.changes.map((c) => JSON.parse(c).data.title)).toEqual(['b', 'c']);
    expect((await store.rejected()).map((r) => [r.change.data, r.reason])).toEqual([[expect.objectContaining({ title: 'a' }), 'invalid_change: no']]);
    expect((await store.list('tasks')).map((r) => r.title)).toEqual(expect.arrayContaining(['a', 'b', 'c']));
    expect(await store.retryRejected()).toBe(1);
    expect(await store.pendingCount()).toBe(3);
    expect(await store.rejected()).toEqual([]);
    // The retried change goes to the end: the changeset already assigned goes first.
    const next = await store.nextChangeset(10);
    expect(next?.changes.map((c) => JSON.parse(c).data.title)).toEqual(['b', 'c']);
    await store.rejectChangeset(next!.id, 'again');
    expect(await store.discardRejected()).toBe(2);
    expect(await store.pendingCount()).toBe(1);
  });

  it('the app cursor is trusted only when every collection has a cursor; a page moves only its collection', async () => {
    const store = await freshStore({ collections: ['tasks', 'lists'] });
    await store.setAppCursor('2026-11-29T19:20:00.000000004Z');
    expect(await store.appCursor()).toBeUndefined();
    await store.applyPage([change('{"table":"tasks","id":"t","op":"insert","data":{"id":"t"}}')], ['tasks', '2026-11-29T19:20:00.000000004Z']);
    expect(await store.appCursor()).toBeUndefined();
    await store.applyPage([], ['lists', '2026-11-29T19:20:00.000000004Z']);
    expect(await store.appCursor()).toBe('2026-11-29T19:20:00.000000004Z');
    await store.forgetCursors();
    expect(await store.cursor('tasks')).toBeUndefined();
    expect(await store.appCursor()).toBeUndefined();
  });
});

describe('tabs', () => {
  it('two handles on one database (two tabs) share records, outbox and clock, and never share a timestamp', async () => {
    const clock = manualClock(NOW);
    const one = await freshStore({ now: clock.now });
    const two = await sameDatabase(one, { now: clock.now });
    expect(two.clientId).toBe(one.clientId);
    const ids = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? one : two).insert('tasks', { title: `t${i}` })));
    expect((await one.list('tasks')).length).toBe(20);
    expect((await two.list('tasks')).length).toBe(20);
    const stamps = (await outbox(one)).map((c) => c.fields.title.at);
    expect(new Set(stamps).size).toBe(20);
    expect([...stamps].sort()).toEqual(stamps);
    expect(new Set(ids).size).toBe(20);
  });

  it("one tab's live read sees another tab's writes", async () => {
    const one = await freshStore();
    const two = await sameDatabase(one);
    const counts: number[] = [];
    const subscription = liveQuery(() => one.pendingCount()).subscribe((n) => counts.push(n));
    await expect.poll(() => counts.at(-1)).toBe(0);
    await two.insert('tasks', { title: 'from the other tab' });
    await expect.poll(() => counts.at(-1)).toBe(1);
    subscription.unsubscribe();
  });
});
