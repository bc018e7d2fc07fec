/** The IndexedDB layout of a store (Dexie). */

import { Dexie, type Table } from 'dexie';

import type { JsonObject } from './json.ts';
import type { RecordState } from './merge.ts';

/** A record's merge state, and its view (what queries read). */
export interface RecordRow {
  collection: string;
  id: string;
  /** 1 once deleted (tombstones are kept: they are sticky). */
  deleted: 0 | 1;
  state: RecordState;
  /** The record as the app sees it (`undefined` once deleted). */
  view?: JsonObject;
  /** The shared space the record is in (absent: the personal space); fixed when it is created. */
  space?: string;
}

/** A local change not yet acknowledged by the server. */
export interface OutboxRow {
  seq?: number;
  /** The change's JSON text, exactly as it is pushed. */
  change: string;
  /** Set (and committed) before the push is sent, so a retry reuses it. */
  changesetId?: string;
  /** The change's shared space (absent: personal): a changeset holds the changes of one space. */
  space?: string;
}

/** A change the server refused, set aside with its reason. */
export interface RejectedRow {
  seq: number;
  change: string;
  reason: string;
  rejectedAt: string;
}

/** How far one collection was pulled. */
export interface CursorRow {
  collection: string;
  cursor: string;
}

/** A record that came back during a re-download after `cursor_expired`. */
export interface SeenRow {
  collection: string;
  id: string;
}

/** Client id, clock, account, app cursor, status, the re-download marker, the shared spaces. */
export interface MetaRow {
  key: string;
  value: unknown;
}

/** The database of one store. */
export class StoreDb extends Dexie {
  records!: Table<RecordRow, [string, string]>;
  outbox!: Table<OutboxRow, number>;
  rejected!: Table<RejectedRow, number>;
  cursors!: Table<CursorRow, string>;
  meta!: Table<MetaRow, string>;
  redownloadSeen!: Table<SeenRow, [string, string]>;

  constructor(name: string) {
    super(name);
    this.version(1).stores({
      records: '[collection+id], [collection+deleted]',
      outbox: '++seq, changesetId',
      rejected: 'seq',
      cursors: 'collection',
      meta: 'key',
    });
    // Records seen by a re-download in progress (see `LocalStore.startRedownload`).
    this.version(2).stores({ redownloadSeen: '[collection+id]' });
    // Records by shared space, to drop a space's records when the user leaves it.
    this.version(3).stores({ records: '[collection+id], [collection+deleted], space' });
  }
}
