/** The local store's public types: options, queries, status, account, changesets. */

import type { JsonObject, JsonValue } from './json.ts';
import type { MergeChange } from './merge.ts';
import type { Selection } from './select.ts';

/** A record to write when a store is created (onboarding content). */
export interface SeedRecord {
  collection: string;
  /** A fixed id, the same on every device, so that several devices' seeds merge into one record. */
  id: string;
  data: JsonObject;
}

/** How to open a store. */
export interface StoreOptions {
  /** The app whose data this is (the `{appId}` of the sync endpoints). */
  appId: string;
  /** The collections this app syncs (pulled and streamed). */
  collections: string[];
  /**
   * Records written when the store is created, stamped with the lowest
   * timestamp so that any real edit, on any device, wins over them. They are
   * pushed at the first sign-in like any other write.
   */
  seed?: SeedRecord[];
  /** The actor stamped on this device's writes (opaque JSON); absent means the user. */
  actor?: JsonValue;
  /** The IndexedDB database name (default `mana-sync.<appId>`). */
  name?: string;
  /** The physical clock, in milliseconds since the epoch (replaceable in tests). */
  now?: () => number;
}

/** Which live records of a collection to read, in which order (`where`, `orderBy`, `offset`, `limit`). */
export interface Query extends Selection {
  collection: string;
}

/** Where the store stands with the server (what a sync indicator shows). */
export type SyncStatus =
  /** No account: a guest store. Everything works; nothing leaves the device. */
  | { kind: 'local-only' }
  /** Pushing or pulling right now. */
  | { kind: 'syncing' }
  /** The last sync reached the server and brought everything in both directions (and, when live, the stream is connected). */
  | { kind: 'synced'; at?: string }
  /** The server cannot be reached now; local writes are kept and pushed later. */
  | { kind: 'offline'; reason: string }
  /**
   * The server refused something (the token, a change); needs attention.
   * Local data is kept. `signInAgain`: the token was refused, a new sign-in
   * (`signIn` with a new token of the same user) resumes syncing.
   */
  | { kind: 'error'; reason: string; signInAgain?: boolean };

/** The account a store is signed in to. */
export interface Account {
  /** The user (the token's `sub`). */
  user: string;
  /** The sync server's URL. */
  server: string;
  /** The bearer token. */
  token: string;
}

/** A change the server refused, set aside. */
export interface RejectedChange {
  change: JsonObject;
  reason: string;
  rejectedAt: string;
}

/** Outbox rows sent together under one changeset id. */
export interface PendingChangeset {
  id: string;
  /** The changes' JSON texts, in write order. */
  changes: string[];
}

/** What `LocalStore.adopt` takes over from another client's database. */
export interface Adoption {
  /** Records as they stand, as changes (inserts, deletes) with their timestamps: merged in, not queued. */
  records: MergeChange[];
  /** Local changes the server never acknowledged, oldest first: merged in and queued. */
  pending: MergeChange[];
  /** How far each collection was pulled, as RFC 3339 `since` values of {@link server}. */
  cursors: Record<string, string>;
  /** The server the cursors are from (`undefined`: unknown, the cursors are dropped). */
  server: string | undefined;
}

/** A page of changes from the server (a push reply, a pull page, a stream event). */
export interface IncomingPage {
  changes: MergeChange[];
  /** The cursor after these changes: opaque (with spaces, one part per log), stored and sent back as it is. */
  syncedUntil: string;
  hasMore: boolean;
  /** Shared spaces the user no longer belongs to: their local records are dropped. */
  removedSpaces?: string[];
}

/** A member's role in a shared space: owners manage members, editors write, viewers only read. */
export type SpaceRole = 'owner' | 'editor' | 'viewer';

/** A shared space the user belongs to, with the user's role in it. */
export interface Space {
  id: string;
  name: string;
  role: SpaceRole;
}

/** A member of a shared space (`userId`: the token's `sub`; in dev mode, the name signed in with). */
export interface SpaceMember {
  userId: string;
  role: SpaceRole;
}

/** A shared space with its members. */
export interface SpaceDetails extends Space {
  members: SpaceMember[];
}
