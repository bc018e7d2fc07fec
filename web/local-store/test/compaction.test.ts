/**
 * Sync against a compacted log (the in-memory server folds and drops like
 * the real one): folded changes, and an expired cursor answered on a push,
 * a pull and the stream, and a re-download resumed by another tab.
 */

import { describe, expect, it } from 'vitest';

import type { LocalStore } from '../src/store.ts';
import { SyncClient, type SyncOptions } from '../src/sync.ts';
import { FakeServer } from './fake-server.ts';
import { freshStore, sameDatabase, token } from './helpers.ts';

const SERVER = 'http://sync.test';

async function device(
  server: FakeServer,
  options: SyncOptions = {},
  storeOptions: Parameters<typeof freshStore>[0] = {},
): Promise<[LocalStore, SyncClient]> {
  const store = await freshStore(storeOptions);
  const account = await store.signIn(SERVER, token('alice'));
  return [store, new SyncClient(store, account, { fetch: server.fetch, minBackoffMs: 5, maxBackoffMs: 20, ...options })];
}

async function titles(store: LocalStore, collection = 'tasks'): Promise<string[]> {
  return (await store.query({ collection, orderBy: 'title' })).map((r) => String(r.title));
}

/** A device that never synced, synced now: exactly what the server holds. */
async function freshCopy(server: FakeServer, collections = ['tasks']): Promise<LocalStore> {
  const [store, sync] = await device(server, {}, { collections });
  await sync.sync();
  return store;
}

/**
 * The phone's own records (one it edits later, one it never touches: only a
 * re-download that asks for the device's own changes brings it back), one
 * the laptop keeps and edits, and one the laptop deletes.
 */
async function sharedRecords(phone: [LocalStore, SyncClient], laptop: [LocalStore, SyncClient]) {
  const own = await phone[0].insert('tasks', { title: "Phone's own", done: false });
  await phone[0].insert('tasks', { title: "Phone's quiet one" });
  const kept = await laptop[0].insert('tasks', { title: 'Kept', done: false });
  const doomed = await laptop[0].insert('tasks', { title: 'Doomed' });
  await laptop[1].sync();
  await phone[1].sync();
  await laptop[1].sync();
  return { own, kept, doomed };
}

/** The laptop deletes `doomed` and edits `kept`; compaction drops the deleted record. */
async function deleteAndDrop(server: FakeServer, laptop: [LocalStore, SyncClient], records: { kept: string; doomed: string }) {
  await laptop[0].delete('tasks', records.doomed);
  await laptop[0].update('tasks', records.kept, { done: true });
  await laptop[1].sync();
  expect(server.compact('alice', { dropDeleted: true }).dropped).toBeGreaterThanOrEqual(2);
}

describe('folded changes', () => {
  it('a device that synced before compaction pulls folded changes and ends with the whole history', async () => {
    const server = new FakeServer();
    const [phone, phoneSync] = await device(server);
    const [assistant, assistantSync] = await device(server, {}, { actor: { kind: 'ai' } });
    const [laptop, laptopSync] = await device(server);
    const [tablet, tabletSync] = await device(server);
    const milk = await phone.insert('tasks', { title: 'Milk', done: false });
    const eggs = await phone.insert('tasks', { title: 'Eggs' });
    await phoneSync.sync();
    await assistantSync.sync();
    await laptopSync.sync();
    // The tablet follows the stream throughout.
    const stop = new AbortController();
    const running = tabletSync.runLive(stop.signal);
    await expect.poll(() => tablet.status()).toMatchObject({ kind: 'synced' });

    for (let round = 0; round < 4; round++) {
      await phone.update('tasks', milk, { title: `Milk ${round}` });
      await phoneSync.sync();
    }
    await assistantSync.sync();
    await assistant.update('tasks', milk, { note: 'oat?' });
    await assistant.update('tasks', eggs, { title: 'Free-range eggs' });
    await assistant.delete('tasks', eggs);
    await assistantSync.sync();
    await phone.update('tasks', milk, { done: true });
    await phoneSync.sync();
    await assistantSync.sync();
    const full = await phone.dump();
    expect(await assistant.dump()).toEqual(full);

    expect(server.compact('alice').folded).toBeGreaterThanOrEqual(8);
    expect(server.log).toHaveLength(2);
    const folded = server.log.map((e) => e.change);
    // What only folded changes carry: a field's own actor, a delete with fields.
    expect(folded.find((c) => c.id === milk)).toMatchObject({ op: 'insert', fields: { note: { actor: { kind: 'ai' } } } });
    expect(folded.find((c) => c.id === eggs)).toMatchObject({ op: 'delete', actor: { kind: 'ai' }, fields: { id: { actor: null } } });

    await laptopSync.sync();
    expect(await laptop.dump()).toEqual(full);
    expect(await laptop.get('tasks', milk)).toMatchObject({ title: 'Milk 3', done: true, __fieldActors: { note: { kind: 'ai' } } });
    expect(await (await freshCopy(server)).dump()).toEqual(full);

    // The stream goes on after compaction.
    await phone.update('tasks', milk, { title: 'Oat milk' });
    await phoneSync.sync();
    await expect.poll(() => tablet.get('tasks', milk)).toMatchObject({ title: 'Oat milk' });
    expect(await tablet.dump()).toEqual(await phone.dump());
    stop.abort();
    await running;
  });
});

describe('an expired cursor', () => {
  it('lists the feature on every request', async () => {
    const server = new FakeServer();
    const [phone, sync] = await device(server);
    await phone.insert('tasks', { title: 'a' });
    await sync.sync();
    const stop = new AbortController();
    const running = sync.runLive(stop.signal);
    await expect.poll(() => server.seen.some((r) => r.path.endsWith('/stream'))).toBe(true);
    stop.abort();
    await running;
    const syncing = server.seen.filter((r) => r.path.startsWith('/sync/'));
    expect(new Set(syncing.map((r) => r.path.split('/').at(-1)))).toEqual(new Set(['todo', 'pull', 'stream']));
    // Every sync request lists both features (the list of spaces is the `/spaces` API's).
    expect(syncing.every((r) => r.features === 'cursor-expired, spaces')).toBe(true);
    expect(server.seen.filter((r) => !r.path.startsWith('/sync/')).map((r) => r.path)).toContain('/spaces');
  });

  it('an offline device keeps its edits: the push is stored, answered 410, the device downloads again and resends', async () => {
    const server = new FakeServer();
    const phone = await device(server);
    const laptop = await device(server);
    const tablet = await device(server);
    const records = await sharedRecords(phone, laptop);
    await tablet[1].sync();
    await phone[0].update('tasks', records.kept, { title: 'Kept, renamed offline' });
    await phone[0].update('tasks', records.own, { done: true });
    await phone[0].insert('tasks', { title: 'Written offline' });
    await deleteAndDrop(server, laptop, records);
    const changesets: string[] = [];
    server.hook = ({ method, body }) => {
      if (method === 'POST') changesets.push(String(body?.changesetId));
      return undefined;
    };
    const seenBefore = server.seen.length;

    expect(await phone[1].sync()).toMatchObject({ pushed: 3 });
    // Sent twice under one id (stored with the 410, recognised when resent).
    expect(changesets).toHaveLength(2);
    expect(changesets[1]).toBe(changesets[0]);
    expect(server.log.filter((e) => (e.change.data as { title?: string } | undefined)?.title === 'Written offline')).toHaveLength(1);
    // The re-download asked for the device's own changes too.
    const redownload = server.seen.slice(seenBefore).filter((r) => r.path.endsWith('/pull'));
    expect(redownload[0]?.clientId).toBeNull();
    expect(await phone[0].recordState('tasks', records.doomed)).toBeUndefined();
    expect(await titles(phone[0])).toEqual(['Kept, renamed offline', "Phone's own", "Phone's quiet one", 'Written offline']);
    expect(await phone[0].get('tasks', records.kept)).toMatchObject({ done: true });
    expect(await phone[0].pendingCount()).toBe(0);
    expect(await phone[0].status()).toMatchObject({ kind: 'synced' });
    expect(await phone[0].redownloadPending()).toBe(false);

    // No local edits: the pull is answered 410.
    await tablet[1].sync();
    expect(await tablet[0].recordState('tasks', records.doomed)).toBeUndefined();
    const fresh = await freshCopy(server);
    expect(await phone[0].dump()).toEqual(await fresh.dump());
    expect(await tablet[0].dump()).toEqual(await fresh.dump());
  });

  it('keeps a record whose change the server refused, even though it never came back', async () => {
    const server = new FakeServer();
    const phone = await device(server);
    const laptop = await device(server);
    const records = await sharedRecords(phone, laptop);
    server.hook = ({ method, body }) => {
      const refused = (body?.changes as { data?: { title?: string } }[] | undefined)?.some((c) => c.data?.title === 'Refused');
      return method === 'POST' && refused ? new Response('{"error":{"code":"invalid_change","message":"no"}}', { status: 400 }) : undefined;
    };
    const refused = await phone[0].insert('tasks', { title: 'Refused' });
    await phone[1].sync();
    expect(await phone[0].rejected()).toHaveLength(1);
    await deleteAndDrop(server, laptop, records);
    await phone[1].sync().catch(() => undefined);
    expect(await phone[0].recordState('tasks', records.doomed)).toBeUndefined();
    expect(await phone[0].get('tasks', refused)).toMatchObject({ title: 'Refused' });
  });

  it('the stream’s cursor-expired event starts a re-download at once', async () => {
    const server = new FakeServer();
    // Retries far slower than the test: only the event's own handling is in time.
    const phone = await device(server, { minBackoffMs: 600_000, maxBackoffMs: 600_000 });
    const laptop = await device(server);
    const records = await sharedRecords(phone, laptop);
    // The phone pulls, then is held before its stream while the record is dropped.
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    let holding = false;
    server.hook = async ({ path }) => {
      if (!path.endsWith('/stream') || holding) return undefined;
      holding = true;
      await held;
      return undefined;
    };
    const stop = new AbortController();
    const running = phone[1].runLive(stop.signal);
    await expect.poll(() => holding).toBe(true);
    expect(await phone[0].pendingCount()).toBe(0);
    await deleteAndDrop(server, laptop, records);
    release();

    await expect.poll(() => phone[0].recordState('tasks', records.doomed)).toBeUndefined();
    await expect.poll(() => server.openStreams).toBe(1);
    await phone[0].update('tasks', records.kept, { title: 'Kept, renamed' });
    await expect.poll(() => phone[0].pendingCount()).toBe(0);
    // The outbox empties in the reply's transaction; the status follows it.
    await expect.poll(() => phone[0].status()).toMatchObject({ kind: 'synced' });
    stop.abort();
    await running;
    await laptop[1].sync();
    expect(await titles(laptop[0])).toEqual(['Kept, renamed', "Phone's own", "Phone's quiet one"]);
    expect(await phone[0].dump()).toEqual(await (await freshCopy(server)).dump());
  });

  it('a re-download interrupted midway resumes in another tab, before anything is pushed', async () => {
    const server = new FakeServer();
    const collections = ['tasks', 'notes'];
    const phone = await device(server, {}, { collections });
    const laptop = await device(server, {}, { collections });
    const records = await sharedRecords(phone, laptop);
    await laptop[0].insert('notes', { title: 'A note' });
    await laptop[1].sync();
    await phone[1].sync();
    await phone[0].update('tasks', records.own, { title: 'Own, renamed' });
    await deleteAndDrop(server, laptop, records);

    // The re-download pulls `tasks`, then fails on `notes`.
    server.hook = ({ path, query }) =>
      path.endsWith('/pull') && query.get('collection') === 'notes' ? new Response('{"error":{"code":"unavailable","message":"down"}}', { status: 503 }) : undefined;
    await expect(phone[1].sync()).rejects.toMatchObject({ kind: 'offline' });
    expect(await phone[0].redownloadPending()).toBe(true);
    expect(await phone[0].pendingCount()).toBe(1);
    expect(await phone[0].recordState('tasks', records.doomed)).toBeDefined();

    // The tab closes; another one syncs.
    phone[0].close();
    server.hook = undefined;
    const tab = await sameDatabase(phone[0]);
    const account = (await tab.account())!;
    await new SyncClient(tab, account, { fetch: server.fetch }).sync();
    expect(await tab.recordState('tasks', records.doomed)).toBeUndefined();
    expect(await tab.pendingCount()).toBe(0);
    expect(await titles(tab)).toEqual(['Kept', 'Own, renamed', "Phone's quiet one"]);
    expect(await titles(tab, 'notes')).toEqual(['A note']);
    expect(await tab.dump()).toEqual(await (await freshCopy(server, collections)).dump());
  });
});
