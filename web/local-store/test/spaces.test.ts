/**
 * Shared spaces in the browser client: records keep their space and every
 * change names it, one space's refusal does not hold back the others,
 * leaving (told by a reply, by the stream, or done here) drops the space,
 * and the typed `/spaces` API. Another member's changes reaching this
 * device is the real server's part: see web/e2e/spaces.spec.ts.
 */

import { describe, expect, it } from 'vitest';

import { StoreError, SyncError } from '../src/errors.ts';
import { SpacesApi } from '../src/spaces.ts';
import { withoutSpaces } from '../src/store-spaces.ts';
import type { LocalStore } from '../src/store.ts';
import { SyncClient } from '../src/sync.ts';
import { FakeServer } from './fake-server.ts';
import { freshStore, token } from './helpers.ts';

const SERVER = 'http://sync.test';

async function device(server: FakeServer, user = 'alice'): Promise<[LocalStore, SyncClient, SpacesApi]> {
  const store = await freshStore();
  const account = await store.signIn(SERVER, token(user));
  return [store, new SyncClient(store, account, { fetch: server.fetch, minBackoffMs: 5, maxBackoffMs: 20 }), new SpacesApi(store, { fetch: server.fetch })];
}

/** The outbox's changes, parsed. */
async function outbox(store: LocalStore): Promise<Record<string, unknown>[]> {
  return (await store.db.outbox.orderBy('seq').toArray()).map((row) => JSON.parse(row.change) as Record<string, unknown>);
}

async function titles(store: LocalStore): Promise<string[]> {
  return (await store.query({ collection: 'tasks', orderBy: 'title' })).map((r) => String(r.title));
}

describe('a record in a shared space', () => {
  it('keeps its space: every change names it, reads show it, and it cannot move', async () => {
    const store = await freshStore();
    const shared = await store.insert('tasks', { title: 'Milk', spaceId: 'house' });
    const mine = await store.insert('tasks', { title: 'Tax return' });
    await store.update('tasks', shared, { done: true });
    await store.update('tasks', shared, { title: 'Oat milk', spaceId: 'house' });
    await store.delete('tasks', shared);

    const changes = await outbox(store);
    expect(changes.map((c) => [c.op, c.id, c.spaceId])).toEqual([
      ['insert', shared, 'house'],
      ['insert', mine, undefined],
      ['update', shared, 'house'],
      ['update', shared, 'house'],
      ['delete', shared, 'house'],
    ]);
    // The space is where the record lives, not one of its fields.
    expect(changes[0]!.data).not.toHaveProperty('spaceId');
    expect(await store.get('tasks', mine)).not.toHaveProperty('spaceId');

    const other = await store.insert('tasks', { title: 'Bread', spaceId: 'house' });
    expect(await store.get('tasks', other)).toMatchObject({ title: 'Bread', spaceId: 'house' });
    expect(await store.query({ collection: 'tasks', where: { spaceId: 'house' } })).toHaveLength(1);
    for (const move of [{ spaceId: 'office' }, { spaceId: null }]) {
      await expect(store.update('tasks', other, move)).rejects.toMatchObject({ code: 'invalid_input' });
    }
    await expect(store.update('tasks', mine, { spaceId: 'house' })).rejects.toBeInstanceOf(StoreError);
    await expect(store.insert('tasks', { title: 'x', spaceId: 'a~b' })).rejects.toMatchObject({ code: 'invalid_input' });
  });

  it('takes its space from the changes it receives, and keeps it through later ones', async () => {
    const store = await freshStore();
    const at = '2026-11-25T10:00:00.000Z';
    await store.applyRemote([
      { table: 'tasks', id: 'r1', op: 'insert', spaceId: 'house', data: new Map([['title', { value: 'Milk', raw: '"Milk"' }]]) },
    ]);
    await store.applyRemote([{ table: 'tasks', id: 'r1', op: 'update', fields: new Map([['done', { value: true, raw: 'true', at }]]) }]);
    expect(await store.get('tasks', 'r1')).toMatchObject({ title: 'Milk', done: true, spaceId: 'house' });
    await store.update('tasks', 'r1', { done: false });
    expect((await outbox(store)).at(-1)).toMatchObject({ op: 'update', spaceId: 'house' });
  });
});

describe('pushing into spaces', () => {
  it('a space the server refuses is set aside with its reason, and every other change is stored', async () => {
    const server = new FakeServer();
    server.spaces.set('house', { name: 'House', members: new Map([['alice', 'editor']]) });
    server.spaces.set('office', { name: 'Office', members: new Map([['alice', 'viewer']]) });
    const [store, sync] = await device(server);
    await store.insert('tasks', { title: 'mine 1' });
    await store.insert('tasks', { title: 'office 1', spaceId: 'office' });
    await store.insert('tasks', { title: 'house 1', spaceId: 'house' });
    await store.insert('tasks', { title: 'office 2', spaceId: 'office' });
    await store.insert('tasks', { title: 'mine 2' });

    const report = await sync.sync();
    expect(report).toMatchObject({ pushed: 3, rejected: 2 });
    expect(server.log.map((e) => (e.change.data as { title: string }).title).sort()).toEqual(['house 1', 'mine 1', 'mine 2']);
    const rejected = await store.rejected();
    expect(rejected.map((r) => (r.change.data as { title: string }).title)).toEqual(['office 1', 'office 2']);
    expect(rejected[0]!.reason).toMatch(/space_forbidden.*office/);
    // Local data is untouched; the status says what happened.
    expect(await titles(store)).toEqual(['house 1', 'mine 1', 'mine 2', 'office 1', 'office 2']);
    expect(await store.status()).toMatchObject({ kind: 'error', reason: expect.stringContaining('space_forbidden') });
    expect(await store.pendingCount()).toBe(0);

    // Made an editor, the refused changes go through when retried.
    server.spaces.get('office')!.members.set('alice', 'editor');
    expect(await store.retryRejected()).toBe(2);
    expect(await sync.sync()).toMatchObject({ pushed: 2, rejected: 0 });
    expect(await store.status()).toMatchObject({ kind: 'synced' });
  });
});

describe('leaving a space', () => {
  it('removedSpaces in a reply drops the space’s records; other spaces and personal records stay', async () => {
    const server = new FakeServer();
    server.spaces.set('house', { name: 'House', members: new Map([['alice', 'editor']]) });
    server.spaces.set('office', { name: 'Office', members: new Map([['alice', 'editor']]) });
    const [store, sync] = await device(server);
    await store.insert('tasks', { title: 'mine' });
    await store.insert('tasks', { title: 'milk', spaceId: 'house' });
    const report = await store.insert('tasks', { title: 'report', spaceId: 'office' });
    await store.delete('tasks', report);
    await store.insert('tasks', { title: 'slides', spaceId: 'office' });
    await sync.sync();
    expect((await store.spaces()).map((s) => s.name)).toEqual(['House', 'Office']);

    server.setMember('office', 'alice', undefined);
    await sync.sync();
    expect(await titles(store)).toEqual(['milk', 'mine']);
    // Tombstones go too: nothing of the space is left.
    expect(await store.recordState('tasks', report)).toBeUndefined();
    expect((await store.spaces()).map((s) => s.name)).toEqual(['House']);
    expect(await store.status()).toMatchObject({ kind: 'synced' });
  });

  it('cuts the space’s part out of every cursor, so joining again downloads it from the start', async () => {
    const store = await freshStore({ collections: ['tasks', 'notes'] });
    const a = '2026-11-25T10:00:00.000000001Z';
    const b = '2026-11-25T10:00:00.000000002Z';
    await store.applyPage([], ['tasks', `${a}~house=${b}~office=${a}`]);
    await store.applyPage([], ['notes', `${b}~office=${b}`]);
    await store.setAppCursor(`${a}~house=${a}~office=${a}`);
    await store.insert('tasks', { title: 'report', spaceId: 'office' });
    expect(await store.dropSpaces(['office'])).toBe(1);
    expect(await store.cursor('tasks')).toBe(`${a}~house=${b}`);
    expect(await store.cursor('notes')).toBe(b);
    expect(await store.db.meta.get('appCursor')).toMatchObject({ value: `${a}~house=${a}` });
    expect(withoutSpaces(`${a}!5~house=${b}!7`, new Set(['house']))).toBe(`${a}!5`);
    expect(withoutSpaces(a, new Set(['house']))).toBe(a);
  });

  it('the stream tells this device at once: space-added lists the space, space-removed drops it', async () => {
    const server = new FakeServer();
    server.spaces.set('house', { name: 'House', members: new Map([['bob', 'owner']]) });
    const [store, sync] = await device(server);
    const stop = new AbortController();
    const running = sync.runLive(stop.signal);
    await expect.poll(() => server.openStreams).toBe(1);

    server.setMember('house', 'alice', 'viewer');
    await expect.poll(() => store.spaces()).toEqual([{ id: 'house', name: 'House', role: 'viewer' }]);
    server.setMember('house', 'alice', 'editor');
    await expect.poll(async () => (await store.spaces())[0]?.role).toBe('editor');
    await store.insert('tasks', { title: 'milk', spaceId: 'house' });
    await store.insert('tasks', { title: 'mine' });
    await expect.poll(() => store.pendingCount()).toBe(0);

    server.setMember('house', 'alice', undefined);
    await expect.poll(() => titles(store)).toEqual(['mine']);
    expect(await store.spaces()).toEqual([]);
    stop.abort();
    await running;
  });
});

describe('the spaces API', () => {
  it('creates, lists, shares, changes roles, removes members and leaves', async () => {
    const server = new FakeServer();
    const [alice, , aliceApi] = await device(server, 'alice');
    const [bob, , bobApi] = await device(server, 'bob');

    const house = await aliceApi.create('House');
    expect(house).toEqual({ id: house.id, name: 'House', role: 'owner' });
    expect((await aliceApi.get(house.id)).members).toEqual([{ userId: 'alice', role: 'owner' }]);
    expect(await alice.spaces()).toEqual([{ id: house.id, name: 'House', role: 'owner' }]);

    expect(await aliceApi.setRole(house.id, 'bob', 'viewer')).toEqual({ userId: 'bob', role: 'viewer' });
    expect(await bobApi.list()).toEqual([{ id: house.id, name: 'House', role: 'viewer' }]);
    expect(await bob.spaces()).toEqual([{ id: house.id, name: 'House', role: 'viewer' }]);
    await aliceApi.setRole(house.id, 'bob', 'editor');
    const details = await aliceApi.get(house.id);
    expect(details.members).toEqual([
      { userId: 'alice', role: 'owner' },
      { userId: 'bob', role: 'editor' },
    ]);

    // Only owners manage members: the server's refusal comes back typed.
    const refused = await bobApi.setRole(house.id, 'carol', 'editor').catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(SyncError);
    expect(refused).toMatchObject({ status: 403, code: 'forbidden' });
    // The last owner cannot leave, and keeps the space's records.
    await alice.insert('tasks', { title: 'bread', spaceId: house.id });
    await expect(aliceApi.leave(house.id)).rejects.toMatchObject({ status: 409, code: 'last_owner' });
    expect(await titles(alice)).toEqual(['bread']);
    expect(await alice.spaces()).toHaveLength(1);

    await bob.insert('tasks', { title: 'milk', spaceId: house.id });
    await bob.insert('tasks', { title: 'mine' });
    await bobApi.leave(house.id);
    expect(await titles(bob)).toEqual(['mine']);
    expect(await bob.spaces()).toEqual([]);
    expect((await aliceApi.get(house.id)).members).toEqual([{ userId: 'alice', role: 'owner' }]);

    await aliceApi.setRole(house.id, 'bob', 'editor');
    await aliceApi.removeMember(house.id, 'bob');
    expect(await bobApi.list()).toEqual([]);
  });

  it('needs an account', async () => {
    const store = await freshStore();
    await expect(new SpacesApi(store).list()).rejects.toMatchObject({ kind: 'unauthorized', code: 'not_signed_in' });
  });
});
