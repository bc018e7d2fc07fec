/**
 * Sync with a mana-sync server: push the outbox, pull every collection to
 * the end, and follow the live stream. The same behaviour as the Rust client
 * (`crates/client/src/sync.rs`, `live.rs`).
 *
 * **Push.** The outbox goes out in changesets of at most `changesetSize`
 * changes. A changeset's id is committed with its rows before it is sent,
 * and rows leave the outbox only in the transaction that applies the 200
 * reply, so a lost reply or a closed tab is followed by a resend of the same
 * id, which the server stores once. A 400 `invalid_change`/`invalid_json` or
 * a 413 splits the changeset in halves down to the refused change, which is
 * set aside (`LocalStore.rejected`) with the server's reason; the rest keeps
 * flowing. An `invalid_cursor` (the server's database was replaced) forgets
 * the cursors and starts over.
 *
 * **Expired cursors.** Every request lists the `cursor-expired` feature
 * (`X-Sync-Features`). When the server dropped deleted records past its
 * tombstone retention and a cursor is older than that, it answers 410
 * `cursor_expired` (a push is stored first) or, on the stream, the event
 * `cursor-expired`. The client then re-downloads (`LocalStore.startRedownload`):
 * it forgets every cursor, pulls every synced collection from the start
 * without its client id (so its own earlier changes come back too), removes
 * the local records that did not come back and that no unsent change
 * touches, and only then pushes the outbox, whose resent changeset the
 * server recognises. A re-download interrupted by a closed tab or a failure
 * resumes at the next sync; no push is sent while one is unfinished.
 *
 * **Pull.** Each collection is pulled from its cursor, page by page while
 * `hasMore`; each page is applied in its own transaction, and the cursor is
 * saved only with the last page, so an interrupted pull resumes from the old
 * cursor and re-applies (harmlessly) what it had.
 *
 * **Live.** After a push and a pull, the stream (`GET /sync/{app}/stream`,
 * Server-Sent Events read with `fetch`, so the token travels in the
 * `Authorization` header and never in a URL) delivers other devices'
 * changes; each event is applied with its collection's cursor. Local writes
 * (from any tab) are pushed as they happen. Any failure: status `offline` or
 * `error`, then a retry after an exponential backoff with jitter, at once
 * when the browser comes back online. A 401 stops until a new token. The
 * stream's `cursor-expired` event starts a re-download, then a new stream,
 * at once.
 *
 * **Shared spaces.** Requests also list `spaces`: the client follows every
 * space its user belongs to, its cursors composite (one part per log) and
 * stored as they come. A changeset holds one space's changes, so a 403
 * `space_forbidden` sets aside that changeset only (with the server's
 * reason, like any refused change) and the rest keeps flowing. A reply's
 * `removedSpaces` and the stream's `space-removed` drop the space's records
 * (`LocalStore.dropSpaces`); `space-added` (the stream downloads the new
 * space itself) and every sync list the user's spaces into the store.
 */

import { liveQuery } from 'dexie';
import { createParser } from 'eventsource-parser';

import { SyncError } from './errors.ts';
import { parseJson, quote, type JsonObject } from './json.ts';
import { SCHEMA_VERSION } from './encode.ts';
import { SpacesApi } from './spaces.ts';
import type { LocalStore } from './store.ts';
import type { Account, IncomingPage, PendingChangeset, SyncStatus } from './types.ts';
import { Backoff, browserWindow, errorFrom, readPage, refusesTheChanges, sleep } from './wire.ts';

export { Backoff, errorFrom } from './wire.ts';

/** `since` meaning "from the start". */
export const START = '1970-01-01T00:00:00.000Z';

/**
 * What this client lists in `X-Sync-Features`: told `cursor_expired` rather
 * than served from the start, and following the user's shared spaces
 * (cursors become composite, one part per log: kept opaque).
 */
const FEATURES = 'cursor-expired, spaces';

/** Re-downloads one pull may start before giving up (each starts over only when the server dropped history again meanwhile). */
const MAX_REDOWNLOADS = 3;

function isCursorExpired(error: unknown): error is SyncError {
  return error instanceof SyncError && error.code === 'cursor_expired';
}

/** Tuning of the sync client. */
export interface SyncOptions {
  /** Changes per pushed changeset (500). */
  changesetSize?: number;
  /** Changes per pulled page (1000, the server's maximum). */
  pageSize?: number;
  /** Time for one push or pull, reply included (60 s). */
  requestTimeoutMs?: number;
  /** Silence after which the live stream is considered dead (90 s; the server sends heartbeats every 30 s). */
  streamIdleTimeoutMs?: number;
  /** First delay before reconnecting; doubles on each failure (500 ms). */
  minBackoffMs?: number;
  /** Longest delay before reconnecting (30 s). */
  maxBackoffMs?: number;
  /** The `fetch` to use (tests). */
  fetch?: typeof fetch;
}

/** What one sync did. */
export interface SyncReport {
  /** Local changes the server acknowledged. */
  pushed: number;
  /** Changes received from other devices. */
  received: number;
  /** Local changes the server refused in this sync (set aside). */
  rejected: number;
}

const DEFAULTS: Required<Omit<SyncOptions, 'fetch'>> = {
  changesetSize: 500,
  pageSize: 1000,
  requestTimeoutMs: 60_000,
  streamIdleTimeoutMs: 90_000,
  minBackoffMs: 500,
  maxBackoffMs: 30_000,
};

/** A store connected to a server with an account's token. */
export class SyncClient {
  private readonly options: Required<Omit<SyncOptions, 'fetch'>>;
  private readonly fetch: typeof fetch;

  constructor(
    readonly store: LocalStore,
    readonly account: Pick<Account, 'server' | 'token'>,
    options: SyncOptions = {},
  ) {
    this.options = { ...DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) };
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  private url(segments: string[], query?: Record<string, string>): string {
    const path = segments.map(encodeURIComponent).join('/');
    const search = query ? `?${new URLSearchParams(query).toString()}` : '';
    return `${this.account.server.replace(/\/+$/, '')}/${path}${search}`;
  }

  private headers(extra: Record<string, string> = {}, asThisClient = true): Record<string, string> {
    return {
      Authorization: `Bearer ${this.account.token}`,
      ...(asThisClient && { 'X-Client-Id': this.store.clientId }),
      'X-Sync-Features': FEATURES,
      ...extra,
    };
  }

  /**
   * Sends a request; network failures become `offline` errors. `timeout`
   * aborts it (the caller decides how long it covers).
   */
  private async send(url: string, init: RequestInit, timeout: AbortSignal, signal?: AbortSignal): Promise<Response> {
    const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      return await this.fetch(url, { ...init, signal: combined, cache: 'no-store' });
    } catch (error) {
      if (timeout.aborted) throw new SyncError('offline', 'the request to the sync server timed out');
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new SyncError('offline', 'aborted');
      throw new SyncError('offline', `cannot reach the sync server at ${this.account.server}: ${(error as Error).message}`);
    }
  }

  /**
   * One request and its whole reply within `requestTimeoutMs`: the body of a
   * 2xx reply, parsed keeping values' texts; the mapped error otherwise.
   */
  private async call(url: string, init: RequestInit, what: string, signal?: AbortSignal): Promise<unknown> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.options.requestTimeoutMs);
    try {
      const response = await this.send(url, init, timeout.signal, signal);
      let text: string;
      try {
        text = await response.text();
      } catch (error) {
        if (timeout.signal.aborted) throw new SyncError('offline', `reading ${what} timed out`);
        throw new SyncError('offline', `the connection broke while reading ${what}: ${(error as Error).message}`);
      }
      if (!response.ok) throw errorFrom(response.status, text);
      try {
        return parseJson(text);
      } catch (error) {
        throw new SyncError('protocol', `${what} is not JSON: ${(error as Error).message}`);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Pushes the outbox, then pulls every collection to the end; sets the status on the way. */
  async sync(signal?: AbortSignal): Promise<SyncReport> {
    await this.store.setStatus({ kind: 'syncing' });
    try {
      const report = await this.syncOnce(signal);
      await this.settle(undefined);
      return report;
    } catch (error) {
      await this.settle(error);
      throw error;
    }
  }

  private async syncOnce(signal?: AbortSignal): Promise<SyncReport> {
    const report = await this.push(signal);
    report.received += await this.pull(signal);
    await this.refreshSpaces(signal);
    return report;
  }

  /** Lists the user's shared spaces into the store (names and roles for the app). */
  async refreshSpaces(signal?: AbortSignal): Promise<void> {
    await new SpacesApi(this.store, { account: this.account, fetch: this.fetch, requestTimeoutMs: this.options.requestTimeoutMs }).list(signal);
  }

  /** The status after an attempt: synced (or error while refused changes wait aside), offline, error. */
  private async settle(failure: unknown): Promise<void> {
    let status: SyncStatus;
    if (failure === undefined) {
      const rejected = await this.store.rejected();
      status =
        rejected.length > 0
          ? { kind: 'error', reason: `${rejected.length} change(s) refused by the server and set aside (first: ${rejected[0]!.reason})` }
          : { kind: 'synced' };
    } else if (failure instanceof SyncError && failure.transient) {
      status = { kind: 'offline', reason: failure.message };
    } else if (failure instanceof SyncError && failure.kind === 'unauthorized') {
      status = { kind: 'error', reason: failure.message, signInAgain: true };
    } else {
      status = { kind: 'error', reason: failure instanceof Error ? failure.message : String(failure) };
    }
    await this.store.setStatus(status);
  }

  /** Pushes the whole outbox. */
  async push(signal?: AbortSignal): Promise<SyncReport> {
    const report: SyncReport = { pushed: 0, received: 0, rejected: 0 };
    let cursorReset = false;
    let redownloaded = false;
    // An unfinished re-download completes first: a push's reply would
    // otherwise move the cursors past it.
    if (await this.store.redownloadPending()) report.received += await this.pull(signal);
    for (;;) {
      const changeset = await this.store.nextChangeset(this.options.changesetSize);
      if (!changeset) return report;
      const since = (await this.store.appCursor()) ?? START;
      try {
        const reply = await this.postChangeset(changeset, since, signal);
        report.pushed += changeset.changes.length;
        report.received += reply.changes.length;
        await this.store.finishChangeset(changeset.id, reply);
      } catch (error) {
        if (!(error instanceof SyncError)) throw error;
        if (isCursorExpired(error) && !redownloaded) {
          // The server stored the changeset before answering; it is resent
          // after the re-download, under the same id.
          redownloaded = true;
          await this.store.startRedownload();
          report.received += await this.pull(signal);
        } else if (error.code === 'invalid_cursor' && !cursorReset) {
          cursorReset = true;
          await this.store.forgetCursors();
        } else if (error.code === 'space_forbidden') {
          // A changeset holds one space's changes (`nextChangeset`), so the
          // space refused is this changeset's: set it aside whole, with the
          // server's reason, and push the other spaces' changes.
          console.warn(`mana-sync: the server refused changes to a shared space; set aside (${error.message})`);
          report.rejected += await this.store.rejectChangeset(changeset.id, error.message);
        } else if (refusesTheChanges(error)) {
          if (!(await this.store.splitChangeset(changeset.id))) {
            const reason = `${error.code}: ${error.message.replace(`${error.code}: `, '')}`;
            console.warn(`mana-sync: the server refused a change; set aside (${reason})`);
            report.rejected += await this.store.rejectChangeset(changeset.id, reason);
          }
        } else {
          throw error;
        }
      }
    }
  }

  private async postChangeset(changeset: PendingChangeset, since: string, signal?: AbortSignal): Promise<IncomingPage> {
    // The changes are kept as the exact JSON to send: join, don't re-encode.
    const body =
      `{"clientId":${quote(this.store.clientId)},"since":${quote(since)},"changesetId":${quote(changeset.id)},` +
      `"schemaVersion":${SCHEMA_VERSION},"changes":[${changeset.changes.join(',')}]}`;
    const reply = await this.call(
      this.url(['sync', this.store.appId]),
      { method: 'POST', headers: this.headers({ 'Content-Type': 'application/json' }), body },
      'the push reply',
      signal,
    );
    return readPage(reply, 'the push reply');
  }

  /**
   * Pulls every synced collection to the end; returns how many changes
   * arrived. On `cursor_expired`, downloads everything again (and a
   * re-download left unfinished is completed).
   */
  async pull(signal?: AbortSignal): Promise<number> {
    const received = { count: 0 };
    for (let restarts = 0; ; restarts++) {
      try {
        await this.pullRound(received, signal);
        return received.count;
      } catch (error) {
        if (!isCursorExpired(error) || restarts >= MAX_REDOWNLOADS) throw error;
        await this.store.startRedownload();
      }
    }
  }

  /** Pulls every synced collection from its cursor to the end; then sets the app cursor, or finishes the re-download. */
  private async pullRound(received: { count: number }, signal?: AbortSignal): Promise<void> {
    const redownload = await this.store.redownloadPending();
    let firstCursor: string | undefined;
    for (const collection of this.store.collections) {
      const cursor = await this.pullCollection(collection, redownload, received, signal);
      // Pulls end at the server's newest position at the time, so the first
      // collection's final cursor is at or before every other's: every
      // change up to it, of every collection, is now applied.
      firstCursor ??= cursor;
    }
    if (redownload) await this.store.finishRedownload(firstCursor);
    else if (firstCursor !== undefined) await this.store.setAppCursor(firstCursor);
  }

  /**
   * Pulls one collection from its cursor to the end; returns the final
   * cursor. A re-download pulls without the client id, so that this
   * device's own changes come back too.
   */
  private async pullCollection(collection: string, redownload: boolean, received: { count: number }, signal?: AbortSignal): Promise<string> {
    let since = (await this.store.cursor(collection)) ?? START;
    let restarted = false;
    for (;;) {
      let page: IncomingPage;
      try {
        const reply = await this.call(
          this.url(['sync', this.store.appId, 'pull'], { collection, since, limit: String(this.options.pageSize) }),
          { headers: this.headers({}, !redownload) },
          'a pull page',
          signal,
        );
        page = readPage(reply, 'a pull page');
      } catch (error) {
        if (error instanceof SyncError && error.code === 'invalid_cursor' && !restarted) {
          // Not this server's cursor (its database was replaced): start over.
          restarted = true;
          since = START;
          continue;
        }
        throw error;
      }
      received.count += page.changes.length;
      const last = !page.hasMore;
      await this.store.applyPage(page.changes, last ? [collection, page.syncedUntil] : undefined, page.removedSpaces);
      if (last) return page.syncedUntil;
      since = page.syncedUntil;
    }
  }

  /**
   * Syncs, then follows the live stream until `signal` aborts, reconnecting
   * with backoff after any failure. Returns when aborted; throws only when
   * retrying cannot help: the server refuses the token.
   */
  async runLive(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(this.options.minBackoffMs, this.options.maxBackoffMs);
    const win = browserWindow();
    // A stream whose cursor expired is followed by a re-download and a new
    // stream at once, unless it expired again before the new stream
    // delivered anything.
    const expired = { last: false };
    while (!signal.aborted) {
      let failure: unknown;
      if (win && !win.navigator.onLine) {
        failure = new SyncError('offline', 'the browser is offline');
      } else {
        await this.store.setStatus({ kind: 'syncing' });
        try {
          await this.syncOnce(signal);
          failure = await this.followStream(signal, backoff, expired);
          if (isCursorExpired(failure) && !expired.last && !signal.aborted) {
            expired.last = true;
            await this.store.startRedownload();
            continue;
          }
        } catch (error) {
          failure = error;
        }
      }
      expired.last = false;
      if (signal.aborted) return;
      await this.settle(failure);
      if (failure instanceof SyncError && failure.kind === 'unauthorized') throw failure;
      if (!(failure instanceof SyncError)) console.warn('mana-sync: sync failed; retrying', failure);
      // Back online: retry at once rather than at the end of the backoff.
      await sleep(backoff.nextDelay(), signal, (wake) => {
        win?.addEventListener('online', wake);
        return () => win?.removeEventListener('online', wake);
      });
    }
  }

  /**
   * Opens the stream and applies its events, pushing local writes as they
   * come. Returns the failure that ended it, or `undefined` when `signal`
   * aborted.
   */
  private async followStream(signal: AbortSignal, backoff: Backoff, expired: { last: boolean }): Promise<unknown> {
    const since = (await this.store.appCursor()) ?? START;
    const controller = new AbortController();
    let failure: unknown;
    const fail = (error: unknown) => {
      failure ??= error;
      controller.abort();
    };
    const onAbort = () => controller.abort();
    // Stopped while the cursor was read: an aborted signal fires no more `abort` events.
    if (signal.aborted) return undefined;
    signal.addEventListener('abort', onAbort, { once: true });
    const win = browserWindow();
    const onOffline = () => fail(new SyncError('offline', 'the browser is offline'));
    win?.addEventListener('offline', onOffline);
    // Events and pushes are applied one at a time, in order.
    let queue: Promise<void> = Promise.resolve();
    const enqueue = (task: () => Promise<void>) => {
      queue = queue.then(() => (controller.signal.aborted ? undefined : task().catch(fail)));
    };
    let unsubscribeOutbox = () => {};
    let idle: ReturnType<typeof setTimeout> | undefined;
    try {
      // The timeout covers opening the stream only; its body lasts as long as it is open.
      let response: Response;
      const opening = new AbortController();
      const timer = setTimeout(() => opening.abort(), this.options.requestTimeoutMs);
      try {
        response = await this.send(
          this.url(['sync', this.store.appId, 'stream'], { collections: this.store.collections.join(','), since }),
          { headers: this.headers({ Accept: 'text/event-stream' }) },
          AbortSignal.any([opening.signal, controller.signal]),
        );
      } catch (error) {
        return signal.aborted ? undefined : (failure ?? error);
      } finally {
        clearTimeout(timer);
      }
      if (!response.ok || !response.body) {
        return errorFrom(response.status, await response.text().catch(() => ''));
      }
      const parser = createParser({
        onEvent: (event) => {
          if (event.event !== 'cursor-expired') expired.last = false;
          if (event.event === 'changes') {
            enqueue(() => this.applyEvent(event.data));
          } else if (event.event === 'error') {
            // The server ends the stream on its own failure: reconnect from the saved cursors.
            const error = errorFrom(503, event.data);
            fail(new SyncError('offline', `the server ended the live stream: ${error.message}`, 503, error.code));
          } else if (event.event === 'space-added') {
            // The stream itself downloads the new space; the list gets its name and role.
            enqueue(() => this.refreshSpaces(controller.signal));
          } else if (event.event === 'space-removed') {
            enqueue(() => this.spaceRemoved(event.data, controller.signal));
          } else if (event.event === 'cursor-expired') {
            // History after the cursor was dropped; the server ends the
            // stream, and `runLive` downloads everything again.
            fail(errorFrom(410, event.data));
          }
          // Heartbeats only keep the idle timeout at bay.
        },
      });
      // Connected: synced (unless refused changes wait aside); local writes made
      // meanwhile, and every later one, are pushed.
      await this.settle(undefined);
      backoff.reset();
      const outbox = liveQuery(() => this.store.pendingCount()).subscribe({
        next: (pending) => {
          if (pending > 0) enqueue(() => this.pushWhileLive(controller.signal));
        },
        error: fail,
      });
      unsubscribeOutbox = () => outbox.unsubscribe();
      const resetIdle = () => {
        clearTimeout(idle);
        idle = setTimeout(
          () => fail(new SyncError('offline', `the live stream was silent for ${Math.round(this.options.streamIdleTimeoutMs / 1000)} s`)),
          this.options.streamIdleTimeoutMs,
        );
      };
      resetIdle();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) {
            fail(new SyncError('offline', 'the server closed the live stream'));
            break;
          }
          resetIdle();
          parser.feed(value);
        }
      } catch (error) {
        if (!controller.signal.aborted) fail(new SyncError('offline', `live stream: ${(error as Error).message}`));
      } finally {
        reader.cancel().catch(() => {});
      }
      await queue;
      return signal.aborted ? undefined : failure;
    } finally {
      clearTimeout(idle);
      unsubscribeOutbox();
      controller.abort();
      signal.removeEventListener('abort', onAbort);
      win?.removeEventListener('offline', onOffline);
    }
  }

  private async pushWhileLive(signal: AbortSignal): Promise<void> {
    if ((await this.store.pendingCount()) === 0) return;
    await this.store.setStatus({ kind: 'syncing' });
    await this.push(signal);
    await this.settle(undefined);
  }

  private async applyEvent(data: string): Promise<void> {
    let event: IncomingPage & { table?: string };
    try {
      event = readPage(parseJson(data), 'a stream event');
    } catch (error) {
      throw error instanceof SyncError ? error : new SyncError('protocol', `a stream event is not JSON: ${(error as Error).message}`);
    }
    if (event.table === undefined) throw new SyncError('protocol', 'a stream event names no table');
    await this.store.applyPage(event.changes, [event.table, event.syncedUntil], event.removedSpaces);
  }

  /** `event: space-removed`: the user left the space or was removed; its records go. */
  private async spaceRemoved(data: string, signal: AbortSignal): Promise<void> {
    let spaceId: unknown;
    try {
      spaceId = (JSON.parse(data) as { spaceId?: unknown }).spaceId;
    } catch {
      // handled below
    }
    if (typeof spaceId !== 'string') throw new SyncError('protocol', 'a space-removed event names no `spaceId`');
    await this.store.dropSpaces([spaceId]);
    await this.refreshSpaces(signal);
  }
}

/** The changes of a reply, for apps that read replies themselves. */
export function readServerChanges(json: JsonObject): IncomingPage {
  return readPage(json, 'the reply');
}
