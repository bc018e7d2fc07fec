/**
 * A collection with the seed package's API (`@manacore/local-store`) on a
 * {@link LocalStore}: records `{id, createdAt, updatedAt, deletedAt, …}`,
 * reads that skip deleted records, equality filters, sorting and paging.
 *
 * Every write is one of the engine's (`insertMany`, `update`, `delete`),
 * so it is stamped by the hybrid logical clock, queued in the outbox and
 * merged field by field like any other. What the seed kept as plain fields
 * is derived from the merge state when read:
 *
 * - `updatedAt` is when the record last changed, by any device or app (the
 *   time of its greatest write, as fixed-width RFC 3339 text), so an edit
 *   from an app that does not write `updatedAt` still counts;
 * - `deletedAt` is the tombstone's time (deletes are the engine's sticky
 *   tombstones), or the record's own non-null `deletedAt` field, else null.
 *
 * Writes still store `createdAt`, `updatedAt` and `deletedAt: null` in the
 * record, as the seed did, for devices that still run it.
 */

import { StoreError } from '../errors.ts';
import { hlcOf, hlcText } from '../clock.ts';
import { isObject, type JsonObject } from '../json.ts';
import { lastWrite, view, type RecordState } from '../merge.ts';
import { select, type StoredRecord } from '../select.ts';
import type { LocalStore } from '../store.ts';
import { compareTimestamps, isTimestamp } from '../timestamp.ts';

/** What every record of a collection has. */
export interface BaseRecord {
  id: string;
  createdAt?: string;
  updatedAt?: string;
  deletedAt?: string | null;
}

/** How `getAll` sorts and pages. */
export interface QueryOptions<T> {
  /** Sort by this field (missing < null < booleans < numbers < strings); ties by id. Default: by id. */
  sortBy?: keyof T & string;
  sortDirection?: 'asc' | 'desc';
  limit?: number;
  offset?: number;
}

/** A record to insert: the id is optional, the timestamps are the collection's. */
export type NewRecord<T extends BaseRecord> = Omit<T, keyof BaseRecord> & Partial<BaseRecord>;

/** Fields a write cannot set: the id, and what the collection keeps itself. */
const MANAGED = new Set(['id', 'createdAt', 'updatedAt', 'deletedAt']);

/** A timestamp as fixed-width RFC 3339 UTC text, so that text order is time order. */
function canonical(at: string): string {
  return hlcText(hlcOf(at));
}

/** The record as this layer shows it, deleted or not. */
function present(id: string, state: RecordState): StoredRecord {
  // The fields as written, whether or not a tombstone hides them.
  const shown = view({ fields: state.fields }) ?? {};
  const own = shown.deletedAt;
  const deletedAt = state.deleted ? canonical(state.deleted.at) : own === undefined ? null : own;
  const at = lastWrite(state)?.at;
  return { ...shown, id, ...(at !== undefined && { updatedAt: canonical(at) }), deletedAt };
}

function isLive(record: StoredRecord): boolean {
  return record.deletedAt === null || record.deletedAt === undefined;
}

/** The app's values as JSON fields: `undefined` means absent on insert, and clears (null) on update. */
function fields(values: object, undefinedAs: 'absent' | 'null'): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(values)) {
    if (value !== undefined) out[name] = value;
    else if (undefinedAs === 'null') out[name] = null;
  }
  return out;
}

/** One collection of a compat store. */
export class Collection<T extends BaseRecord = BaseRecord> {
  constructor(
    readonly name: string,
    private readonly core: () => LocalStore,
    private readonly now: () => number,
  ) {}

  private async all(): Promise<StoredRecord[]> {
    return (await this.core().recordStates(this.name)).map(({ id, state }) => present(id, state));
  }

  /** One record, or `undefined` when missing or deleted. */
  async get(id: string): Promise<T | undefined> {
    const state = await this.core().recordState(this.name, id);
    const record = state && present(id, state);
    return record && isLive(record) ? (record as unknown as T) : undefined;
  }

  /** The records that are not deleted and whose fields equal `filter`'s, sorted and paged. */
  async getAll(filter: Partial<T> = {}, options: QueryOptions<T> = {}): Promise<T[]> {
    const { sortBy, sortDirection, limit, offset } = options;
    const selected = select((await this.all()).filter(isLive), {
      where: fields(filter, 'absent') as JsonObject,
      orderBy: sortBy && (sortDirection === 'desc' ? `-${sortBy}` : sortBy),
      offset,
      limit,
    });
    return selected as unknown as T[];
  }

  /** How many records `getAll(filter)` returns. */
  async count(filter: Partial<T> = {}): Promise<number> {
    return (await this.getAll(filter)).length;
  }

  private stamp(): string {
    return new Date(this.now()).toISOString();
  }

  /**
   * Adds a record (a new id unless it has one; ids of deleted records are
   * not reused) with `createdAt` (unless given), `updatedAt` and
   * `deletedAt: null`. Returns it as stored.
   */
  async insert(record: NewRecord<T>): Promise<T> {
    const [stored] = await this.bulkInsert([record]);
    return stored!;
  }

  /** Adds several records in one transaction (all or none); returns them as stored. */
  async bulkInsert(records: NewRecord<T>[]): Promise<T[]> {
    const now = this.stamp();
    const ids = await this.core().insertMany(
      this.name,
      records.map((record) => newRecord(record, now)),
    );
    return Promise.all(ids.map(async (id) => (await this.get(id))!));
  }

  /**
   * Sets some fields (not `id`, `createdAt`, `updatedAt` or `deletedAt`)
   * and `updatedAt`. Returns the updated record, or `undefined` when it is
   * missing or deleted.
   */
  async update(id: string, changes: Partial<T>): Promise<T | undefined> {
    if (!(await this.get(id))) return undefined;
    const written = Object.fromEntries(Object.entries(fields(changes, 'null')).filter(([name]) => !MANAGED.has(name)));
    try {
      await this.core().update(this.name, id, { ...written, updatedAt: this.stamp() });
    } catch (error) {
      // Deleted meanwhile (another tab, or sync).
      if (error instanceof StoreError && error.code === 'not_found') return undefined;
      throw error;
    }
    return this.get(id);
  }

  /** Deletes a record (a tombstone, synced: it stays deleted on every device). Nothing happens when it is missing or deleted. */
  async delete(id: string): Promise<void> {
    if (!(await this.get(id))) return;
    try {
      await this.core().delete(this.name, id);
    } catch (error) {
      if (!(error instanceof StoreError && error.code === 'not_found')) throw error;
    }
  }

  /** Removes a record from this browser only; nothing is synced (a later change from another device brings it back). */
  async purge(id: string): Promise<void> {
    await this.core().purge(this.name, id);
  }

  /** Every record changed after `since` (an RFC 3339 timestamp), deleted ones included, oldest change first. */
  async getModifiedSince(since: string): Promise<T[]> {
    if (!isTimestamp(since)) throw new StoreError('invalid_input', `\`${since}\` is not an RFC 3339 timestamp`);
    const changed = (await this.all()).filter((r) => typeof r.updatedAt === 'string' && compareTimestamps(r.updatedAt, since) > 0);
    return select(changed, { orderBy: 'updatedAt' }) as unknown as T[];
  }
}

/**
 * A new record's fields, as the seed wrote them: the app's (`undefined` ones
 * left out), `createdAt` unless given, `updatedAt` and `deletedAt: null`.
 */
export function newRecord(record: object, now: string): JsonObject {
  if (!isObject(record)) throw new StoreError('invalid_input', 'a record must be an object');
  const data = fields(record, 'absent') as JsonObject;
  return { ...data, createdAt: data.createdAt ?? now, updatedAt: now, deletedAt: null };
}
