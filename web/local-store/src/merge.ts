/**
 * Field-level last-writer-wins merge of one record: the same rules as the
 * Rust client (`crates/protocol/src/merge.rs`), checked against the shared
 * vectors in `spec/merge-vectors.json`.
 *
 * - Per field, the greater write wins: timestamp (as an instant, to the
 *   nanosecond), then the value's JSON text (by code point), then the
 *   actor's JSON text (no actor first), then the timestamp's text.
 * - Inserts write every key of `data`; keys also in `fields` take that
 *   entry; the others take `data.updatedAt` when it is an RFC 3339 string,
 *   else the lowest timestamp.
 * - Deletes are sticky tombstones: later edits still merge, never resurrect.
 * - Actors: each field keeps its winning write's actor (`__fieldActors`);
 *   `__lastActor` is the actor of the record's greatest write. A field's own
 *   `actor` overrides the change's (`null`: the user); a delete may carry
 *   fields, merged under the tombstone (both only in folded changes).
 */

import { compareText, isObject, rawOf, setOwn, type JsonObject, type JsonValue } from './json.ts';
import { LOWEST_TIMESTAMP, compareTimestamps, isTimestamp } from './timestamp.ts';

/** The winning write of one field. */
export interface FieldState {
  /** The value. */
  value: JsonValue;
  /** Its JSON text, exactly as written (what ties compare). */
  raw: string;
  /** When it was written. */
  at: string;
  /** Who wrote it (absent: the user), and its JSON text. */
  actor?: JsonValue;
  actorRaw?: string;
}

/** The record was deleted. */
export interface Tombstone {
  at: string;
  actor?: JsonValue;
  actorRaw?: string;
}

/** A record's merge state: every field's winning write, and the tombstone. */
export interface RecordState {
  fields: Map<string, FieldState>;
  deleted?: Tombstone;
}

/** One change, normalized (JSON texts known). */
export interface MergeChange {
  table: string;
  id: string;
  op: 'insert' | 'update' | 'delete';
  /** Insert: every key with its value and text. */
  data?: Map<string, { value: JsonValue; raw: string }>;
  /**
   * Per-field writes (updates; optional on inserts and deletes). `own` is a
   * field's own actor, which overrides the change's (folded changes carry
   * it; `{}` when the field's `actor` is `null`: the user).
   */
  fields?: Map<string, { value: JsonValue; raw: string; at: string; own?: { actor?: JsonValue; actorRaw?: string } }>;
  /** Delete: when. */
  deletedAt?: string;
  /** The shared space of the record (absent: the user's personal space). */
  spaceId?: string;
  actor?: JsonValue;
  actorRaw?: string;
}

/** Why a change cannot be read. */
export class ChangeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChangeError';
  }
}

/** An empty state. */
export function emptyState(): RecordState {
  return { fields: new Map() };
}

function compareActors(a: string | undefined, b: string | undefined): number {
  if (a === b) return 0;
  if (a === undefined) return -1;
  if (b === undefined) return 1;
  return compareText(a, b);
}

/** The order of writes to one field; the greater wins. */
export function compareFields(a: FieldState, b: FieldState): number {
  return (
    compareTimestamps(a.at, b.at) ||
    compareText(a.raw, b.raw) ||
    compareActors(a.actorRaw, b.actorRaw) ||
    compareText(a.at, b.at)
  );
}

/** The order of deletes; the greater is kept. */
export function compareTombstones(a: Tombstone, b: Tombstone): number {
  return compareTimestamps(a.at, b.at) || compareActors(a.actorRaw, b.actorRaw) || compareText(a.at, b.at);
}

/** Merges one write of one field; returns whether it won. */
export function mergeField(state: RecordState, name: string, candidate: FieldState): boolean {
  const current = state.fields.get(name);
  if (current && compareFields(candidate, current) <= 0) return false;
  state.fields.set(name, candidate);
  return true;
}

/** Merges a delete; returns whether the state changed. */
export function mergeDelete(state: RecordState, candidate: Tombstone): boolean {
  if (state.deleted && compareTombstones(candidate, state.deleted) <= 0) return false;
  state.deleted = candidate;
  return true;
}

function withActor<T extends object>(target: T, change: MergeChange): T {
  if (change.actorRaw !== undefined) {
    Object.assign(target, { actor: change.actor, actorRaw: change.actorRaw });
  }
  return target;
}

/** Merges one change into the record; returns whether the state changed. */
export function applyChange(state: RecordState, change: MergeChange): boolean {
  let changed = false;
  switch (change.op) {
    case 'insert': {
      if (!change.data) throw new ChangeError('an insert needs a `data` object');
      const updatedAt = change.data.get('updatedAt')?.value;
      const fallback = isTimestamp(updatedAt) ? updatedAt : LOWEST_TIMESTAMP;
      for (const [name, { value, raw }] of change.data) {
        if (change.fields?.has(name)) continue;
        changed = mergeField(state, name, withActor({ value, raw, at: fallback }, change)) || changed;
      }
      changed = mergeFields(state, change) || changed;
      break;
    }
    case 'update':
      changed = mergeFields(state, change);
      break;
    case 'delete':
      changed = mergeDelete(state, withActor({ at: change.deletedAt ?? LOWEST_TIMESTAMP }, change));
      // A folded delete carries the record's fields, merged under the tombstone.
      changed = mergeFields(state, change) || changed;
      break;
  }
  return changed;
}

function mergeFields(state: RecordState, change: MergeChange): boolean {
  let changed = false;
  for (const [name, { value, raw, at, own }] of change.fields ?? []) {
    const write = own === undefined ? withActor({ value, raw, at }, change) : { value, raw, at, ...own };
    changed = mergeField(state, name, write) || changed;
  }
  return changed;
}

/**
 * The record's greatest write: a field's, or the tombstone (`undefined`: no
 * write). Its `at` is when the record last changed; its actor is `__lastActor`.
 */
export function lastWrite(state: RecordState): FieldState | Tombstone | undefined {
  let best: FieldState | undefined;
  for (const field of state.fields.values()) {
    if (!best || compareFields(field, best) > 0) best = field;
  }
  const tombstone = state.deleted;
  // A delete wins a tie with a field write: it is what the user sees.
  if (tombstone && best && compareTimestamps(tombstone.at, best.at) < 0) return best;
  return tombstone ?? best;
}

/** The record as an app sees it, or `undefined` once deleted. */
export function view(state: RecordState): JsonObject | undefined {
  if (state.deleted) return undefined;
  const out: JsonObject = {};
  const actors: JsonObject = {};
  let anyActor = false;
  for (const [name, field] of state.fields) {
    setOwn(out, name, field.value);
    if (field.actorRaw !== undefined) {
      setOwn(actors, name, field.actor ?? null);
      anyActor = true;
    }
  }
  const last = lastWrite(state);
  if (last?.actorRaw !== undefined) out.__lastActor = last.actor ?? null;
  if (anyActor) out.__fieldActors = actors;
  return out;
}

function readActor(change: JsonObject): { actor?: JsonValue; actorRaw?: string } {
  // `"actor": null` is no actor, as for the Rust client (serde's `Option`).
  if (change.actor === undefined || change.actor === null) return {};
  return { actor: change.actor, actorRaw: rawOf(change, 'actor') };
}

/**
 * Reads a change as the server sends it (parsed by `parseJson`, so values
 * keep their text). Throws {@link ChangeError} when it is not a change.
 */
export function readChange(change: unknown): MergeChange {
  if (!isObject(change)) throw new ChangeError('a change must be an object');
  const { table, id, op } = change;
  if (typeof table !== 'string' || typeof id !== 'string') throw new ChangeError('a change needs `table` and `id`');
  if (op !== 'insert' && op !== 'update' && op !== 'delete') throw new ChangeError(`unknown op ${JSON.stringify(op)}`);
  const out: MergeChange = { table, id, op, ...readActor(change) };
  if (change.spaceId !== undefined && change.spaceId !== null) {
    if (typeof change.spaceId !== 'string') throw new ChangeError('`spaceId` must be a string');
    out.spaceId = change.spaceId;
  }
  if (op === 'insert') {
    if (!isObject(change.data)) throw new ChangeError('an insert needs a `data` object');
    const data = change.data;
    out.data = new Map(Object.keys(data).map((name) => [name, { value: data[name]!, raw: rawOf(data, name)! }]));
    // The seed's later clients name the space in the insert's data only.
    if (out.spaceId === undefined && typeof data.spaceId === 'string') out.spaceId = data.spaceId;
  }
  if (change.fields !== undefined && change.fields !== null) {
    if (!isObject(change.fields)) throw new ChangeError('`fields` must be an object');
    out.fields = new Map();
    for (const name of Object.keys(change.fields)) {
      const field = change.fields[name];
      if (!isObject(field) || !('value' in field)) throw new ChangeError(`fields.${name} needs a value`);
      const at = typeof field.at === 'string' ? field.at : field.updatedAt;
      if (!isTimestamp(at)) throw new ChangeError(`fields.${name} needs a timestamp (\`at\` or \`updatedAt\`)`);
      const own = 'actor' in field ? readActor(field) : undefined;
      out.fields.set(name, { value: field.value!, raw: rawOf(field, 'value')!, at, ...(own && { own }) });
    }
  }
  if (op === 'delete') {
    const deletedAt = change.deletedAt;
    if (deletedAt !== undefined && !isTimestamp(deletedAt)) throw new ChangeError('`deletedAt` must be a timestamp');
    out.deletedAt = deletedAt;
  }
  return out;
}

/** The state in the shape of `spec/merge-vectors.json`. */
export function stateToJson(state: RecordState): JsonObject {
  const fields: JsonObject = {};
  for (const name of [...state.fields.keys()].sort(compareText)) {
    const field = state.fields.get(name)!;
    const entry: JsonObject = { value: field.value, at: field.at };
    if (field.actorRaw !== undefined) entry.actor = field.actor ?? null;
    setOwn(fields, name, entry);
  }
  const out: JsonObject = { fields };
  if (state.deleted) {
    const deleted: JsonObject = { at: state.deleted.at };
    if (state.deleted.actorRaw !== undefined) deleted.actor = state.deleted.actor ?? null;
    out.deleted = deleted;
  }
  return out;
}

/** A state from the shape of `spec/merge-vectors.json` (parsed by `parseJson`). */
export function stateFromJson(json: unknown): RecordState {
  const state = emptyState();
  if (!isObject(json)) return state;
  const fields = isObject(json.fields) ? json.fields : {};
  for (const name of Object.keys(fields)) {
    const field = fields[name];
    if (!isObject(field) || typeof field.at !== 'string') continue;
    const entry: FieldState = { value: field.value ?? null, raw: rawOf(field, 'value') ?? 'null', at: field.at };
    if (field.actor !== undefined && field.actor !== null) Object.assign(entry, { actor: field.actor, actorRaw: rawOf(field, 'actor') });
    state.fields.set(name, entry);
  }
  if (isObject(json.deleted) && typeof json.deleted.at === 'string') {
    const deleted: Tombstone = { at: json.deleted.at };
    if (json.deleted.actor !== undefined && json.deleted.actor !== null) Object.assign(deleted, { actor: json.deleted.actor, actorRaw: rawOf(json.deleted, 'actor') });
    state.deleted = deleted;
  }
  return state;
}
