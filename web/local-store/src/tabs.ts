/**
 * One tab syncs, every tab sees the data.
 *
 * All tabs of an origin share one IndexedDB database, so a store's records,
 * outbox and status are already common to them; what must not be common is
 * the work of syncing (two tabs pushing one outbox would send each changeset
 * twice, and open two streams). {@link startSync} asks for a Web Lock named
 * after the database: the tab that holds it syncs, the others wait in the
 * lock's queue, and when the syncing tab closes (or crashes) the browser
 * hands the lock to the next one. Writes made in any tab reach the syncing
 * tab through IndexedDB itself (Dexie's `liveQuery` observes other tabs'
 * commits), and changes it applies reach every tab the same way.
 *
 * Without Web Locks (an insecure context), every tab syncs: still correct
 * (pushes are idempotent, merges commutative), just twice the traffic.
 */

import { liveQuery } from 'dexie';

import type { LocalStore } from './store.ts';
import type { Account } from './types.ts';
import { SyncClient, type SyncOptions } from './sync.ts';

/** A running sync engine. */
export interface SyncHandle {
  /** Whether this tab is the one syncing. */
  readonly leader: boolean;
  /** Stops syncing in this tab (and lets another tab take over). */
  stop(): Promise<void>;
}

/**
 * Syncs `store` whenever it is signed in, from one tab at a time: follows
 * the live stream, pushes local writes, reconnects with backoff. Signing in
 * (in any tab) starts it; a new token restarts it.
 */
export function startSync(store: LocalStore, options: SyncOptions = {}): SyncHandle {
  const stopped = new AbortController();
  let leader = false;
  let finished: Promise<void> = Promise.resolve();

  const lead = async () => {
    leader = true;
    try {
      await followAccount(store, options, stopped.signal);
    } finally {
      leader = false;
    }
  };

  const locks = typeof navigator === 'undefined' ? undefined : navigator.locks;
  if (locks) {
    finished = locks
      .request(`mana-sync/${store.db.name}`, { signal: stopped.signal }, lead)
      .then(() => undefined)
      .catch((error: unknown) => {
        if (!stopped.signal.aborted) console.error('mana-sync: sync stopped', error);
      });
  } else {
    finished = lead().catch((error: unknown) => console.error('mana-sync: sync stopped', error));
  }

  return {
    get leader() {
      return leader;
    },
    async stop() {
      stopped.abort();
      await finished;
    },
  };
}

function sameAccount(a: Account | undefined, b: Account | undefined): boolean {
  return a?.user === b?.user && a?.server === b?.server && a?.token === b?.token;
}

/** Runs live sync for the store's account, restarting it when the account changes, until `signal` aborts. */
async function followAccount(store: LocalStore, options: SyncOptions, signal: AbortSignal): Promise<void> {
  let current: Account | undefined;
  let run: { controller: AbortController; done: Promise<void> } | undefined;

  const restart = async (account: Account | undefined) => {
    if (run) {
      run.controller.abort();
      await run.done;
      run = undefined;
    }
    if (!account || signal.aborted) return;
    const controller = new AbortController();
    const client = new SyncClient(store, account, options);
    const done = client.runLive(AbortSignal.any([signal, controller.signal])).catch((error: unknown) => {
      // A refused token: the status says so; a new sign-in restarts.
      console.warn('mana-sync: live sync stopped:', error);
    });
    run = { controller, done };
  };

  let chain = Promise.resolve();
  const subscription = liveQuery(() => store.account()).subscribe({
    next: (account) => {
      if (sameAccount(account, current) && (run || !account)) return;
      current = account;
      chain = chain.then(() => restart(account));
    },
    error: (error: unknown) => console.error('mana-sync: cannot read the account', error),
  });
  await new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
  subscription.unsubscribe();
  await chain;
  await restart(undefined);
}
