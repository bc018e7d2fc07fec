/**
 * `@mana-sync/local-store/compat/svelte`: the seed package's Svelte 5 hooks.
 *
 * ```svelte
 * <script lang="ts">
 *   import { useLiveQueryWithDefault, useSyncStatus } from '@mana-sync/local-store/compat/svelte';
 *   const tasks = useLiveQueryWithDefault(() => store.collection<Task>('tasks').getAll({ done: false }), []);
 *   const sync = useSyncStatus(store);
 * </script>
 * {#each tasks.value as task (task.id)}<p>{task.title}</p>{/each}
 * <span>{sync.status}</span>
 * ```
 *
 * A query re-runs whenever what it read changes: local writes, changes
 * applied by sync, and other tabs' writes (Dexie's live queries, through
 * the package's {@link Live}). It reads the database while something
 * reactive reads it, and stops when nothing does.
 */

import { liveQuery } from 'dexie';
import { createSubscriber } from 'svelte/reactivity';

import { Live } from '../svelte.svelte.ts';
import type { CompatStore, SyncStatus } from './store.ts';

/** A query's latest result. */
export interface LiveQueryResult<T> {
  /** The latest result (`undefined` until the first one, or the default). */
  readonly value: T;
  /** Whether the first result is still awaited. */
  readonly loading: boolean;
  /** The error of the last run, if it failed. */
  readonly error: unknown;
}

function result<T>(live: Live<T>): LiveQueryResult<T> {
  return {
    get value() {
      return live.current;
    },
    get loading() {
      return !live.ready && live.error === undefined;
    },
    get error() {
      return live.error;
    },
  };
}

/** Runs `querier` and again whenever what it read changes; `value` is `undefined` until the first result. */
export function useLiveQuery<T>(querier: () => Promise<T> | T): LiveQueryResult<T | undefined> {
  return result(new Live<T | undefined>(liveQuery(querier), undefined));
}

/** {@link useLiveQuery} with `defaultValue` until the first result. */
export function useLiveQueryWithDefault<T>(querier: () => Promise<T> | T, defaultValue: T): LiveQueryResult<T> {
  return result(new Live<T>(liveQuery(querier), defaultValue));
}

/** The store's sync status, kept current. */
export function useSyncStatus(store: CompatStore): { readonly status: SyncStatus; readonly isSyncing: boolean } {
  const subscribe = createSubscriber((update) => store.onStatusChange(update));
  return {
    get status() {
      subscribe();
      return store.syncStatus;
    },
    get isSyncing() {
      subscribe();
      return store.isSyncing;
    },
  };
}
