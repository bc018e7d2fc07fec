/**
 * Shared spaces in the local store: which space a record is in, the list of
 * the user's spaces as the server last told it, and dropping a space the
 * user left or was removed from.
 *
 * A record's space is fixed when the record is created (records cannot
 * move between spaces); every change of it names the space, and it travels
 * in the outbox row so that a changeset holds the changes of one space
 * only (the server refuses a whole changeset when one of its spaces may not
 * be written, and one space's refusal must not hold back the others).
 *
 * The composite cursor stays opaque except for one thing the protocol
 * names: when a space is dropped, its part (`~SPACE=CURSOR`) is cut out of
 * every stored cursor, so that joining the space again downloads it from
 * the start instead of resuming after records this device no longer has.
 */

import type { StoreDb } from './db.ts';
import { StoreError } from './errors.ts';
import type { Space, SpaceRole } from './types.ts';
import { MAX_ID_LEN, checkIdentifier } from './util.ts';

/** The `meta` key of the user's spaces as the server last listed them. */
const SPACES = 'spaces';

/** Separates a composite cursor's parts, and a space's id from its cursor (see the protocol's `space_cursor.rs`). */
const PART = '~';
const SPACE = '=';

const ROLES: readonly SpaceRole[] = ['owner', 'editor', 'viewer'];

/** Reads the `spaceId` an app wrote (`undefined`/`null`: the personal space); throws `invalid_input`. */
export function readSpaceId(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  checkIdentifier('spaceId', value, MAX_ID_LEN);
  if (/[~=!]/.test(value)) throw new StoreError('invalid_input', '`spaceId` must not contain `~`, `=` or `!`');
  return value;
}

/** `{space}` for a row when the change is in a shared space, `{}` otherwise. */
export function spaceField(space: string | undefined): { space?: string } {
  return space === undefined ? {} : { space };
}

/** The space a change's JSON text names (for rows whose space was not kept). */
export function spaceOfChange(change: string): string | undefined {
  try {
    const parsed = JSON.parse(change) as { spaceId?: unknown };
    return typeof parsed.spaceId === 'string' ? parsed.spaceId : undefined;
  } catch {
    return undefined;
  }
}

/** `cursor` without the parts of `spaces`. */
export function withoutSpaces(cursor: string, spaces: ReadonlySet<string>): string {
  const [own = '', ...parts] = cursor.split(PART);
  const kept = parts.filter((part) => !spaces.has(part.slice(0, part.indexOf(SPACE))));
  return [own, ...kept].join(PART);
}

/** Whether `value` reads as a space list entry. */
function isSpace(value: unknown): value is Space {
  if (typeof value !== 'object' || value === null) return false;
  const { id, name, role } = value as Record<string, unknown>;
  return typeof id === 'string' && typeof name === 'string' && ROLES.includes(role as SpaceRole);
}

/** Reads a list of spaces from the server's JSON; throws on anything else. */
export function readSpaces(value: unknown): Space[] {
  if (!Array.isArray(value) || !value.every(isSpace)) throw new TypeError('not a list of spaces');
  return value.map(({ id, name, role }) => ({ id, name, role }));
}

/** The spaces as last listed (inside or outside a transaction). */
export async function storedSpaces(db: StoreDb): Promise<Space[]> {
  const value = (await db.meta.get(SPACES))?.value;
  return Array.isArray(value) ? (value as Space[]) : [];
}

/** Replaces the list, ordered by name (unless it is the same: readers are not woken for nothing). */
export async function storeSpaces(db: StoreDb, spaces: Space[]): Promise<void> {
  const sorted = [...spaces].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  await db.transaction('rw', db.meta, async () => {
    if (JSON.stringify(await storedSpaces(db)) === JSON.stringify(sorted)) return;
    await db.meta.put({ key: SPACES, value: sorted });
  });
}

/**
 * Inside a read-write transaction over records, cursors and meta: deletes
 * every record (tombstones too) of `spaces`, cuts their parts out of every
 * cursor and takes them off the list. Queued and refused changes are kept:
 * a queued one is refused by the server (403) and set aside with the
 * others it refused, where the app can show it. Returns how many records
 * were deleted.
 */
export async function dropSpacesIn(db: StoreDb, spaces: readonly string[]): Promise<number> {
  if (spaces.length === 0) return 0;
  const gone = new Set(spaces);
  const keys = await db.records.where('space').anyOf([...gone]).primaryKeys();
  await db.records.bulkDelete(keys);
  const cursors = await db.cursors.toArray();
  await db.cursors.bulkPut(cursors.map((row) => ({ ...row, cursor: withoutSpaces(row.cursor, gone) })));
  const app = (await db.meta.get('appCursor'))?.value;
  if (typeof app === 'string') await db.meta.put({ key: 'appCursor', value: withoutSpaces(app, gone) });
  const listed = await storedSpaces(db);
  if (listed.some((space) => gone.has(space.id))) await storeSpaces(db, listed.filter((space) => !gone.has(space.id)));
  return keys.length;
}
