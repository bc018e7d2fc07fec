/**
 * An in-memory stand-in for mana-sync's HTTP API, as a `fetch` function: the
 * per-user log at positions (nanosecond clock readings, `max(now, last + 1)`,
 * printed as fixed-width RFC 3339 cursors), changeset idempotency,
 * paged pulls, and a live stream; plus hooks to inject faults (lost replies,
 * failed pages, refused changes). The real server is exercised by the
 * end-to-end tests; this one makes failures easy to stage.
 */

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

/** What a hook may do with a request: answer it itself, or let it through. */
export type Hook = (request: {
  method: string;
  path: string;
  query: URLSearchParams;
  body: Json | undefined;
  authorization: string | null;
}) => Response | 'lose-reply' | undefined;

const encoder = new TextEncoder();

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

function error(status: number, code: string, message: string): Response {
  return json(status, { error: { code, message } });
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

  readonly fetch: typeof fetch = async (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const method = init?.method ?? 'GET';
    const headers = new Headers(init?.headers);
    const body = typeof init?.body === 'string' ? (JSON.parse(init.body) as Json) : undefined;
    this.requests.push(`${method} ${url.pathname}`);
    if (init?.signal?.aborted) throw new DOMException('aborted', 'AbortError');
    const hooked = this.hook?.({ method, path: url.pathname, query: url.searchParams, body, authorization: headers.get('authorization') });
    if (hooked instanceof Response) return hooked;
    const user = subject(headers.get('authorization'));
    if (!user || this.revoked.has(user)) return error(401, 'unauthorized', 'bad token');
    const clientId = headers.get('x-client-id') ?? String(body?.clientId ?? '');
    const parts = url.pathname.split('/').filter(Boolean);
    if (parts[0] !== 'sync' || !parts[1]) return error(404, 'not_found', url.pathname);
    const app = decodeURIComponent(parts[1]);
    let response: Response;
    if (method === 'POST' && parts.length === 2) response = this.push(user, app, clientId, body ?? {});
    else if (method === 'GET' && parts[2] === 'pull') response = this.pull(user, app, clientId, url.searchParams);
    else if (method === 'GET' && parts[2] === 'stream') return this.stream(user, app, clientId, url.searchParams, init?.signal ?? undefined);
    else response = error(404, 'not_found', url.pathname);
    if (hooked === 'lose-reply') throw new TypeError('Failed to fetch (the reply was lost)');
    return response;
  };

  private push(user: string, app: string, clientId: string, body: Json): Response {
    const since = parseSince(typeof body.since === 'string' ? body.since : null);
    if (since === undefined) return error(400, 'invalid_cursor', 'bad since');
    const changes = body.changes as Json[];
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
    return {
      [key]: page.filter((e) => e.clientId !== clientId).map((e) => e.change),
      ...(key === 'serverChanges' && { conflicts: [] }),
      syncedUntil: formatCursor(until),
      hasMore,
    };
  }

  private pull(user: string, app: string, clientId: string, query: URLSearchParams): Response {
    const collection = query.get('collection');
    const since = parseSince(query.get('since'));
    if (!collection) return error(400, 'missing_parameter', 'collection');
    if (since === undefined) return error(400, 'invalid_cursor', 'bad since');
    const limit = Math.min(Number(query.get('limit') ?? 1000), 1000);
    return json(200, this.page(user, app, clientId, collection, since, limit, 'serverChanges'));
  }

  private stream(user: string, app: string, clientId: string, query: URLSearchParams, signal: AbortSignal | undefined): Response {
    const since = parseSince(query.get('since'));
    if (since === undefined) return error(400, 'invalid_cursor', 'bad since');
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
