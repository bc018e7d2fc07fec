/**
 * Svelte 5 reactive queries: a store read as a rune-backed value that
 * follows the database.
 *
 * ```svelte
 * <script lang="ts">
 *   import { liveQuery, liveStatus } from '@mana-sync/local-store/svelte';
 *   let { store } = $props();
 *   const todos = liveQuery(store, { collection: 'tasks', orderBy: 'createdAt' });
 *   const status = liveStatus(store);
 * </script>
 * {#each todos.current as todo (todo.id)}<p>{todo.title}</p>{/each}
 * <span>{status.current.kind}</span>
 * ```
 *
 * A {@link Live} subscribes to the database while something reactive reads
 * `current` (a template, a `$derived`, an `$effect`) and unsubscribes when
 * nothing does any more, so it can be created anywhere: in a component, in
 * a `.svelte.ts` module, at module level. It re-runs its read after every
 * write that touches what it read, in this tab or another: local writes
 * and changes applied by sync alike.
 */

import type { Observable } from 'dexie';
import { createSubscriber } from 'svelte/reactivity';

import type { StoredRecord } from './select.ts';
import type { LocalStore } from './store.ts';
import type { Query, SyncStatus } from './types.ts';

/** A value that follows an observable read of the store. */
export class Live<T> {
  #value = $state.raw<T>() as T;
  #ready = $state(false);
  #error = $state.raw<unknown>(undefined);
  #subscribe: () => void;

  constructor(observable: Observable<T>, initial: T) {
    this.#value = initial;
    this.#subscribe = createSubscriber(() => {
      const subscription = observable.subscribe({
        next: (value) => {
          this.#value = value;
          this.#ready = true;
          this.#error = undefined;
        },
        error: (error: unknown) => {
          this.#error = error;
        },
      });
      return () => subscription.unsubscribe();
    });
  }

  /** The latest result (the initial value until the first read completes). */
  get current(): T {
    this.#subscribe();
    return this.#value;
  }

  /** Whether the first read completed. */
  get ready(): boolean {
    this.#subscribe();
    return this.#ready;
  }

  /** The error of the last read, if it failed. */
  get error(): unknown {
    this.#subscribe();
    return this.#error;
  }
}

/** Any read of the store, kept current. */
export function live<T>(store: LocalStore, read: (store: LocalStore) => Promise<T>, initial: T): Live<T> {
  return new Live(store.live(read), initial);
}

/** The records a query selects, kept current (`[]` until the first read). */
export function liveQuery(store: LocalStore, query: Query): Live<StoredRecord[]> {
  return live(store, (s) => s.query(query), []);
}

/** One record, kept current (`undefined` while missing or deleted). */
export function liveRecord(store: LocalStore, collection: string, id: string): Live<StoredRecord | undefined> {
  return live(store, (s) => s.get(collection, id), undefined);
}

/** The sync status, kept current (the same in every tab). */
export function liveStatus(store: LocalStore): Live<SyncStatus> {
  return live<SyncStatus>(store, (s) => s.status(), { kind: 'local-only' });
}

/** How many local changes wait to be pushed, kept current. */
export function livePending(store: LocalStore): Live<number> {
  return live(store, (s) => s.pendingCount(), 0);
}
