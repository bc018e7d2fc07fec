/**
 * The re-download after `cursor_expired`.
 *
 * The server dropped deleted records past its tombstone retention and this
 * device's cursor is older: it may hold records whose deletion it can no
 * longer be told about. It forgets every cursor and pulls every synced
 * collection from the start, its own changes included, noting each record
 * that comes back (`redownloadSeen`, in the transaction of its page). When
 * every collection is complete, the records of synced collections that did
 * not come back and that no queued or refused local change touches are
 * removed, the app cursor set and the marker cleared, in one transaction.
 * The marker is set in the transaction that forgets the cursors, so a tab
 * closed midway resumes the re-download at the next sync.
 */

import { Dexie } from 'dexie';

import type { StoreDb } from './db.ts';

/** The `meta` key of the re-download marker (its value: when it started). */
export const REDOWNLOAD = 'redownload';

/** Starts a re-download: forgets every cursor and sets the marker, in one transaction. The outbox is untouched. */
export async function startRedownload(db: StoreDb): Promise<void> {
  await db.transaction('rw', [db.cursors, db.meta, db.redownloadSeen], async () => {
    await db.cursors.clear();
    await db.meta.delete('appCursor');
    await db.redownloadSeen.clear();
    await db.meta.put({ key: REDOWNLOAD, value: new Date().toISOString() });
  });
}

/** Finishes a complete re-download (see `LocalStore.finishRedownload`). */
export async function finishRedownload(db: StoreDb, collections: readonly string[], appCursor: string | undefined): Promise<number> {
  return db.transaction('rw', [db.records, db.outbox, db.rejected, db.cursors, db.meta, db.redownloadSeen], async () => {
    if (!(await db.meta.get(REDOWNLOAD))) return 0;
    const pending = new Set<string>();
    for (const { change } of [...(await db.outbox.toArray()), ...(await db.rejected.toArray())]) {
      try {
        const target = JSON.parse(change) as { table?: unknown; id?: unknown };
        pending.add(JSON.stringify([target.table, target.id]));
      } catch {
        // The change the app wrote: always JSON.
      }
    }
    const seen = new Set((await db.redownloadSeen.toArray()).map((r) => JSON.stringify([r.collection, r.id])));
    const gone: [string, string][] = [];
    for (const collection of collections) {
      const keys = await db.records
        .where('[collection+id]')
        .between([collection, Dexie.minKey], [collection, Dexie.maxKey], true, true)
        .primaryKeys();
      for (const key of keys) {
        const text = JSON.stringify(key);
        if (!seen.has(text) && !pending.has(text)) gone.push(key);
      }
    }
    await db.records.bulkDelete(gone);
    await db.redownloadSeen.clear();
    await db.meta.delete(REDOWNLOAD);
    if (appCursor !== undefined) await db.meta.put({ key: 'appCursor', value: appCursor });
    return gone.length;
  });
}
