/** Errors of the local store and of sync. */

/** What went wrong in the local store. */
export type StoreErrorCode =
  | 'invalid_input'
  | 'not_found'
  | 'already_exists'
  | 'account_mismatch'
  | 'invalid_token'
  | 'wrong_app';

/** A local store operation was refused; nothing was written. */
export class StoreError extends Error {
  constructor(
    readonly code: StoreErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

/** How a sync failed, which decides what happens next. */
export type SyncErrorKind =
  /** The server cannot be reached, or answered 5xx: retry later (status `offline`). */
  | 'offline'
  /** The server refuses the token: a new one is needed (live sync stops). */
  | 'unauthorized'
  /** The server refused the request (4xx): status `error`. */
  | 'server'
  /** The server's reply is not what the protocol says. */
  | 'protocol';

/** A sync failed. Local data and the outbox are kept. */
export class SyncError extends Error {
  constructor(
    readonly kind: SyncErrorKind,
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'SyncError';
  }

  /** Whether retrying later may help without anyone acting (network, 5xx). */
  get transient(): boolean {
    return this.kind === 'offline';
  }
}
