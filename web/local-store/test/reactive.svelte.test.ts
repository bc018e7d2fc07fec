/** The Svelte 5 reactive queries and the tab-aware sync engine. */

import { flushSync } from 'svelte';
import { describe, expect, it } from 'vitest';

import { startSync } from '../src/tabs.ts';
import { FakeServer } from './fake-server.ts';
import { freshStore, token } from './helpers.ts';
import { follow } from './runes.svelte.ts';

describe('Svelte reactive queries', () => {
  it('follow local writes and sync, and stop reading when nothing reads them', async () => {
    const store = await freshStore();
    const seen = follow(store);
    await expect.poll(() => (flushSync(), seen.titles)).toEqual([]);
    await store.insert('tasks', { title: 'b' });
    await expect.poll(() => (flushSync(), seen.titles)).toEqual(['b']);
    await store.insert('tasks', { title: 'a' });
    await expect.poll(() => (flushSync(), seen.titles)).toEqual(['a', 'b']);
    expect(seen.status).toBe('local-only');

    // Signed in and synced by the engine: the status follows too.
    const server = new FakeServer();
    await store.signIn('http://sync.test', token('alice'));
    const sync = startSync(store, { fetch: server.fetch });
    await expect.poll(() => (flushSync(), seen.status)).toBe('synced');
    expect(sync.leader).toBe(true);
    expect(server.log).toHaveLength(2);
    await sync.stop();
    expect(sync.leader).toBe(false);
    seen.stop();
  });
});
