/**
 * Selecting records in memory: equality filters, a total order on JSON
 * values (the Rust client's), paging. {@link LocalStore.query} and the
 * compat layer's `getAll` both select through {@link select}.
 */

import { compareText, type JsonObject, type JsonValue } from './json.ts';

/** A record as the app sees it. */
export type StoredRecord = JsonObject & { id: string };

/** Which records to keep, in which order. */
export interface Selection<R extends StoredRecord = StoredRecord> {
  /** Keep records whose fields equal these values, or for which this returns true. */
  where?: JsonObject | ((record: R) => boolean);
  /** Order by these fields (`-name` for descending), then by id. Default: by id. */
  orderBy?: string | string[];
  /** Skip this many (after ordering). */
  offset?: number;
  /** At most this many. */
  limit?: number;
}

function rank(value: JsonValue | undefined): number {
  if (value === undefined) return 0;
  if (value === null) return 1;
  switch (typeof value) {
    case 'boolean':
      return 2;
    case 'number':
      return 3;
    case 'string':
      return 4;
    default:
      return Array.isArray(value) ? 5 : 6;
  }
}

/** A total order on optional JSON values (missing < null < booleans < numbers < strings < arrays < objects). */
export function compareValues(a: JsonValue | undefined, b: JsonValue | undefined): number {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra < rb ? -1 : 1;
  if (typeof a === 'boolean' || typeof a === 'number') return a === b ? 0 : a! < b! ? -1 : 1;
  if (typeof a === 'string') return compareText(a, b as string);
  if (ra >= 5) return compareText(JSON.stringify(a), JSON.stringify(b));
  return 0;
}

function deepEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  return a === b || (typeof a === 'object' && a !== null && JSON.stringify(a) === JSON.stringify(b));
}

/** The records a selection keeps, in its order. */
export function select<R extends StoredRecord>(records: R[], selection: Selection<R>): R[] {
  const where = selection.where;
  let out = records;
  if (typeof where === 'function') out = out.filter(where);
  else if (where) out = out.filter((r) => Object.entries(where).every(([k, v]) => deepEqual(r[k], v)));
  const order = (typeof selection.orderBy === 'string' ? [selection.orderBy] : (selection.orderBy ?? [])).map((spec) =>
    spec.startsWith('-') ? { field: spec.slice(1), sign: -1 } : { field: spec, sign: 1 },
  );
  out = [...out].sort((a, b) => {
    for (const { field, sign } of order) {
      const c = compareValues(a[field], b[field]);
      if (c !== 0) return c * sign;
    }
    return compareText(a.id, b.id);
  });
  const start = selection.offset ?? 0;
  return out.slice(start, selection.limit === undefined ? undefined : start + selection.limit);
}
