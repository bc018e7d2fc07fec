/**
 * The shared spaces API of a mana-sync server (`/spaces`), typed: create a
 * space, list the user's spaces, read one with its members, add a member
 * or change a role, remove a member, leave. Only owners manage members;
 * the last owner cannot leave. Every call needs the store's account (or the
 * one given) and the network; what it learns about the user's spaces is
 * written to the store's list ({@link LocalStore.spaces}), which the app
 * reads offline and reactively.
 *
 * Records of a space are written like any other, with `spaceId`
 * (`store.insert('tasks', {title, spaceId})`); sync (which follows every
 * space the user belongs to) does the rest.
 */

import { SyncError } from './errors.ts';
import { parseJson } from './json.ts';
import { readSpaces } from './store-spaces.ts';
import type { LocalStore } from './store.ts';
import type { Account, Space, SpaceDetails, SpaceMember, SpaceRole } from './types.ts';
import { errorFrom } from './wire.ts';

/** How the API reaches the server. */
export interface SpacesOptions {
  /** The account to use (default: the store's, read at each call). */
  account?: Pick<Account, 'server' | 'token'>;
  /** Time for one request, reply included (30 s). */
  requestTimeoutMs?: number;
  /** The `fetch` to use (tests). */
  fetch?: typeof fetch;
}

function readMember(value: unknown): SpaceMember {
  const { userId, role } = (value ?? {}) as Record<string, unknown>;
  if (typeof userId !== 'string' || (role !== 'owner' && role !== 'editor' && role !== 'viewer')) {
    throw new SyncError('protocol', 'a space member is not `{userId, role}`');
  }
  return { userId, role };
}

function readSpace(value: unknown): Space {
  try {
    return readSpaces([value])[0]!;
  } catch {
    throw new SyncError('protocol', 'a space is not `{id, name, role}`');
  }
}

function readDetails(value: unknown): SpaceDetails {
  const space = readSpace(value);
  const members = (value as { members?: unknown }).members;
  if (!Array.isArray(members)) throw new SyncError('protocol', 'a space lacks `members`');
  return { ...space, members: members.map(readMember) };
}

/** The `/spaces` API for one store's user. */
export class SpacesApi {
  private readonly fetch: typeof fetch;

  constructor(
    readonly store: LocalStore,
    private readonly options: SpacesOptions = {},
  ) {
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  private async request(method: string, segments: string[], body?: unknown, signal?: AbortSignal): Promise<unknown> {
    const account = this.options.account ?? (await this.store.account());
    if (!account) throw new SyncError('unauthorized', 'sign in first: shared spaces live on the server', 401, 'not_signed_in');
    const url = `${account.server.replace(/\/+$/, '')}/${segments.map(encodeURIComponent).join('/')}`;
    let response: Response;
    let text: string;
    try {
      response = await this.fetch(url, {
        method,
        headers: { Authorization: `Bearer ${account.token}`, ...(body !== undefined && { 'Content-Type': 'application/json' }) },
        ...(body !== undefined && { body: JSON.stringify(body) }),
        signal: AbortSignal.any([AbortSignal.timeout(this.options.requestTimeoutMs ?? 30_000), ...(signal ? [signal] : [])]),
        cache: 'no-store',
      });
      text = await response.text();
    } catch (error) {
      throw new SyncError('offline', `cannot reach the sync server at ${account.server}: ${(error as Error).message}`);
    }
    if (!response.ok) throw errorFrom(response.status, text);
    if (response.status === 204) return undefined;
    try {
      return parseJson(text);
    } catch (error) {
      throw new SyncError('protocol', `the reply to ${method} /${segments.join('/')} is not JSON: ${(error as Error).message}`);
    }
  }

  /** The user's spaces with their role (`GET /spaces`); the store's list is replaced with them. `signal` aborts the request. */
  async list(signal?: AbortSignal): Promise<Space[]> {
    const reply = (await this.request('GET', ['spaces'], undefined, signal)) as { spaces?: unknown } | undefined;
    let spaces: Space[];
    try {
      spaces = readSpaces(reply?.spaces);
    } catch {
      throw new SyncError('protocol', 'the list of spaces is not `{spaces: [{id, name, role}]}`');
    }
    await this.store.setSpaces(spaces);
    return spaces;
  }

  /** Creates a space owned by the user (`POST /spaces`) and adds it to the store's list. */
  async create(name: string): Promise<Space> {
    const space = readSpace(await this.request('POST', ['spaces'], { name }));
    await this.remember(space);
    return space;
  }

  /** One of the user's spaces with its members (`GET /spaces/{id}`). */
  async get(spaceId: string): Promise<SpaceDetails> {
    const space = readDetails(await this.request('GET', ['spaces', spaceId]));
    await this.remember(space);
    return space;
  }

  /**
   * Adds `userId` to the space with `role`, or gives a member another role
   * (`PUT /spaces/{id}/members/{userId}`). Owners only.
   */
  async setRole(spaceId: string, userId: string, role: SpaceRole): Promise<SpaceMember> {
    return readMember(await this.request('PUT', ['spaces', spaceId, 'members', userId], { role }));
  }

  /** Removes a member (`DELETE /spaces/{id}/members/{userId}`). Owners only; removing oneself is leaving. */
  async removeMember(spaceId: string, userId: string): Promise<void> {
    const account = this.options.account ?? (await this.store.account());
    await this.request('DELETE', ['spaces', spaceId, 'members', userId]);
    if (account && 'user' in account && account.user === userId) await this.store.dropSpaces([spaceId]);
  }

  /** Leaves a space (the last owner cannot) and drops its records from this device at once. */
  async leave(spaceId: string): Promise<void> {
    const account = await this.store.account();
    if (!account) throw new SyncError('unauthorized', 'sign in first: shared spaces live on the server', 401, 'not_signed_in');
    await this.request('DELETE', ['spaces', spaceId, 'members', account.user]);
    await this.store.dropSpaces([spaceId]);
  }

  /** Puts `space` (name, role) into the store's list. */
  private async remember(space: Space): Promise<void> {
    const listed = await this.store.spaces();
    if (listed.some((known) => known.id === space.id && known.name === space.name && known.role === space.role)) return;
    await this.store.setSpaces([...listed.filter((known) => known.id !== space.id), { id: space.id, name: space.name, role: space.role }]);
  }
}
