/**
 * `createLocalStore`: the seed package's store API on this package's engine.
 * The data is a {@link LocalStore} (database `mana-sync.{appId}`), synced by
 * {@link startSync} (one tab at a time, the live stream, changeset ids),
 * with the sync status mapped onto the seed's five words.
 */

import type { Subscription } from 'dexie';

import type { JsonValue } from '../json.ts';
import { LocalStore } from '../store.ts';
import { SyncClient, type SyncOptions } from '../sync.ts';
import { startSync, type SyncHandle } from '../tabs.ts';
import type { SyncStatus as EngineStatus, SeedRecord } from '../types.ts';
import { Collection, newRecord, type BaseRecord } from './collection.ts';
import { hasLegacyDatabase, takeOver } from './legacy.ts';

/** A collection and its options. */
export interface CollectionConfig<T = Record<string, unknown>> {
  name: string;
  /** The seed's Dexie indexes. Accepted and not needed: queries select in memory. */
  indexes?: string[];
  /**
   * Records a new store starts with (a guest's onboarding content). Each
   * gets a fixed id (`guest-{collection}-{n}` unless it has one) and the
   * lowest timestamp, so several devices' seeds merge into one copy and any
   * real edit wins over them.
   */
  guestSeed?: Partial<T>[];
}

/** Where to sync. */
export interface SyncConfig {
  /** The mana-sync server's URL. */
  serverUrl: string;
  /** Accepted and not needed: every write is pushed as it commits. */
  pushDebounce?: number;
  /** Accepted and not needed: the live stream brings changes as they happen. */
  pullInterval?: number;
  /** Accepted and not needed: the live stream replaces WebSocket notices. */
  wsUrl?: string;
}

/** What `createLocalStore` takes. */
export interface LocalStoreConfig {
  appId: string;
  collections: CollectionConfig[];
  sync?: SyncConfig;
  /** The actor stamped on this device's writes (opaque JSON: `{kind: 'ai'}`, say); absent means the user. */
  actor?: JsonValue;
  /** Tuning of the sync engine, and the clock (tests). */
  engine?: SyncOptions & { now?: () => number };
}

/** The seed's sync status. */
export type SyncStatus = 'idle' | 'syncing' | 'synced' | 'offline' | 'error';

/** The engine's status in the seed's words (`local-only`: `idle`). */
function statusOf(status: EngineStatus): SyncStatus {
  return status.kind === 'local-only' ? 'idle' : status.kind;
}

/** The app's source of tokens: the signed-in user's current one, or null when signed out. */
export type GetAuthToken = () => Promise<string | null> | string | null;

/** Where sync stands in this tab. */
interface Running {
  handle: SyncHandle;
  getAuthToken: GetAuthToken;
  /** A refused token was replaced since the last successful sync (a second refusal stays an error). */
  refreshed: boolean;
}

/** A store with the seed package's API. Call {@link initialize} before anything else. */
export class CompatStore {
  private opened: Promise<LocalStore> | undefined;
  private store: LocalStore | undefined;
  private readonly collections = new Map<string, Collection<BaseRecord>>();
  private engineStatus: EngineStatus = { kind: 'local-only' };
  private watch: Subscription | undefined;
  private running: Running | undefined;
  private lifecycle: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<() => void>();
  private readonly now: () => number;

  constructor(readonly config: LocalStoreConfig) {
    this.now = config.engine?.now ?? (() => Date.now());
    for (const { name } of config.collections) this.collections.set(name, new Collection(name, () => this.core, this.now));
  }

  /** The engine's store (for what the seed's API does not cover: `pendingCount`, `rejected`, …). */
  get core(): LocalStore {
    if (!this.store) throw new Error('the store is not initialized: call initialize() first');
    return this.store;
  }

  /**
   * Opens the database. On a device that ran the seed package, takes its
   * data over first (records, unsent changes, cursors) and deletes its
   * database; a new store without one gets the guest seeds.
   */
  async initialize(): Promise<void> {
    this.opened ??= this.open();
    this.store = await this.opened;
  }

  private async open(): Promise<LocalStore> {
    const { appId, collections, actor } = this.config;
    const legacy = await hasLegacyDatabase(appId);
    const core = await LocalStore.open({
      appId,
      collections: collections.map((c) => c.name),
      seed: legacy ? [] : this.guestSeed(),
      ...(actor !== undefined && { actor }),
      now: this.now,
    });
    if (legacy) await takeOver(core, this.config.sync?.serverUrl);
    this.watch = core.live((s) => s.status()).subscribe({
      next: (status) => this.setStatus(status),
      error: (error: unknown) => console.error('mana-sync: cannot read the sync status', error),
    });
    return core;
  }

  private guestSeed(): SeedRecord[] {
    const now = new Date(this.now()).toISOString();
    return this.config.collections.flatMap(({ name, guestSeed = [] }) =>
      guestSeed.map((record, i) => {
        const id = typeof record.id === 'string' ? record.id : `guest-${name}-${i + 1}`;
        return { collection: name, id, data: newRecord(record, now) };
      }),
    );
  }

  /** A collection by name (one of the configured ones). */
  collection<T extends BaseRecord = BaseRecord>(name: string): Collection<T> {
    const found = this.collections.get(name);
    if (!found) throw new Error(`unknown collection \`${name}\` (configured: ${[...this.collections.keys()].join(', ')})`);
    return found as unknown as Collection<T>;
  }

  /** The sync status in this tab: `idle` until {@link startSync} signed in, then the engine's (the same in every tab that syncs). */
  get syncStatus(): SyncStatus {
    return this.running ? statusOf(this.engineStatus) : 'idle';
  }

  /** Whether a push or pull is under way. */
  get isSyncing(): boolean {
    return this.syncStatus === 'syncing';
  }

  /** Calls `listener` whenever {@link syncStatus} may have changed; returns the unsubscribe function. */
  onStatusChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  /** The engine's status changed (in any tab). */
  private setStatus(status: EngineStatus): void {
    this.engineStatus = status;
    this.changed();
    if (status.kind === 'synced' && this.running) this.running.refreshed = false;
    if (status.kind === 'error' && status.signInAgain) void this.refreshToken();
  }

  private serverUrl(): string {
    const url = this.config.sync?.serverUrl;
    if (!url) throw new Error('this store has no `sync.serverUrl`: it cannot sync');
    return url;
  }

  /**
   * Starts syncing as the user of `getAuthToken`'s token (call after
   * sign-in): the store becomes that user's, and syncs from one tab of the
   * browser at a time. A refused token is replaced by asking
   * `getAuthToken` again. A token of another user than the store's is
   * refused (`StoreError` `account_mismatch`): call {@link reset} first.
   * Nothing happens when `getAuthToken` returns null.
   */
  startSync(getAuthToken: GetAuthToken): Promise<void> {
    return this.serially(() => this.start(getAuthToken));
  }

  /** Stops syncing in this tab (sign-out). The data stays; another tab that syncs goes on. */
  stopSync(): Promise<void> {
    return this.serially(() => this.stop());
  }

  /** Runs starts, stops and resets one after the other, so that no engine is started twice or left running. */
  private serially(action: () => Promise<void>): Promise<void> {
    const done = this.lifecycle.then(action);
    this.lifecycle = done.catch(() => {});
    return done;
  }

  private async start(getAuthToken: GetAuthToken): Promise<void> {
    const server = this.serverUrl();
    await this.stop();
    const token = await getAuthToken();
    if (!token) return;
    await this.core.signIn(server, token);
    this.running = { handle: startSync(this.core, this.config.engine), getAuthToken, refreshed: false };
    this.changed();
  }

  private async stop(): Promise<void> {
    const running = this.running;
    if (!running) return;
    this.running = undefined;
    this.changed();
    await running.handle.stop();
  }

  /** The token was refused: ask for a new one, once until the next successful sync. */
  private async refreshToken(): Promise<void> {
    const running = this.running;
    if (!running || running.refreshed) return;
    running.refreshed = true;
    try {
      const token = await running.getAuthToken();
      const account = await this.core.account();
      if (token && token !== account?.token && this.running === running) await this.core.signIn(this.serverUrl(), token);
    } catch (error) {
      console.warn('mana-sync: cannot renew the token', error);
    }
  }

  /**
   * Kept for the seed's callers: every write is pushed as it commits while
   * sync runs (in whichever tab syncs), so there is nothing to schedule.
   */
  schedulePush(): void {}

  /**
   * Pushes, then pulls every collection, now, from this tab. Resolves when
   * done; a failure shows in {@link syncStatus} (`offline`, `error`). Does
   * nothing before {@link startSync}.
   */
  async sync(): Promise<void> {
    const account = this.running && (await this.core.account());
    if (!account) return;
    await new SyncClient(this.core, account, this.config.engine).sync().catch((error: unknown) => {
      console.warn('mana-sync: sync failed', error);
    });
    // Shown at once, without waiting for the live read of the status.
    this.setStatus(await this.core.status());
  }

  /**
   * Wipes this browser's copy of the store (records, unsent changes, the
   * account: in every tab) and starts again as a new store with the guest
   * seeds. If sync ran, it starts again with a new token, bringing the
   * account's data back.
   */
  reset(): Promise<void> {
    return this.serially(async () => {
      const running = this.running;
      await this.stop();
      this.watch?.unsubscribe();
      await this.core.destroy();
      this.store = undefined;
      this.opened = undefined;
      this.engineStatus = { kind: 'local-only' };
      await this.initialize();
      if (running) await this.start(running.getAuthToken);
      this.changed();
    });
  }

  /** Stops syncing and closes the database. */
  async close(): Promise<void> {
    await this.stopSync();
    this.watch?.unsubscribe();
    this.watch = undefined;
    this.store?.close();
    this.store = undefined;
    this.opened = undefined;
  }
}

/** A store with the seed package's API, on this package's engine. Call `initialize()` next. */
export function createLocalStore(config: LocalStoreConfig): CompatStore {
  return new CompatStore(config);
}
