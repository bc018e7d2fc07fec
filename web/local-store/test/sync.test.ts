/** Sync against an in-memory server with injected faults: push, pull, refusals, the live stream. */

import { describe, expect, it } from 'vitest';

import { SyncError } from '../src/errors.ts';
import type { LocalStore } from '../src/store.ts';
import { SyncClient, type SyncOptions } from '../src/sync.ts';
import { FakeServer } from './fake-server.ts';
import { freshStore, token } from './helpers.ts';

const SERVER = 'http://sync.test';

async function device(server: FakeServer, user = 'alice', options: SyncOptions = {}, collections = ['tasks']): Promise<[LocalStore, SyncClient]> {
  const store = await freshStore({ collections });
  const account = await store.signIn(SERVER, token(user));
  return [store, new SyncClient(store, account, { fetch: server.fetch, minBackoffMs: 5, maxBackoffMs: 20, ...options })];
}

async function titles(store: LocalStore): Promise<string[]> {
  return (await store.query({ collection: 'tasks', orderBy: 'title' })).map((r) => String(r.title));
}

describe('push and pull', () => {
  it('brings two devices of one user together, and leaves other users alone', async () => {
    const server = new FakeServer();
    const [phone, phoneSync] = await device(server);
    const [laptop, laptopSync] = await device(server);
    const [, bobSync] = await device(server, 'bob');
    const id = await phone.insert('tasks', { title: 'Milk' });
    expect(await phoneSync.sync()).toEqual({ pushed: 1, received: 0, rejected: 0 });
    expect(await phone.status()).toMatchObject({ kind: 'synced' });
    expect(await phone.pendingCount()).toBe(0);

    await laptop.insert('tasks', { title: 'Bread' });
    expect(await laptopSync.sync()).toMatchObject({ pushed: 1, received: 1 });
    await laptop.update('tasks', id, { title: 'Oat milk' });
    await laptopSync.sync();
    await phoneSync.sync();
    expect(await titles(phone)).toEqual(['Bread', 'Oat milk']);
    expect(await titles(laptop)).toEqual(['Bread', 'Oat milk']);
    expect(await bobSync.sync()).toMatchObject({ received: 0 });

    const pushed = server.log.filter((e) => e.user === 'alice');
    expect(pushed).toHaveLength(3);
    // Pushes carry the changeset id and schema version 2, and the device id header.
    expect(server.requests.filter((r) => r.startsWith('POST')).length).toBeGreaterThanOrEqual(3);
  });

  it('a lost reply is followed by a resend of the same changeset, stored once', async () => {
    const server = new FakeServer();
    const [phone, sync] = await device(server);
    await phone.insert('tasks', { title: 'once' });
    let bodies: string[] = [];
    server.hook = ({ method, body }) => {
      if (method !== 'POST') return undefined;
      bodies.push(String(body?.changesetId));
      return bodies.length === 1 ? 'lose-reply' : undefined;
    };
    await expect(sync.sync()).rejects.toSatisfy((e) => e instanceof SyncError && e.kind === 'offline');
    expect(await phone.status()).toMatchObject({ kind: 'offline' });
    expect(await phone.pendingCount()).toBe(1);
    await sync.sync();
    expect(bodies).toHaveLength(2);
    expect(bodies[1]).toBe(bodies[0]);
    expect(server.log).toHaveLength(1);
    expect(await phone.pendingCount()).toBe(0);
    bodies = [];
  });

  it('pulls page by page, and saves a cursor only after the last page', async () => {
    const server = new FakeServer();
    const [phone, phoneSync] = await device(server);
    for (let i = 0; i < 5; i++) await phone.insert('tasks', { title: `t${i}` });
    await phoneSync.sync();
    const [laptop, laptopSync] = await device(server, 'alice', { pageSize: 2 });
    let pages = 0;
    server.hook = ({ path }) => (path.endsWith('/pull') && ++pages === 2 ? new Response('{"error":{"code":"unavailable","message":"down"}}', { status: 503 }) : undefined);
    await expect(laptopSync.pull()).rejects.toSatisfy((e) => e instanceof SyncError && e.kind === 'offline' && e.status === 503);
    // The first page was applied, but the cursor did not move.
    expect(await titles(laptop)).toEqual(['t0', 't1']);
    expect(await laptop.cursor('tasks')).toBeUndefined();
    server.hook = undefined;
    pages = 0;
    await laptopSync.pull();
    expect(await titles(laptop)).toEqual(['t0', 't1', 't2', 't3', 't4']);
    expect(await laptop.cursor('tasks')).toBe(server.cursorAfter(5));
    expect(await laptop.appCursor()).toBe(server.cursorAfter(5));
  });

  it('starts over when the server does not know the cursor', async () => {
    const server = new FakeServer();
    const [phone, sync] = await device(server);
    await phone.insert('tasks', { title: 'a' });
    await sync.sync();
    await phone.applyPage([], ['tasks', 'c9.unknown']);
    await phone.setAppCursor('c9.unknown');
    await phone.insert('tasks', { title: 'b' });
    await sync.sync();
    expect(await phone.cursor('tasks')).toBe(server.cursorAfter(2));
    expect(server.log).toHaveLength(2);
  });

  it('sets a refused change aside and pushes the rest', async () => {
    const server = new FakeServer();
    const [phone, sync] = await device(server);
    for (const title of ['a', 'bad', 'c', 'd']) await phone.insert('tasks', { title });
    server.hook = ({ method, body }) => {
      const refused = (body?.changes as { data?: { title?: string } }[] | undefined)?.some((c) => c.data?.title === 'bad');
      return method === 'POST' && refused ? new Response('{"error":{"code":"invalid_change","message":"changes[1]: no"}}', { status: 400 }) : undefined;
    };
    expect(await sync.sync()).toMatchObject({ pushed: 3, rejected: 1 });
    expect(server.log.map((e) => (e.change.data as { title: string }).title)).toEqual(['a', 'c', 'd']);
    const status = await phone.status();
    expect(status.kind).toBe('error');
    expect(status.kind === 'error' && status.reason).toContain('invalid_change');
    expect((await phone.rejected())[0]?.reason).toContain('changes[1]: no');
    expect(await titles(phone)).toEqual(['a', 'bad', 'c', 'd']);
    await phone.discardRejected();
    await sync.sync();
    expect(await phone.status()).toMatchObject({ kind: 'synced' });
  });

  it('a refused token is an error that needs a new one; an unreachable server is offline', async () => {
    const server = new FakeServer();
    const [phone, sync] = await device(server);
    await phone.insert('tasks', { title: 'kept' });
    server.revoked.add('alice');
    await expect(sync.sync()).rejects.toSatisfy((e) => e instanceof SyncError && e.kind === 'unauthorized');
    expect(await phone.status()).toMatchObject({ kind: 'error', signInAgain: true });
    server.revoked.clear();
    const unreachable = new SyncClient(phone, { server: 'http://nowhere.test', token: token('alice') }, {
      fetch: () => Promise.reject(new TypeError('Failed to fetch')),
    });
    await expect(unreachable.sync()).rejects.toSatisfy((e) => e instanceof SyncError && e.kind === 'offline');
    const status = await phone.status();
    expect(status.kind === 'offline' && status.reason).toContain('cannot reach the sync server at http://nowhere.test');
    expect(await phone.pendingCount()).toBe(1);
  });
});

describe('live', () => {
  it('receives other devices’ changes from the stream, pushes local writes, and reconnects', async () => {
    const server = new FakeServer();
    const [phone, phoneSync] = await device(server);
    const [laptop, laptopSync] = await device(server);
    const stop = new AbortController();
    const running = laptopSync.runLive(stop.signal);
    await expect.poll(() => laptop.status()).toMatchObject({ kind: 'synced' });
    expect(server.openStreams).toBe(1);

    await phone.insert('tasks', { title: 'from the phone' });
    await phoneSync.sync();
    await expect.poll(() => titles(laptop)).toEqual(['from the phone']);
    expect(await laptop.cursor('tasks')).toBe(server.cursorAfter(1));

    await laptop.insert('tasks', { title: 'from the laptop' });
    await expect.poll(() => laptop.pendingCount()).toBe(0);
    await phoneSync.sync();
    expect(await titles(phone)).toEqual(['from the laptop', 'from the phone']);

    // The server goes away: offline, then back and caught up.
    server.closeStreams();
    await phone.insert('tasks', { title: 'while reconnecting' });
    await phoneSync.sync();
    await expect.poll(() => titles(laptop)).toEqual(['from the laptop', 'from the phone', 'while reconnecting']);
    await expect.poll(() => laptop.status()).toMatchObject({ kind: 'synced' });
    server.heartbeat();

    stop.abort();
    await running;
    expect(server.openStreams).toBe(0);
  });

  it('keeps a quiet stream open past the request timeout, which covers opening it only', async () => {
    const server = new FakeServer();
    const [laptop, sync] = await device(server, 'alice', { requestTimeoutMs: 50 });
    const stop = new AbortController();
    const running = sync.runLive(stop.signal);
    await expect.poll(() => laptop.status()).toMatchObject({ kind: 'synced' });
    const opened = Date.now();
    // Three timeouts' worth of silence, then a change arrives on the same stream.
    await expect.poll(() => Date.now() - opened, { interval: 50 }).toBeGreaterThan(200);
    const [phone, phoneSync] = await device(server);
    await phone.insert('tasks', { title: 'still connected' });
    await phoneSync.sync();
    await expect.poll(() => titles(laptop)).toEqual(['still connected']);
    expect(server.requests.filter((r) => r.endsWith('/stream'))).toHaveLength(1);
    stop.abort();
    await running;
  });

  it('stops at once when stopped just before the stream opens', async () => {
    const server = new FakeServer();
    const [laptop, sync] = await device(server);
    const stop = new AbortController();
    // Stopped while the stream's cursor is read (after the pull): the stream must not open.
    const appCursor = laptop.appCursor.bind(laptop);
    laptop.appCursor = () => {
      if (server.requests.some((r) => r.endsWith('/pull'))) stop.abort();
      return appCursor();
    };
    await sync.runLive(stop.signal);
    expect(server.requests.filter((r) => r.endsWith('/stream'))).toEqual([]);
    expect(server.openStreams).toBe(0);
  });

  it('stops at once when stopped while it records a failure, not after the backoff', async () => {
    const server = new FakeServer();
    const [laptop, sync] = await device(server, 'alice', { minBackoffMs: 60_000, maxBackoffMs: 60_000 });
    server.hook = () => new Response('{"error":{"code":"unavailable","message":"down"}}', { status: 503 });
    const stop = new AbortController();
    const setStatus = laptop.setStatus.bind(laptop);
    laptop.setStatus = (status) => {
      if (status.kind === 'offline') stop.abort();
      return setStatus(status);
    };
    await sync.runLive(stop.signal);
    expect(await laptop.status()).toMatchObject({ kind: 'offline' });
  });

  it('stops when the server refuses the token', async () => {
    const server = new FakeServer();
    const [laptop, sync] = await device(server);
    server.revoked.add('alice');
    await expect(sync.runLive(new AbortController().signal)).rejects.toSatisfy((e) => e instanceof SyncError && e.kind === 'unauthorized');
    expect(await laptop.status()).toMatchObject({ kind: 'error' });
  });

  it('asks for a new token when the server ends the stream because the token expired', async () => {
    const server = new FakeServer();
    const [laptop, sync] = await device(server);
    let streams = 0;
    server.hook = ({ path }) => {
      if (!path.endsWith('/stream') || ++streams > 1) return undefined;
      // What mana-sync sends when the stream's token expires; from then on
      // the token is refused.
      server.revoked.add('alice');
      const body = 'event: error\ndata: {"error":{"code":"token_expired","message":"the token has expired; reconnect with a fresh one"}}\n\n';
      return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
    };
    await expect(sync.runLive(new AbortController().signal)).rejects.toSatisfy((e) => e instanceof SyncError && e.kind === 'unauthorized');
    expect(streams).toBe(1);
    expect(await laptop.status()).toMatchObject({ kind: 'error', signInAgain: true });
  });

  it('reconnects after a stream error event', async () => {
    const server = new FakeServer();
    const [laptop, sync] = await device(server);
    let streams = 0;
    server.hook = ({ path }) => {
      if (!path.endsWith('/stream') || ++streams > 1) return undefined;
      const body = 'event: error\ndata: {"error":{"code":"unavailable","message":"the database went away"}}\n\n';
      return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
    };
    const stop = new AbortController();
    const running = sync.runLive(stop.signal);
    await expect.poll(() => streams).toBeGreaterThanOrEqual(2);
    await expect.poll(() => laptop.status()).toMatchObject({ kind: 'synced' });
    stop.abort();
    await running;
  });
});
