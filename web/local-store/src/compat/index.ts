/**
 * `@mana-sync/local-store/compat`: the API of the seed package,
 * `@manacore/local-store`, on this package's engine. An app switches by
 * changing its import; its data on the device is taken over at the first
 * start (see `legacy.ts`). Svelte 5 hooks are in
 * `@mana-sync/local-store/compat/svelte`.
 *
 * ```ts
 * import { createLocalStore } from '@mana-sync/local-store/compat';
 *
 * const store = createLocalStore({ appId: 'todo', collections: [{ name: 'tasks' }], sync: { serverUrl } });
 * await store.initialize();
 * const task = await store.collection<Task>('tasks').insert({ title: 'Buy oat milk', done: false });
 * await store.startSync(() => auth.getToken()); // after sign-in
 * ```
 */

export { CompatStore, createLocalStore } from './store.ts';
export type { CollectionConfig, GetAuthToken, LocalStoreConfig, SyncConfig, SyncStatus } from './store.ts';
export { Collection } from './collection.ts';
export type { BaseRecord, NewRecord, QueryOptions } from './collection.ts';
export { StoreError } from '../errors.ts';
