/**
 * The wire side of sync, apart from the client's state: reading replies and
 * errors, and the timing helpers (backoff, sleeps) of reconnecting.
 */

import { SyncError } from './errors.ts';
import { isObject } from './json.ts';
import { readChange, ChangeError } from './merge.ts';
import type { IncomingPage } from './types.ts';

/** Exponential backoff with ±25 % jitter, so devices that lost the server together do not return together. */
export class Backoff {
  private current: number;

  constructor(
    private readonly min: number,
    private readonly max: number,
  ) {
    this.current = min;
  }

  reset(): void {
    this.current = this.min;
  }

  nextDelay(): number {
    const base = this.current;
    this.current = Math.min(this.current * 2, this.max);
    return base * (0.75 + Math.random() * 0.5);
  }
}

/** Whether a refusal is about the changes themselves (so splitting and setting aside can help). */
export function refusesTheChanges(error: SyncError): boolean {
  return error.status === 413 || (error.status === 400 && (error.code === 'invalid_change' || error.code === 'invalid_json'));
}

/** The error of a non-2xx reply. */
export function errorFrom(status: number, body: string): SyncError {
  let code = 'http_error';
  let message = body.slice(0, 300);
  try {
    const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (typeof parsed.error?.code === 'string') code = parsed.error.code;
    if (typeof parsed.error?.message === 'string') message = parsed.error.message;
  } catch {
    // not JSON: keep the text
  }
  if (status === 401) return new SyncError('unauthorized', `the server refused the token: ${message}`, status, code);
  const transient = status === 408 || status === 429 || status >= 500;
  return new SyncError(transient ? 'offline' : 'server', `${code}: ${message}`, status, code);
}

export function readPage(json: unknown, what: string): IncomingPage & { table?: string } {
  if (!isObject(json)) throw new SyncError('protocol', `${what} is not a JSON object`);
  const changes = json.serverChanges ?? json.changes;
  if (!Array.isArray(changes) || typeof json.syncedUntil !== 'string') {
    throw new SyncError('protocol', `${what} lacks \`serverChanges\`/\`changes\` or \`syncedUntil\``);
  }
  try {
    const removed = json.removedSpaces;
    if (removed !== undefined && !(Array.isArray(removed) && removed.every((s) => typeof s === 'string'))) {
      throw new SyncError('protocol', `${what}: \`removedSpaces\` is not a list of space ids`);
    }
    return {
      changes: changes.map(readChange),
      syncedUntil: json.syncedUntil,
      hasMore: json.hasMore === true,
      ...(typeof json.table === 'string' && { table: json.table }),
      ...(removed !== undefined && removed.length > 0 && { removedSpaces: removed as string[] }),
    };
  } catch (error) {
    if (error instanceof ChangeError) throw new SyncError('protocol', `${what}: ${error.message}`);
    throw error;
  }
}

export function sleep(ms: number, signal: AbortSignal, wake?: (wake: () => void) => () => void): Promise<void> {
  return new Promise((resolve) => {
    // An aborted signal fires no more `abort` events.
    if (signal.aborted) {
      resolve();
      return;
    }
    let unwatch = () => {};
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      unwatch();
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    if (wake) unwatch = wake(done);
  });
}

/** `window`, when there is one (not in workers or Node). */
export function browserWindow(): Window | undefined {
  return typeof window === 'undefined' ? undefined : window;
}
