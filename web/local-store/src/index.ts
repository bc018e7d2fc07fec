/**
 * `@mana-sync/local-store`: the browser client of mana-sync.
 *
 * A local-first store on IndexedDB (Dexie) that reads and writes instantly
 * with no network, a durable outbox, field-level last-writer-wins merging on
 * a hybrid logical clock, and sync with a mana-sync server (push with
 * changeset ids, paged pulls, the live stream), run by one tab at a time.
 * Svelte 5 reactive queries are in `@mana-sync/local-store/svelte`.
 */

export { LocalStore } from './store.ts';
export { SCHEMA_VERSION } from './encode.ts';
export { compareValues, select } from './select.ts';
export type { Selection, StoredRecord } from './select.ts';
export type {
  Account,
  Adoption,
  IncomingPage,
  PendingChangeset,
  Query,
  RejectedChange,
  SeedRecord,
  Space,
  SpaceDetails,
  SpaceMember,
  SpaceRole,
  StoreOptions,
  SyncStatus,
} from './types.ts';
export { SyncClient, Backoff, START, errorFrom, readServerChanges } from './sync.ts';
export type { SyncOptions, SyncReport } from './sync.ts';
export { SpacesApi } from './spaces.ts';
export type { SpacesOptions } from './spaces.ts';
export { startSync } from './tabs.ts';
export type { SyncHandle } from './tabs.ts';
export { StoreError, SyncError } from './errors.ts';
export type { StoreErrorCode, SyncErrorKind } from './errors.ts';
export { parseJson, rawMember, compareText } from './json.ts';
export type { JsonObject, JsonValue } from './json.ts';
export {
  applyChange,
  compareFields,
  emptyState,
  lastWrite,
  readChange,
  stateFromJson,
  stateToJson,
  view,
} from './merge.ts';
export type { FieldState, MergeChange, RecordState, Tombstone } from './merge.ts';
export { LOWEST_TIMESTAMP, compareTimestamps, isCanonical, parseTimestamp } from './timestamp.ts';
export * as hlc from './clock.ts';
