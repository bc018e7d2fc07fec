/**
 * An in-memory stand-in for mana-sync's HTTP API, as a `fetch` function: the
 * per-user log at positions (nanosecond clock readings, `max(now, last + 1)`,
 * printed as fixed-width RFC 3339 cursors), changeset idempotency,
 * paged pulls, and a live stream; plus hooks to inject faults (lost replies,
 * failed pages, refused changes). Like the real server it can compact a
 * user's log (`compact`): each record's history becomes one folded change at
 * the position of its latest, and deleted records may be dropped, after which
 * older cursors are answered `cursor_expired` (to clients that list the
 * feature) or served from the start. Shared spaces: the `/spaces` API, the
 * write check of pushes (403 `space_forbidden`, nothing stored), and
 * membership changes told as the real server tells them (`space-added` and
 * `space-removed` on the stream, `removedSpaces` in the next reply); each
 * user still reads their own log only, so sharing itself (another member's
 * changes) is left to the end-to-end tests on the real server. The real
 * server is exercised by the end-to-end tests; this one makes failures
 * easy to stage.
 */

import { parseJson } from '../src/json.ts';
import { applyChange, emptyState, lastWrite, readChange, view } from '../src/merge.ts';

type Json = Record<string, unknown>;

interface Entry {
  seq: bigint;
  user: string;
  app: string;
  clientId: string;
  change: Json;
}

interface Stream {
  user: string;
  app: string;
  clientId: string;
  collections: string[];
  cursors: Map<string, bigint>;
  controller: ReadableStreamDefaultController<Uint8Array>;
}

/** What a hook may do with a request: answer it itself, or let it through (perhaps after a while). */
export type Hook = (request: {
  method: string;
  path: string;
  query: URLSearchParams;
  body: Json | undefined;
  authorization: string | null;
}) => Response | 'lose-reply' | undefined | Promise<Response | 'lose-reply' | undefined>;

/** One request's identifying headers. */
export interface SeenRequest {
  method: string;
  path: string;
  clientId: string | null;
  features: string | null;
}

const encoder = new TextEncoder();

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

function error(status: number, code: string, message: string): Response {
  return json(status, { error: { code, message } });
}

/** The one change that reproduces a record's history (what the real server's `Fold` stores). */
function fold(history: Entry[]): Json {
  const state = emptyState();
  for (const entry of history) applyChange(state, readChange(parseJson(JSON.stringify(entry.change))));
  const latest = history.at(-1)!.change;
  const holder = state.deleted ?? lastWrite(state);
  const actorRaw = holder?.actorRaw;
  const fields: Json = {};
  for (const [name, field] of state.fields) {
    const entry: Json = { value: field.value, at: field.at };
    // A field whose winning write had another actor carries its own (`null`: the user).
    if (field.actorRaw !== actorRaw) entry.actor = field.actorRaw === undefined ? null : field.actor;
    fields[name] = entry;
  }
  const base: Json = { table: latest.table, id: latest.id, schemaVersion: 2, eventId: latest.eventId, ...(actorRaw !== undefined && { actor: holder!.actor }) };
  if (state.deleted) return { ...base, op: 'delete', deletedAt: state.deleted.at, fields };
  if (history.some((e) => e.change.op === 'insert')) {
    const data = Object.fromEntries(Object.entries(view(state) ?? {}).filter(([key]) => !key.startsWith('__')));
    return { ...base, op: 'insert', data, fields };
  }
  return { ...base, op: 'update', fields };
}

function subject(authorization: string | null): string | undefined {
  const token = authorization?.replace(/^Bearer /, '');
  const payload = token?.split('.')[1];
  if (!payload) return undefined;
  try {
    return (JSON.parse(Buffer.from(payload, 'base64url').toString()) as { sub?: string }).sub;
  } catch {
    return undefined;
  }
}

/** Before the first change, as the server prints it. */
const START = 1_000_000n;

/** A position as the server prints it: `2026-11-29T19:20:00.123456789Z`. */
export function formatCursor(position: bigint): string {
  const seconds = new Date(Number(position / 1_000_000_000n) * 1000).toISOString().slice(0, 19);
  return `${seconds}.${(position % 1_000_000_000n).toString().padStart(9, '0')}Z`;
}

function parseSince(since: string | null): bigint | undefined {
  if (since === null) return undefined;
  if (/^c1\.\d+$/.test(since)) return START; // the previous format: nothing was migrated here
  const parts = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(since);
  if (!parts) return undefined;
  const seconds = Date.parse(`${parts[1]}${parts[3]}`);
  if (Number.isNaN(seconds)) return undefined;
  const position = BigInt(seconds) * 1_000_000n + BigInt((parts[2] ?? '').padEnd(9, '0'));
  return position < START ? START : position;
}

export class FakeServer {
  readonly log: Entry[] = [];
  private readonly changesets = new Set<string>();
  private readonly seqs = new Map<string, bigint>();
  private readonly streams = new Set<Stream>();
  /** Called before every request; may answer it. */
  hook: Hook | undefined;
  /** Requests seen, as `METHOD path`. */
  readonly requests: string[] = [];
  /** Users whose tokens are refused. */
  readonly revoked = new Set<string>();
  /** Requests seen, with their client id and feature headers. */
  readonly seen: SeenRequest[] = [];
  /** Per user: cursors before this position are expired (compaction dropped history up to it). */
  private readonly expiredThrough = new Map<string, bigint>();
  /** Shared spaces: name and members with their role. */
  readonly spaces = new Map<string, { name: string; members: Map<string, string> }>();
  /** Spaces each user was removed from, told in their next reply. */
  private readonly removed = new Map<string, string[]>();
  private spaceCount = 0;

  /**
   * Compacts `user`'s log: every record's changes become one folded change at
   * the position of the latest; with `dropDeleted`, deleted records are
   * dropped altogether and cursors before them expire. Returns how many
   * changes were folded away and dropped.
   */
  compact(user: string, { dropDeleted = false } = {}): { folded: number; dropped: number } {
    const groups = new Map<string, Entry[]>();
    for (const entry of this.log) {
      if (entry.user !== user) continue;
      const key = JSON.stringify([entry.app, entry.change.table, entry.change.id]);
      groups.set(key, [...(groups.get(key) ?? []), entry]);
    }
    let folded = 0;
    let dropped = 0;
    const remove = new Set<Entry>();
    for (const history of groups.values()) {
      const latest = history.at(-1)!;
      const change = fold(history);
      if (dropDeleted && change.op === 'delete') {
        for (const entry of history) remove.add(entry);
        dropped += history.length;
        this.expiredThrough.set(user, latest.seq > (this.expiredThrough.get(user) ?? 0n) ? latest.seq : this.expiredThrough.get(user)!);
        continue;
      }
      if (history.length < 2) continue;
      for (const entry of history.slice(0, -1)) remove.add(entry);
      folded += history.length - 1;
      latest.change = change;
      latest.clientId = 'compaction';
    }
    const kept = this.log.filter((e) => !remove.has(e));
    this.log.splice(0, this.log.length, ...kept);
    return { folded, dropped };
  }

  private isExpired(user: string, since: bigint): boolean {
    return since > START && since < (this.expiredThrough.get(user) ?? 0n);
  }

  readonly fetch: typeof fetch = async (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const method = init?.method ?? 'GET';
    const headers = new Headers(init?.headers);
    const body = typeof init?.body === 'string' ? (JSON.parse(init.body) as Json) : undefined;
    this.requests.push(`${method} ${url.pathname}`);
    this.seen.push({ method, path: url.pathname, clientId: headers.get('x-client-id'), features: headers.get('x-sync-features') });
    if (init?.signal?.aborted) throw new DOMException('aborted', 'AbortError');
    const hooked = await this.hook?.({ method, path: url.pathname, query: url.searchParams, body, authorization: headers.get('authorization') });
    if (hooked instanceof Response) return hooked;
    const user = subject(headers.get('authorization'));
    if (!user || this.revoked.has(user)) return error(401, 'unauthorized', 'bad token');
    const clientId = headers.get('x-client-id') ?? String(body?.clientId ?? '');
    const refuseExpired = (headers.get('x-sync-features') ?? url.searchParams.get('features') ?? '')
      .split(',')
      .some((feature) => feature.trim() === 'cursor-expired');
    const parts = url.pathname.split('/').filter(Boolean);
    if (parts[0] === 'spaces') return this.spacesApi(user, method, parts.slice(1).map(decodeURIComponent), body);
    if (parts[0] !== 'sync' || !parts[1]) return error(404, 'not_found', url.pathname);
    const app = decodeURIComponent(parts[1]);
    let response: Response;
    if (method === 'POST' && parts.length === 2) response = this.push(user, app, clientId, body ?? {}, refuseExpired);
    else if (method === 'GET' && parts[2] === 'pull') response = this.pull(user, app, clientId, url.searchParams, refuseExpired);
    else if (method === 'GET' && parts[2] === 'stream') return this.stream(user, app, clientId, url.searchParams, refuseExpired, init?.signal ?? undefined);
    else response = error(404, 'not_found', url.pathname);
    if (hooked === 'lose-reply') throw new TypeError('Failed to fetch (the reply was lost)');
    return response;
  };

  private push(user: string, app: string, clientId: string, body: Json, refuseExpired: boolean): Response {
    let since = parseSince(typeof body.since === 'string' ? body.since : null);
    if (since === undefined) return error(400, 'invalid_cursor', 'bad since');
    const changes = body.changes as Json[];
    for (const change of changes) {
      const space = typeof change.spaceId === 'string' ? change.spaceId : undefined;
      const role = space === undefined ? 'owner' : this.spaces.get(space)?.members.get(user);
      if (role !== 'owner' && role !== 'editor') return error(403, 'space_forbidden', `no write access to space \`${space}\``);
    }
    const changesetId = typeof body.changesetId === 'string' ? `${user}/${body.changesetId}` : undefined;
    if (!changesetId || !this.changesets.has(changesetId)) {
      if (changesetId) this.changesets.add(changesetId);
      const tables = new Set<string>();
      for (const change of changes) {
        const now = BigInt(Date.now()) * 1_000_000n;
        const next = (this.seqs.get(user) ?? START) + 1n;
        const seq = now > next ? now : next;
        this.seqs.set(user, seq);
        this.log.push({ seq, user, app, clientId, change: { ...change, eventId: `e${seq}` } });
        tables.add(String(change.table));
      }
      this.announce(user, app);
    }
    // The changeset is stored whatever the cursor.
    if (this.isExpired(user, since)) {
      if (refuseExpired) return this.expired();
      since = START;
    }
    return json(200, this.page(user, app, clientId, undefined, since, 1000, 'serverChanges'));
  }

  /** The cursor just after the `n`-th change stored (1-based). */
  cursorAfter(n: number): string {
    return formatCursor(this.log[n - 1]!.seq);
  }

  private page(user: string, app: string, clientId: string, collection: string | undefined, since: bigint, limit: number, key: string): Json {
    const newest = this.seqs.get(user) ?? START;
    const after = this.log.filter((e) => e.user === user && e.app === app && e.seq > since && (!collection || e.change.table === collection));
    const page = after.slice(0, limit);
    const hasMore = after.length > limit;
    const until = hasMore ? page.at(-1)!.seq : newest;
    const removed = key === 'serverChanges' ? (this.removed.get(user) ?? []) : [];
    this.removed.delete(user);
    return {
      [key]: page.filter((e) => e.clientId !== clientId).map((e) => e.change),
      ...(key === 'serverChanges' && { conflicts: [] }),
      syncedUntil: formatCursor(until),
      hasMore,
      ...(removed.length > 0 && { removedSpaces: removed }),
    };
  }

  private expired(): Response {
    return error(410, 'cursor_expired', 'the cursor is older than history this server no longer keeps');
  }

  private pull(user: string, app: string, clientId: string, query: URLSearchParams, refuseExpired: boolean): Response {
    const collection = query.get('collection');
    let since = parseSince(query.get('since'));
    if (!collection) return error(400, 'missing_parameter', 'collection');
    if (since === undefined) return error(400, 'invalid_cursor', 'bad since');
    if (this.isExpired(user, since)) {
      if (refuseExpired) return this.expired();
      since = START;
    }
    const limit = Math.min(Number(query.get('limit') ?? 1000), 1000);
    return json(200, this.page(user, app, clientId, collection, since, limit, 'serverChanges'));
  }

  private stream(user: string, app: string, clientId: string, query: URLSearchParams, refuseExpired: boolean, signal: AbortSignal | undefined): Response {
    let since = parseSince(query.get('since'));
    if (since === undefined) return error(400, 'invalid_cursor', 'bad since');
    if (this.isExpired(user, since)) {
      if (refuseExpired) {
        const data = JSON.stringify({ error: { code: 'cursor_expired', message: 'the cursor is older than history this server no longer keeps' } });
        return new Response(`event: cursor-expired\ndata: ${data}\n\n`, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
      }
      since = START;
    }
    const collections = (query.get('collections') ?? '').split(',').filter(Boolean);
    let entry: Stream | undefined;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        entry = { user, app, clientId, collections, cursors: new Map(collections.map((c) => [c, since])), controller };
        this.streams.add(entry);
        for (const collection of collections) this.send(entry, collection);
      },
      cancel: () => {
        if (entry) this.streams.delete(entry);
      },
    });
    signal?.addEventListener('abort', () => {
      if (entry && this.streams.delete(entry)) entry.controller.error(new DOMException('aborted', 'AbortError'));
    });
    return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  }

  private send(stream: Stream, collection: string): void {
    const since = stream.cursors.get(collection)!;
    const page = this.page(stream.user, stream.app, stream.clientId, collection, since, 1000, 'changes');
    stream.cursors.set(collection, parseSince(String(page.syncedUntil))!);
    const data = JSON.stringify({ table: collection, ...page });
    stream.controller.enqueue(encoder.encode(`event: changes\ndata: ${data}\n\n`));
  }

  private announce(user: string, app: string): void {
    for (const stream of this.streams) {
      if (stream.user !== user || stream.app !== app) continue;
      for (const collection of stream.collections) {
        const before = stream.cursors.get(collection)!;
        const fresh = this.log.some((e) => e.user === user && e.seq > before && e.change.table === collection && e.clientId !== stream.clientId);
        if (fresh) this.send(stream, collection);
      }
    }
  }

  private spacesApi(user: string, method: string, parts: string[], body: Json | undefined): Response {
    const view = (id: string) => {
      const space = this.spaces.get(id)!;
      const members = [...space.members].map(([userId, role]) => ({ userId, role }));
      return { id, name: space.name, role: space.members.get(user), members };
    };
    if (parts.length === 0 && method === 'GET') {
      const mine = [...this.spaces].filter(([, space]) => space.members.has(user));
      return json(200, { spaces: mine.map(([id, space]) => ({ id, name: space.name, role: space.members.get(user) })) });
    }
    if (parts.length === 0 && method === 'POST') {
      const id = `space-${++this.spaceCount}`;
      this.spaces.set(id, { name: String(body?.name), members: new Map([[user, 'owner']]) });
      return json(201, { id, name: String(body?.name), role: 'owner' });
    }
    const space = this.spaces.get(parts[0]!);
    const role = space?.members.get(user);
    if (!space || !role) return error(404, 'space_not_found', `no space \`${parts[0]}\` of yours`);
    if (parts.length === 1 && method === 'GET') return json(200, view(parts[0]!));
    const member = parts[2];
    if (parts[1] !== 'members' || !member) return error(404, 'not_found', parts.join('/'));
    if (role !== 'owner' && member !== user) return error(403, 'forbidden', 'only owners manage members');
    if (method === 'PUT') {
      this.setMember(parts[0]!, member, String(body?.role));
      return json(200, { userId: member, role: body?.role });
    }
    if (method === 'DELETE') {
      const owners = [...space.members].filter(([, r]) => r === 'owner').map(([u]) => u);
      if (owners.length === 1 && owners[0] === member) return error(409, 'last_owner', 'the last owner cannot leave');
      this.setMember(parts[0]!, member, undefined);
      return new Response(null, { status: 204 });
    }
    return error(405, 'method_not_allowed', method);
  }

  /**
   * Adds `user` to `space` with `role`, or removes them (`undefined`), and
   * tells their streams (and, for a removal, their next reply) as the real
   * server does.
   */
  setMember(space: string, user: string, role: string | undefined): void {
    const members = this.spaces.get(space)!.members;
    if (role === undefined) {
      members.delete(user);
      this.removed.set(user, [...(this.removed.get(user) ?? []), space]);
    } else {
      members.set(user, role);
    }
    const [event, data] = role === undefined ? ['space-removed', { spaceId: space }] : ['space-added', { spaceId: space, role }];
    for (const stream of this.streams) {
      if (stream.user === user) stream.controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
    }
  }

  /** Open streams. */
  get openStreams(): number {
    return this.streams.size;
  }

  /** Ends every stream as a server shutting down would. */
  closeStreams(): void {
    for (const stream of this.streams) stream.controller.close();
    this.streams.clear();
  }

  /** Sends a heartbeat to every stream. */
  heartbeat(): void {
    for (const stream of this.streams) stream.controller.enqueue(encoder.encode('event: heartbeat\ndata: {}\n\n'));
  }
}
