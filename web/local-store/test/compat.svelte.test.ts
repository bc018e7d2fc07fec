/** The compat Svelte hooks: useLiveQuery, useLiveQueryWithDefault, useSyncStatus. */

import { flushSync } from 'svelte';
import { describe, expect, it } from 'vitest';

import { parseJson } from '../src/json.ts';
import { readChange } from '../src/merge.ts';
import { follow } from './compat-runes.svelte.ts';
import { FakeServer } from './fake-server.ts';
import { compatStore, token } from './helpers.ts';

describe('compat Svelte hooks', () => {
  it('re-run on local writes, sync and other tabs; report loading and errors; follow the sync status', async () => {
    const server = new FakeServer();
    const store = compatStore({ sync: { serverUrl: 'http://sync.test' }, engine: { fetch: server.fetch } });
    await store.initialize();
    let fail = false;
    const seen = follow(store, () => fail);
    // Before the first result: no value (or the default), loading.
    flushSync();
    expect(seen.titles).toBeUndefined();
    expect(seen.loading).toBe(true);
    expect(seen.open).toBe(-1);
    await expect.poll(() => (flushSync(), seen.titles)).toEqual([]);
    expect(seen.loading).toBe(false);
    expect(seen.open).toBe(0);

    const tasks = store.collection<{ id: string; title: string; done: boolean }>('tasks');
    const b = await tasks.insert({ title: 'b', done: false });
    await expect.poll(() => (flushSync(), seen.titles)).toEqual(['b']);
    await tasks.update(b.id, { done: true });
    await expect.poll(() => (flushSync(), seen.open)).toBe(0);
    // A change applied by sync.
    await store.core.applyRemote([readChange(parseJson('{"table":"tasks","id":"r","op":"insert","data":{"id":"r","title":"a","done":false}}'))]);
    await expect.poll(() => (flushSync(), seen.titles)).toEqual(['a', 'b']);
    expect(seen.open).toBe(1);
    // Another tab's write (a second store on the same database).
    const tab = compatStore({ ...store.config });
    await tab.initialize();
    await tab.collection('tasks').delete('r');
    await expect.poll(() => (flushSync(), seen.titles)).toEqual(['b']);
    expect(seen.failing).toEqual({ loading: false, error: undefined });
    fail = true;
    await tasks.insert({ title: 'c', done: false });
    await expect.poll(() => (flushSync(), (seen.failing.error as Error | undefined)?.message)).toBe('refused after 2');
    expect(seen.failing.loading).toBe(false);

    expect(seen.status).toBe('idle');
    await store.startSync(async () => token('alice'));
    await expect.poll(() => (flushSync(), seen.status)).toBe('synced');
    expect(seen.isSyncing).toBe(false);
    await store.stopSync();
    await expect.poll(() => (flushSync(), seen.status)).toBe('idle');
    seen.stop();
    await tab.close();
    await store.close();
  });
});
