/**
 * The upgrade of a device that ran the seed package (`@manacore/local-store`):
 * its IndexedDB database `manacore-{appId}` holds one table per collection
 * (records `{id, createdAt, updatedAt, deletedAt, …}`), `_pendingChanges`
 * (`{collection, recordId, op, fields?, data?, deletedAt?, createdAt}`, the
 * local writes not yet pushed) and `_syncMeta` (`{collection,
 * lastSyncedAt}`, each collection's cursor). {@link takeOver} hands all of
 * it to the engine's {@link LocalStore.adopt} in one transaction, then
 * deletes the old database.
 *
 * - Records of a collection that synced (it has a cursor after the epoch)
 *   are taken as they stand: the server has them. Every field is stamped
 *   with the record's `updatedAt` (the seed kept one time per record), a
 *   non-null `deletedAt` becomes a tombstone.
 * - Records of a collection that never synced (a guest's) and the pending
 *   changes are queued, so they reach the account at the first sync.
 *   Pending changes keep their field timestamps; a missing one is the
 *   change's `createdAt`.
 * - The cursors are kept as legacy `since` values of the configured server.
 */

import { Dexie } from 'dexie';

import { parseJson } from '../json.ts';
import { readChange, type MergeChange } from '../merge.ts';
import type { LocalStore } from '../store.ts';
import { START } from '../sync.ts';
import { LOWEST_TIMESTAMP, compareTimestamps, isTimestamp } from '../timestamp.ts';
import type { Adoption } from '../types.ts';

/** The seed package's database of an app. */
function legacyName(appId: string): string {
  return `manacore-${appId}`;
}

type Row = Record<string, unknown>;

/** An RFC 3339 string as it is, or milliseconds since the epoch as RFC 3339; else `undefined`. */
function timestamp(value: unknown): string | undefined {
  if (isTimestamp(value)) return value;
  if (typeof value === 'number' && Number.isFinite(value)) return new Date(value).toISOString();
  if (value instanceof Date && !Number.isNaN(value.getTime())) return value.toISOString();
  return undefined;
}

/** The fields of a record or change, without the seed's derived metadata (`__lastActor`, `__fieldActors`). */
function ownFields(data: Row): Row {
  return Object.fromEntries(Object.entries(data).filter(([name, value]) => !name.startsWith('__') && value !== undefined));
}

/** A change in the wire's shape, read as the engine reads the server's (values keep their JSON text). */
function change(wire: Row): MergeChange {
  return readChange(parseJson(JSON.stringify(wire)));
}

/** An insert of `data` with every field stamped `at`. */
function insertAt(table: string, id: string, data: Row, at: string, actor: unknown): Row {
  const fields = Object.fromEntries(Object.entries(data).map(([name, value]) => [name, { value, at }]));
  return { table, id, op: 'insert', data, fields, ...(actor != null && { actor }) };
}

/** A record as it stands: an insert at its `updatedAt`, and a delete if it is soft-deleted. */
function recordChanges(table: string, record: Row): Row[] {
  if (typeof record.id !== 'string') return [];
  const data = ownFields(record);
  const at = timestamp(record.updatedAt) ?? timestamp(record.createdAt) ?? LOWEST_TIMESTAMP;
  const out = [insertAt(table, record.id, data, at, undefined)];
  const deletedAt = timestamp(record.deletedAt);
  if (deletedAt !== undefined) out.push({ table, id: record.id, op: 'delete', deletedAt });
  return out;
}

/** A `_pendingChanges` row as a change; `undefined` when it is not one. */
function pendingChange(row: Row): Row | undefined {
  const { collection: table, recordId: id, op, actor } = row;
  if (typeof table !== 'string' || typeof id !== 'string') return undefined;
  const queuedAt = timestamp(row.createdAt) ?? LOWEST_TIMESTAMP;
  const withActor = actor != null ? { actor } : {};
  if (op === 'insert' && row.data && typeof row.data === 'object') {
    const data = ownFields(row.data as Row);
    return insertAt(table, id, data, timestamp(data.updatedAt) ?? queuedAt, actor);
  }
  if (op === 'update' && row.fields && typeof row.fields === 'object') {
    const fields = Object.fromEntries(
      Object.entries(ownFields(row.fields as Row)).map(([name, entry]) => {
        // The wire's `{value, updatedAt}`, or a bare value written when the change was queued.
        const written = entry !== null && typeof entry === 'object' && 'value' in entry ? (entry as Row) : undefined;
        const at = written ? (timestamp(written.updatedAt) ?? timestamp(written.at) ?? queuedAt) : queuedAt;
        return [name, { value: written ? written.value : entry, at }];
      }),
    );
    return { table, id, op: 'update', fields, ...withActor };
  }
  if (op === 'delete') return { table, id, op: 'delete', deletedAt: timestamp(row.deletedAt) ?? queuedAt, ...withActor };
  return undefined;
}

/** What the seed's database holds, as the engine adopts it. */
async function read(legacy: Dexie, collections: readonly string[], server: string | undefined): Promise<Adoption> {
  const tables = new Set(legacy.tables.map((table) => table.name));
  const rows = (name: string): Promise<Row[]> => (tables.has(name) ? legacy.table(name).toArray() : Promise.resolve([]));
  const cursors: Record<string, string> = {};
  for (const meta of await rows('_syncMeta')) {
    const cursor = timestamp(meta.lastSyncedAt);
    if (typeof meta.collection === 'string' && collections.includes(meta.collection) && cursor && compareTimestamps(cursor, START) > 0) {
      cursors[meta.collection] = cursor;
    }
  }
  const adoption: Adoption = { records: [], pending: [], cursors, server };
  const take = (wire: Row, into: MergeChange[]) => {
    try {
      into.push(change(wire));
    } catch (error) {
      console.warn(`mana-sync: cannot take over ${String(wire.table)}/${String(wire.id)} from ${legacy.name}:`, error);
    }
  };
  for (const collection of collections) {
    // A collection that never synced: its records never reached a server.
    const into = collection in cursors ? adoption.records : adoption.pending;
    for (const record of await rows(collection)) for (const wire of recordChanges(collection, record)) take(wire, into);
  }
  for (const row of await rows('_pendingChanges')) {
    const wire = pendingChange(row);
    if (wire) take(wire, adoption.pending);
    else console.warn(`mana-sync: skipping a pending change of ${legacy.name} that is not one:`, row);
  }
  return adoption;
}

/** Whether this browser has the seed package's database of `appId`. */
export function hasLegacyDatabase(appId: string): Promise<boolean> {
  return Dexie.exists(legacyName(appId));
}

/**
 * Takes over the seed package's database of the store's app: its records,
 * unsent changes and cursors (of `server`, the one it synced with), once,
 * then deletes it. Nothing happens when it is gone (another tab took it
 * over meanwhile).
 */
export async function takeOver(store: LocalStore, server: string | undefined): Promise<void> {
  const name = legacyName(store.appId);
  const legacy = new Dexie(name);
  try {
    await legacy.open(); // its own schema, whatever its version
  } catch (error) {
    if (error instanceof Error && error.name === Dexie.errnames.NoSuchDatabase) return;
    throw error;
  }
  let adoption: Adoption;
  try {
    adoption = await read(legacy, store.collections, server);
  } finally {
    legacy.close();
  }
  await store.adopt(name, adoption);
  // Not awaited: a tab still running the old package may hold it open a while.
  Dexie.delete(name).catch((error: unknown) => console.warn(`mana-sync: cannot delete ${name}:`, error));
}
