/**
 * The local store: collections of JSON records in IndexedDB (Dexie), with the
 * outbox, the sync cursors and the clock beside them. The same behaviour as
 * the Rust client's `LocalStore` (`crates/client/src/store/`).
 *
 * Every local write is one IndexedDB transaction that reads the clock, merges
 * the write into the record's state, appends the change to the outbox and
 * saves the clock: a write is durable with its outbox row or not at all, and
 * two tabs never hand out the same timestamp (IndexedDB serialises
 * overlapping read-write transactions, across tabs too).
 *
 * Reads are plain objects (`{id, …fields, __lastActor?, __fieldActors?}`).
 * {@link LocalStore.live} turns any read into an observable that re-runs when
 * what it read changes, in this tab or another (Dexie's `liveQuery`).
 */

import { Dexie, liveQuery, type Observable } from 'dexie';

import { compareHlc, hlcOf, hlcText, next, tick, type HlcTime } from './clock.ts';
import { StoreDb } from './db.ts';
import { StoreError } from './errors.ts';
import { changeText, deleteChange, encodeValue, insertChange, updateChange } from './encode.ts';
import { isObject, type JsonObject, type JsonValue } from './json.ts';
import { emptyState, mergeDelete, mergeField, type FieldState, type MergeChange, type RecordState } from './merge.ts';
import { select, type StoredRecord } from './select.ts';
import { LOWEST_TIMESTAMP, compareTimestamps } from './timestamp.ts';
import { REDOWNLOAD, finishRedownload, startRedownload } from './store-redownload.ts';
import { applyIn, row, toRecord } from './store-rows.ts';
import { dropSpacesIn, readSpaceId, spaceField, spaceOfChange, storeSpaces, storedSpaces } from './store-spaces.ts';
import type { Account, Adoption, IncomingPage, PendingChangeset, Query, RejectedChange, SeedRecord, Space, StoreOptions, SyncStatus } from './types.ts';
import { MAX_ID_LEN, MAX_NAME_LEN, checkField, checkIdentifier, tokenSubject, uuidV4, uuidV7 } from './util.ts';

const ALL_TABLES = ['records', 'outbox', 'rejected', 'cursors', 'meta', 'redownloadSeen'] as const;


function rfc3339Now(): string {
  return new Date().toISOString();
}

/** A server's URL as accounts keep it (no trailing slash). */
function serverUrl(server: string): string {
  return server.replace(/\/+$/, '');
}

/** The local store of one app in this browser. Every method is local and works offline. */
export class LocalStore {
  private constructor(
    /** The Dexie database (for advanced reads; write through the store's methods). */
    readonly db: StoreDb,
    /** The app this store belongs to. */
    readonly appId: string,
    /** The collections this app syncs. */
    readonly collections: readonly string[],
    /** This device's id (`X-Client-Id`), made once per store and shared by its tabs. */
    readonly clientId: string,
    private readonly actorRaw: string | undefined,
    private readonly actor: JsonValue | undefined,
    private readonly now: () => number,
  ) {}

  /**
   * Opens (or creates) the store. A new store gets a fresh client id and the
   * seed records; it starts local-only (a guest).
   */
  static async open(options: StoreOptions): Promise<LocalStore> {
    checkIdentifier('app id', options.appId, MAX_NAME_LEN);
    for (const collection of options.collections) checkIdentifier('collection', collection, MAX_NAME_LEN);
    const actor = options.actor === undefined ? undefined : encodeValue('actor', options.actor);
    const now = options.now ?? (() => Date.now());
    const db = new StoreDb(options.name ?? `mana-sync.${options.appId}`);
    await db.open();
    const clientId = await db.transaction('rw', [...ALL_TABLES], async () => {
      const existing = await db.meta.get('clientId');
      if (existing) {
        const app = (await db.meta.get('appId'))?.value;
        if (app !== options.appId) {
          throw new StoreError('wrong_app', `this database holds the data of app \`${String(app)}\`, not \`${options.appId}\``);
        }
        return existing.value as string;
      }
      const id = uuidV4();
      await db.meta.bulkPut([
        { key: 'clientId', value: id },
        { key: 'appId', value: options.appId },
        { key: 'createdAt', value: rfc3339Now() },
      ]);
      await LocalStore.writeSeed(db, options.seed ?? [], actor);
      return id;
    });
    return new LocalStore(db, options.appId, [...options.collections], clientId, actor?.raw, actor?.value, now);
  }

  private static async writeSeed(db: StoreDb, seed: SeedRecord[], actor: { value: JsonValue; raw: string } | undefined) {
    for (const record of seed) {
      checkIdentifier('collection', record.collection, MAX_NAME_LEN);
      checkIdentifier('id', record.id, MAX_ID_LEN);
      const state = emptyState();
      for (const [name, value] of Object.entries({ ...record.data, id: record.id })) {
        checkField(name);
        mergeField(state, name, { ...encodeValue(name, value), at: LOWEST_TIMESTAMP, ...(actor && { actor: actor.value, actorRaw: actor.raw }) });
      }
      await db.records.put(row(record.collection, record.id, state, undefined));
      await db.outbox.add({ change: insertChange(record.collection, record.id, state, actor?.raw) });
    }
  }

  /** Closes the database (other tabs keep theirs). */
  close(): void {
    this.db.close();
  }

  /** Deletes this browser's copy of the store: records, outbox, account. Every tab loses it. */
  async destroy(): Promise<void> {
    await this.db.delete();
  }

  private actorFields(): Pick<FieldState, 'actor' | 'actorRaw'> {
    return this.actorRaw === undefined ? {} : { actor: this.actor, actorRaw: this.actorRaw };
  }

  /** Runs one local write: clock in, clock out, one transaction with the outbox. */
  private write<T>(body: (clock: { tick(): HlcTime }) => Promise<T>): Promise<T> {
    const db = this.db;
    return db.transaction('rw', [db.records, db.outbox, db.meta], async () => {
      let last = hlcOf(((await db.meta.get('hlc'))?.value as string | undefined) ?? '');
      const physical = this.now();
      const result = await body({ tick: () => (last = tick(last, physical)) });
      await db.meta.put({ key: 'hlc', value: hlcText(last) });
      return result;
    });
  }

  /**
   * Adds a record. Its `id` (a string) is used if present, else a new
   * UUIDv7. Returns the id. Ids of deleted records cannot be reused.
   * `spaceId` puts it in that shared space (absent or `null`: the
   * personal space); it is not a field, it is where the record lives, for
   * good (reads show it as `spaceId`).
   */
  async insert(collection: string, data: Record<string, unknown>): Promise<string> {
    const [id] = await this.insertMany(collection, [data]);
    return id!;
  }

  /**
   * Adds several records in one transaction: all of them, or none (an id
   * that exists, or appears twice, refuses the lot). Returns their ids.
   */
  async insertMany(collection: string, records: Record<string, unknown>[]): Promise<string[]> {
    checkIdentifier('collection', collection, MAX_NAME_LEN);
    const prepared = records.map((data) => {
      if (!isObject(data)) throw new StoreError('invalid_input', 'a record must be an object');
      const id = data.id === undefined ? uuidV7(this.now()) : data.id;
      if (typeof id !== 'string') throw new StoreError('invalid_input', '`id` must be a string');
      checkIdentifier('id', id, MAX_ID_LEN);
      const { spaceId, ...fields } = data;
      const space = readSpaceId(spaceId);
      const values = Object.entries({ ...fields, id }).map(([name, value]) => {
        checkField(name);
        return [name, encodeValue(name, value)] as const;
      });
      return { id, values, space };
    });
    await this.write(async (clock) => {
      const existing = await this.db.records.bulkGet(prepared.map(({ id }) => [collection, id]));
      const seen = new Set<string>();
      prepared.forEach(({ id }, i) => {
        if (existing[i] || seen.has(id)) {
          throw new StoreError('already_exists', `${collection}/${id} already exists (or was deleted: ids are not reused)`);
        }
        seen.add(id);
      });
      for (const { id, values, space } of prepared) {
        const at = hlcText(clock.tick());
        const state = emptyState();
        for (const [name, value] of values) mergeField(state, name, { ...value, at, ...this.actorFields() });
        await this.db.records.put(row(collection, id, state, space));
        await this.db.outbox.add({ change: insertChange(collection, id, state, this.actorRaw, space), ...spaceField(space) });
      }
    });
    return prepared.map(({ id }) => id);
  }

  /**
   * Sets some fields of a record. Each written field is stamped after both
   * the clock and the field's current timestamp, so an edit always wins over
   * what this device showed, even a write from a clock that runs far ahead.
   * `spaceId`, if given, must be the record's own: records cannot move
   * between spaces.
   */
  async update(collection: string, id: string, fields: Record<string, unknown>): Promise<void> {
    checkIdentifier('collection', collection, MAX_NAME_LEN);
    checkIdentifier('id', id, MAX_ID_LEN);
    const { spaceId, ...written } = fields;
    const space = 'spaceId' in fields ? { named: readSpaceId(spaceId) } : undefined;
    const values = Object.entries(written).map(([name, value]) => {
      checkField(name);
      if (name === 'id' && value !== id) throw new StoreError('invalid_input', '`id` cannot be changed');
      return [name, encodeValue(name, value)] as const;
    });
    await this.write(async (clock) => {
      const existing = await this.db.records.get([collection, id]);
      if (!existing || existing.deleted) throw new StoreError('not_found', `${collection}/${id} does not exist`);
      if (space && space.named !== existing.space) {
        throw new StoreError('invalid_input', `${collection}/${id} cannot move to another space (records stay in the space they were created in)`);
      }
      if (values.length === 0) return;
      const state = existing.state;
      const now = clock.tick();
      const changed = values.map(([name, value]) => {
        const current = state.fields.get(name);
        const currentAt = current && hlcOf(current.at);
        const at = hlcText(currentAt && compareHlc(currentAt, now) >= 0 ? next(currentAt) : now);
        mergeField(state, name, { ...value, at, ...this.actorFields() });
        return [name, { raw: value.raw, at }] as const;
      });
      await this.db.records.put(row(collection, id, state, existing.space));
      await this.db.outbox.add({ change: updateChange(collection, id, changed, this.actorRaw, existing.space), ...spaceField(existing.space) });
    });
  }

  /** Deletes a record (a tombstone: it stays deleted on every device). */
  async delete(collection: string, id: string): Promise<void> {
    checkIdentifier('collection', collection, MAX_NAME_LEN);
    checkIdentifier('id', id, MAX_ID_LEN);
    await this.write(async (clock) => {
      const existing = await this.db.records.get([collection, id]);
      if (!existing || existing.deleted) throw new StoreError('not_found', `${collection}/${id} does not exist`);
      const at = hlcText(clock.tick());
      mergeDelete(existing.state, { at, ...this.actorFields() });
      await this.db.records.put(row(collection, id, existing.state, existing.space));
      await this.db.outbox.add({ change: deleteChange(collection, id, at, this.actorRaw, existing.space), ...spaceField(existing.space) });
    });
  }

  /** One record, or `undefined` if it does not exist or was deleted. */
  async get(collection: string, id: string): Promise<StoredRecord | undefined> {
    const found = await this.db.records.get([collection, id]);
    return found && !found.deleted && found.view ? toRecord(found) : undefined;
  }

  /** The merge state of a record (deleted ones included), for inspection and tests. */
  async recordState(collection: string, id: string): Promise<RecordState | undefined> {
    return (await this.db.records.get([collection, id]))?.state;
  }

  /**
   * Every record of `collection` with its merge state, deleted ones
   * included, by id: for layers that show more than the view (when a
   * record was last written, its tombstone).
   */
  async recordStates(collection: string): Promise<{ id: string; state: RecordState }[]> {
    const rows = await this.db.records.where('[collection+id]').between([collection, Dexie.minKey], [collection, Dexie.maxKey]).toArray();
    return rows.map((r) => ({ id: r.id, state: r.state }));
  }

  /**
   * Forgets a record in this browser only: nothing is queued, and its
   * changes still in the outbox are still pushed. A later change of it
   * from another device brings it back. Returns whether it was here.
   */
  async purge(collection: string, id: string): Promise<boolean> {
    const db = this.db;
    return db.transaction('rw', db.records, async () => {
      const found = (await db.records.get([collection, id])) !== undefined;
      await db.records.delete([collection, id]);
      return found;
    });
  }

  /** The records a query selects, in its order. */
  async query(query: Query): Promise<StoredRecord[]> {
    const rows = await this.db.records.where('[collection+deleted]').equals([query.collection, 0]).toArray();
    return select(rows.map(toRecord), query);
  }

  /** Every live record of `collection`, by id. */
  list(collection: string): Promise<StoredRecord[]> {
    return this.query({ collection });
  }

  /**
   * An observable of any read of this store: it emits the read's result now,
   * and again whenever a write changes what it read, in this tab or in
   * another (local writes, and changes applied by sync).
   */
  live<T>(read: (store: LocalStore) => Promise<T>): Observable<T> {
    return liveQuery(() => read(this));
  }

  // ---- sync status ---------------------------------------------------------

  /** The sync status now (the same in every tab). */
  async status(): Promise<SyncStatus> {
    const [account, status] = await Promise.all([this.db.meta.get('account'), this.db.meta.get('status')]);
    if (!account) return { kind: 'local-only' };
    return (status?.value as SyncStatus | undefined) ?? { kind: 'offline', reason: 'not synced yet' };
  }

  /** Sets the status (the sync engine does). */
  async setStatus(status: SyncStatus): Promise<void> {
    const value = status.kind === 'synced' ? { kind: 'synced', at: rfc3339Now() } : status;
    await this.db.meta.put({ key: 'status', value });
  }

  // ---- account ---------------------------------------------------------------

  /** The account the store is signed in to; `undefined` for a guest store. */
  async account(): Promise<Account | undefined> {
    return (await this.db.meta.get('account'))?.value as Account | undefined;
  }

  /**
   * Signs the store in to `server` as the token's user. The first sign-in
   * makes a guest store the account's: its records and outbox stay, and are
   * pushed by the next sync. A store never changes user: a token of another
   * user is refused (`account_mismatch`), so one account's data is never
   * pushed into another's. A new token of the same user replaces the old
   * one. Moving to another server forgets the cursors (they are that
   * server's: the account's, or for a guest store those {@link adopt}
   * brought); merging makes pulling again harmless.
   */
  async signIn(server: string, token: string): Promise<Account> {
    const user = tokenSubject(token);
    const url = serverUrl(server);
    const db = this.db;
    return db.transaction('rw', [db.meta, db.cursors, db.redownloadSeen], async () => {
      const existing = (await db.meta.get('account'))?.value as Account | undefined;
      if (existing && existing.user !== user) {
        throw new StoreError('account_mismatch', `this store belongs to \`${existing.user}\`; the token is \`${user}\`'s`);
      }
      const cursorsFrom = existing?.server ?? ((await db.meta.get('cursorServer'))?.value as string | undefined);
      if (cursorsFrom !== url) {
        await db.cursors.clear();
        await db.meta.delete('appCursor');
        // Another server's log says nothing about this one's records.
        await db.redownloadSeen.clear();
        await db.meta.delete(REDOWNLOAD);
      }
      await db.meta.delete('cursorServer');
      const account = { user, server: url, token: token.trim() };
      await db.meta.put({ key: 'account', value: account });
      if (!existing) await db.meta.delete('status');
      return account;
    });
  }

  // ---- outbox ----------------------------------------------------------------

  /** How many local changes wait to be pushed. */
  pendingCount(): Promise<number> {
    return this.db.outbox.count();
  }

  /**
   * The next changeset to push: rows already assigned to a changeset (a push
   * that failed or whose reply was lost) first, with the same id; otherwise
   * up to `max` new rows of the oldest row's space (records never change
   * space, so each record's changes keep their order), whose new id is
   * committed before this returns.
   */
  async nextChangeset(max: number): Promise<PendingChangeset | undefined> {
    const db = this.db;
    return db.transaction('rw', db.outbox, async () => {
      // Assigned rows are always the oldest: take the first row's id if any.
      const first = await db.outbox.orderBy(':id').first();
      if (!first) return undefined;
      if (first.changesetId !== undefined) {
        const rows = await db.outbox.where('changesetId').equals(first.changesetId).sortBy('seq');
        return { id: first.changesetId, changes: rows.map((r) => r.change) };
      }
      const fresh = await db.outbox
        .orderBy(':id')
        .filter((r) => r.changesetId === undefined && r.space === first.space)
        .limit(Math.max(1, max))
        .toArray();
      const id = uuidV7(this.now());
      await db.outbox.bulkPut(fresh.map((r) => ({ ...r, changesetId: id })));
      return { id, changes: fresh.map((r) => r.change) };
    });
  }

  /**
   * The server stored changeset `id` (or had before): drop its rows and apply
   * the reply, in one transaction. When the reply holds every change after
   * the app cursor (`hasMore` false), every collection's cursor moves to its
   * `syncedUntil` too. Spaces the reply says the user left are dropped.
   */
  async finishChangeset(id: string, reply: IncomingPage): Promise<void> {
    const db = this.db;
    await db.transaction('rw', [...ALL_TABLES], async () => {
      await db.outbox.where('changesetId').equals(id).delete();
      await applyIn(db, reply.changes, this.now());
      await dropSpacesIn(db, reply.removedSpaces ?? []);
      // During a re-download only its pulls set cursors (sync pushes after
      // it; this is another tab or an older sync still running).
      if (!reply.hasMore && !(await db.meta.get(REDOWNLOAD))) {
        await db.cursors.bulkPut(this.collections.map((collection) => ({ collection, cursor: reply.syncedUntil })));
        await db.meta.put({ key: 'appCursor', value: reply.syncedUntil });
      }
    });
  }

  /**
   * Splits changeset `id` into two halves with new ids (the server refused it
   * whole, so none of it was stored and new ids are safe). `false` if it has
   * a single row.
   */
  async splitChangeset(id: string): Promise<boolean> {
    const db = this.db;
    return db.transaction('rw', db.outbox, async () => {
      const rows = await db.outbox.where('changesetId').equals(id).sortBy('seq');
      if (rows.length < 2) return false;
      const half = Math.floor(rows.length / 2);
      const first = uuidV7(this.now());
      const second = uuidV7(this.now());
      await db.outbox.bulkPut(rows.map((r, i) => ({ ...r, changesetId: i < half ? first : second })));
      return true;
    });
  }

  /** Moves the rows of changeset `id` out of the outbox, with the server's reason. Local data is untouched. */
  async rejectChangeset(id: string, reason: string): Promise<number> {
    const db = this.db;
    return db.transaction('rw', [db.outbox, db.rejected], async () => {
      const rows = await db.outbox.where('changesetId').equals(id).toArray();
      const rejectedAt = rfc3339Now();
      await db.rejected.bulkPut(rows.map((r) => ({ seq: r.seq!, change: r.change, reason, rejectedAt })));
      await db.outbox.where('changesetId').equals(id).delete();
      return rows.length;
    });
  }

  /** Changes the server refused, kept aside with its reason. */
  async rejected(): Promise<RejectedChange[]> {
    const rows = await this.db.rejected.orderBy('seq').toArray();
    return rows.map((r) => ({ change: JSON.parse(r.change) as JsonObject, reason: r.reason, rejectedAt: r.rejectedAt }));
  }

  /** Puts refused changes back into the outbox (after the server was fixed); returns how many. */
  async retryRejected(): Promise<number> {
    const db = this.db;
    return db.transaction('rw', [db.outbox, db.rejected], async () => {
      const rows = await db.rejected.orderBy('seq').toArray();
      await db.outbox.bulkAdd(rows.map((r) => ({ change: r.change, ...spaceField(spaceOfChange(r.change)) })));
      await db.rejected.clear();
      return rows.length;
    });
  }

  /** Forgets refused changes; returns how many. */
  async discardRejected(): Promise<number> {
    const db = this.db;
    return db.transaction('rw', db.rejected, async () => {
      const count = await db.rejected.count();
      await db.rejected.clear();
      return count;
    });
  }

  // ---- cursors and incoming changes -----------------------------------------

  /** How far `collection` was pulled (`undefined`: never). */
  async cursor(collection: string): Promise<string | undefined> {
    return (await this.db.cursors.get(collection))?.cursor;
  }

  /**
   * A cursor before which every change of every synced collection is applied
   * (`undefined`: from the start); the `since` of pushes and of the stream.
   * Trusted only when every synced collection has a cursor.
   */
  async appCursor(): Promise<string | undefined> {
    const db = this.db;
    return db.transaction('r', [db.cursors, db.meta], async () => {
      const cursors = await db.cursors.bulkGet([...this.collections]);
      if (cursors.some((c) => c === undefined) || (await db.meta.get(REDOWNLOAD))) return undefined;
      return (await db.meta.get('appCursor'))?.value as string | undefined;
    });
  }

  /** Records the app cursor after a full pull round. */
  async setAppCursor(cursor: string): Promise<void> {
    await this.db.meta.put({ key: 'appCursor', value: cursor });
  }

  /** Forgets every cursor (the server does not know them): the next pull starts from the beginning. */
  async forgetCursors(): Promise<void> {
    const db = this.db;
    await db.transaction('rw', [db.cursors, db.meta], async () => {
      await db.cursors.clear();
      await db.meta.delete('appCursor');
    });
  }

  // ---- re-download after `cursor_expired` (store-redownload.ts) -----------------

  /** Starts a re-download: forgets every cursor and sets the marker, in one transaction. The outbox is untouched. */
  async startRedownload(): Promise<void> {
    await startRedownload(this.db);
  }

  /** Whether a re-download was started and not finished (perhaps in a tab since closed). */
  async redownloadPending(): Promise<boolean> {
    return (await this.db.meta.get(REDOWNLOAD)) !== undefined;
  }

  /**
   * Finishes a complete re-download, in one transaction: removes the records
   * of synced collections that did not come back and that no queued or
   * refused local change touches, sets the app cursor, clears the marker.
   * Returns how many records were removed (0 when none was in progress).
   */
  async finishRedownload(appCursor: string | undefined): Promise<number> {
    return finishRedownload(this.db, this.collections, appCursor);
  }

  /**
   * Takes over what another client left in this browser (an older
   * package's database, say), once per `source`, in one transaction:
   * `records` are merged in as they stand (the server has them: nothing is
   * queued), `pending` changes are merged in and queued in the outbox in
   * order (they never reached the server), and the clock moves past both.
   * The cursors are taken only by a store that has none and no account yet
   * (the upgrade of a device): they are RFC 3339 `since` values of
   * `server`, the earliest becomes the app cursor, and the first
   * {@link signIn} keeps them if it is to that server. Returns `false`
   * (and changes nothing) when `source` was adopted before.
   */
  async adopt(source: string, adoption: Adoption): Promise<boolean> {
    const pending = adoption.pending.map((change) => ({ change: changeText(change), ...spaceField(change.spaceId) }));
    const cursors = Object.entries(adoption.cursors);
    const db = this.db;
    return db.transaction('rw', [...ALL_TABLES], async () => {
      const key = `adopted:${source}`;
      if (await db.meta.get(key)) return false;
      await applyIn(db, [...adoption.records, ...adoption.pending], this.now());
      await db.outbox.bulkAdd(pending);
      const fresh = (await db.cursors.count()) === 0 && !(await db.meta.get('account'));
      if (fresh && adoption.server !== undefined && cursors.length > 0) {
        await db.cursors.bulkPut(cursors.map(([collection, cursor]) => ({ collection, cursor })));
        const earliest = cursors.map(([, cursor]) => cursor).reduce((a, b) => (compareTimestamps(a, b) <= 0 ? a : b));
        await db.meta.bulkPut([
          { key: 'appCursor', value: earliest },
          { key: 'cursorServer', value: serverUrl(adoption.server) },
        ]);
      }
      await db.meta.put({ key, value: rfc3339Now() });
      return true;
    });
  }

  /** Merges changes received from the server (or any other transport), in one transaction. Returns how many records changed. */
  applyRemote(changes: MergeChange[]): Promise<number> {
    return this.applyPage(changes);
  }

  /**
   * Applies one page of changes and, if given, moves `[collection, cursor]`
   * and drops the spaces the user left (`removedSpaces`), in the same
   * transaction.
   */
  async applyPage(changes: MergeChange[], cursor?: [collection: string, cursor: string], removedSpaces: readonly string[] = []): Promise<number> {
    const db = this.db;
    return db.transaction('rw', [db.records, db.cursors, db.meta, db.redownloadSeen], async () => {
      const touched = await applyIn(db, changes, this.now());
      await dropSpacesIn(db, removedSpaces);
      if (cursor) await db.cursors.put({ collection: cursor[0], cursor: cursor[1] });
      return touched;
    });
  }

  // ---- shared spaces -------------------------------------------------------

  /** The user's shared spaces with their role, as the server last listed them (`[]` before the first sync), by name. */
  spaces(): Promise<Space[]> {
    return storedSpaces(this.db);
  }

  /** Replaces the list of spaces (what the server listed). */
  async setSpaces(spaces: Space[]): Promise<void> {
    await storeSpaces(this.db, spaces);
  }

  /**
   * Forgets shared spaces the user left or was removed from, in one
   * transaction: their records (tombstones too), their cursor parts (so a
   * new membership downloads them again), their list entries. Queued
   * changes of theirs stay, to be refused and set aside. Returns how many
   * records were dropped.
   */
  dropSpaces(spaces: readonly string[]): Promise<number> {
    const db = this.db;
    return db.transaction('rw', [db.records, db.cursors, db.meta], () => dropSpacesIn(db, spaces));
  }

  /** Every record state of every collection (deleted ones included), for comparing devices in tests and tools. */
  async dump(): Promise<Map<string, RecordState>> {
    const rows = await this.db.records.toArray();
    return new Map(rows.map((r) => [`${r.collection}/${r.id}`, r.state]));
  }
}


