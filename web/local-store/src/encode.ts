/**
 * The JSON text of the changes this client pushes: written once, kept in the
 * outbox byte for byte, and sent as it is (values keep the text they were
 * written with, which is what merge ties compare).
 */

import { StoreError } from './errors.ts';
import { compareText, quote, type JsonValue } from './json.ts';
import { applyChange, emptyState, type FieldState, type MergeChange, type RecordState } from './merge.ts';

/** The schema version of changes this client writes (timestamps named `at`). */
export const SCHEMA_VERSION = 2;

/** JSON text of a value the app wrote, and the value as it will read back. */
export function encodeValue(name: string, value: unknown): { value: JsonValue; raw: string } {
  let raw: string | undefined;
  try {
    raw = JSON.stringify(value);
  } catch (error) {
    throw new StoreError('invalid_input', `field \`${name}\`: ${String(error)}`);
  }
  if (raw === undefined) throw new StoreError('invalid_input', `field \`${name}\`: ${typeof value} is not a JSON value`);
  return { value: JSON.parse(raw) as JsonValue, raw };
}

function tail(actorRaw: string | undefined): string {
  return `${actorRaw === undefined ? '' : `,"actor":${actorRaw}`},"schemaVersion":${SCHEMA_VERSION}}`;
}

/** The change's start; a change of a record in a shared space names it (`spaceId`), every change of it, so the server checks each. */
function head(collection: string, id: string, op: MergeChange['op'], spaceId: string | undefined): string {
  const space = spaceId === undefined ? '' : `,"spaceId":${quote(spaceId)}`;
  return `{"table":${quote(collection)},"id":${quote(id)},"op":"${op}"${space}`;
}

/** `"name":{"value":…,"at":…}` for each written field. */
function fieldsText(fields: Iterable<readonly [string, Pick<FieldState, 'raw' | 'at'>]>): string {
  return [...fields].map(([name, field]) => `${quote(name)}:{"value":${field.raw},"at":${quote(field.at)}}`).join(',');
}

/** An insert of `state`: `data` with every field, `fields` with every field's timestamp. */
export function insertChange(collection: string, id: string, state: RecordState, actorRaw: string | undefined, spaceId?: string): string {
  const names = [...state.fields.keys()].sort(compareText);
  const data = names.map((name) => `${quote(name)}:${state.fields.get(name)!.raw}`).join(',');
  const fields = fieldsText(names.map((name) => [name, state.fields.get(name)!] as const));
  return `${head(collection, id, 'insert', spaceId)},"data":{${data}},"fields":{${fields}}${tail(actorRaw)}`;
}

/** An update of some fields, each with its own timestamp. */
export function updateChange(
  collection: string,
  id: string,
  fields: Iterable<readonly [string, Pick<FieldState, 'raw' | 'at'>]>,
  actorRaw: string | undefined,
  spaceId?: string,
): string {
  return `${head(collection, id, 'update', spaceId)},"fields":{${fieldsText(fields)}}${tail(actorRaw)}`;
}

/** A delete at `at`. */
export function deleteChange(collection: string, id: string, at: string, actorRaw: string | undefined, spaceId?: string): string {
  return `${head(collection, id, 'delete', spaceId)},"deletedAt":${quote(at)}${tail(actorRaw)}`;
}

/**
 * Any change (one read from another client's queue, say) in this client's
 * shape: inserts with every field's timestamp, timestamps named `at`,
 * schema version 2. Values and the actor keep their text.
 */
export function changeText(change: MergeChange): string {
  switch (change.op) {
    case 'insert': {
      const state = emptyState();
      applyChange(state, change);
      return insertChange(change.table, change.id, state, change.actorRaw, change.spaceId);
    }
    case 'update':
      return updateChange(change.table, change.id, change.fields ?? [], change.actorRaw, change.spaceId);
    case 'delete':
      if (change.deletedAt === undefined) throw new StoreError('invalid_input', `the delete of ${change.table}/${change.id} has no \`deletedAt\``);
      return deleteChange(change.table, change.id, change.deletedAt, change.actorRaw, change.spaceId);
  }
}
