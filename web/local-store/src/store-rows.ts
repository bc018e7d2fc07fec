/**
 * Records' rows: what a record's merge state is stored as (its view, its
 * space), and the merging of changes from elsewhere (the server, another
 * client's database) into them.
 */

import { compareHlc, fromMillis, hlcOf, hlcText, observe } from './clock.ts';
import type { RecordRow, StoreDb } from './db.ts';
import { applyChange, emptyState, view, type MergeChange, type RecordState } from './merge.ts';
import type { StoredRecord } from './select.ts';
import { spaceField } from './store-spaces.ts';
import { REDOWNLOAD } from './store-redownload.ts';
import { compareTimestamps } from './timestamp.ts';

/** A record's row; a record in a shared space reads with its `spaceId`. */
export function row(collection: string, id: string, state: RecordState, space: string | undefined): RecordRow {
  const shown = view(state);
  if (shown && space !== undefined) shown.spaceId = space;
  return { collection, id, deleted: state.deleted ? 1 : 0, state, ...(shown && { view: shown }), ...spaceField(space) };
}

/** A row as queries return it: its view, with its id. */
export function toRecord(found: RecordRow): StoredRecord {
  const record = { ...found.view } as StoredRecord;
  if (typeof record.id !== 'string') record.id = found.id;
  return record;
}

/**
 * Merges `changes` inside the current transaction; returns how many
 * records changed. During a re-download, notes every record that came back.
 */
export async function applyIn(db: StoreDb, changes: MergeChange[], now: number): Promise<number> {
  if (changes.length === 0) return 0;
  const keys = new Map<string, [string, string]>();
  for (const change of changes) keys.set(JSON.stringify([change.table, change.id]), [change.table, change.id]);
  const keyList = [...keys.values()];
  if (await db.meta.get(REDOWNLOAD)) {
    await db.redownloadSeen.bulkPut(keyList.map(([collection, id]) => ({ collection, id })));
  }
  const rows = await db.records.bulkGet(keyList);
  const states = new Map<string, { state: RecordState; dirty: boolean; space?: string }>();
  keyList.forEach((key, i) => states.set(JSON.stringify(key), { state: rows[i]?.state ?? emptyState(), dirty: false, ...spaceField(rows[i]?.space) }));
  let newest: string | undefined;
  for (const change of changes) {
    const entry = states.get(JSON.stringify([change.table, change.id]))!;
    // A record's space is the one it was created in.
    entry.space ??= change.spaceId;
    try {
      entry.dirty = applyChange(entry.state, change) || entry.dirty;
    } catch (error) {
      // The server validates every change; one that still cannot be merged
      // is skipped rather than blocking sync.
      console.warn(`mana-sync: skipping an unmergeable change of ${change.table}/${change.id}:`, error);
    }
    for (const at of [...(change.fields?.values() ?? [])].map((f) => f.at).concat(change.deletedAt ?? [])) {
      if (newest === undefined || compareTimestamps(at, newest) > 0) newest = at;
    }
  }
  const dirty = keyList.filter((key) => states.get(JSON.stringify(key))!.dirty);
  await db.records.bulkPut(
    dirty.map(([collection, id]) => {
      const entry = states.get(JSON.stringify([collection, id]))!;
      return row(collection, id, entry.state, entry.space);
    }),
  );
  if (newest !== undefined) {
    const lastText = (await db.meta.get('hlc'))?.value as string | undefined;
    const last = lastText ? hlcOf(lastText) : fromMillis(0);
    const advanced = observe(last, hlcOf(newest), now);
    if (compareHlc(advanced, last) !== 0) await db.meta.put({ key: 'hlc', value: hlcText(advanced) });
  }
  return dirty.length;
}
